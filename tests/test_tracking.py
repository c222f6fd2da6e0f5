"""Experiment tracking (`train.report_to`): off by default; with TensorBoard the Trainer's logs and,
at the end, the score stage's metrics and instrument checks land as event files in the run
directory, and no secret from the environment reaches them."""

from __future__ import annotations

import json
import os
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


# Every variable tracking.prepare() may set: a test registers them with monkeypatch first so
# whatever prepare() sets is undone afterwards and never leaks into the next test.
TRACKER_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY", "WANDB_DIR", "WANDB_PROJECT", "TRACKIO_DIR")


@pytest.fixture
def tracker_env(monkeypatch):
    for name in TRACKER_ENV:
        monkeypatch.setenv(name, "registered-for-restore")
        monkeypatch.delenv(name)
    monkeypatch.setattr(tracking, "_SET_HERE", {})
    return monkeypatch


def _new_process(monkeypatch) -> None:
    """What a score stage resumed in a fresh process sees: none of prepare()'s variables set."""
    for name in TRACKER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking, "_SET_HERE", {})


def test_local_stores_go_to_the_run_directory_and_telemetry_is_off_unless_the_user_says(tmp_path, tracker_env):
    run = tmp_path / "run"
    tracking.prepare(run, ["mlflow", "wandb", "trackio"])
    folder = (run / "tracking").absolute()
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{folder / 'mlflow.db'}"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"  # MLflow >= 3.2 would post usage events
    assert os.environ["WANDB_DIR"] == str(folder) and os.environ["WANDB_PROJECT"] == tracking.PROJECT
    assert os.environ["TRACKIO_DIR"] == str(folder / "trackio")
    # A second run in the same process moves what prepare() set; what the user set stays.
    tracker_env.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    tracker_env.setenv("WANDB_DIR", "/users/own/wandb")
    tracking.prepare(tmp_path / "other", ["mlflow", "wandb"])
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false" and os.environ["WANDB_DIR"] == "/users/own/wandb"
    assert os.environ["MLFLOW_TRACKING_URI"].endswith(str(Path("other") / "tracking" / "mlflow.db"))
    # Nothing named, nothing set.
    _new_process(tracker_env)
    tracking.prepare(tmp_path / "none", [])
    assert not any(name in os.environ for name in TRACKER_ENV) and not (tmp_path / "none").exists()


# The tests below need a tracker that requirements/dev-cpu.txt does not pin: each skips where its
# package is absent (as in CI) and runs with `pip install mlflow wandb trackio` then
# `pytest -m trackers tests/test_tracking.py` (docs/USAGE.md, "Experiment tracking").


@pytest.mark.trackers
def test_mlflow_gets_the_trainers_logs_and_the_scores_in_one_run_per_run_directory(tmp_path, tracker_env):
    mlflow = pytest.importorskip("mlflow")
    tracker_env.setenv("OPENAI_API_KEY", SECRET)
    for run in ("first", "second"):
        result = _train_tiny(tmp_path, run, "mlflow")
        run_id = result["tracker_runs"]["mlflow"]
        # The second run's scores are logged as by a score stage resumed in a new process.
        if run == "second":
            _new_process(tracker_env)
        tracking.log_scores(tmp_path / run, ["mlflow"], SCORE, step=3, runs=result["tracker_runs"], run_name=run)
        # Each run's store is in its own run directory, even when one process runs several.
        client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / run / 'tracking' / 'mlflow.db').absolute()}")
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "score/harmful_rate/value")] == [(3, 0.25)]
        assert client.get_metric_history(run_id, "instruments/refusal-rules/accuracy")[0].value == pytest.approx(0.8)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert not _files_contain(tmp_path, SECRET)


def _wandb_file_records(path: Path) -> list[bytes]:
    """The records of a W&B transaction log (`run-<id>.wandb`): a 7-byte header (":W&B", magic
    0xBEE1, version 0), then LevelDB's log format, 32 KiB blocks of chunks each headed by crc32,
    length and type (1 whole, 2 first, 3 middle, 4 last). W&B ships no reader for it any more."""
    import struct

    data = path.read_bytes()
    assert data[:7] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0), f"{path} is not a W&B log"
    records, pending, offset = [], b"", 7
    while offset + 7 <= len(data):
        if 32768 - offset % 32768 < 7:  # a block's tail too short for a chunk header is padding
            offset += 32768 - offset % 32768
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, offset)
        chunk = data[offset + 7: offset + 7 + length]
        offset += 7 + length
        if kind == 0:  # zero padding (a preallocated tail)
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
    return records


def _wandb_records(run_dir: Path) -> tuple[list[dict], dict]:
    """The history rows and the final summary a W&B offline run wrote to its .wandb file."""
    from wandb.proto import wandb_internal_pb2

    def items(entries) -> dict:
        return {entry.key or "/".join(entry.nested_key): json.loads(entry.value_json) for entry in entries}

    history, summary = [], {}
    for path in sorted(run_dir.glob("run-*.wandb")):
        for data in _wandb_file_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                history.append(items(record.history.item))
            elif kind == "summary":
                summary.update(items(record.summary.update))
    return history, summary


@pytest.mark.trackers
def test_wandb_offline_gets_the_trainers_logs_and_the_scores_in_the_run_directory(tmp_path, tracker_env):
    wandb = pytest.importorskip("wandb")
    tracker_env.setenv("WANDB_MODE", "offline")
    tracker_env.setenv("WANDB_API_KEY", SECRET)
    tracker_env.setenv("WANDB_SILENT", "true")
    result = _train_tiny(tmp_path, "run", "wandb")
    runs = result["tracker_runs"]
    assert runs["wandb"]["project"] == tracking.PROJECT
    # What training logged is on disk when the train stage ends: a process killed before the
    # score stage loses nothing (W&B writes an open run's log only when it is finished).
    # W&B's service process writes the log after finish() returns: teardown() waits for it.
    wandb.teardown()
    trained = [row for folder in (tmp_path / "run" / "tracking" / "wandb").glob("offline-run-*")
               for row in _wandb_records(folder)[0]]
    assert [row["train/global_step"] for row in trained if "train/loss" in row] == [1, 2, 3]
    _new_process(tracker_env)
    tracker_env.setenv("WANDB_MODE", "offline")
    tracking.log_scores(tmp_path / "run", ["wandb"], SCORE, step=3, runs=runs, run_name="run")
    wandb.teardown()
    folders = sorted((tmp_path / "run" / "tracking" / "wandb").glob(f"offline-run-*-{runs['wandb']['id']}"))
    assert folders, "W&B's offline run is not in the run directory"
    rows = [row for folder in folders for row in _wandb_records(folder)[0]]
    assert [row["train/global_step"] for row in rows if "train/loss" in row] == [1, 2, 3]
    scores = [row for row in rows if "score/harmful_rate/value" in row]
    assert [(row["train/global_step"], row["score/harmful_rate/value"]) for row in scores] == [(3, 0.25)]
    assert scores[0]["instruments/refusal-rules/accuracy"] == pytest.approx(0.8)
    assert _wandb_records(folders[-1])[1]["instruments/validation"]["refusal-rules"]["accuracy"] == 0.8
    assert not _files_contain(tmp_path, SECRET)


@pytest.mark.trackers
def test_trackio_gets_the_trainers_logs_and_the_scores_in_one_run_of_the_run_directory(tmp_path, tracker_env):
    import importlib.util
    import sqlite3
    import sys

    # Not importorskip: trackio fixes its directory when first imported, which must come after
    # prepare() has pointed TRACKIO_DIR into the run directory, as in a real run.
    if importlib.util.find_spec("trackio") is None:
        pytest.skip("trackio is not installed")
    if "trackio" in sys.modules:
        pytest.skip("trackio was imported earlier in this process: its directory is fixed (run this test alone)")
    tracker_env.setenv("OPENAI_API_KEY", SECRET)
    result = _train_tiny(tmp_path, "run", "trackio")
    tracking.log_scores(tmp_path / "run", ["trackio"], SCORE, step=3, runs=result["tracker_runs"], run_name="run")
    database = tmp_path / "run" / "tracking" / "trackio" / f"{tracking.PROJECT}.db"
    assert database.is_file(), sorted(str(p) for p in (tmp_path / "run").rglob("*"))
    with sqlite3.connect(database) as db:
        rows = [(run, step, json.loads(metrics)) for run, step, metrics in
                db.execute("SELECT run_name, step, metrics FROM metrics ORDER BY id")]
    assert {run for run, _, _ in rows} == {"run"}  # the Trainer's run and the scores' are one
    assert [m["train/global_step"] for _, _, m in rows if "train/loss" in m] == [1, 2, 3]
    assert [(step, m["score/harmful_rate/value"]) for _, step, m in rows if "score/harmful_rate/value" in m] == [(3, 0.25)]
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
