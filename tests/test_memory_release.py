"""Stages start after the memory earlier stages freed is handed back (harness/allocator.py)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from harness.allocator import release_freed_memory


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


class _Cycle:
    def __init__(self):
        self.me = self
        self.payload = bytearray(1 << 20)


def test_objects_in_reference_cycles_are_freed():
    """A Trainer and the model it holds sit in reference cycles: only a collection frees them."""
    gc.disable()
    try:
        ref = weakref.ref(_Cycle())
        assert ref() is not None
        release_freed_memory()
        assert ref() is None
    finally:
        gc.enable()


def test_freed_heap_blocks_are_given_back_to_the_system():
    """Blocks under malloc's mmap threshold stay resident after free() while a live block sits
    above them in the heap; malloc_trim(0) returns their pages."""
    if not release_freed_memory(collect=False):
        pytest.skip("no malloc_trim here (not glibc)")
    before = _rss_mb()
    blocks = [bytearray(64 << 10) for _ in range(3200)]  # 200 MB in 64 KiB blocks, on the heap
    keep = blocks[-1]
    filled = _rss_mb()
    assert filled - before > 150
    del blocks
    held = _rss_mb()
    release_freed_memory(collect=False)
    trimmed = _rss_mb()
    assert len(keep) == 64 << 10
    assert held - trimmed > 0.75 * (filled - before), (before, filled, held, trimmed)
