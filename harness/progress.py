"""What long work says while it runs: one logger ("d2o_bench", levels, stderr) and labelled
progress for the Trainer.

stdout is the result's (the closing table, paths); everything said along the way goes to stderr
through `log`. transformers' Trainer would print a raw dict per logging step
(`{'loss': '0.6931', ...}`) and an unlabelled bar; `LabelledProgress` replaces both with a bar
named after the work and one `INFO` line per logged step.
"""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

log = logging.getLogger("d2o_bench")

FORMAT = "d2o-bench %(levelname)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at each record (a test's capture, a redirected stream),
    not the stream that was current when the handler was made."""

    _d2o_bench = True

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """One stderr handler, one format, for "d2o_bench" and the harness's module loggers
    (`harness.*`), idempotent; libraries' loggers keep theirs (the CLI quiets them)."""
    for logger in (log, logging.getLogger("harness")):
        logger.setLevel(level)
        logger.propagate = False
        if not any(getattr(h, "_d2o_bench", False) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter(FORMAT))
            logger.addHandler(handler)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class LabelledProgress(TrainerCallback):
    """A bar labelled `label` over the optimizer steps, and one labelled INFO line per logged step."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.label, unit="step",
                            file=sys.stderr, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        shown = " ".join(f"{k}={_number(v)}" for k, v in logs.items() if k != "epoch")
        log.info("%s: step %d/%d %s", self.label, state.global_step, state.max_steps, shown)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def label_trainer(trainer, label: str) -> None:
    """Swap the Trainer's own bar and dict printer for `LabelledProgress(label)`."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LabelledProgress(label))
