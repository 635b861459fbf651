"""The bench scripts' shared helpers: what they leave on disk."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_scratch_dir_is_gone_when_the_bench_process_exits():
    code = ("import sys; sys.path.insert(0, 'bench'); from _common import scratch_dir; "
            "work = scratch_dir('test-'); (work / 'model.bin').write_bytes(b'x' * 1024); print(work)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    work = Path(out.stdout.strip())
    assert work.name.startswith("test-")
    assert not work.exists()


def test_no_bench_script_makes_a_temporary_directory_it_does_not_remove():
    # Each bench path writes a model (~0.5 GB for smollm2-135m); mkdtemp without cleanup filled a disk.
    leaking = [p.name for p in (REPO / "bench").glob("*.py")
               if p.name != "_common.py" and re.search(r"tempfile\.mkdtemp\(", p.read_text())]
    assert leaking == []


def test_the_training_bench_refuses_a_geometry_below_one_before_running_anything():
    for option in ("--rounds", "--tunelab-rows", "--tunelab-accum", "--trl-rows", "--trl-accum"):
        out = subprocess.run([sys.executable, "bench/train_throughput.py", option, "0"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and out.stdout == ""
        assert out.stderr.strip() == f"error: {option} must be at least 1 (got 0)"
