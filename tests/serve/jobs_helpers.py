"""Shared by the files/jobs tests: SYNTHETIC uploads, a real uvicorn server on 127.0.0.1, bounded waits."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager

# SYNTHETIC chat rows (made-up colour facts), OpenAI's supervised format.
_FACTS = [("the sky", "Blue"), ("grass", "Green"), ("snow", "White"), ("coal", "Black"),
          ("a banana", "Yellow"), ("a carrot", "Orange"), ("a plum", "Purple"), ("rust", "Brown")]
CHAT_ROWS = [{"messages": [{"role": "user", "content": f"Colour of {thing}?"},
                           {"role": "assistant", "content": f"{colour}."}]} for thing, colour in _FACTS]
# SYNTHETIC preference rows, OpenAI's DPO format.
DPO_ROWS = [{"input": {"messages": [{"role": "user", "content": f"Colour of {thing}?"}]},
             "preferred_output": [{"role": "assistant", "content": f"{colour}."}],
             "non_preferred_output": [{"role": "assistant", "content": "I don't know."}]} for thing, colour in _FACTS]
# A few steps of tiny-llama, checkpoints every 2 steps (the restart test resumes from one).
TINY_TRAIN = {"max_steps": 4, "max_length": 64, "logging_steps": 1, "save_steps": 2, "eval_before": False,
              "warmup_ratio": 0.0, "scheduler": "constant"}


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def serve(state):
    """The app for ``state`` under real uvicorn on a free loopback port; yields the base URL; always stops."""
    from .conftest import ServerThread

    server = ServerThread(state)
    try:
        yield server.url.removesuffix("/v1")
    finally:
        server.close()
