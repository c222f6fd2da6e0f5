"""SIGKILL at twelve points spread over every stage (`harness/faults.py`), one after another into
the same --out, as repeated preemptions would: after every kill the leaderboard is valid with at
most one entry per method, a kill during training resumes from the newest sealed checkpoint, and
the run that finally completes has exactly one entry per method whose numbers equal an
uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.faults import ENV
from harness.leaderboard import read_leaderboard
from conftest import REDUCED_WORLD

pytestmark = pytest.mark.slow

RUN = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=6", "train.save_steps=2",
       "train.per_device_batch_size=4", "train.learning_rate=1e-3", "method.k=2", "sampling.max_new_tokens=12",
       "eval.max_new_tokens=12", "data.max_eval_prompts=8"]
# In the order a run reaches them; each invocation gets one step further before it is killed.
KILL_POINTS = [
    "stage:data:start",
    "stage:data:end",
    "stage:self_samples:start",
    "stage:self_samples:end",
    "stage:reference_logps:end",
    "checkpoint:2:unsealed",   # the first checkpoint written but not sealed: training restarts at 0
    "train:step:5",            # checkpoint-4 sealed: the next attempt resumes from it
    "stage:generate:start",
    "stage:generate:end",
    "stage:score:end",
    "leaderboard:unreplaced",  # the new leaderboard written beside the old one, not renamed in
    "stage:leaderboard:end",   # entries appended, stage not marked complete: no duplicate later
]


def _run(out: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(ENV, None)
    if kill_at:
        env[ENV] = kill_at
    argv = [sys.executable, "-m", "harness", "--method", "d2o", "--out", str(out),
            *(a for s in RUN for a in ("--set", s))]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


def _entries(out: Path) -> list[dict]:
    path = out / "leaderboard.json"
    return read_leaderboard(path)["entries"] if path.exists() else []


def test_sigkill_anywhere_then_rerun_completes_with_one_entry_per_method(bench_home, tmp_path):
    straight = _run(tmp_path / "straight", None)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    for point in KILL_POINTS:
        killed = _run(out, point)
        assert killed.returncode == -signal.SIGKILL, f"{point}: rc {killed.returncode}\n{killed.stderr[-2000:]}"
        methods = [e["method"] for e in _entries(out)]  # valid after every kill (read_leaderboard checks)
        assert len(methods) == len(set(methods)), (point, methods)
    final = _run(out, None)
    assert final.returncode == 0, final.stderr[-2000:]

    killed_entries, straight_entries = _entries(out), _entries(tmp_path / "straight")
    assert sorted(e["method"] for e in killed_entries) == ["base", "d2o"]
    (run_dir,) = [p for p in out.iterdir() if p.name.startswith("d2o-")]
    train = json.loads((run_dir / "train" / "COMPLETE").read_text())
    # The attempt killed after step 5 left checkpoint-4; the next one trained from step 5 on.
    assert train["resumed_from_step"] == 4 and train["first_step_trained"] == 5
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())
    by_method = {e["method"]: e for e in straight_entries}
    for entry in killed_entries:
        reference = by_method[entry["method"]]
        assert entry["metrics"] == reference["metrics"], entry["method"]
    trained = next(e for e in killed_entries if e["method"] == "d2o")
    assert trained["provenance"]["train"]["loss_curve"] == by_method["d2o"]["provenance"]["train"]["loss_curve"]
