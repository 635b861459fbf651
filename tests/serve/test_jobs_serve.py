"""`tunelab serve --data-dir`: a fine-tuning job started through the openai client is servable under its
`fine_tuned_model` name as soon as it succeeds — and what it answers is that run's own output, not the base's."""
from __future__ import annotations

import io

import openai

import tunelab
from .jobs_helpers import CHAT_ROWS, TINY_TRAIN, jsonl, wait_for

from .conftest import ServeProcess

PROMPT = [{"role": "user", "content": "Colour of the sky?"}]


def test_a_succeeded_job_is_served_at_once(tmp_path):
    data = tmp_path / "data"
    process = ServeProcess("--base", "tiny-llama", "--data-dir", data)
    try:
        with openai.OpenAI(base_url=process.url, api_key="unused", timeout=60, max_retries=0) as client:
            upload = client.files.create(file=("colours.jsonl", io.BytesIO(jsonl(CHAT_ROWS))), purpose="fine-tune")
            job = client.fine_tuning.jobs.create(
                model="tiny-llama", training_file=upload.id, suffix="colours",
                extra_body={"tunelab": {"train": {**TINY_TRAIN, "max_steps": 12, "lr": 5e-2}}})
            done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in
                            ("succeeded", "failed", "cancelled") and j, 240, "the job to finish", interval=1)
            assert done.status == "succeeded", done.error
            name = done.fine_tuned_model
            assert name == f"ft:tiny-llama:colours:{job.id}"
            assert name in {m.id for m in client.models.list().data}

            tuned = client.chat.completions.create(model=name, messages=PROMPT, max_tokens=8, temperature=0)
            base = client.chat.completions.create(model="tiny-llama", messages=PROMPT, max_tokens=8, temperature=0)
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
                model=name, messages=PROMPT, max_tokens=8, temperature=0, stream=True) if chunk.choices)
    finally:
        stderr = process.close()
    assert "Traceback" not in stderr, stderr[-3000:]
    run_dir = data / "jobs" / job.id / "run"
    alone = tunelab.load(run_dir).generate(PROMPT, max_new_tokens=8)
    assert tuned.choices[0].message.content.strip() == alone
    assert streamed.strip() == alone
    # lr 5e-2 for 12 steps moves tiny-llama's greedy reply; if this ever fails, the test no longer shows
    # that the adapter (not the base) answered, so make the training stronger rather than drop the check.
    assert base.choices[0].message.content != tuned.choices[0].message.content
