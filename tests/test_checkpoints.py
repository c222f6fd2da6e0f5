"""Checkpoints inside the train stage: a run interrupted mid-training resumes from its newest
complete checkpoint and ends bit-identical to an uninterrupted run (CPU), online refresh state
included; an incomplete checkpoint (a kill mid-write) is never resumed from; a finished training
keeps no optimizer state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.config import parse_set_options, resolve_config
from harness.errors import RunFailure
from harness.training import CHECKPOINT_COMPLETE, MethodTrainer, newest_complete_checkpoint
from conftest import REDUCED_WORLD

# d2o-online refreshing every 4 steps with a checkpoint every 2: the checkpoint at step 2 must
# carry the step-0 snapshot (the next refresh is at step 4), so its state is exercised.
RUN = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=6", "train.per_device_batch_size=4",
       "train.learning_rate=1e-3", "sampling.max_new_tokens=12", "method.k=2", "method.refresh_every=4",
       "train.save_steps=2"]


def _train(out: Path):
    from harness.pipeline import run_pipeline
    from harness.plan import resolve_plan

    cfg = resolve_config(method="d2o-online", preset="tiny", seed=0, overrides=parse_set_options(RUN))
    ctx = run_pipeline(resolve_plan(cfg), out, progress=lambda _: None, stop_after="train")
    summary = json.loads((ctx.run_dir.root / "train" / "COMPLETE").read_text())
    return ctx, summary, _weights(ctx.run_dir.root / "train" / "policy")


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_a_run_interrupted_mid_training_resumes_and_ends_as_an_uninterrupted_one(bench_home, tmp_path, monkeypatch):
    _, straight, straight_weights = _train(tmp_path / "straight")
    assert straight["resumed_from_step"] is None and straight["steps"] == 6

    real_step = MethodTrainer.training_step
    seen = []

    def dies_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 3 and not seen:
            seen.append(3)
            raise RuntimeError("killed (test)")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(MethodTrainer, "training_step", dies_at_step_3)
    with pytest.raises(RunFailure, match="killed"):
        _train(tmp_path / "interrupted")
    (run_root,) = [p for p in (tmp_path / "interrupted").rglob("checkpoints") if p.is_dir()]
    checkpoints = run_root / "train"
    assert newest_complete_checkpoint(checkpoints).name == "checkpoint-2"
    # A checkpoint half-written when the process died: a directory without the seal.
    (checkpoints / "checkpoint-4").mkdir()
    (checkpoints / "checkpoint-4" / "model.safetensors").write_bytes(b"truncated")

    ctx, resumed, resumed_weights = _train(tmp_path / "interrupted")
    assert resumed["resumed_from_step"] == 2
    assert resumed["loss_curve"] == straight["loss_curve"] and resumed["train_loss"] == straight["train_loss"]
    assert resumed["grad_norm_curve"] == straight["grad_norm_curve"]
    assert resumed["sample_refreshes"] == straight["sample_refreshes"] == 2
    assert resumed_weights.keys() == straight_weights.keys()
    assert all(torch.equal(resumed_weights[k], straight_weights[k]) for k in straight_weights)
    assert not checkpoints.exists()  # finished: no optimizer state left behind


def test_only_sealed_checkpoints_count(tmp_path):
    assert newest_complete_checkpoint(tmp_path / "absent") is None
    for step, sealed in ((2, True), (4, True), (6, False), (10, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if sealed:
            (folder / CHECKPOINT_COMPLETE).write_text("{}")
    (tmp_path / "checkpoint-latest").mkdir()
    assert newest_complete_checkpoint(tmp_path).name == "checkpoint-4"


@pytest.mark.parametrize("field, value", [("save_steps", -1), ("save_total_limit", 0)])
def test_bad_checkpoint_settings_are_bad_input(field, value):
    """Refused with the config, and by the training loop for callers that build a TrainConfig."""
    from harness.config import TrainConfig
    from harness.errors import BadInput
    from harness.training import training_arguments

    with pytest.raises(BadInput, match=f"train.{field}"):
        resolve_config(method="d2o", preset="tiny", overrides=parse_set_options([f"train.{field}={value}"]))
    with pytest.raises(BadInput, match=f"train.{field}"):
        training_arguments(TrainConfig(**{field: value}), Path("/nonexistent"), 0)


@pytest.mark.parametrize("on", [False, True])
def test_activation_checkpointing_reaches_the_trainer_without_a_deprecation_warning(on, tmp_path):
    import warnings

    from harness.config import TrainConfig
    from harness.training import training_arguments

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = training_arguments(TrainConfig(gradient_checkpointing=on), tmp_path, 0)
    assert args.gradient_checkpointing is on


def test_checkpoint_settings_do_not_change_the_run_identity():
    plain = resolve_config(method="d2o", preset="tiny")
    other = resolve_config(method="d2o", preset="tiny", overrides=parse_set_options(["train.save_steps=3"]))
    assert plain.train.save_steps == 8 and other.hash() == plain.hash()
    assert resolve_config(method="d2o", preset="tiny", overrides=parse_set_options(["train.max_steps=3"])).hash() \
        != plain.hash()


def test_a_non_finite_gradient_norm_stops_training_at_its_step(tmp_path):
    """A learning rate far too high used to train on NaN gradient norms to the end and fail at the
    leaderboard stage; the watch stops the Trainer at the first one, naming the step."""
    from torch import nn
    from transformers import Trainer

    from harness.config import TrainConfig
    from harness.training import FiniteWatch, training_arguments

    class Blows(nn.Module):
        """A loss whose gradient turns infinite from the third step on."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))
            self.calls = 0

        def forward(self, x, **kwargs):
            self.calls += 1
            scale = float("inf") if self.calls >= 3 else 1.0
            return {"loss": (self.w * x * scale).sum()}

    data = [{"x": torch.ones(1)} for _ in range(16)]
    args = training_arguments(TrainConfig(max_steps=8, per_device_batch_size=1, learning_rate=1e-3,
                                          logging_steps=1), tmp_path, 0)
    model = Blows()
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[FiniteWatch()],
                      data_collator=lambda rows: {"x": torch.stack([r["x"] for r in rows])})
    with pytest.raises(RunFailure, match=r"^training diverged: (grad norm|loss) is (nan|inf) at step 3 ") as raised:
        trainer.train()
    assert "\n" not in str(raised.value) and model.calls == 3  # stopped there, not trained on to step 8


