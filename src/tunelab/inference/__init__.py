"""Using a model once it is built: generate replies, classify texts, score responses.

Functions here take a (model, tokenizer) pair and know nothing of run directories, so the CLI,
`tunelab eval`, the stages' own evaluations and a server all share them.
"""
