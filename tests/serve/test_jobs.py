"""JobService on real SQLite and real `tunelab train` subprocesses (tiny-llama, SYNTHETIC chat rows)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from .jobs_helpers import CHAT_ROWS, DPO_ROWS, TINY_TRAIN, jsonl, wait_for

from tunelab.runs.directory import complete_checkpoints
from tunelab.serve.jobs import JobService
from tunelab.serve.jobs_config import RequestError


class RecordingRegistry:
    """Stands in for serve.registry.Registry (written on another branch): records what it was asked to serve."""

    def __init__(self):
        self.added = []

    def add(self, run_or_model, name=None):
        assert (run_or_model / "summary.json").is_file()
        self.added.append((run_or_model, name))


@pytest.fixture
def service(tmp_path):
    jobs = JobService(tmp_path / "data")
    yield jobs
    jobs.close()


def _upload(jobs, rows=CHAT_ROWS):
    return jobs.files.create(jsonl(rows), "train.jsonl", "fine-tune")["id"]


def _body(file_id, **extra):
    return {"model": "tiny-llama", "training_file": file_id, "tunelab": {"train": dict(TINY_TRAIN)}, **extra}


@pytest.mark.parametrize("change, param, status", [
    ({"model": "no-such-model"}, "model", 404),
    ({"model": "/nowhere/model"}, "model", 404),
    ({"training_file": "file-AAAAAAAAAAAAAAAAAAAAAAAA"}, "training_file", 400),
    ({"training_file": "../../etc/passwd"}, "training_file", 400),
    ({"training_file": None}, "training_file", 400),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", 400),
    ({"hyperparameters": {"batch_size": 1.5}}, "hyperparameters.batch_size", 400),
    ({"hyperparameters": {"learning_rate_multiplier": "fast"}}, "hyperparameters.learning_rate_multiplier", 400),
    ({"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta", 400),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": -1}}}}, "method.dpo.hyperparameters.beta", 400),
    ({"method": {"type": "dpo"}}, "training_file", 400),  # a chat file for a DPO job
    ({"method": {"type": "rlhf"}}, "method.type", 400),
    ({"suffix": "../x"}, "suffix", 400),
    ({"seed": "one"}, "seed", 400),
    ({"tunelab": {"method": {"name": "nosuch"}}}, "tunelab.method", 400),
    ({"tunelab": {"train": {"epochs": -1}}}, "tunelab.train", 400),
    ({"colour": "blue"}, "colour", 400),
])
def test_bad_requests_name_the_field(service, change, param, status):
    wants_pairs = change.get("method", {}).get("dpo") is not None
    body = {**_body(_upload(service, DPO_ROWS if wants_pairs else CHAT_ROWS)), **change}
    with pytest.raises(RequestError) as caught:
        service.create(body)
    assert (caught.value.param, caught.value.status) == (param, status), str(caught.value)
    assert service.list()[0] == []  # nothing half-created


def test_request_maps_to_a_tunelab_run(service):
    pairs = _upload(service, DPO_ROWS)
    job = service.create({"model": "tiny-llama", "training_file": pairs, "seed": 7, "suffix": "colours",
                          "metadata": {"team": "a"},
                          "method": {"type": "dpo", "dpo": {"hyperparameters": {
                              "beta": 0.2, "n_epochs": 2, "learning_rate_multiplier": 0.5}}},
                          "tunelab": {"method": {"name": "adapter"}}})
    config = service.store.config(job["id"])
    assert config["stage"] == {"name": "dpo", **config["stage"], "beta": 0.2}
    assert config["method"]["name"] == "adapter"
    assert (config["train"]["epochs"], config["train"]["seed"], config["train"]["lr"]) == (2, 7, 1e-4)
    assert job["status"] == "queued" and job["seed"] == 7 and job["user_provided_suffix"] == "colours"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2 and job["hyperparameters"]["n_epochs"] == 2
    first = (service.data_dir / "jobs" / job["id"] / "train.jsonl").read_text().splitlines()[0]
    assert '"prompt": "Colour of the sky?"' in first and '"chosen": "Blue."' in first


def test_pagination_and_cancel_of_queued_jobs(service):
    file_id = _upload(service)
    ids = [service.create(_body(file_id))["id"] for _ in range(5)]  # the worker is not started: all stay queued
    page, more = service.list(limit=2)
    assert [j["id"] for j in page] == ids[::-1][:2] and more
    page, more = service.list(after=page[-1]["id"], limit=2)
    assert [j["id"] for j in page] == ids[::-1][2:4] and more
    page, more = service.list(after=page[-1]["id"], limit=2)
    assert [j["id"] for j in page] == ids[:1] and not more
    cancelled = service.cancel(ids[0])
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    with pytest.raises(RequestError, match="already cancelled"):
        service.cancel(ids[0])
    events, more = service.events(ids[0], limit=1)
    assert events[0]["message"] == "The job was cancelled" and more
    with pytest.raises(RequestError) as caught:
        service.get("ftjob-nope")
    assert caught.value.status == 404


def test_restart_resumes_the_running_job_and_keeps_the_queue(tmp_path):
    data = tmp_path / "data"
    first = JobService(data, max_concurrent=1).start()
    file_id = _upload(first)
    train = {**TINY_TRAIN, "max_steps": 8}  # checkpoints at 2, 4, 6: the server stops after the first
    a = first.create({**_body(file_id), "tunelab": {"train": train}})["id"]
    b = first.create({**_body(file_id), "suffix": "second"})["id"]
    run_a = data / "jobs" / a / "run"
    try:
        wait_for(lambda: complete_checkpoints(run_a / "checkpoints"), 240, "job A's first checkpoint", interval=0.1)
        assert first.get(b)["status"] == "queued"  # one at a time
        wait_for(lambda: first.get(a)["estimated_finish"], 10, "an estimated finish from the pace so far")
    finally:
        first.close()  # stops the worker and kills A's training, as a crash would
    assert not (run_a / "summary.json").exists(), "job A finished before the server stopped; the test proves nothing"

    registry = RecordingRegistry()
    second = JobService(data, registry=registry, max_concurrent=1).start()
    try:
        assert second.get(a)["status"] in ("queued", "running")
        done = wait_for(lambda: all(second.get(j)["status"] in ("succeeded", "failed") for j in (a, b)), 400,
                        "both jobs to finish")
        assert done
        job_a, job_b = second.get(a), second.get(b)
        assert (job_a["status"], job_b["status"]) == ("succeeded", "succeeded"), (job_a["error"], job_b["error"])
        messages = [e["message"] for e in second.store.events(a, None, 100)[0]]
        assert any(m.startswith("Resuming training from checkpoint-") for m in messages), messages
        losses = [e for e in second.store.events(a, None, 100)[0] if e["type"] == "metrics"]
        assert sorted(e["data"]["step"] for e in losses if "train_loss" in e["data"]) == list(range(1, 9))
        assert job_a["trained_tokens"] > 0 and job_a["fine_tuned_model"] == f"ft:tiny-llama:tunelab:{a}"
        assert job_b["fine_tuned_model"] == f"ft:tiny-llama:second:{b}"
        assert sorted(name for _, name in registry.added) == sorted([job_a["fine_tuned_model"],
                                                                     job_b["fine_tuned_model"]])
        checkpoints, _ = second.checkpoints(a)
        assert [c["step_number"] for c in checkpoints] == [8, 6]  # newest first; save_total_limit keeps 2
        assert checkpoints[0]["metrics"]["train_loss"] is not None
    finally:
        second.close()


def test_cancel_ends_the_running_training_process(service):
    service.start()
    job_id = service.create(_body(_upload(service)))["id"]
    wait_for(lambda: job_id in service._processes, 30, "the job's training process to start", interval=0.05)
    process = service._processes[job_id]
    assert service.cancel(job_id)["status"] == "cancelled"
    assert process.poll() is not None  # the whole process group was terminated
    time.sleep(1.5)  # a few worker polls: the ended process must not turn the job into 'failed'
    job = service.get(job_id)
    assert job["status"] == "cancelled" and job["fine_tuned_model"] is None


def test_restart_after_a_crash_stops_the_orphaned_training_first(tmp_path):
    data = tmp_path / "data"
    crashed = JobService(data).start()
    job_id = crashed.create(_body(_upload(crashed)))["id"]
    wait_for(lambda: job_id in crashed._processes, 30, "the job's training process to start", interval=0.05)
    orphan = crashed._processes[job_id]
    crashed._stop.set()  # the server dies: its worker stops, nobody kills the training process
    crashed._worker.join(timeout=30)
    crashed.store.close()
    assert orphan.poll() is None
    restarted = JobService(data).start()
    try:
        assert orphan.wait(timeout=30) is not None  # ended by the new server before it relaunched the job
        wait_for(lambda: job_id in restarted._processes, 30, "the job to be relaunched", interval=0.05)
        assert restarted._processes[job_id].pid != orphan.pid and restarted.get(job_id)["status"] == "running"
    finally:
        restarted.close()


def test_validation_file_becomes_the_eval_set(service):
    train, held_out = _upload(service, CHAT_ROWS[:6]), _upload(service, CHAT_ROWS[6:])
    job = service.create({**_body(train), "validation_file": held_out})
    assert job["validation_file"] == held_out
    config = service.store.config(job["id"])
    eval_file = service.data_dir / "jobs" / job["id"] / "validation.jsonl"
    assert config["data"]["eval"] == str(eval_file) and len(eval_file.read_text().splitlines()) == 2


def test_a_training_failure_fails_the_job_with_tunelab_s_message(service, tmp_path):
    import shutil

    from tunelab.models.loading import resolve

    model_dir = Path(shutil.copytree(resolve("tiny-llama"), tmp_path / "my-model"))
    job_id = service.create({**_body(_upload(service)), "model": str(model_dir)})["id"]
    shutil.rmtree(model_dir)  # gone before the worker gets to it
    service.start()
    job = wait_for(lambda: (j := service.get(job_id))["status"] in ("succeeded", "failed") and j, 120,
                   "the job to fail")
    assert job["status"] == "failed" and job["error"]["code"] == "training_failed"
    assert str(model_dir) in job["error"]["message"] and job["fine_tuned_model"] is None
