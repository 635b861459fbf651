"""End to end with the official `openai` client against real uvicorn on 127.0.0.1 (tiny-llama, SYNTHETIC rows)."""
from __future__ import annotations

import io

import openai
import pytest
from .jobs_helpers import CHAT_ROWS, TINY_TRAIN, jsonl, serve, wait_for
from openai import OpenAI

from tunelab.serve.app import ServerState
from tunelab.serve.jobs import JobService

API_KEY = "test-key"


@pytest.fixture
def client(tmp_path):
    service = JobService(tmp_path / "data").start()
    try:
        with serve(ServerState(jobs=service, api_key=API_KEY)) as url:
            with OpenAI(base_url=f"{url}/v1", api_key=API_KEY, timeout=30, max_retries=0) as api:
                yield api
    finally:
        service.close()


def test_fine_tune_through_the_openai_client(client):
    upload = client.files.create(file=("colours.jsonl", io.BytesIO(jsonl(CHAT_ROWS))), purpose="fine-tune")
    assert upload.id.startswith("file-") and upload.purpose == "fine-tune" and upload.bytes == len(jsonl(CHAT_ROWS))
    assert [f.id for f in client.files.list().data] == [upload.id]

    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=upload.id, suffix="colours", seed=3, metadata={"purpose": "test"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}},
        extra_body={"tunelab": {"method": {"name": "lora", "r": 4, "alpha": 8}, "train": TINY_TRAIN}})
    assert job.object == "fine_tuning.job" and job.status in ("validating_files", "queued", "running")
    assert job.seed == 3 and job.hyperparameters.batch_size == 2 and job.metadata == {"purpose": "test"}
    other = client.fine_tuning.jobs.create(model="tiny-llama", training_file=upload.id,
                                           extra_body={"tunelab": {"train": TINY_TRAIN}})
    assert client.fine_tuning.jobs.cancel(other.id).status == "cancelled"  # queued behind the first

    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
                    300, "the job to finish", interval=1)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-llama:colours:{job.id}" and done.trained_tokens > 0
    assert done.finished_at >= done.created_at
    results = client.files.content(done.result_files[0]).text.splitlines()
    assert results[0] == "step,train_loss,valid_loss" and [r.split(",")[0] for r in results[1:]] == ["1", "2", "3", "4"]

    listed = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in listed.data] == [other.id] and listed.has_more
    everything = [j.id for j in client.fine_tuning.jobs.list(limit=1)]  # the client pages with `after`
    assert everything == [other.id, job.id]

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))  # auto-paginated, 2 per request
    metrics = [e for e in events if e.type == "metrics" and "train_loss" in (e.data or {})]
    assert sorted(e.data["step"] for e in metrics) == [1, 2, 3, 4]
    assert events[0].message == "The job has successfully completed"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint.endswith(":ckpt-step-4")
    assert checkpoints[0].metrics.train_loss is not None


def test_client_sees_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    assert missing.value.status_code == 404
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="tiny-llama", training_file="file-AAAAAAAAAAAAAAAAAAAAAAAA")
    assert bad.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.fine_tuning.jobs.create(model="no-such-model", training_file="file-x")
    assert unknown.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as bad_file:
        client.files.create(file=("x.jsonl", io.BytesIO(b'{"messages": []}\n')), purpose="fine-tune")
    assert "line 1" in bad_file.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").files.list()
