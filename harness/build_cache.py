"""Directories in the harness cache that are built once and then shared by every run.

Sweeps run several processes (local jobs, containers, Slurm jobs) against one cache, and on a
fresh cache they all want the same world or converted checkpoint at once. A file lock lets the
first build it while the others wait and then reuse it; the build lands under a temporary name
and is renamed when complete, so an interrupted build never looks finished. The completion
marker records the sha256 of every file, and every reuse checks them: a file truncated or
changed later (a full disk, a bad copy) is found and the directory rebuilt, never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import filelock

from harness import atomic
from harness.hashing import WEIGHTS_MEMO, file_sha256

COMPLETE_MARKER = "COMPLETE"
# Builds in progress are FINAL.tmp-XXXX beside FINAL.
TEMP_INFIX = ".tmp-"
log = logging.getLogger(__name__)


def manifest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` but the marker and the weight-digest
    memo (hashing a built model writes it later; it must not make the build look corrupt)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (COMPLETE_MARKER, WEIGHTS_MEMO)}


def problem(final: Path) -> str | None:
    """Why the built directory cannot be used ("" when it was never finished), or None."""
    marker = Path(final) / COMPLETE_MARKER
    if not marker.exists():
        return ""
    try:
        recorded = json.loads(marker.read_text()).get("sha256")
    except (ValueError, AttributeError):
        return None  # a marker from before checksums were recorded: nothing to check against
    if not isinstance(recorded, dict):
        return None
    actual = manifest(final)
    changed = sorted(name for name in recorded.keys() | actual.keys() if recorded.get(name) != actual.get(name))
    return f"{', '.join(changed[:3])} differ from the recorded sha256" if changed else None


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Return `final`, calling `build(tmp_dir)` first unless an intact finished build is there."""
    final = Path(final)
    if problem(final) is None:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(final.parent / f".{final.name}.lock")):
        found = problem(final)
        if found is None:  # another process built it while we waited
            return final
        if found:
            log.warning("cache %s is corrupt (%s); rebuilding it", final, found)
        remove_stale_builds(final)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + TEMP_INFIX, dir=final.parent))
        try:
            build(tmp)
            atomic.write_text(tmp / COMPLETE_MARKER, json.dumps({"sha256": manifest(tmp)}, indent=1, sort_keys=True) + "\n")
            # A SIGTERM between removing the leftover and renaming the build in would leave
            # neither: held off until both are done.
            with atomic.signals_held():
                if final.exists():  # an unfinished or corrupt leftover
                    shutil.rmtree(final)
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def remove_stale_builds(final: Path) -> list[Path]:
    """Build directories of `final` that killed builders left (a world or a converted checkpoint:
    gigabytes each). Called holding the build lock, so none of them is being written."""
    removed = []
    for leftover in final.parent.glob(f"{atomic.glob_escape(final.name)}{TEMP_INFIX}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed
