"""Experiment tracking (`train.report_to`): off by default; with TensorBoard the Trainer's logs and,
at the end, the score stage's metrics and instrument checks land as event files in the run
directory, and no secret from the environment reaches them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from harness import tracking  # noqa: E402
from harness.config import TrainConfig, parse_set_options, resolve_config  # noqa: E402
from harness.errors import BadInput  # noqa: E402

SECRET = "sk-test-0123456789abcdef-not-a-real-key"


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return found


def _files_contain(root: Path, text: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_nothing_is_reported_by_default_and_trackers_pass_through_to_the_trainer(tmp_path):
    from harness.training import training_arguments

    assert resolve_config().train.report_to == []
    assert list(training_arguments(TrainConfig(), tmp_path, 0).report_to or []) in ([], ["none"])
    args = training_arguments(TrainConfig(report_to=["tensorboard"]), tmp_path, 0, run_name="r")
    assert list(args.report_to) == ["tensorboard"] and args.run_name == "r"


def test_a_tracker_that_is_not_installed_is_refused_in_one_line(monkeypatch):
    from harness import config

    monkeypatch.setattr(config, "_installed", lambda module: module != "mlflow")
    with pytest.raises(BadInput, match=r"train.report_to: mlflow is not installed: pip install mlflow"):
        resolve_config(overrides=parse_set_options(["train.report_to=[mlflow]"]))


def test_the_trainers_logs_go_to_tensorboard_in_the_run_directory(tmp_path, monkeypatch):
    """The Trainer's TensorBoard callback writes under the run's tracking/ (not the checkpoint
    folder, which is deleted after training)."""
    from datasets import Dataset

    from harness.registry import get_method
    from harness.training import train_method
    from test_lora import _Tokenizer, _rows, _tiny_llama

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cfg = resolve_config(method="dpo", overrides=parse_set_options([
        "train.report_to=[tensorboard]", "train.max_steps=3", "train.per_device_batch_size=4", "train.warmup_ratio=0"]))
    method = get_method("dpo")(cfg.method)
    model = _tiny_llama()
    rows = _rows(method, model)
    result = train_method(method=method, model=model, tokenizer=_Tokenizer(), dataset=Dataset.from_list(rows),
                          train_cfg=cfg.train, output_dir=tmp_path / "checkpoints", seed=0,
                          run_root=tmp_path / "run", run_name="dpo-test")
    scalars = _scalars(tmp_path / "run" / "tracking" / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([loss for _, loss in result["loss_curve"]])
    assert any(t.startswith("train/diag/") for t in scalars)  # the method's diagnostics too
    assert not _files_contain(tmp_path / "run", SECRET)


def _train_tiny(tmp_path: Path, run: str, report_to: str) -> dict:
    from datasets import Dataset

    from harness.registry import get_method
    from harness.training import train_method
    from test_lora import _Tokenizer, _rows, _tiny_llama

    cfg = resolve_config(method="dpo", overrides=parse_set_options([
        f"train.report_to=[{report_to}]", "train.max_steps=3", "train.per_device_batch_size=4", "train.warmup_ratio=0"]))
    method = get_method("dpo")(cfg.method)
    model = _tiny_llama()
    return train_method(method=method, model=model, tokenizer=_Tokenizer(), dataset=Dataset.from_list(_rows(method, model)),
                        train_cfg=cfg.train, output_dir=tmp_path / f"{run}-checkpoints", seed=0,
                        run_root=tmp_path / run, run_name=run)


SCORE = {
    "metrics": {"harmful_rate": {"value": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n": 8}},
    "base_metrics": {"harmful_rate": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95, "n": 8}},
    "sections": {"instruments": {"suite": "real-safety", "validation": {"refusal-rules": {"accuracy": 0.8, "n": 105}}}},
}


def test_mlflow_gets_the_trainers_logs_and_the_scores_in_one_run_per_run_directory(tmp_path, monkeypatch):
    """Needs mlflow (not pinned: CI skips this); run by hand with mlflow-skinny installed."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset-by-the-test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # restored (to unset) after the test
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for run in ("first", "second"):
        result = _train_tiny(tmp_path, run, "mlflow")
        run_id = result["tracker_runs"]["mlflow"]
        tracking.log_scores(tmp_path / run, ["mlflow"], SCORE, step=3, runs=result["tracker_runs"], run_name=run)
        # Each run's store is in its own run directory, even when one process runs several.
        client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / run / 'tracking' / 'mlflow.db').absolute()}")
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "score/harmful_rate/value")] == [(3, 0.25)]
        assert client.get_metric_history(run_id, "instruments/refusal-rules/accuracy")[0].value == pytest.approx(0.8)
    assert not _files_contain(tmp_path, SECRET)


def test_score_metrics_and_instrument_checks_join_the_same_event_files(tmp_path):
    score = {
        "metrics": {"harmful_rate": {"value": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n": 8}},
        "base_metrics": {"harmful_rate": {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95, "n": 8}},
        "sections": {"instruments": {"suite": "real-safety",
                                     "validation": {"refusal-rules": {"accuracy": 0.8, "n": 105}}}},
    }
    tracking.log_scores(tmp_path, ["tensorboard"], score, step=24)
    scalars = _scalars(tmp_path / "tracking" / "tensorboard")
    assert scalars["score/harmful_rate/value"] == [(24, pytest.approx(0.25))]
    assert scalars["base/harmful_rate/value"] == [(24, pytest.approx(0.9))]
    assert scalars["instruments/refusal-rules/accuracy"] == [(24, pytest.approx(0.8))]


# ------------------------------------------------------------------------------ end to end

from conftest import REDUCED_WORLD  # noqa: E402


@pytest.mark.slow
def test_a_tracked_run_leaves_tensorboard_event_files_in_its_run_directory(bench_home, tmp_path, capsys,
                                                                          monkeypatch):
    from harness.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    sets = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=3", "train.per_device_batch_size=4",
            "sampling.max_new_tokens=12", "eval.max_new_tokens=12", "method.k=2", "train.report_to=[tensorboard]"]
    out = tmp_path / "out"
    code = main(["--method", "d2o", "--out", str(out), *(a for s in sets for a in ("--set", s))])
    assert code == 0, capsys.readouterr().err
    entry = next(e for e in json.loads((out / "leaderboard.json").read_text())["entries"] if e["method"] == "d2o")
    run_root = Path(entry["provenance"]["run_dir"])
    scalars = _scalars(run_root / "tracking" / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]
    # The score stage's numbers, at the last training step, equal the entry's.
    for name, metric in entry["metrics"].items():
        if isinstance(metric.get("value"), (int, float)):
            assert scalars[f"score/{name}/value"] == [(3, pytest.approx(metric["value"]))]
    assert not _files_contain(run_root, SECRET) and not _files_contain(out, SECRET)
