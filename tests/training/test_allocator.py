"""training/allocator.py: within the block a big freed block is reused without fresh page faults,
and the memory goes back to the kernel when the block ends. Measured in a fresh process: a heap that
earlier tests left holding big free blocks would serve big requests without faults anyway."""
import json
import subprocess
import sys

import pytest

from tunelab.training import allocator

PROBE = r"""
import json, resource, sys
import torch
from tunelab.training import allocator

BIG = 64 * 1024 * 1024  # fp32 elements: 256 MiB, far above glibc's largest mmap threshold (32 MiB)

def faults_of_a_second_big_block():
    torch.empty(BIG).fill_(1.0)  # made, written, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BIG).fill_(2.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()

out = {"outside": [faults_of_a_second_big_block() for _ in range(2)]}
with allocator.freed_memory_kept() as kept:
    if sys.argv[1] == "nested":
        with allocator.freed_memory_kept():
            pass
    out["kept"] = kept
    out["inside"] = [faults_of_a_second_big_block() for _ in range(5)]  # the heap grows in the first round or two
    held = rss()
out["handed_back"] = held - rss()
print(json.dumps(out))
"""
PAGES = 64 * 1024 * 1024 * 4 // 4096


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only")
@pytest.mark.parametrize("mode", ["plain", "nested"])  # nested: an inner block's end keeps the outer's setting
def test_freed_big_blocks_are_reused_inside_the_block_and_handed_back_after(mode):
    out = _probe(mode)
    assert min(out["outside"]) > PAGES // 2, out  # glibc's default: mapped fresh, faulted in page by page
    assert out["kept"] and min(out["inside"][2:]) < PAGES // 10, out  # reused from the heap
    assert out["handed_back"] > PAGES * 4096 // 2, out  # malloc_trim returned the freed block's pages


def test_inactive_block_changes_nothing():
    with allocator.freed_memory_kept(active=False) as kept:
        assert not kept
