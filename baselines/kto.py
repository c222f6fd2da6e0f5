"""KTO: Kahneman–Tversky Optimisation (Ethayarajh et al. 2024, arXiv:2402.01306)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from harness.errors import BadInput
from harness.registry import FloatDim, Method, SequenceLogps


@dataclass
class KTOConfig:
    # β = 0.1: the KTO paper's default (and TRL's KTOConfig default).
    beta: float = field(default=0.1, metadata={
        "help": "β: scales the log-ratios around the KL reference point."})
    # λ_D, λ_U: the paper recommends λ_D·n_D / (λ_U·n_U) in [1, 4/3]; every example here carries
    # one desirable and one undesirable response (n_D = n_U), so 1 and 1 (TRL's defaults too).
    desirable_weight: float = field(default=1.0, metadata={
        "help": "λ_D: weight of the desirable (chosen) responses' loss."})
    undesirable_weight: float = field(default=1.0, metadata={
        "help": "λ_U: weight of the undesirable (negative) responses' loss."})


class KTO(Method):
    """KTO on paired data: each example contributes its chosen (desirable) and its negative
    (undesirable) response as two unpaired KTO items.

    r_w  = log π_θ(y_w|x) − log π_ref(y_w|x),   r_l = log π_θ(y_l|x) − log π_ref(y_l|x)
    z0   = max(0, mean over the batch of [log π_θ(y'|x') − log π_ref(y'|x')]), no gradient,
           where (x', y') are the mismatched pairs of the `kl` role (prompt with another
           example's response): the KL(π_θ ‖ π_ref) reference point of the paper
    loss = ( λ_D · (1 − σ(β·(r_w − z0))) + λ_U · (1 − σ(β·(z0 − r_l))) ) / 2

    Halving the pair makes the batch mean equal KTO's mean over its 2B unpaired items (TRL's
    `losses.nanmean()`). z0 is estimated from the per-device micro-batch; TRL also averages it
    across processes, so under data parallelism the two differ by that averaging.
    """

    name = "kto"
    summary = "KTO: prospect-theoretic loss on chosen and negative around a batch KL reference point"
    Config = KTOConfig
    roles = ("chosen", "negative", "kl")
    reference_roles = ("chosen", "negative", "kl")
    # β: the KTO paper's 0.1 in the middle of a log decade either way; λ_D = λ_U = 1 stay
    # (paired data gives n_D = n_U, where the paper's recommended ratio is 1).
    search_space = {"beta": FloatDim(0.01, 1.0, log=True)}

    def validate(self) -> None:
        cfg = self.config
        if not (math.isfinite(cfg.beta) and cfg.beta > 0):
            raise BadInput(f"method.beta must be a finite number > 0, got {cfg.beta}")
        for field_name in ("desirable_weight", "undesirable_weight"):
            weight = getattr(cfg, field_name)
            if not (math.isfinite(weight) and weight > 0):
                raise BadInput(f"method.{field_name} must be a finite number > 0, got {weight}")

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        cfg = self.config
        chosen_log_ratio = policy["chosen"].total - reference["chosen"]
        negative_log_ratio = policy["negative"].total - reference["negative"]
        kl_log_ratio = policy["kl"].total - reference["kl"]
        # The reference point is a baseline, not an objective: no gradient flows through it.
        kl_estimate = kl_log_ratio.detach().mean().clamp(min=0)
        desirable = cfg.desirable_weight * (1 - torch.sigmoid(cfg.beta * (chosen_log_ratio - kl_estimate)))
        undesirable = cfg.undesirable_weight * (
            1 - torch.sigmoid(cfg.beta * (kl_estimate - negative_log_ratio))
        )
        losses = (desirable + undesirable) / 2
        return losses, {
            "kl_estimate": kl_estimate,
            "chosen_reward": cfg.beta * chosen_log_ratio.detach().mean(),
            "negative_reward": cfg.beta * negative_log_ratio.detach().mean(),
        }
