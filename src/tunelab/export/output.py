"""The one way an export writes its folder: new or empty, and removed again if anything fails,
so an interrupted or refused export never leaves a half-written model behind."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..core.errors import TunelabError
from ..runs.directory import check_writable


def check_new_output(out_dir: Path) -> None:
    """Refuse an output that already holds something (before any model is loaded)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TunelabError(f"output {out_dir} already exists and is not an empty directory")
    check_writable(out_dir)


@contextmanager
def writing(out_dir: Path) -> Iterator[Path]:
    """Create ``out_dir`` for the body of the ``with``; on any exception delete it and re-raise."""
    check_new_output(out_dir)
    existed = out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield out_dir
    except BaseException:
        if existed:  # an empty directory the user made: keep it, empty
            for child in out_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
