"""``tunelab serve``: an OpenAI-compatible HTTP API over tuned runs (chat, completions, classify, score)
and OpenAI's files + fine-tuning jobs API on local models. The HTTP layer is thin: models and
batching live in ``registry``/``engine``, jobs in ``jobs``; ``app.create_app`` wires them together."""
