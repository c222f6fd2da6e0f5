"""Writing a published page's files: each file replaced atomically through harness/atomic.py
(written beside it, fsynced, then renamed; a symlinked file written where it points), so a reader
never sees half a page."""

from __future__ import annotations

import re
from pathlib import Path

from harness import atomic


def write_atomic(path: Path, data: bytes) -> None:
    atomic.write_bytes(path, data, mode=0o644)


def file_stem(preset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", preset).strip("._") or "preset"

