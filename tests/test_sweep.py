"""`d2o-bench sweep`: the grid, skipping complete runs, surviving a failed run, one leaderboard."""

from __future__ import annotations

import json

import pytest

from conftest import REDUCED_WORLD
from harness.cli import main
from harness.sweep import parse_grid, plan_sweep

SMALL = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=2", "train.per_device_batch_size=4",
         "sampling.max_new_tokens=16", "eval.max_new_tokens=16", "eval.lm_eval_tasks=[]"]


def test_grid_is_a_cross_product_of_method_and_config_fields():
    assert parse_grid(["beta=0.05,0.1", "train.learning_rate=1e-4,2e-4"]) == [
        ["method.beta=0.05", "train.learning_rate=1e-4"], ["method.beta=0.05", "train.learning_rate=2e-4"],
        ["method.beta=0.1", "train.learning_rate=1e-4"], ["method.beta=0.1", "train.learning_rate=2e-4"],
    ]
    runs = plan_sweep(["d2o", "dpo"], [0, 1], "tiny", [], ["beta=0.05,0.5"])
    assert len(runs) == 8 and len({r.run_id for r in runs}) == 8


@pytest.mark.parametrize("argv,fragment", [
    (["--methods", "d2o,nope"], "unknown method 'nope'"),
    (["--methods", "d2o", "--grid", "beta=0"], "method.beta must be > 0"),
    (["--methods", "d2o", "--seeds", "a"], "--seeds must be integers"),
    (["--methods", "d2o", "--grid", "beta"], "--grid expects key=v1,v2"),
    (["--methods", "d2o", "--executor", "docker", "--gpus", "0,x"], "--gpus must be comma-separated GPU indices"),
    (["--methods", "d2o", "--executor", "slurm"], "image 'd2o-bench:latest' is not pinned"),
    (["--methods", "d2o", "--executor", "slurm", "--slurm-runtime", "host", "--slurm-cpus-per-task", "0"],
     "cpus_per_task"),
])
def test_bad_sweeps_are_refused_before_any_run(tmp_path, capsys, argv, fragment):
    assert main(["sweep", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sweep_keeps_going_past_a_failed_run_and_resumes(bench_home, tmp_path, capsys):
    out = tmp_path / "out"
    sets = [a for s in SMALL for a in ("--set", s)]
    # The second grid point names a dataset that does not exist: that run fails at its data stage.
    argv = ["sweep", "--methods", "sft", "--seeds", "0", "--grid", f"data.dataset=tiny-world,{tmp_path / 'missing'}",
            "--out", str(out), *sets]
    assert main(argv) == 1
    status = json.loads((out / "sweep-status.json").read_text())
    by_state = sorted(s["status"] for s in status.values())
    assert by_state == ["complete", "failed"]
    failed = next(s for s in status.values() if s["status"] == "failed")
    assert failed["exit_code"] == 2 and "missing" in failed["error"]
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(e["method"] for e in board["entries"]) == ["base", "sft"]
    capsys.readouterr()

    assert main(argv) == 1  # the failure is still there; the complete run is not redone
    err = capsys.readouterr().err
    assert "2 runs, 1 already complete" in err
    assert json.loads((out / "leaderboard.json").read_text()) == board


def test_an_external_sweep_with_every_run_complete_submits_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    (run,) = plan_sweep(["d2o"], [0], "tiny", [], [])
    (out / run.run_id).mkdir(parents=True)
    (out / run.run_id / "run.json").write_text(json.dumps({"complete": True}))
    argv = ["sweep", "--methods", "d2o", "--executor", "slurm", "--slurm-runtime", "host", "--out", str(out)]
    assert main(argv) == 0
    assert "1 runs, 1 already complete" in capsys.readouterr().err
    assert json.loads((out / "sweep-status.json").read_text())[run.run_id]["status"] == "complete"
