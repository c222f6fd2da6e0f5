"""A run directory that says, stage by stage, what is finished (HELM-style).

    OUT/<run_id>/run.json            run id, method, config, status of every stage, complete flag
    OUT/<run_id>/<stage>/...         the stage's artifacts
    OUT/<run_id>/<stage>/COMPLETE    JSON summary, written last and atomically

A stage counts as done only when its COMPLETE marker exists, so a crash mid-stage leaves it to be
redone on the next invocation; finished stages are skipped. `OUT/<run_id>/run.lock` keeps a second
process off a run directory that one is writing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path


RUN_LOCK = "run.lock"


def acquire_run_lock(root: Path):
    """One process writes a run directory at a time: a second invocation of the same run into the
    same --out is refused at once (it would redo and overwrite the first one's stages)."""
    import filelock

    from harness.errors import BadInput

    root = Path(root)
    if root.exists() and not root.is_dir():
        # Nothing written yet: the user's file stays, the run is refused in one line.
        raise BadInput(f"{root}: a file is where this run's directory goes; move it or use another --out")
    root.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(root / RUN_LOCK), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BadInput(f"another d2o-bench process is running {root.name} in {root.parent} (lock {root / RUN_LOCK}); "
                       "wait for it to finish or use another --out") from None
    return lock


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _not_running(state: str) -> str:
    return "interrupted" if state == "running" else state


class RunDir:
    def __init__(self, root: Path, run_id: str, stages: list[str], header: dict, *, writer: bool = True):
        # A non-writer (a non-zero rank under a launcher) reads the directory but never changes
        # run.json, so the directory has one writer however many processes share a run.
        self.writer = writer
        self.root = Path(root)
        self.run_id = run_id
        self.stages = stages
        self.root.mkdir(parents=True, exist_ok=True)
        self._status_path = self.root / "run.json"
        status = self._read_status()
        status.update(header)
        status["run_id"] = run_id
        # A stage recorded as running was left by a process that died (or could not record its
        # failure on a full disk): whoever opens the directory holds its lock, so none runs it now.
        status["stages"] = {name: ("complete" if self.is_complete(name) else
                                   _not_running(status.get("stages", {}).get(name, "pending")))
                            for name in stages}
        status["complete"] = all(v == "complete" for v in status["stages"].values())
        self._status = status
        if writer:
            write_json_atomic(self._status_path, status)

    def _read_status(self) -> dict:
        try:
            return json.loads(self._status_path.read_text())
        except (OSError, ValueError):
            return {}

    def stage_dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def checkpoint_dir(self, name: str) -> Path:
        """Where a stage keeps what lets a killed attempt resume (outside its stage directory,
        which a new attempt clears); removed once the stage is complete."""
        return self.root / "checkpoints" / name

    def is_complete(self, name: str) -> bool:
        return (self.root / name / "COMPLETE").is_file()

    def summary(self, name: str) -> dict:
        return json.loads((self.root / name / "COMPLETE").read_text())

    def reset_stage(self, name: str) -> None:
        """Forget a stage's partial artifacts before redoing it."""
        if not self.writer:
            return
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)

    def mark(self, name: str, state: str, summary: dict | None = None) -> None:
        if not self.writer:
            return
        if state == "complete":
            write_json_atomic(self.root / name / "COMPLETE", summary or {})
            shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)  # no optimizer state kept
        self._status["stages"][name] = state
        self._status["complete"] = all(v == "complete" for v in self._status["stages"].values())
        write_json_atomic(self._status_path, self._status)

    @property
    def complete(self) -> bool:
        return bool(self._status.get("complete"))
