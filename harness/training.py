"""The one training loop: transformers' Trainer with the loss supplied by the method.

Batches carry, per role the method asks for, the tokenised (prompt, response) pairs and the
precomputed reference log-probs. `MethodTrainer.compute_loss` runs every sequence of the batch
(all roles concatenated) through one forward, or with gradient caching (`train.gradient_cache`)
through chunks of a bounded number of padded tokens, either one row per sequence or packed by
shared prompt (`train.shared_prompt_packing`), splits the summed log-probs back per role and
hands them to `Method.loss`. Nothing here knows which method it is training.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import resource
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from harness import allocator, atomic, tracking
from harness.distributed import describe_single_process_group
from harness.errors import BadInput, RunFailure
from harness.faults import disk_full_point, kill_point
from harness.logprobs import (
    EncodedPair,
    collate_pairs,
    pack_shared_prompts,
    packed_tokens,
    padded_tokens,
    recomputed_sequence_logps,
    sequence_logps,
    shared_prompt_layout,
    shared_prompt_sequence_logps,
)
from harness.registry import Method, SequenceLogps

log = logging.getLogger(__name__)

# ZeRO presets. "auto" values are filled in by transformers' DeepSpeed integration from the
# TrainingArguments, so batch sizes, precision and clipping stay defined in one place.
_ZERO_BASE = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "steps_per_print": 1000000,
    "wall_clock_breakdown": False,
}
_OFFLOADED_OPTIMIZER = {
    # DeepSpeedCPUAdam (compiled on first use) is what makes optimizer offload worthwhile.
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
}
DEEPSPEED_PRESETS: dict[str, dict] = {
    "zero0": {**_ZERO_BASE, "zero_optimization": {"stage": 0}},
    "zero1": {**_ZERO_BASE, "zero_optimization": {"stage": 1}},
    "zero2": {**_ZERO_BASE, "zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True}},
    "zero3": {
        **_ZERO_BASE,
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": False,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    },
    "zero2-offload": {
        **_ZERO_BASE, **_OFFLOADED_OPTIMIZER,
        "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False}},
    },
    "zero3-offload": {
        **_ZERO_BASE, **_OFFLOADED_OPTIMIZER,
        "zero_optimization": {
            "stage": 3,
            "offload_optimizer": {"device": "cpu", "pin_memory": False},
            "offload_param": {"device": "cpu", "pin_memory": False},
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    },
}


def resolve_deepspeed(spec: Optional[str]) -> Optional[dict]:
    """None, a preset name, or a path to a DeepSpeed JSON config → a config dict."""
    if spec is None:
        return None
    if spec in DEEPSPEED_PRESETS:
        return copy.deepcopy(DEEPSPEED_PRESETS[spec])
    path = Path(spec)
    if not path.is_file():
        raise BadInput(f"train.deepspeed: {spec!r} is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) nor a file")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise BadInput(f"train.deepspeed: {spec} is not valid JSON: {exc}") from None


class RoleCollator:
    """Turns dataset rows into {pairs per role, reference log-probs per role}.

    Rows hold `<role>_ids` / `<role>_start` (lists of lists for `samples`) and `ref_<role>`.
    Padding happens in compute_loss so that online sample refreshes can swap pairs first.
    """

    def __init__(self, method: Method):
        self.roles = method.roles
        self.reference_roles = method.reference_roles

    def __call__(self, rows: list[dict]) -> dict:
        pairs: dict[str, list] = {}
        for role in self.roles:
            if role == "samples":
                pairs[role] = [
                    [EncodedPair(ids, start) for ids, start in zip(r["samples_ids"], r["samples_start"])]
                    for r in rows
                ]
            else:
                pairs[role] = [EncodedPair(r[f"{role}_ids"], r[f"{role}_start"]) for r in rows]
        reference = {
            role: torch.tensor([r[f"ref_{role}"] for r in rows], dtype=torch.float32)
            for role in self.reference_roles
        }
        return {"pairs": pairs, "reference": reference, "prompt_index": [r["prompt_index"] for r in rows]}


class MethodTrainer(Trainer):
    def __init__(self, *args, method: Method, pad_id: int, sample_refresher=None,
                 gradient_cache_tokens: int = 0, shared_prompt_packing: bool = False,
                 term_gradient_every: int = 0, samples_per_prompt: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.method = method
        # The run's K (RunPlan.k): every prompt's group of self-samples must hold exactly it. None
        # (a trainer built by hand around rows of one K): the groups need only agree.
        self.samples_per_prompt = samples_per_prompt
        # N > 0: at every N-th optimizer step, the gradient norm of each loss term the method
        # names (Method.gradient_terms) joins the diagnostics.
        self.term_gradient_every = term_gradient_every
        self.pad_id = pad_id
        # 0: every sequence of a micro-batch in one forward; N: gradient caching in chunks of at
        # most N padded tokens, when the micro-batch does not fit in one.
        self.gradient_cache_tokens = gradient_cache_tokens
        # Sequences of one prompt through one row, the prompt computed once (harness/logprobs.py).
        self.shared_prompt_packing = shared_prompt_packing
        self._warned_ddp = False
        self.sample_refresher = sample_refresher
        # Our loss is a per-batch mean, so let the Trainer divide by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._diagnostics: dict[str, list[float]] = {}
        # The optimizer step whose micro-batches compute_loss last counted, and how many so far.
        self._micro_batches_of: tuple[int, int] = (-1, 0)

    def _first_micro_batch_of_step(self) -> bool:
        """Whether this training forward is the first of its optimizer step's micro-batches.
        The per-term gradient norms are taken there only: each term's gradient is a full copy of
        the trainable weights, and in a later micro-batch it would sit beside `.grad`, which then
        holds the earlier micro-batches' (0.54 GB more at SmolLM2-135M's fp32 weights)."""
        step, seen = self._micro_batches_of
        seen = seen + 1 if step == self.state.global_step else 1
        self._micro_batches_of = (self.state.global_step, seen)
        return seen == 1

    def packed_rows(self, model, flat: list[EncodedPair]) -> Optional[list[list[list[int]]]]:
        """The shared-prompt layout `compute_loss` forwards these sequences in; None: one row each."""
        if not self.shared_prompt_packing:
            return None
        # Packed rows no wider than a gradient-caching chunk, so a chunk's memory stays its budget's.
        return shared_prompt_layout(model, flat, max_width=self.gradient_cache_tokens or None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pairs = dict(inputs["pairs"])
        reference = dict(inputs["reference"])
        if self.sample_refresher is not None and "samples" in pairs:
            pairs["samples"], reference["samples"] = self.sample_refresher(
                model, inputs["prompt_index"], self.state.global_step
            )
        flat: list[EncodedPair] = []
        layout: list[tuple[str, int, Optional[int]]] = []
        for role in self.method.roles:
            if role == "samples":
                k = self.samples_per_prompt if self.samples_per_prompt is not None else len(pairs[role][0])
                if any(len(group) != k for group in pairs[role]):
                    raise BadInput(f"every prompt needs the same number K={k} of self-samples")
                for group in pairs[role]:
                    flat.extend(group)
                layout.append((role, len(pairs[role]) * k, k))
            else:
                flat.extend(pairs[role])
                layout.append((role, len(pairs[role]), None))
        device = self.args.device
        rows = self.packed_rows(model, flat)
        tokens = packed_tokens(flat, rows) if rows else padded_tokens(flat)
        cache = self.gradient_cache_tokens and tokens > self.gradient_cache_tokens and torch.is_grad_enabled()
        term_gradients = (self.term_gradient_every and torch.is_grad_enabled()
                          and self.state.global_step % self.term_gradient_every == 0
                          and self._first_micro_batch_of_step())
        if cache and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            # Plain DDP cannot rerun its forward inside backward (harness/logprobs.py): one forward.
            if not self._warned_ddp:
                log.warning("train.gradient_cache is ignored under plain DDP; use a DeepSpeed preset for it")
                self._warned_ddp = True
            cache = False
        if cache:
            logps = recomputed_sequence_logps(model, flat, self.pad_id, device, self.gradient_cache_tokens,
                                              rows=rows, backpropagated_more_than_once=bool(term_gradients))
        elif rows:
            logps = shared_prompt_sequence_logps(model, pack_shared_prompts(flat, self.pad_id, rows).to(device))
        else:
            batch = {key: value.to(device) for key, value in collate_pairs(flat, self.pad_id).items()}
            logps = sequence_logps(model, **batch)
        policy: dict[str, SequenceLogps] = {}
        offset = 0
        for role, count, k in layout:
            total = logps.total[offset : offset + count]
            n_tokens = logps.n_tokens[offset : offset + count]
            if k is not None:
                total, n_tokens = total.view(-1, k), n_tokens.view(-1, k)
            policy[role] = SequenceLogps(total=total, n_tokens=n_tokens)
            offset += count
        reference = {role: value.to(device) for role, value in reference.items()}
        losses, diagnostics = self.method.loss(policy, reference)
        loss = losses.mean()
        if term_gradients:
            diagnostics = {**diagnostics, **self._term_gradient_norms(model, policy, reference)}
        for name, value in diagnostics.items():
            self._diagnostics.setdefault(name, []).append(float(value))
        return (loss, None) if return_outputs else loss

    def _term_gradient_norms(self, model, policy, reference) -> dict[str, torch.Tensor]:
        """The parameter-gradient norm of each term of the loss the method names, and each one's
        share of their sum: which part of the objective actually moves the weights (D²O: the
        anchors against the negative). Measured with autograd.grad, so the step's own gradients
        (in .grad) are untouched."""
        terms = self.method.gradient_terms(policy, reference)
        if not terms:
            return {}
        params = [p for p in model.parameters() if p.requires_grad]
        norms = {}
        for name, term in terms.items():
            # The gradients are a full copy of the trainable weights: each term's are dropped once
            # its norm is taken, not held while the next term's are computed (a rebinding would
            # keep both, 0.54 GB more at SmolLM2-135M's fp32 weights).
            norms[name] = _gradient_norm(torch.autograd.grad(term.mean(), params, retain_graph=True,
                                                             allow_unused=True))
        total = sum(norms.values())
        out = {f"grad_norm_{name}": value for name, value in norms.items()}
        out.update({f"grad_share_{name}": value / total.clamp(min=1e-30) for name, value in norms.items()})
        return out

    def log(self, logs: dict, *args, **kwargs) -> None:
        for name, values in self._diagnostics.items():
            if values:
                logs[f"diag/{name}"] = sum(values) / len(values)
        self._diagnostics = {}
        super().log(logs, *args, **kwargs)


def _gradient_norm(grads) -> torch.Tensor:
    return torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))


def trajectory(log_history: list[dict]) -> dict:
    """The per-step loss, gradient norm and diagnostics for the leaderboard's trajectory
    invariants, from the Trainer's log history (which a resumed run restores from its checkpoint,
    so the curves start at step 1 either way)."""
    loss_curve, grad_norm_curve, diagnostics = [], [], []
    for logs in log_history:
        step = logs.get("step")
        if step is None:
            continue
        if "loss" in logs:
            loss_curve.append([step, float(logs["loss"])])
        if logs.get("grad_norm") is not None:
            grad_norm_curve.append([step, float(logs["grad_norm"])])
        diag = {k: v for k, v in logs.items() if k.startswith("diag/")}
        if diag:
            diagnostics.append({"step": step, **diag})
    return {"loss_curve": loss_curve, "grad_norm_curve": grad_norm_curve, "diagnostics": diagnostics}


# A checkpoint directory counts only once this file is in it: the Trainer writes a checkpoint in
# place, so a kill mid-write leaves a directory that looks like one.
CHECKPOINT_COMPLETE = "CHECKPOINT_COMPLETE"
_REFRESH_STATE = "online_refresh.pt"


class CheckpointSealer(TrainerCallback):
    """Marks a checkpoint complete after the Trainer has written it, with the online sample
    refresher's state (which the Trainer does not know about) saved beside it first."""

    def __init__(self, sample_refresher=None):
        self.sample_refresher = sample_refresher

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.sample_refresher is not None:
            torch.save(self.sample_refresher.state_dict(state.global_step), folder / _REFRESH_STATE)
        kill_point(f"checkpoint:{state.global_step}:unsealed")
        # Where a full disk (injected in tests) cuts a checkpoint short: written, never sealed.
        disk_full_point(f"checkpoint:{state.global_step}:unsealed", str(folder))
        atomic.write_json(folder / CHECKPOINT_COMPLETE, {"step": state.global_step})