def test_a_partial_checkpoint_is_removed_and_sealed_ones_kept(tmp_path):
    """A checkpoint write cut short by a full disk is never resumed from, but it held the space
    the rerun needed: the rerun failed at once."""
    from harness.training import remove_unsealed_checkpoints

    for step, sealed in ((2, True), (4, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 100)
        if sealed:
            (folder / CHECKPOINT_COMPLETE).write_text("{}")
    assert remove_unsealed_checkpoints(tmp_path) == [tmp_path / "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert newest_complete_checkpoint(tmp_path).name == "checkpoint-2"
    assert remove_unsealed_checkpoints(tmp_path / "absent") == []


def test_disk_full_in_a_stage_and_in_run_json_is_one_line_and_the_state_stays_honest(tmp_path, monkeypatch):
    """The checkpoint write failed with ENOSPC, then marking the stage failed failed too: the user
    saw a bare OSError and run.json still said "running" for good. Now run.json's new copy cannot
    be written either, and "failed" still lands (rewritten in place, in the blocks it has)."""
    import errno
    from types import SimpleNamespace

    from harness import atomic, pipeline
    from harness.rundir import RunDir

    root = tmp_path / "run"
    header = {"method": "d2o"}
    run_dir = RunDir(root, "r", pipeline.STAGES, header)

    real_write = atomic.write_bytes
    state = {"full": False}

    def write(path, data, **kwargs):
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data, **kwargs)

    def stage_then_full_disk(ctx):
        state["full"] = True
        raise OSError(errno.ENOSPC, "No space left on device", str(root / "checkpoints" / "train" / "checkpoint-8"))

    monkeypatch.setattr(atomic, "write_bytes", write)
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "train", stage_then_full_disk)
    ctx = SimpleNamespace(run_dir=run_dir, progress=lambda _: None)
    with pytest.raises(RunFailure) as raised:
        pipeline._run_stage(ctx, "train", True)
    message = str(raised.value)
    assert message.startswith("stage train failed: disk full writing ") and "checkpoint-8" in message
    assert "run.json not updated" not in message and "\n" not in message
    assert json.loads((root / "run.json").read_text())["stages"]["train"] == "failed"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    # Where even that fails (run.json not writable at all), the error says so, and the next run
    # reads the stage left "running" as interrupted.
    state["full"] = False
    run_dir = RunDir(root, "r", pipeline.STAGES, header)
    monkeypatch.setattr(RunDir, "_overwrite_status_in_place", lambda self: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(RunFailure, match=r"\(run\.json not updated: No space left on device\)$"):
        pipeline._run_stage(SimpleNamespace(run_dir=run_dir, progress=lambda _: None), "train", True)
    assert json.loads((root / "run.json").read_text())["stages"]["train"] == "running"  # what the disk kept
    state["full"] = False
    reopened = RunDir(root, "r", pipeline.STAGES, header)  # the rerun, holding the run lock
    assert reopened._status["stages"]["train"] == "interrupted"
    assert json.loads((root / "run.json").read_text())["stages"]["train"] == "interrupted"
