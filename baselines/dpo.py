"""DPO (Rafailov et al. 2023, arXiv:2305.18290) and the paper's DPO-Full variant."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.errors import BadInput
from harness.registry import FloatDim, Method, SequenceLogps


@dataclass
class DPOConfig:
    # β = 0.1: the DPO paper's default for most experiments (also TRL's DPOConfig default).
    beta: float = field(default=0.1, metadata={
        "help": "β: scales the log-ratio margin inside the sigmoid (the implicit KL penalty's strength)."})
    # ε of conservative DPO (cDPO, Mitchell 2023: "A note on DPO with noisy preferences"):
    # the probability that a pair's label is flipped. 0 is plain DPO.
    label_smoothing: float = field(default=0.0, metadata={
        "help": "ε of conservative DPO: the assumed probability that a pair's label is flipped, in [0, 0.5) "
                "(0: plain DPO)."})


def dpo_margin(
    policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, chosen log-ratio, negative log-ratio) with h the DPO margin before β, each [B]."""
    chosen_log_ratio = policy["chosen"].total - reference["chosen"]
    negative_log_ratio = policy["negative"].total - reference["negative"]
    return chosen_log_ratio - negative_log_ratio, chosen_log_ratio, negative_log_ratio


class DPO(Method):
    """DPO on the filtered pairs (the paper's DPO-Ori), with optional cDPO label smoothing.

    h      = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)]
    loss   = −(1 − ε) · log σ(β·h) − ε · log σ(−β·h)

    with sequence (summed) log-probs; ε = label_smoothing = 0 gives DPO's
    loss = −log σ(β·h). (TRL 1.16's `sigmoid` loss has no ε; its `robust` loss is a different,
    unbiased correction, not this one.)
    """

    name = "dpo"
    summary = "DPO (the paper's DPO-Ori): −log σ(β·log-ratio margin) on the filtered pairs"
    Config = DPOConfig
    roles = ("chosen", "negative")
    reference_roles = ("chosen", "negative")
    # β: the DPO paper's 0.1 in the middle of a log decade either way (published DPO runs use
    # 0.01-0.5); label_smoothing stays at 0 (plain DPO). dpo-full inherits this space.
    search_space = {"beta": FloatDim(0.01, 1.0, log=True)}

    def validate(self) -> None:
        cfg = self.config
        if not (math.isfinite(cfg.beta) and cfg.beta > 0):
            raise BadInput(f"method.beta must be a finite number > 0, got {cfg.beta}")
        if not (0.0 <= cfg.label_smoothing < 0.5):
            raise BadInput(f"method.label_smoothing must be in [0, 0.5), got {cfg.label_smoothing}")

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        cfg = self.config
        margin, chosen_log_ratio, negative_log_ratio = dpo_margin(policy, reference)
        logits = cfg.beta * margin
        losses = -(1.0 - cfg.label_smoothing) * F.logsigmoid(logits)
        if cfg.label_smoothing:
            losses = losses - cfg.label_smoothing * F.logsigmoid(-logits)
        chosen_reward = cfg.beta * chosen_log_ratio.detach()
        negative_reward = cfg.beta * negative_log_ratio.detach()
        diagnostics = {
            "chosen_reward": chosen_reward.mean(),
            "negative_reward": negative_reward.mean(),
            "reward_margin": (chosen_reward - negative_reward).mean(),
            "reward_accuracy": (chosen_reward > negative_reward).float().mean(),
        }
        return losses, diagnostics


class DPOFull(DPO):
    """DPO on every pair of the dataset (the paper's DPO-Full, ~297K PKU-SafeRLHF pairs).

    Same loss as `dpo`; `pair_selection = "all_pairs"` makes the data stage skip the filter that
    keeps only pairs with an unsafe negative.
    """

    name = "dpo-full"
    summary = "DPO-Full: the DPO loss on every pair of the dataset, unfiltered"
    pair_selection = "all_pairs"
