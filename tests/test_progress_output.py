"""What a run says while it works: stdout holds only the result (the closing table and the paths),
stderr holds labelled lines and labelled progress bars, and no raw per-step dict."""

from __future__ import annotations

import re

import pytest

from harness.cli import comparison_table, main
from conftest import REDUCED_WORLD

SMALL_RUN = [*REDUCED_WORLD, "data.max_train_examples=16", "train.epochs=1", "train.per_device_batch_size=8",
             "eval.max_new_tokens=16"]
# A bar tqdm drew with a label: "<label>: <n>%|" (an unlabelled one starts with the percentage).
LABELLED_BAR = re.compile(r"^\S[^|]*?: +\d+%\|")


@pytest.mark.slow
def test_stdout_is_the_result_and_stderr_is_labelled(bench_home, tmp_path, capfd):
    # The tiny world is built in this run when no earlier test built it: its bars are checked too.
    code = main(["--method", "dpo", "--out", str(tmp_path / "out"), *(a for s in SMALL_RUN for a in ("--set", s))])
    out, err = capfd.readouterr()
    assert code == 0, err[-2000:]
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["metric", "base", "dpo"]
    assert lines[-2].startswith("run directory: ") and lines[-1].startswith("leaderboard:   ")
    assert any(line.startswith("value ± standard error") for line in lines)
    assert any(line.startswith("scored on: ") and "evaluation prompts" in line for line in lines)
    assert "{'" not in out and "%|" not in out
    assert "{'loss'" not in err and "'loss':" not in err
    assert "Setting accelerator to CPU" not in err
    fragments = [f.strip("\x1b[A ") for f in re.split(r"[\r\n]", err)]
    unlabelled = [f for f in fragments if f and not f.startswith("d2o-bench ") and not LABELLED_BAR.match(f)]
    assert not unlabelled, unlabelled[:5]
    # Training speaks per logged step, labelled, at INFO.
    assert re.search(r"^d2o-bench INFO: train dpo: step \d+/\d+ .*loss=", err, re.M), err[-2000:]


def test_the_table_has_capability_metrics_and_says_what_plus_minus_is():
    metric = {"value": 0.25, "stderr": 0.05, "higher_is_better": False}
    acc = {"value": 0.5, "stderr": 0.1, "higher_is_better": True}
    sections = {"capability": {"tasks": {"arc_easy": {"metrics": {"acc": acc}}}}}
    table = comparison_table({"harmful_rate": metric}, {"harmful_rate": metric}, "d2o", base_sections=sections,
                             sections=sections, scored_on="tiny[test], 48 evaluation prompts")
    assert "arc_easy acc ↑" in table and "0.500 ± 0.100" in table
    assert "standard error" in table and "scored on: tiny[test], 48 evaluation prompts" in table


@pytest.mark.parametrize("where", ["harness.plan.resolve_plan", "harness.pipeline.run_pipeline"])
def test_what_a_library_prints_along_the_way_goes_to_stderr(where, tmp_path, monkeypatch, capsys):
    """transformers prints "[INFO] Running in WANDB offline mode" to stdout when it loads its
    integrations, trackio its banners: stdout is kept for the result, so they land on stderr.
    The stand-in prints and then stops the run, so no work is done."""
    import importlib

    from harness.errors import BadInput

    module, name = where.rsplit(".", 1)

    def noisy(*args, **kwargs):
        print("[INFO] a library speaking")
        raise BadInput("stopped here")

    monkeypatch.setenv("D2O_BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(importlib.import_module(module), name, noisy)
    monkeypatch.setattr("harness.preflight.preflight", lambda *args, **kwargs: None)
    code = main(["--method", "dpo", "--out", str(tmp_path / "out"), "--set", "train.max_steps=1"])
    out, err = capsys.readouterr()
    assert code == 2 and "stopped here" in err
    assert "[INFO] a library speaking" in err and out == ""
