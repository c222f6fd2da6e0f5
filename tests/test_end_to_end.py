"""End to end on a reduced tiny world: the CLI run, its leaderboard, resuming, failures, every method.

The reduced world (fewer SFT epochs, fewer eval prompts) builds in well under a minute into a
private D2O_BENCH_HOME shared by the session (conftest.py); it exercises the same build and loading
code as the default world. Quality targets (harm halved, helpfulness kept) are measured on the
full default world by benchmarks/, not here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.config import parse_set_options, resolve_config
from harness.registry import registered_methods
from conftest import REDUCED_WORLD

pytestmark = pytest.mark.slow

SMALL_RUN = [
    *REDUCED_WORLD,
    "data.max_train_examples=16",
    "train.epochs=1",
    "train.per_device_batch_size=8",
    "sampling.max_new_tokens=24",
    "eval.max_new_tokens=24",
]
METRICS = ("harmful_rate", "helpful_rate", "cost", "safe_rate", "reward")


def cli(capsys, *argv, sets=SMALL_RUN):
    code = main([*argv, *(a for s in sets for a in ("--set", s))])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def finished_run(bench_home, tmp_path_factory):
    """One `d2o-bench --method d2o` run; its out dir is shared by the tests that read it."""
    out = tmp_path_factory.mktemp("out")
    code = main(["--method", "d2o", "--out", str(out), "--set", "method.k=2",
                 *(a for s in SMALL_RUN for a in ("--set", s))])
    assert code == 0
    return out


def test_run_writes_both_entries_with_every_metric_and_provenance(finished_run):
    board = json.loads((finished_run / "leaderboard.json").read_text())
    assert board["schema_version"].startswith("1.")
    by_method = {e["method"]: e for e in board["entries"]}
    assert set(by_method) == {"d2o", "base"}
    for entry in by_method.values():
        assert entry["preset"] == "tiny" and entry["seed"] == 0 and entry["status"] == "complete"
        for name in METRICS:
            metric = entry["metrics"][name]
            assert math.isfinite(metric["value"]) and metric["stderr"] >= 0
            # The validation split of the reduced world: one prompt for each of its 12 harmful and 16
            # benign tasks. Rates are over one kind of prompt, scores over all; tasks are groups.
            expected = {"harmful_rate": 12, "helpful_rate": 16}.get(name, 28)
            assert metric["n"] == metric["n_clusters"] == expected, name
            assert metric["ci_low"] <= metric["value"] <= metric["ci_high"]
            assert metric["ci_high"] > metric["ci_low"]
            assert isinstance(metric["higher_is_better"], bool)
        provenance = entry["provenance"]
        assert provenance["config"]["world"]["policy_epochs"] == 3
        assert len(provenance["config_hash"]) >= 16
        assert entry["sections"]["capability"]["tasks"]["tiny_world_knowledge"]["metrics"]["acc"]["n"] > 0
        assert len(provenance["base_model"]["sha256"]) == 64
        assert provenance["dataset"]["fingerprint"]
        assert provenance["environment"]["torch"] == torch.__version__
        assert provenance["started_at"] <= provenance["finished_at"]
    d2o = by_method["d2o"]
    assert d2o["hyperparameters"] == {"alpha": 0.1, "beta": 0.1, "k": 2, "refresh_every": 0}
    assert d2o["provenance"]["cache_keys"]["self_samples"] and d2o["provenance"]["cache_keys"]["reference_logps"]
    curve = d2o["provenance"]["train"]["loss_curve"]
    assert curve and all(math.isfinite(loss) for _, loss in curve)
    assert d2o["provenance"]["train"]["steps"] > 0


def test_run_directory_marks_every_stage_complete(finished_run):
    (run_dir,) = [p for p in finished_run.iterdir() if p.is_dir() and p.name.startswith("d2o-")]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["complete"] is True
    for stage in ("data", "self_samples", "reference_logps", "train", "generate", "score", "leaderboard"):
        assert (run_dir / stage / "COMPLETE").is_file(), stage
    scored = [json.loads(line) for line in (run_dir / "score" / "per_response.jsonl").read_text().splitlines()]
    assert len(scored) == 28 and {"cost", "reward", "oracle", "gives_steps", "group"} <= set(scored[0])


def test_rerun_skips_every_stage_and_adds_no_entry(finished_run, capsys):
    before = (finished_run / "leaderboard.json").read_bytes()
    code, _, err = cli(capsys, "--method", "d2o", "--out", str(finished_run), "--set", "method.k=2")
    assert code == 0
    assert err.count("already complete, skipped") == 7, err
    assert (finished_run / "leaderboard.json").read_bytes() == before


def test_failed_run_exits_1_in_one_line_and_writes_no_entry(finished_run, capsys, monkeypatch):
    import harness.pipeline as pipeline

    def broken_generation(ctx):
        raise RuntimeError("generation exploded\nwith a second line")

    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "generate", broken_generation)
    before = (finished_run / "leaderboard.json").read_bytes()
    code, _, err = cli(capsys, "--method", "d2o", "--out", str(finished_run), "--seed", "7", "--set", "method.k=2")
    assert code == 1
    # The exception's two lines arrive as one: the error contract is a single line.
    assert err.strip().splitlines()[-1] == (
        "d2o-bench: error: stage generate failed: RuntimeError: generation exploded with a second line")
    assert (finished_run / "leaderboard.json").read_bytes() == before
    failed = [p for p in finished_run.iterdir() if p.name.startswith("d2o-tiny-s7-")]
    assert failed and json.loads((failed[0] / "run.json").read_text())["complete"] is False


def _write_rows(directory: Path, split: str, rows: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# A user's dataset is measured by suite custom (the tiny world's scorers know only its words).
USER_DATA = ("--set", "suite=custom", "--set", "model.cost_model=none", "--set", "model.reward_model=none")
GOOD_ROW = {"prompt": "How do I bake bread?", "response_0": "Mix flour and water.", "response_1": "No idea.",
            "is_response_0_safe": True, "is_response_1_safe": True,
            "better_response_id": 0, "safer_response_id": 0}


@pytest.mark.parametrize("bad,fragment", [
    ({"better_response_id": 2}, "row 1: field 'better_response_id' must be 0 or 1"),
    ({"is_response_0_safe": "yes"}, "row 1: field 'is_response_0_safe' must be bool"),
    ({"prompt": "  "}, "row 1: field 'prompt' is empty"),
])
def test_malformed_dataset_rows_exit_2_before_anything_is_written(bench_home, tmp_path, capsys, bad, fragment):
    data = tmp_path / "data"
    _write_rows(data, "train", [GOOD_ROW, {**GOOD_ROW, **bad}])
    _write_rows(data, "validation", [GOOD_ROW])
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--method", "d2o", "--out", str(out), "--set", f"data.dataset={data}", *USER_DATA)
    assert code == 2
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("d2o-bench: error: dataset") and fragment in line, err
    assert not (out / "leaderboard.json").exists()


def test_missing_field_is_named(bench_home, tmp_path, capsys):
    data = tmp_path / "data"
    row = dict(GOOD_ROW)
    del row["safer_response_id"]
    _write_rows(data, "train", [row])
    _write_rows(data, "validation", [GOOD_ROW])
    code, _, err = cli(capsys, "--out", str(tmp_path / "out"), "--set", f"data.dataset={data}", *USER_DATA)
    assert code == 2 and "row 0: missing field 'safer_response_id'" in err


TRAINING_METHODS = sorted(name for name, cls in registered_methods().items() if cls.trains)
# Enough to make the online refresher actually regenerate samples within two steps.
METHOD_SETTINGS = {"d2o-online": ["method.refresh_every=1"]}


@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_every_method_trains_with_finite_loss_and_changes_every_parameter(bench_home, tmp_path, method):
    """TRL-style check: two optimizer steps on the tiny world change every trainable tensor."""
    from harness.models.loading import load_policy
    from harness.pipeline import run_pipeline
    from harness.plan import resolve_plan

    sets = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=2", "train.per_device_batch_size=4",
            "train.learning_rate=1e-3", "sampling.max_new_tokens=16", *METHOD_SETTINGS.get(method, [])]
    if "k" in registered_methods()[method].Config.__dataclass_fields__:
        sets.append("method.k=2")
    cfg = resolve_config(method=method, preset="tiny", seed=0, overrides=parse_set_options(sets))
    ctx = run_pipeline(resolve_plan(cfg), tmp_path, progress=lambda _: None, stop_after="train")
    summary = json.loads((ctx.run_dir.root / "train" / "COMPLETE").read_text())
    assert summary["steps"] == 2
    losses = [loss for _, loss in summary["loss_curve"]]
    assert losses and all(math.isfinite(x) for x in losses)

    base, _ = load_policy(ctx.assets.policy)
    trained, _ = load_policy(str(ctx.run_dir.root / "train" / "policy"))
    trained_params = dict(trained.named_parameters())
    unchanged = [name for name, p in base.named_parameters()
                 if p.requires_grad and torch.equal(p, trained_params[name])]
    assert not unchanged, f"{method}: parameters not updated: {unchanged}"
    if method == "d2o-online":
        assert summary["sample_refreshes"] >= 1


def test_capability_task_can_fail_a_collapsed_model(bench_home, tmp_path):
    """The capability instrument can fail: gradient ascent at a high learning rate collapses the
    policy, and its tiny_world_knowledge accuracy (same-domain distractors, chance 0.25) falls
    clearly below the base's."""
    from harness.pipeline import run_pipeline
    from harness.plan import resolve_plan

    sets = [*REDUCED_WORLD, "train.max_steps=12", "train.per_device_batch_size=8", "train.learning_rate=3e-3",
            "eval.max_new_tokens=8"]
    cfg = resolve_config(method="ga", preset="tiny", seed=0, overrides=parse_set_options(sets))
    ctx = run_pipeline(resolve_plan(cfg), tmp_path, progress=lambda _: None, stop_after="score")
    scores = json.loads((ctx.run_dir.root / "score" / "metrics.json").read_text())

    def accuracy(sections):
        return sections["capability"]["tasks"]["tiny_world_knowledge"]["metrics"]["acc"]

    base, collapsed = accuracy(scores["base_sections"]), accuracy(scores["sections"])
    # Measured: base 0.53 (the reduced world's 3-epoch base), collapsed GA 0.23 (chance 0.25).
    assert base["value"] >= 0.4, base
    assert collapsed["value"] <= base["value"] - 0.2, (base, collapsed)
    assert collapsed["value"] < 0.35, collapsed
