"""training/allocator.py: within the block a big freed block is reused without fresh page faults."""
import resource

import pytest
import torch

from tunelab.training import allocator

BIG = 16 * 1024 * 1024  # fp32 elements: 64 MiB, above glibc's largest mmap threshold (32 MiB)
PAGES = BIG * 4 // 4096


def _faults_of_a_second_big_block() -> int:
    """Page faults of writing a fresh 64 MiB tensor right after an equal one was freed."""
    torch.empty(BIG).fill_(1.0)  # made, written, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BIG).fill_(2.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only")
def test_freed_big_blocks_are_reused_inside_the_block_and_mapped_fresh_outside():
    assert _faults_of_a_second_big_block() > PAGES // 2  # glibc's default: mmap'd fresh, faulted in again
    with allocator.freed_memory_kept() as kept:
        assert kept
        rounds = [_faults_of_a_second_big_block() for _ in range(5)]  # the heap grows in the first round or two
        assert max(rounds[-2:]) < PAGES // 10, rounds
    assert _faults_of_a_second_big_block() > PAGES // 2  # defaults restored


def test_inactive_block_changes_nothing():
    with allocator.freed_memory_kept(active=False) as kept:
        assert not kept
