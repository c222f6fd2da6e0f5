"""`--dry-run`: resolve a run's full plan (models, data, stages, memory) without loading anything.

The GPU memory figures are estimates from parameter counts, not measurements: mixed-precision
Adam keeps bf16 weights and gradients (2+2 bytes/param) and fp32 master weights plus two moments
(12 bytes/param); ZeRO shards optimizer states (stage ≥ 1), gradients (≥ 2) and weights (3)
across GPUs. Activations assume gradient checkpointing (one hidden state per layer per token) and
float32 log-probs over the vocabulary for every sequence of a micro-batch.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.config import RunConfig
from harness.pipeline import STAGES, run_id_for
from harness.provenance import provenance_table
from harness.registry import get_method

# Architectures of the paper preset's models (LLaMA-7B), so the plan needs no download.
KNOWN_ARCHITECTURES = {
    "PKU-Alignment/alpaca-7b-reproduced": {"params": 6.74e9, "hidden": 4096, "layers": 32, "vocab": 32001},
    "PKU-Alignment/beaver-7b-v1.0-reward": {"params": 6.74e9, "hidden": 4096, "layers": 32, "vocab": 32001},
    "PKU-Alignment/beaver-7b-v1.0-cost": {"params": 6.74e9, "hidden": 4096, "layers": 32, "vocab": 32001},
}
GIB = 2**30


def _architecture(spec: str):
    if spec in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[spec]
    config = Path(spec) / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inter = c.get("intermediate_size", 4 * h)
        params = layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h
        return {"params": float(params), "hidden": h, "layers": layers, "vocab": vocab}
    return None


def training_memory_gib(arch: dict, cfg: RunConfig, n_gpus: int, sequences_per_micro_batch: int) -> float:
    p = arch["params"]
    stage = 0
    spec = cfg.train.deepspeed or ""
    for s in (3, 2, 1):
        if f"zero{s}" in spec:
            stage = s
            break
    weights, grads, optim = 2 * p, 2 * p, 12 * p
    if "offload" in spec:
        optim = 0.0
    if stage >= 1:
        optim /= n_gpus
    if stage >= 2:
        grads /= n_gpus
    if stage >= 3:
        weights /= n_gpus
    tokens = sequences_per_micro_batch * cfg.train.max_length
    activations = tokens * arch["hidden"] * arch["layers"] * 2
    logits = tokens * arch["vocab"] * 4
    return (weights + grads + optim + activations + logits) / GIB


def _at(revision) -> str:
    """How a Hub id's pin reads in the plan: unpinned ids say they follow their default branch."""
    return f"@{revision}" if revision else ""


def _negative_text(cfg: RunConfig) -> str:
    if cfg.data.format == "pku-saferlhf":
        return (f"negative = the {'less safe' if cfg.data.negative_from == 'safer' else 'worse'} response of each "
                f"pair, only unsafe negatives: {cfg.data.only_unsafe_negatives}")
    if cfg.data.format == "hh-rlhf":
        return "negative = the rejected dialogue's last reply"
    return "negative = the row's harmful response" + (
        f" (harm score ≥ {cfg.data.min_harm_score})" if cfg.data.min_harm_score is not None else "")


def describe_plan(cfg: RunConfig, n_gpus: int = 8) -> str:
    method = get_method(cfg.method_name)(cfg.method)
    k = getattr(cfg.method, "k", cfg.sampling.num_samples)
    seqs_per_example = sum(k if role == "samples" else 1 for role in method.roles)
    lines = [
        f"run id:      {run_id_for(cfg)}",
        f"method:      {cfg.method_name}  {method.hyperparameters()}",
        f"roles:       {', '.join(method.roles) or '—'}; reference log-probs for: {', '.join(method.reference_roles) or '—'}",
        f"policy:      {cfg.model.policy}{_at(cfg.model.policy_revision)} ({cfg.model.dtype}, prompt format "
        f"{cfg.model.prompt_format})",
        f"references:  π_r− (samples) = {cfg.model.reference_for_samples}, π_r+ (negatives) = {cfg.model.reference_for_negatives}",
        f"scorers:     reward {cfg.model.reward_model}{_at(cfg.model.reward_model_revision)}; cost "
        f"{cfg.model.cost_model}{_at(cfg.model.cost_model_revision)} (template {cfg.eval.scorer_template!r})",
        f"suite:       {cfg.suite}",
        f"dataset:     {cfg.data.dataset}{_at(cfg.data.revision)}"
        f"{f', folder {cfg.data.data_dir}' if cfg.data.data_dir else ''} ({cfg.data.format}) [{cfg.data.train_split} → train, "
        f"{cfg.data.eval_split} → eval], " + _negative_text(cfg),
        *([f"training on: {cfg.data.train_dataset} ({cfg.data.format}) [{cfg.data.train_split}] in place of "
           f"the suite's own rows; evaluation, instruments and capability stay the suite's"]
          if cfg.data.train_dataset is not None else []),
        f"judge:       {cfg.eval.judge_model or 'off'}" + (f" at {cfg.eval.judge_base_url}" if cfg.eval.judge_base_url else ""),
        f"capability:  {', '.join(cfg.eval.lm_eval_tasks) or 'off'}",
        f"training:    lr {cfg.train.learning_rate}, epochs {cfg.train.epochs}, micro-batch {cfg.train.per_device_batch_size} "
        f"× accumulation {cfg.train.gradient_accumulation_steps}, max length {cfg.train.max_length}, "
        f"bf16 {cfg.train.bf16}, DeepSpeed {cfg.train.deepspeed or 'off'}",
        "stages:      " + " → ".join(STAGES),
    ]
    arch = _architecture(cfg.model.policy)
    if arch:
        micro = cfg.train.per_device_batch_size * seqs_per_example
        train_gib = training_memory_gib(arch, cfg, n_gpus, micro)
        gen_gib = (2 * arch["params"] + 2 * 2 * arch["layers"] * arch["hidden"] * cfg.sampling.batch_size
                   * (cfg.train.max_length + cfg.sampling.max_new_tokens)) / GIB
        lines.append(
            f"GPU memory:  training ≈ {train_gib:.1f} GiB per GPU on {n_gpus} GPUs "
            f"({micro} sequences per micro-batch); sampling/generation ≈ {gen_gib:.1f} GiB; "
            f"policy {arch['params'] / 1e9:.2f}B parameters (estimates, see harness/plan.py)"
        )
    else:
        lines.append("GPU memory:  unknown (the policy's architecture is not known without downloading it)")
    lines += provenance_table(cfg)
    lines.append("validation:  config, method hyperparameters and presets OK")
    return "\n".join(lines)
