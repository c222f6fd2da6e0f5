"""Experiment tracking (`train.report_to`): the Trainer reports its logs to transformers' own
integrations (TensorBoard, MLflow, W&B, trackio), and at the end the score stage's metrics and
the instruments' validation go to the same trackers.

Nothing is reported, written or contacted unless `train.report_to` names a tracker. Local stores
live in the run directory's `tracking/` (beside the stage directories, so a resumed train stage
adds to them rather than wiping them) unless the user points a tracker elsewhere through its own
environment variable (MLFLOW_TRACKING_URI, WANDB_DIR, TRACKIO_DIR), which is then respected.
MLflow's usage telemetry (on by default outside CI since MLflow 3.2) is switched off the same way
(MLFLOW_DISABLE_TELEMETRY, unless the user set it): naming a local tracker contacts nothing. W&B
contacts its server unless WANDB_MODE=offline; that choice is the user's, as with any tracker URI.
What goes to a tracker is the Trainer's logs, its arguments (whose tokens the Trainer redacts),
the model's config and the run's metrics: never the environment, so no API key.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

TRACKING_DIR = "tracking"
# The project W&B and trackio file runs under (the Trainer's and the closing scores alike), unless
# the user names one (WANDB_PROJECT; trackio has no variable for it).
PROJECT = "d2o-bench"


def trackers(train_cfg) -> list[str]:
    """The trackers the run reports to ([] and [none]: none)."""
    return [name for name in train_cfg.report_to if name != "none"]


def tracking_dir(run_root: Path) -> Path:
    return Path(run_root) / TRACKING_DIR


# The variables prepare() set itself: a later run in the same process (tuning trials) moves them
# to its own directory, while a value the user set is never touched.
_SET_HERE: dict[str, str] = {}


def _default_env(name: str, value: str) -> None:
    current = os.environ.get(name)
    if current is None or _SET_HERE.get(name) == current:
        os.environ[name] = _SET_HERE[name] = value


def prepare(run_root: Path, names: list[str]) -> None:
    """Point the trackers' local stores into the run directory, unless the user set them."""
    folder = tracking_dir(run_root).absolute()
    if "mlflow" in names:
        # A SQLite store (MLflow 3 refuses its old file store by default).
        folder.mkdir(parents=True, exist_ok=True)
        _default_env("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        # MLflow >= 3.2 posts usage events to its own endpoint unless told not to (or in CI,
        # which is why a test run never showed it).
        _default_env("MLFLOW_DISABLE_TELEMETRY", "true")
    if "wandb" in names:
        folder.mkdir(parents=True, exist_ok=True)
        _default_env("WANDB_DIR", str(folder))
        _default_env("WANDB_PROJECT", PROJECT)
    if "trackio" in names:
        _default_env("TRACKIO_DIR", str(folder / "trackio"))
        _check_trackio_dir(Path(os.environ["TRACKIO_DIR"]))


def _check_trackio_dir(wanted: Path) -> None:
    """trackio reads TRACKIO_DIR once, when first imported, into constants that several of its
    modules copy: a second run in the same process cannot move it, so say where its logs go."""
    import sys

    utils = sys.modules.get("trackio.utils")
    if utils is not None and Path(utils.TRACKIO_DIR).absolute() != wanted.absolute():
        log.warning("trackio was imported earlier in this process: its logs go to %s, not %s",
                    utils.TRACKIO_DIR, wanted)


def attach(trainer, run_root: Path) -> None:
    """TensorBoard's callback would write under the Trainer's output_dir, which here is the
    checkpoint folder deleted after training: send its event files to `tracking/tensorboard`."""
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback":
            callback.logging_dir = str(tensorboard_dir(run_root))


def tensorboard_dir(run_root: Path) -> Path:
    return tracking_dir(run_root) / "tensorboard"


def tracker_runs(names: list[str]) -> dict:
    """The trackers' own run ids after training, so the final metrics join the same runs; W&B's
    run is finished, so what training logged is on disk before the next stage."""
    runs: dict = {}
    if "mlflow" in names:
        import mlflow

        last = mlflow.last_active_run()
        runs["mlflow"] = last.info.run_id if last is not None else None
    if "wandb" in names:
        import wandb

        run = wandb.run
        runs["wandb"] = {"id": run.id, "project": run.project} if run is not None else None
        if run is not None:
            # The Trainer's callback leaves its run open, and W&B writes the run's log when it is
            # finished: a process killed between training and scoring (preemption) left an empty
            # log and lost every training step. Finished here, the closing scores resume it by id.
            run.finish()
    return runs


def flatten(value, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested metrics as {"a/b/c": number} (booleans and None left out)."""
    flat: dict[str, float] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        flat[prefix] = float(value)
    return flat


def log_scores(run_root: Path, names: list[str], score: dict, *, step: int, runs: Optional[dict] = None,
               run_name: str = "") -> None:
    """The score stage's metrics (the method's and the base's) and the instruments' validation,
    sent to each tracker at the training's last step."""
    # A score stage resumed in a new process (the train stage complete) must write to the same
    # stores as the training did, not to the working directory's.
    prepare(run_root, names)
    scalars = {**flatten(score.get("metrics", {}), "score"), **flatten(score.get("base_metrics", {}), "base")}
    instruments = (score.get("sections") or {}).get("instruments") or {}
    validation = instruments.get("validation") or {}
    scalars.update(flatten(validation, "instruments"))
    runs = runs or {}
    if "tensorboard" in names:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(tensorboard_dir(run_root)))
        try:
            for key, number in scalars.items():
                writer.add_scalar(key, number, step)
            if validation:
                writer.add_text("instruments/validation", "```\n" + json.dumps(validation, indent=1) + "\n```", step)
        finally:
            writer.close()
    if "mlflow" in names:
        import mlflow

        with mlflow.start_run(run_id=runs.get("mlflow"), run_name=None if runs.get("mlflow") else run_name):
            # The validation's numbers are among the metrics; no artifact, whose default store
            # would be a folder in the working directory rather than the run's.
            mlflow.log_metrics({_mlflow_key(k): v for k, v in scalars.items()}, step=step)
    if "wandb" in names:
        import wandb

        previous = runs.get("wandb") or {}
        # The Trainer's run, finished after training (tracker_runs), resumed by its id; offline,
        # that is a second folder with the same run id beside the first.
        run = wandb.init(id=previous.get("id"), project=previous.get("project"), resume="allow", name=run_name)
        # W&B's own step counts log calls and refuses one it has passed, so the scores are
        # placed the way the Trainer's callback places its logs: against train/global_step.
        run.define_metric("*", step_metric="train/global_step", step_sync=True)
        try:
            run.log({**scalars, "train/global_step": step})
            if validation:
                run.summary["instruments/validation"] = validation
        finally:
            run.finish()
    if "trackio" in names:
        import trackio

        trackio.init(project=PROJECT, name=run_name, resume="allow")
        try:
            trackio.log(scalars, step=step)
        finally:
            trackio.finish()


def _mlflow_key(key: str) -> str:
    # MLflow allows letters, digits, _ - . / and spaces in metric names.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)
