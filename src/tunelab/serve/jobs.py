"""Fine-tuning jobs on local models: OpenAI's job objects over tunelab's own training path.

Each job trains as a ``python -m tunelab train CONFIG --quiet`` subprocess in its own process
group (cancel terminates the group), at most ``max_concurrent`` at a time, in
``DATA/jobs/<id>/run``. Jobs live in SQLite (``DATA/jobs.sqlite``): after a restart queued jobs
stay queued and a job that was running resumes from its last checkpoint (``--resume``). Events
are read from the run's metrics.jsonl as training goes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..core.errors import TunelabError
from ..runs.directory import check_writable, last_checkpoint
from . import jobs_config, jobs_progress
from .files import FileStore
from .jobs_config import RequestError
from .jobs_store import JobStore, new_id

ACTIVE = ("validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
POLL_SECONDS = 0.5


class JobService:
    def __init__(self, data_dir: Path, registry=None, max_concurrent: int = 1):
        if max_concurrent < 1:
            raise TunelabError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self.data_dir = Path(data_dir)
        check_writable(self.data_dir)
        self.files = FileStore(self.data_dir / "files")
        self.store = JobStore(self.data_dir / "jobs.sqlite")
        self.registry = registry
        self.max_concurrent = max_concurrent
        self._processes: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "JobService":
        """Recover jobs a previous server left running (they resume), serve finished models, start the worker."""
        for job in self.store.with_status("validating_files", "running"):
            self._end_orphan(job["id"])
            self.store.update(job["id"], status="queued")
            self.store.add_event(job["id"], "Server restarted; the job will resume from its last checkpoint")
        if self.registry is not None:
            for job in self.store.with_status("succeeded"):
                self._serve(job["id"], job.get("fine_tuned_model"))
        self._stop.clear()
        self._worker = threading.Thread(target=self._loop, name="tunelab-jobs", daemon=True)
        self._worker.start()
        return self

    def close(self) -> None:
        """Stop the worker and its training processes; running jobs stay 'running' and resume on the next start."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=30)
        with self._lock:
            for process in self._processes.values():
                _kill(process)
            self._processes.clear()
        self.store.close()

    def __enter__(self) -> "JobService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    def create(self, body: dict) -> dict:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        jobs_config.check_model(body.get("model"))
        training = self._file(body.get("training_file"), "training_file")
        validation = self._file(body.get("validation_file"), "validation_file") if body.get("validation_file") else None
        kind, _, _ = jobs_config.method_of(body)
        wanted = "dpo" if kind == "dpo" else "supervised"
        for param, record in (("training_file", training), ("validation_file", validation)):
            if record is not None and record["tunelab"]["format"] != wanted:
                raise RequestError(f"{param} '{record['id']}' holds {record['tunelab']['format']} rows, but the job's "
                                   f"method is {kind}", param=param, code="invalid_file_format")
        jobs_config.check_suffix(body.get("suffix"))
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                     or not all(isinstance(v, str) for v in metadata.values())):
            raise RequestError("metadata must be an object of at most 16 string values", param="metadata")
        job_id = new_id("ftjob-")
        job_dir = self.data_dir / "jobs" / job_id
        config, hyper = jobs_config.build(body, job_id, str(job_dir), str(job_dir / "train.jsonl"),
                                          str(job_dir / "validation.jsonl") if validation else None)
        method = {"type": kind, kind: {"hyperparameters": hyper}}
        job = {"id": job_id, "object": "fine_tuning.job", "created_at": int(time.time()), "error": None,
               "fine_tuned_model": None, "finished_at": None, "estimated_finish": None,
               "hyperparameters": {k: v for k, v in hyper.items() if k != "beta"}, "method": method,
               "model": body["model"], "organization_id": "org-tunelab", "result_files": [], "seed": config["train"]["seed"],
               "status": "validating_files", "trained_tokens": None, "training_file": training["id"],
               "validation_file": validation["id"] if validation else None, "integrations": [],
               "user_provided_suffix": body.get("suffix"), "metadata": metadata,
               "tunelab": {"method": config["method"], "stage": config["stage"]["name"]}}
        job_dir.mkdir(parents=True, exist_ok=True)
        self.store.insert(job, config)
        self.store.add_event(job_id, f"Created fine-tuning job: {job_id}")
        try:  # the uploads in tunelab's formats, beside the run
            _write_jsonl(job_dir / "train.jsonl", self.files.tunelab_rows(training["id"]))
            if validation:
                _write_jsonl(job_dir / "validation.jsonl", self.files.tunelab_rows(validation["id"]))
        except TunelabError as exc:
            return self._finish(job_id, "failed", error={"code": "invalid_training_file", "message": str(exc),
                                                         "param": "training_file"})
        self.store.add_event(job_id, "Validating training file")
        job = self.store.update(job_id, status="queued")
        self.store.add_event(job_id, "Files validated, moving job to queued state")
        return job

    def get(self, job_id: str) -> dict:
        job = self.store.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise RequestError(f"fine-tuning job '{job_id}' does not exist", param="fine_tuning_job_id", status=404,
                               code="fine_tuning_job_not_found")
        return job

    def list(self, after: str | None = None, limit: int = 20) -> tuple[list[dict], bool]:
        return self.store.page(after, _limit(limit))

    def events(self, job_id: str, after: str | None = None, limit: int = 20) -> tuple[list[dict], bool]:
        self.get(job_id)
        self._sync_metrics(job_id)
        return self.store.events(job_id, after, _limit(limit))

    def cancel(self, job_id: str) -> dict:
        job = self.get(job_id)
        if job["status"] in FINISHED:
            raise RequestError(f"job {job_id} has already {job['status']}; only an unfinished job can be cancelled",
                               param="fine_tuning_job_id")
        with self._lock:
            process = self._processes.pop(job_id, None)
            job = self._finish(job_id, "cancelled")
        if process is not None:
            _kill(process)
        return job

    def checkpoints(self, job_id: str, after: str | None = None, limit: int = 10) -> tuple[list[dict], bool]:
        job = self.get(job_id)
        items = jobs_progress.checkpoint_objects(self._run_dir(job_id), job_id, _model_name(job))
        if after:
            ids = [c["id"] for c in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        limit = _limit(limit)
        return items[:limit], len(items) > limit

    # ------------------------------------------------------------------ worker

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # the worker must outlive one bad job; the job records why
                print(f"tunelab jobs worker: {exc}", file=sys.stderr)
            self._stop.wait(POLL_SECONDS)

    def _tick(self) -> None:
        with self._lock:
            running = dict(self._processes)
        for job_id, process in running.items():
            self._sync_metrics(job_id)
            code = process.poll()
            if code is None:
                continue
            with self._lock:
                if self._processes.pop(job_id, None) is None:
                    continue  # cancelled meanwhile
            if self._stop.is_set():
                return
            self._complete(job_id, code)
        with self._lock:
            free = self.max_concurrent - len(self._processes)
        for job in self.store.with_status("queued")[:max(free, 0)]:
            if self._stop.is_set():
                return
            self._launch(job)

    def _launch(self, job: dict) -> None:
        job_id = job["id"]
        job_dir = self.data_dir / "jobs" / job_id
        config_file = job_dir / "config.yaml"
        import yaml

        config_file.write_text(yaml.safe_dump(self.store.config(job_id), sort_keys=False))
        resume = last_checkpoint(self._run_dir(job_id)) is not None
        flag = "--resume" if resume else "--overwrite"
        command = [sys.executable, "-m", "tunelab", "train", str(config_file), flag, "--quiet"]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        with self._lock:
            if self._stop.is_set() or self.store.get(job_id)["status"] != "queued":
                return
            log = (job_dir / "train.out").open("ab")
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)  # its own process group: cancel ends all of it
            log.close()
            self._processes[job_id] = process
            self.store.set_progress(job_id, {**self.store.progress(job_id), "pid": process.pid})
            self.store.update(job_id, status="running")
        step = last_checkpoint(self._run_dir(job_id))
        self.store.add_event(job_id, f"Resuming training from {step.name}" if resume else "Fine-tuning job started")

    def _complete(self, job_id: str, code: int) -> None:
        self._sync_metrics(job_id)
        run_dir = self._run_dir(job_id)
        summary_file = run_dir / "summary.json"
        if code != 0 or not summary_file.is_file():
            reason = _last_error(self.data_dir / "jobs" / job_id / "train.out") or f"training exited with status {code}"
            with self._lock:  # the lock orders it after any metrics sync (which may set estimated_finish)
                self._finish(job_id, "failed", error={"code": "training_failed", "message": reason, "param": None})
            return
        summary = json.loads(summary_file.read_text())
        job = self.store.get(job_id)
        name = _model_name(job)
        # tunelab records the tokens the trainer consumed (all epochs) as train_tokens in summary.json.
        results_csv = jobs_progress.results_csv(jobs_progress.read_metrics(run_dir))
        results = self.files.add_result(results_csv, f"{job_id}-results.csv")
        self._serve(job_id, name)  # before the status says so: a client that sees "succeeded" can use the model
        with self._lock:
            self._finish(job_id, "succeeded", fine_tuned_model=name, trained_tokens=summary.get("train_tokens"),
                         result_files=[results["id"]])

    def _end_orphan(self, job_id: str) -> None:
        """A server that died without close() leaves its training process (own session) running: stop it,
        so the resumed run does not find its run directory locked."""
        pid = self.store.progress(job_id).get("pid")
        config_file = str(self.data_dir / "jobs" / job_id / "config.yaml")
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid else []
        except OSError:
            return
        if config_file.encode() not in command:
            return  # gone, or the pid now belongs to another process
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def _serve(self, job_id: str, name: str | None) -> None:
        if self.registry is None or not name:
            return
        try:
            self.registry.add(self._run_dir(job_id), name=name)
        except TunelabError as exc:
            self.store.add_event(job_id, f"The model could not be served: {exc}", level="warn")

    def _finish(self, job_id: str, status: str, **fields) -> dict:
        job = self.store.update(job_id, status=status, finished_at=int(time.time()), estimated_finish=None, **fields)
        message = {"succeeded": "The job has successfully completed", "cancelled": "The job was cancelled",
                   "failed": f"The job failed: {(fields.get('error') or {}).get('message', '')}"}[status]
        self.store.add_event(job_id, message, level="error" if status == "failed" else "info")
        return job

    # ------------------------------------------------------------------ metrics -> events

    def _sync_metrics(self, job_id: str) -> None:
        """New metrics.jsonl rows -> events, and a fresh estimated finish."""
        rows = jobs_progress.read_metrics(self._run_dir(job_id))
        if not rows:
            return
        with self._lock:  # the worker and request threads both sync; finishing a job waits for it
            seen = self.store.progress(job_id)
            events = jobs_progress.metric_events(rows, seen)
            if not events:
                return
            for message, data in events:
                self.store.add_event(job_id, message, data=data, kind="metrics")
            self.store.set_progress(job_id, seen)
            if self.store.get(job_id)["status"] == "running":
                finish = jobs_progress.estimate_finish(rows, self.store.config(job_id)["train"]["max_steps"])
                if finish is not None:
                    self.store.update(job_id, estimated_finish=finish)

    def _run_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id / "run"

    def _file(self, file_id, param: str) -> dict:
        if not isinstance(file_id, str) or not file_id:
            raise RequestError(f"Missing required parameter: '{param}'", param=param)
        record = self.files.record(file_id)
        if record is None:
            raise RequestError(f"invalid {param}: file '{file_id}' does not exist", param=param, status=400,
                               code="invalid_file")
        if record["purpose"] != "fine-tune":
            raise RequestError(f"{param} '{file_id}' has purpose '{record['purpose']}', not 'fine-tune'", param=param)
        return record


def _model_name(job: dict) -> str:
    """OpenAI's shape: ``ft:{model}:{suffix}:{job id}`` (suffix 'tunelab' when none was given)."""
    return f"ft:{job['model']}:{job.get('user_provided_suffix') or 'tunelab'}:{job['id']}"


def _limit(limit) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise RequestError(f"limit must be an integer 1..100, got {limit!r}", param="limit")
    return limit


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (ended, not yet reaped by its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _last_error(log: Path) -> str | None:
    if not log.is_file():
        return None
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    return errors[-1] if errors else (lines[-1][:300] if lines else None)
