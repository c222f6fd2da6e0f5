"""glibc's malloc: freed memory handed back between stages, and the mmap threshold for LoRA training.

Between stages: glibc keeps freed blocks under its mmap threshold in its heap for reuse and
returns them only when the top of the heap is free. A stage that frees a model, or a training
step that frees a set of gradients, can leave gigabytes resident that no later allocation of
another shape reuses, and the next stage's peak starts from them (benchmarks/RESULTS.md, "A
whole run through every stage"). `release_freed_memory` collects reference cycles (models in
them are freed only so) and calls `malloc_trim(0)`, which gives back every free page of every
arena. Elsewhere (musl, macOS, jemalloc preloaded) it does only the garbage collection.

LoRA training on the CPU:

glibc serves buffers below its mmap threshold from its heap, and that threshold is dynamic: it
starts at 128 KiB and rises to the size of every mmapped buffer freed, up to 32 MiB. After the
first step frees its activations, every activation of a training step (a 512-token chunk's
layer outputs are 1-3 MiB) therefore comes from the heap, and the heap's freed pages stay
resident: the next allocation that fits no hole takes fresh pages while the holes stay counted.
Measured on SmolLM2-135M (benchmarks/RESULTS.md, "Where LoRA's peak memory goes"), a LoRA step
whose tensors peaked at 1.45 GB held 2.95 GB resident; full training, whose freed gradient
buffers the next step's activations refill, kept 0.9 GB above its tensors.

A fixed threshold (which also turns the dynamic one off) gives every buffer from that size up its
own mapping, returned to the kernel when the tensor is freed, so resident memory follows the
tensors. Values only move between buffers: the numbers a step computes are the same. It costs
time, every such buffer faulted in afresh: measured side by side, LoRA's peak RSS fell to 0.79 ×
at 1.33 × the step time, full training's to 0.92 × at 1.40 ×, so `train_method` fixes it for LoRA
(a memory-bound choice already) and leaves full training on glibc's default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger(__name__)

# mallopt's parameter number for the mmap threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
# Chosen by measurement (benchmarks/RESULTS.md, "Where LoRA's peak memory goes").
TRAINING_MMAP_THRESHOLD = 64 << 10

_applied: dict[str, int] = {}


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # musl and other C libraries have no gnu_get_libc_version (nor glibc's mallopt numbers).
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def fix_mmap_threshold(threshold: int = TRAINING_MMAP_THRESHOLD) -> bool:
    """Buffers of `threshold` bytes and more get their own mapping from now on (process-wide, as
    glibc's setting is); False where the C library is not glibc and nothing changed."""
    if _applied.get("mmap_threshold") == threshold:
        return True
    libc = _glibc()
    if libc is None:
        return False
    if libc.mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(threshold)) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused", threshold)
        return False
    _applied["mmap_threshold"] = threshold
    return True


def mmap_threshold() -> int | None:
    """The threshold this process set (None: glibc's dynamic one)."""
    return _applied.get("mmap_threshold")


def release_freed_memory(collect: bool = True) -> bool:
    """Collect unreachable objects, then return the allocator's free pages; True when
    malloc_trim ran."""
    if collect:
        gc.collect()
    libc = _glibc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim(0)
    return True