class StepWatch(TrainerCallback):
    """The first optimizer step this process trains (after a resume: the checkpoint's + 1), and
    the `train:step:<n>` kill points."""

    def __init__(self):
        self.first_step: Optional[int] = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step is None:
            self.first_step = state.global_step + 1

    def on_step_end(self, args, state, control, **kwargs):
        kill_point(f"train:step:{state.global_step}")


class FiniteWatch(TrainerCallback):
    """Stops training at the first logged loss or gradient norm that is NaN or infinite.

    A diverged run (a learning rate far too high) otherwise trains on to the end on NaN weights,
    then generates, scores, and fails only when its NaN metrics reach the leaderboard: the time
    is lost and the error names the wrong stage. One line naming the step instead."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for name in ("grad_norm", "loss"):
            value = (logs or {}).get(name)
            if value is None:
                continue
            try:
                finite = math.isfinite(float(value))
            except (TypeError, ValueError):
                continue
            if not finite:
                raise RunFailure(f"training diverged: {name.replace('_', ' ')} is {float(value)} at step "
                                 f"{state.global_step} (learning rate {args.learning_rate:g}; lower "
                                 "train.learning_rate or train.max_grad_norm)")


def remove_unsealed_checkpoints(folder: Path) -> list[Path]:
    """Delete checkpoint directories without their seal (half-written); the removed ones. Rank 0
    alone: it is the one that writes checkpoints."""
    import shutil

    from harness.distributed import is_main_process

    removed = []
    if not is_main_process():
        return removed
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        if path.is_dir() and not (path / CHECKPOINT_COMPLETE).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def newest_complete_checkpoint(folder: Path) -> Optional[Path]:
    """The complete checkpoint with the most steps under `folder` (None: start from step 0)."""
    complete = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        suffix = path.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and (path / CHECKPOINT_COMPLETE).is_file():
            complete.append((int(suffix), path))
    return max(complete)[1] if complete else None


# transformers 5.2x renamed gradient_checkpointing to activation_checkpointing and warns on the
# old name; older 5.x releases know only the old one.
_CHECKPOINTING_ARGUMENT = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                           else "gradient_checkpointing")


def training_arguments(train_cfg, output_dir: Path, seed: int, run_name: Optional[str] = None) -> TrainingArguments:
    if train_cfg.deepspeed is not None:
        describe_single_process_group()
    if train_cfg.save_steps < 0 or train_cfg.save_total_limit < 1:
        raise BadInput(f"train.save_steps must be >= 0 and train.save_total_limit >= 1, got "
                       f"{train_cfg.save_steps} and {train_cfg.save_total_limit}")
    checkpoints = train_cfg.save_steps > 0
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=train_cfg.epochs,
        max_steps=train_cfg.max_steps,
        learning_rate=train_cfg.learning_rate,
        per_device_train_batch_size=train_cfg.per_device_batch_size,
        gradient_accumulation_steps=train_cfg.gradient_accumulation_steps,
        lr_scheduler_type=train_cfg.lr_scheduler,
        warmup_steps=train_cfg.warmup_ratio,
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm,
        bf16=train_cfg.bf16,
        **{_CHECKPOINTING_ARGUMENT: train_cfg.gradient_checkpointing},
        deepspeed=resolve_deepspeed(train_cfg.deepspeed),
        logging_strategy="steps",
        logging_steps=train_cfg.logging_steps,
        save_strategy="steps" if checkpoints else "no",
        save_steps=train_cfg.save_steps if checkpoints else 500,
        save_total_limit=train_cfg.save_total_limit,
        # train.report_to's trackers (none by default: nothing is reported or contacted).
        report_to=tracking.trackers(train_cfg),
        run_name=run_name,
        # trackio's project (the Trainer's default is "huggingface"): the closing scores join
        # the run under the same project and name.
        project=tracking.PROJECT,
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def _mean_loss(loss_curve: list[list[float]]) -> float:
    """Mean loss per optimizer step: each logged value covers the steps since the previous log."""
    total, previous = 0.0, 0
    for step, loss in loss_curve:
        total += loss * (step - previous)
        previous = step
    return total / previous if previous else float("nan")


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux: the process's peak resident memory.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_method(
    *,
    method: Method,
    model,
    tokenizer,
    dataset,
    train_cfg,
    output_dir: Path,
    seed: int,
    sample_refresher: Optional[Callable] = None,
    run_root: Optional[Path] = None,
    run_name: Optional[str] = None,
    samples_per_prompt: Optional[int] = None,
) -> dict:
    """Train `model` in place with `method`; returns throughput, memory and the trajectory.

    `output_dir` holds the checkpoints (train.save_steps): training resumes from the newest
    complete one there; the caller removes them once its stage is complete. `run_root` is where
    train.report_to's trackers keep their local logs (`tracking/`)."""
    if len(dataset) == 0:
        raise BadInput("no training examples left after filtering the dataset")
    names = tracking.trackers(train_cfg)
    if names:
        if run_root is None:
            raise BadInput("train.report_to needs a run directory for its logs")
        tracking.prepare(run_root, names)
    args = training_arguments(train_cfg, output_dir, seed, run_name=run_name)
    watch = StepWatch()
    trainer = MethodTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=RoleCollator(method),
        callbacks=[CheckpointSealer(sample_refresher), watch, FiniteWatch()],
        method=method,
        pad_id=tokenizer.pad_token_id,
        sample_refresher=sample_refresher,
        gradient_cache_tokens=train_cfg.gradient_cache_tokens if train_cfg.gradient_cache else 0,
        shared_prompt_packing=train_cfg.shared_prompt_packing,
        term_gradient_every=train_cfg.term_gradient_every,
        samples_per_prompt=samples_per_prompt,
    )
    # A labelled bar and one INFO line per logged step instead of the Trainer's raw dict.
    from harness.progress import label_trainer

    label_trainer(trainer, f"train {method.name}" if hasattr(method, "name") else "train")
    remove_unsealed_checkpoints(Path(output_dir))  # a killed run's partial write
    if names:
        tracking.attach(trainer, run_root)
    resume_from = newest_complete_checkpoint(Path(output_dir)) if train_cfg.save_steps > 0 else None
    if resume_from is not None and sample_refresher is not None and (resume_from / _REFRESH_STATE).is_file():
        sample_refresher.load_state_dict(torch.load(resume_from / _REFRESH_STATE, weights_only=False))
    if torch.cuda.is_available():
        # Sampling and reference scoring ran in this process before: measure training alone.
        torch.cuda.reset_peak_memory_stats()
    elif train_cfg.lora.rank > 0:
        # Adapters on a frozen base (LoRA): activations in their own mappings, returned when
        # freed, since glibc's heap otherwise keeps a LoRA step's freed buffers resident (0.79 ×
        # the peak RSS, at 1.33 × the step time; full training would pay 1.40 × for 0.92 ×, so it
        # keeps glibc's default: harness/allocator.py). No value changes.
        allocator.fix_mmap_threshold()
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    except BaseException:
        # A checkpoint cut short (disk full mid-write) is never resumed from, but it holds the
        # space the rerun needs: only sealed checkpoints are kept.
        remove_unsealed_checkpoints(Path(output_dir))
        raise
    elapsed = time.perf_counter() - started
    curves = trajectory(trainer.state.log_history)
    losses = [loss for _, loss in curves["loss_curve"]]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"training produced a non-finite loss: {losses[-5:]}")
    return {
        "steps": int(result.global_step),
        # From the logged curve rather than the Trainer's running sum, which restarts on resume.
        "train_loss": _mean_loss(curves["loss_curve"]),
        "wall_time_s": elapsed,
        "throughput_samples_per_s": float(result.metrics.get("train_samples_per_second", 0.0)),
        "peak_memory_mb": peak_memory_mb(),
        **curves,
        "resumed_from_step": int(resume_from.name.rsplit("-", 1)[-1]) if resume_from is not None else None,
        "first_step_trained": watch.first_step,
        **({"tracker_runs": tracking.tracker_runs(names)} if names else {}),
        "trainer": trainer,
    }
