"""SimPO: Simple Preference Optimization (Meng, Xia, Chen 2024, arXiv:2405.14734, Eq. 6)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.errors import BadInput
from harness.registry import FloatDim, Method, SequenceLogps


@dataclass
class SimPOConfig:
    # β = 2.0 and γ = 0.5: the low ends of the ranges the SimPO paper reports tuning over
    # (β 2.0–2.5, γ 0.5–1.5); γ = 0.5 is also TRL's CPOConfig.simpo_gamma default.
    # γ here is the margin itself. SimPO's own code takes `gamma_beta_ratio` = γ/β instead, so its
    # gamma_beta_ratio 0.5 at β 2.0 means γ = 1.0 here. TRL's `simpo_gamma` is γ itself: it
    # subtracts γ/β inside β·(…), which nets the same margin γ as this loss.
    beta: float = field(default=2.0, metadata={
        "help": "β: scales the margin of per-token log-probabilities (chosen − negative)."})
    gamma: float = field(default=0.5, metadata={
        "help": "γ: the target margin subtracted inside the sigmoid."})


class SimPO(Method):
    """SimPO: length-normalised log-likelihood margin with a target margin γ, no reference model.

    loss = −log σ( β·log π_θ(y_w|x)/|y_w| − β·log π_θ(y_l|x)/|y_l| − γ )
    """

    name = "simpo"
    summary = "SimPO: −log σ(β·(per-token logp of chosen − of negative) − γ), reference-free"
    Config = SimPOConfig
    roles = ("chosen", "negative")
    reference_roles = ()
    # β: log over 1-10, covering the SimPO paper's tuned values (2.0-2.5, and 10 for its
    # Gemma runs); γ: the target margin, linear over 0-2, covering its reported 0.5-1.6 and
    # "no margin". Both are key to SimPO (its paper tunes both), so it gets two dimensions.
    search_space = {"beta": FloatDim(1.0, 10.0, log=True), "gamma": FloatDim(0.0, 2.0)}

    def validate(self) -> None:
        cfg = self.config
        if not (math.isfinite(cfg.beta) and cfg.beta > 0):
            raise BadInput(f"method.beta must be a finite number > 0, got {cfg.beta}")
        if not (math.isfinite(cfg.gamma) and cfg.gamma >= 0):
            raise BadInput(f"method.gamma must be a finite number >= 0, got {cfg.gamma}")

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        cfg = self.config
        chosen_reward = cfg.beta * policy["chosen"].mean
        negative_reward = cfg.beta * policy["negative"].mean
        losses = -F.logsigmoid(chosen_reward - negative_reward - cfg.gamma)
        return losses, {
            "chosen_reward": chosen_reward.detach().mean(),
            "negative_reward": negative_reward.detach().mean(),
            "reward_accuracy": (chosen_reward > negative_reward).float().mean(),
        }
