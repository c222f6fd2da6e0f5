"""Writing a published page's files: each file replaced atomically (written beside it, then renamed),
so a reader never sees half a page."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def file_stem(preset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", preset).strip("._") or "preset"

