"""Handing memory the process has freed back to the operating system.

glibc's malloc keeps freed blocks under its mmap threshold (which grows to 32 MB as buffers of
that size are freed) in its heap for reuse, and returns them only when the top of the heap is
free. A stage that frees a model, or a training step that frees a set of gradients, can then
leave gigabytes resident that no later allocation of another shape reuses: the next stage's
peak starts from them (benchmarks/RESULTS.md, "Whole run under 4 GB"). `malloc_trim(0)` gives
back every free page of every arena. Elsewhere (musl, macOS, jemalloc preloaded) it is absent
or harmless, and this does only the garbage collection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Optional

_TRIM: Optional[object] = None
_LOOKED_UP = False


def _malloc_trim():
    global _TRIM, _LOOKED_UP
    if not _LOOKED_UP:
        _LOOKED_UP = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _TRIM = getattr(libc, "malloc_trim", None)
        except OSError:
            _TRIM = None
    return _TRIM


def release_freed_memory(collect: bool = True) -> bool:
    """Collect unreachable objects (models in reference cycles are freed only so), then return
    the allocator's free pages. True when malloc_trim ran."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
