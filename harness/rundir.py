"""A run directory: the files it holds (`RunLayout`, the one place that names them) and which
stages are finished (`RunDir`, HELM-style).

    OUT/<run_id>/run.json            run id, method, config, status of every stage, complete flag
    OUT/<run_id>/run.lock            keeps a second process off a run directory one is writing
    OUT/<run_id>/<stage>/...         the stage's artifacts (RunLayout's attributes)
    OUT/<run_id>/<stage>/COMPLETE    JSON summary, written last and atomically
    OUT/<run_id>/checkpoints/<stage> what lets a killed stage resume; removed once it is complete

A stage counts as done only when its COMPLETE marker exists, so a crash mid-stage leaves it to be
redone on the next invocation; finished stages are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from harness import atomic


def acquire_run_lock(root: Path):
    """One process writes a run directory at a time: a second invocation of the same run into the
    same --out is refused at once (it would redo and overwrite the first one's stages)."""
    import filelock

    from harness.errors import BadInput

    layout = RunLayout(root)
    if layout.root.exists() and not layout.root.is_dir():
        # Nothing written yet: the user's file stays, the run is refused in one line.
        raise BadInput(f"{layout.root}: a file is where this run's directory goes; move it or use another --out")
    layout.root.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(layout.lock), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BadInput(f"another d2o-bench process is running {layout.root.name} in {layout.root.parent} "
                       f"(lock {layout.lock}); wait for it to finish or use another --out") from None
    return lock


def write_json_atomic(path: Path, obj) -> None:
    """`obj` as indented JSON, through harness/atomic.py (per-writer temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, obj, indent=2, sort_keys=True, default=str)


class JsonArtifact:
    """One JSON file of a run directory, written atomically."""

    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> Any:
        return json.loads(self.path.read_text())

    def write(self, value: Any) -> None:
        write_json_atomic(self.path, value)


class JsonlArtifact:
    """One JSON-lines file of a run directory (a row a line), replaced whole when written."""

    def __init__(self, path: Path):
        self.path = path

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> list[dict]:
        with open(self.path) as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def write(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.path, "".join(json.dumps(row) + "\n" for row in rows))


class RunLayout:
    """Every file of one run directory, named once; no other module builds a path into it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.status = JsonArtifact(self.root / "run.json")
        self.lock = self.root / "run.lock"
        # data: the method's training pairs and the evaluation prompts (with their groups).
        self.train_examples = JsonlArtifact(self.root / "data" / "train_examples.jsonl")
        self.eval_prompts = JsonlArtifact(self.root / "data" / "eval_prompts.jsonl")
        # A user's training rows' human judgements (pairs, harm labels), for checking the cost
        # model on them at the score stage (harness/instruments/user_labels.py).
        self.train_labels = JsonArtifact(self.root / "data" / "train_labels.json")
        # self_samples: {"texts": {prompt: [K texts]}, "ended": {prompt: [K flags]}}, and for
        # Self-Align SFT {prompt: {"text", "ended"}} of the sample the cost model calls safe.
        self.samples = JsonArtifact(self.root / "self_samples" / "samples.json")
        self.safe_chosen = JsonArtifact(self.root / "self_samples" / "safe_chosen.json")
        self.reference_logps = JsonArtifact(self.root / "reference_logps" / "reference_logps.json")
        # train: the trained policy (a transformers checkpoint folder) and its per-step diagnostics.
        self.policy = self.root / "train" / "policy"
        # With LoRA: the trained adapter alone, before it is merged into the base as `policy`.
        self.adapter = self.root / "train" / "adapter"
        self.trajectory = JsonlArtifact(self.root / "train" / "trajectory.jsonl")
        self.responses = JsonlArtifact(self.root / "generate" / "responses.jsonl")
        self.per_response = JsonlArtifact(self.root / "score" / "per_response.jsonl")
        self.base_per_response = JsonlArtifact(self.root / "score" / "base_per_response.jsonl")
        self.metrics = JsonArtifact(self.root / "score" / "metrics.json")

    @classmethod
    def of(cls, out_dir: Path, run_id: str) -> "RunLayout":
        return cls(Path(out_dir) / run_id)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def complete_marker(self, stage: str) -> JsonArtifact:
        return JsonArtifact(self.root / stage / "COMPLETE")

    def checkpoint_dir(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage


def _not_running(state: str) -> str:
    return "interrupted" if state == "running" else state


class RunDir:
    def __init__(self, root: Path, run_id: str, stages: list[str], header: dict, *, writer: bool = True):
        # A non-writer (a non-zero rank under a launcher) reads the directory but never changes
        # run.json, so the directory has one writer however many processes share a run.
        self.writer = writer
        self.layout = RunLayout(root)
        self.root = self.layout.root
        self.run_id = run_id
        self.stages = stages
        self.root.mkdir(parents=True, exist_ok=True)
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
            self.layout.status.write(status)

    def _read_status(self) -> dict:
        try:
            return self.layout.status.read()
        except (OSError, ValueError):
            return {}

    def checkpoint_dir(self, name: str) -> Path:
        """Where a stage keeps what lets a killed attempt resume (outside its stage directory,
        which a new attempt clears); removed once the stage is complete."""
        return self.layout.checkpoint_dir(name)

    def is_complete(self, name: str) -> bool:
        return self.layout.complete_marker(name).exists()

    def summary(self, name: str) -> dict:
        return self.layout.complete_marker(name).read()

    def reset_stage(self, name: str) -> None:
        """Forget a stage's partial artifacts before redoing it."""
        if not self.writer:
            return
        path = self.layout.stage_dir(name)
        if path.exists():
            shutil.rmtree(path)

    def mark(self, name: str, state: str, summary: dict | None = None) -> None:
        if not self.writer:
            return
        if state == "complete":
            self.layout.complete_marker(name).write(summary or {})
            shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)  # no optimizer state kept
        self._status["stages"][name] = state
        self._status["complete"] = all(v == "complete" for v in self._status["stages"].values())
        self.layout.status.write(self._status)

    def record_failure(self, name: str, error: Exception) -> Exception:
        """Mark stage `name` failed (complete if its COMPLETE marker landed); returns the error to
        raise (one line).

        The disk that failed the stage may refuse the new run.json too (its temp file needs new
        blocks). Then the file is rewritten in place, padded to its old length: the same blocks,
        so "failed" still lands and the next run does not read a stage still "running". Only if
        that fails too does the error say run.json was not updated (the next run then reads the
        stage left "running" as interrupted)."""
        from harness.errors import RunFailure

        if not self.writer:
            return error
        # A stage whose COMPLETE marker landed before run.json failed is done, and says so.
        self._status["stages"][name] = "complete" if self.is_complete(name) else "failed"
        self._status["complete"] = all(v == "complete" for v in self._status["stages"].values())
        try:
            self.layout.status.write(self._status)
        except OSError as exc:
            try:
                self._overwrite_status_in_place()
            except (OSError, ValueError):
                return RunFailure(f"{error} (run.json not updated: {exc.strerror})")
        return error

    def _overwrite_status_in_place(self) -> None:
        path = self.layout.status.path
        # Compact: shorter than the indented file it overwrites, whatever state changed.
        data = (json.dumps(self._status, sort_keys=True, default=str, separators=(",", ":")) + "\n").encode()
        size = path.stat().st_size
        if len(data) > size:
            raise ValueError("the new status is longer than the old one")
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data + b" " * (size - len(data)))  # trailing spaces are valid JSON
            os.fsync(fd)
        finally:
            os.close(fd)

    @property
    def complete(self) -> bool:
        return bool(self._status.get("complete"))
