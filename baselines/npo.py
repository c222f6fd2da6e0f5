"""NPO: Negative Preference Optimization (Zhang, Lin, Bai, Mei 2024, arXiv:2404.05868)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.errors import BadInput
from harness.registry import FloatDim, Method, SequenceLogps


@dataclass
class NPOConfig:
    # β = 0.1: the value used throughout the NPO paper's TOFU experiments.
    beta: float = field(default=0.1, metadata={
        "help": "β of −(2/β)·log σ(−β·log-ratio of the negative): towards 0 the loss becomes gradient "
                "ascent."})


class NPO(Method):
    """Negative Preference Optimization: a bounded, reference-anchored form of gradient ascent.

    loss(x, y_l) = −(2/β) · log σ( −β · [log π_θ(y_l|x) − log π_ref(y_l|x)] )

    with sequence (summed) log-probs. Its gradient with respect to log π_θ(y_l|x) is
    2·σ(β·r), r the log-ratio: it tends to 1, GA's gradient on the summed log-prob, as β → 0,
    and fades once the negative is already less likely than under the reference. D²O without
    its sample term is this loss with β = α and without the 2/β factor (`d2o-nosample`).
    """

    name = "npo"
    summary = "NPO: −(2/β)·log σ(−β·log-ratio of the negative), a bounded gradient ascent"
    Config = NPOConfig
    roles = ("negative",)
    reference_roles = ("negative",)
    # β: the NPO paper's 0.1 in the middle of a log decade either way; small β approaches
    # gradient ascent, large β saturates the sigmoid sooner (a gentler push).
    search_space = {"beta": FloatDim(0.01, 1.0, log=True)}

    def validate(self) -> None:
        beta = self.config.beta
        if not (math.isfinite(beta) and beta > 0):
            raise BadInput(f"method.beta must be a finite number > 0, got {beta}")

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        beta = self.config.beta
        negative_log_ratio = policy["negative"].total - reference["negative"]
        losses = -(2.0 / beta) * F.logsigmoid(-beta * negative_log_ratio)
        return losses, {"negative_log_ratio": negative_log_ratio.detach().mean()}
