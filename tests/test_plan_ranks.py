"""Under a launcher, rank 0 alone resolves the run plan; the other ranks receive it.

tests/plan_ranks_worker.py makes every non-zero rank fail (and say so) if it resolves anything
itself: resolve_plan, the suite lookup or check, asset resolution, preflight. Two gloo ranks on the
CPU, started by hand (`share`: harness.plan.shared_plan alone, seconds) and by DeepSpeed's launcher
(a whole tiny-world d2o run, minutes: marked slow and deepspeed like tests/test_deepspeed_ranks.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import resolve_config
from harness.distributed import free_loopback_port
from harness.errors import BadInput
from harness.plan import resolve_plan, shared_plan
from conftest import LAUNCHER_VARIABLES, REDUCED_WORLD

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "plan_ranks_worker.py"


def _env(record: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT),
               PLAN_RANKS_RECORD=str(record), **extra)
    return env


def _two_ranks(record: Path, rank_args: list[list[str]], **extra) -> list[int]:
    """Both ranks of a 2-process gloo group started by hand, as a launcher would (RANK, WORLD_SIZE,
    MASTER_*); their exit codes."""
    port = str(free_loopback_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), "share", *args], cwd=ROOT,
                              env=_env(record, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **extra),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank, args in enumerate(rank_args)]
    codes = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        codes.append((proc.returncode, out))
    assert not list(record.glob("violations.rank*")), [p.read_text() for p in record.glob("violations.rank*")]
    return codes


def _plans(record: Path) -> list[dict]:
    return [json.loads((record / f"plan.rank{r}.json").read_text()) for r in (0, 1)]


def test_without_a_launcher_the_plan_is_resolved_here():
    cfg = resolve_config(method="d2o", preset="tiny", seed=None, overrides={})
    plan = shared_plan(cfg, lambda: resolve_plan(cfg))
    assert plan.run_id == resolve_plan(cfg).run_id and plan._checked


def test_under_a_launcher_only_rank_0_prints_a_dry_run(monkeypatch, capsys, tmp_path):
    import harness.plan

    def refuse(*args, **kwargs):
        raise AssertionError("rank 1 resolved a plan for a dry run")

    monkeypatch.setattr(harness.plan, "resolve_plan", refuse)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    from harness.cli import main

    assert main(["--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert capsys.readouterr().out == "" and not (tmp_path / "out").exists()


def test_a_plan_for_another_config_is_refused_in_one_line(monkeypatch):
    # The same check as a non-zero rank's, in one process: what arrived was resolved elsewhere.
    theirs = resolve_plan(resolve_config(method="d2o", preset="tiny", seed=1, overrides={}))
    mine = resolve_config(method="d2o", preset="tiny", seed=None, overrides={})
    with pytest.raises(BadInput, match=r"^rank 0 was started with config hash [0-9a-f]{12}, but rank 0 resolved the "
                                       r"run for config hash [0-9a-f]{12} \(d2o-tiny-s1-"):
        shared_plan(mine, lambda: theirs)


def test_rank_1_receives_rank_0s_plan(tmp_path):
    codes = _two_ranks(tmp_path, [[], []])
    assert [c for c, _ in codes] == [0, 0], codes
    rank0, rank1 = _plans(tmp_path)
    assert rank1 == rank0
    cfg = resolve_config(method="d2o", preset="tiny", seed=None, overrides={})
    assert rank1["run_id"] == resolve_plan(cfg).run_id and rank1["k"] == 4 and rank1["checked"]


def test_a_rank_started_with_other_arguments_stops_every_rank(tmp_path):
    codes = _two_ranks(tmp_path, [[], ["--set", "method.beta=0.5"]])
    assert [c for c, _ in codes] == [2, 2], codes
    errors = [(tmp_path / f"error.rank{r}").read_text() for r in (0, 1)]
    assert errors[0] == errors[1]
    assert errors[0].startswith("rank 1 was started with config hash ") and "start every rank with the same arguments" in errors[0]


def test_rank_0s_failure_reaches_the_other_rank(tmp_path):
    codes = _two_ranks(tmp_path, [[], []], PLAN_RANKS_FAIL_RANK0="1")
    assert [c for c, _ in codes] == [2, 2], codes
    assert (tmp_path / "error.rank0").read_text() == "rank 0 refuses this configuration"
    assert (tmp_path / "error.rank1").read_text() == "rank 0: rank 0 refuses this configuration"


RUN = [*REDUCED_WORLD, "data.max_train_examples=16", "train.max_steps=4", "train.per_device_batch_size=4",
       "sampling.max_new_tokens=16", "eval.max_new_tokens=16", "eval.lm_eval_tasks=[]", "method.k=2"]


@pytest.mark.deepspeed
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_two_rank_run_completes_on_rank_0s_plan(bench_home, tmp_path):
    """`deepspeed --num_accelerators 2 d2o-bench --method d2o` (ZeRO-2, gloo) on the tiny world: rank 1
    never resolves anything, trains with rank 0's plan, and the run ends as a run does."""
    pytest.importorskip("deepspeed")
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
    if launcher is None:
        pytest.skip("DeepSpeed's launcher `deepspeed` is not on PATH")
    from harness.config import parse_set_options
    from harness.models.tiny_build import ensure_tiny_world

    record, out = tmp_path / "record", tmp_path / "out"
    # The world is built beforehand, in this one process: its builder trains with transformers'
    # Trainer, which, inside a launched rank, would take the launcher's process group for its own
    # (the ranks then wait on each other's collectives for ever).
    cfg = resolve_config(method="d2o", preset="tiny", seed=None, overrides=parse_set_options(RUN))
    ensure_tiny_world(bench_home, cfg.world)
    sets = [a for s in [*RUN, "train.deepspeed=zero2"] for a in ("--set", s)]
    log = tmp_path / "launch.log"
    with open(log, "w") as handle:
        proc = subprocess.run([launcher, "--num_nodes", "1", "--num_accelerators", "2", "--master_port",
                               str(free_loopback_port()), str(WORKER), "cli", "--method", "d2o", "--out", str(out),
                               *sets], cwd=ROOT, env=_env(record, D2O_BENCH_HOME=str(bench_home)),
                              stdout=handle, stderr=subprocess.STDOUT, timeout=1400)
    assert proc.returncode == 0, log.read_text()[-4000:]
    assert not list(record.glob("violations.rank*")), [p.read_text() for p in record.glob("violations.rank*")]
    rank0, rank1 = _plans(record)
    assert rank1 == rank0
    board = json.loads((out / "leaderboard.json").read_text())
    d2o = [e for e in board["entries"] if e["method"] == "d2o"]
    assert len(d2o) == 1 and d2o[0]["run_id"] == rank0["run_id"], board["entries"]
    status = json.loads((out / rank0["run_id"] / "run.json").read_text())
    assert status["complete"] and set(status["stages"].values()) == {"complete"}
    # Both ranks trained, in one group of 2, on the same 16 rows with rank 0's K, in step.
    trained = [json.loads((record / f"trained.rank{r}.json").read_text()) for r in (0, 1)]
    assert trained[0]["world_size"] == trained[1]["world_size"] == 2
    assert trained[0]["rows"] == trained[1]["rows"] == 16
    assert trained[0]["samples_per_prompt"] == trained[1]["samples_per_prompt"] == rank0["k"] == 2
    assert trained[0]["loss_curve"] == trained[1]["loss_curve"] and len(trained[0]["loss_curve"]) == 4
    assert d2o[0]["provenance"]["train"]["loss_curve"] == trained[0]["loss_curve"]
    assert d2o[0]["provenance"]["cache_keys"]["self_samples"]
