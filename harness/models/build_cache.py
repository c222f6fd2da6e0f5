"""Directories in the harness cache that are built once and then shared by every run.

Sweeps run several processes (local jobs, containers, Slurm jobs) against one cache, and on a
fresh cache they all want the same world or converted checkpoint at once. A file lock lets the
first build it while the others wait and then reuse it; the build lands under a temporary name
and is renamed when complete, so an interrupted build never looks finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import filelock

COMPLETE_MARKER = "COMPLETE"


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Return `final`, calling `build(tmp_dir)` first unless a finished build is already there."""
    final = Path(final)
    if (final / COMPLETE_MARKER).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(final.parent / f".{final.name}.lock")):
        if (final / COMPLETE_MARKER).exists():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            build(tmp)
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            if final.exists():  # an unfinished leftover (no marker): nobody can be using it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
