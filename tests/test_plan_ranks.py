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
import signal
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


def _two_ranks_solo(record: Path, timeout: float) -> list[tuple[int, str]]:
    """`solo` mode on two ranks started by hand; past `timeout` both are killed and the test fails."""
    port = str(free_loopback_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), "solo"], cwd=ROOT,
                              env=_env(record, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"rank 0's Trainer and the waiting rank were still going after {timeout:.0f} s: the Trainer "
                    "took the launch for its own and waits for a rank that waits for it")
    return [(proc.returncode, out) for proc, out in zip(procs, outputs)]


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


@pytest.mark.timeout(400)
def test_rank_0_trains_alone_with_the_trainer_while_the_others_wait(tmp_path):
    """What rank 0 does while building the tiny world under a launcher: train with the builder's
    Trainer inside from_main_process. It trains as one process (world size 1, the launch's
    variables hidden from it), and the launch's group of 2 is intact after."""
    codes = _two_ranks_solo(tmp_path, timeout=300)
    assert [c for c, _ in codes] == [0, 0], codes
    seen = [json.loads((tmp_path / f"solo.rank{r}.json").read_text()) for r in (0, 1)]
    trained = seen[0]["trained"]
    assert seen[1]["trained"] == trained  # what rank 1 received from rank 0
    assert trained["world_size"] == 1 and trained["parallel_mode"] == "ParallelMode.NOT_PARALLEL"
    assert trained["steps"] == 4 and trained["launch_variables"] == []
    assert seen[0]["group_size"] == 2 and seen[0]["from_rank"] == 0
    assert seen[1]["rank_after"] == "1" and seen[0]["world_size_after"] == "2"


def test_a_rank_whose_wait_for_rank_0_runs_out_stops_in_one_line(tmp_path):
    # 0.002 h = 7.2 s of waiting, rank 0 resolving for 30 s.
    codes = _two_ranks(tmp_path, [[], []], D2O_BENCH_RANK0_WAIT_HOURS="0.002", PLAN_RANKS_SLOW_RANK0="30")
    assert codes[1][0] == 1 and codes[0][0] != 0, codes
    error = (tmp_path / "error.rank1").read_text()
    assert error.startswith("rank 1 stopped waiting for rank 0 (resolving the run; the wait allows 0.002 h, "
                            "$D2O_BENCH_RANK0_WAIT_HOURS sets it in hours): ") and "\n" not in error, error


def test_the_wait_for_rank_0_is_long_and_set_in_hours(monkeypatch):
    from datetime import timedelta

    from harness.distributed import RANK0_WAIT_ENV, rank0_wait

    monkeypatch.delenv(RANK0_WAIT_ENV, raising=False)
    assert rank0_wait() == timedelta(days=7)
    monkeypatch.setenv(RANK0_WAIT_ENV, "1.5")
    assert rank0_wait() == timedelta(minutes=90)
    for bad in ("soon", "0", "-2", "inf", "nan"):
        monkeypatch.setenv(RANK0_WAIT_ENV, bad)
        with pytest.raises(BadInput, match=rf"^{RANK0_WAIT_ENV}='{bad}': give the hours"):
            rank0_wait()


RUN = [*REDUCED_WORLD, "data.max_train_examples=16", "train.max_steps=4", "train.per_device_batch_size=4",
       "sampling.max_new_tokens=16", "eval.max_new_tokens=16", "eval.lm_eval_tasks=[]", "method.k=2"]
# The launched run builds its world itself: one policy epoch keeps that to minutes.
LAUNCHED_RUN = [*RUN, "world.policy_epochs=1"]


def _launch(command: list[str], env: dict, log: Path, timeout: float) -> int:
    """Run a launcher in its own session; past `timeout`, kill it and every rank it started (a hung
    rank would otherwise outlive the test) and fail."""
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"the launched run was still going after {timeout:.0f} s (hung?):\n{log.read_text()[-4000:]}")


@pytest.mark.deepspeed
@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_a_two_rank_run_completes_on_rank_0s_plan(tmp_path, zero):
    """`deepspeed --num_accelerators 2 d2o-bench --method d2o` (gloo) on a tiny world nothing has
    built yet: rank 0 builds it (its builder trains with transformers' Trainer, as a one-process
    job: harness.distributed.single_process_job) while rank 1 waits; rank 1 never resolves anything,
    trains with rank 0's plan, and the run ends as a run does. Under ZeRO-3, rank 0 then loads and
    generates alone while the Trainer's ZeRO-3 config may still be alive (set aside for that work:
    before, rank 0's generate stage ran ZeRO-3 collectives that met rank 1's wait, and gloo aborted)."""
    pytest.importorskip("deepspeed")
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
    if launcher is None:
        pytest.skip("DeepSpeed's launcher `deepspeed` is not on PATH")
    from harness.config import parse_set_options
    from harness.models.tiny_build import tiny_world_parts

    record, out, home = tmp_path / "record", tmp_path / "out", tmp_path / "home"
    cfg = resolve_config(method="d2o", preset="tiny", seed=None, overrides=parse_set_options(LAUNCHED_RUN))
    world = tiny_world_parts(home, cfg.world)
    assert not any(path.exists() for path in world.values())
    sets = [a for s in [*LAUNCHED_RUN, f"train.deepspeed={zero}"] for a in ("--set", s)]
    log = tmp_path / "launch.log"
    code = _launch([launcher, "--num_nodes", "1", "--num_accelerators", "2", "--master_port", str(free_loopback_port()),
                    str(WORKER), "cli", "--method", "d2o", "--out", str(out), *sets],
                   _env(record, D2O_BENCH_HOME=str(home)), log, timeout=1400)
    assert code == 0, log.read_text()[-4000:]
    # Rank 0 built the world, once, during the launch.
    assert all((path / "COMPLETE").is_file() for path in world.values())
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


@pytest.mark.timeout(120)
def test_a_single_process_job_hides_the_launch_and_puts_it_back(monkeypatch, tmp_path):
    """Inside, a Trainer's arguments see one process and no ZeRO-3 config; after, the launch's
    variables, accelerate's state and the ZeRO-3 config are what they were."""
    from accelerate.state import PartialState
    from transformers import TrainingArguments
    from transformers.integrations import deepspeed as hf_deepspeed

    from harness.distributed import single_process_job, world_size

    class Zero3:
        def is_zero3(self):
            return True

    config = Zero3()
    launch = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    before = dict(PartialState._shared_state)
    hf_deepspeed.set_hf_deepspeed_config(config)
    try:
        with single_process_job():
            assert not any(name in os.environ for name in launch) and world_size() == 1
            assert not hf_deepspeed.is_deepspeed_zero3_enabled()
            args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
            assert args.world_size == 1 and args.parallel_mode.name == "NOT_PARALLEL"
        assert {name: os.environ.get(name) for name in launch} == launch
        assert hf_deepspeed.is_deepspeed_zero3_enabled()
        assert dict(PartialState._shared_state) == before
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()
