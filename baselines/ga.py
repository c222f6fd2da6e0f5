"""Gradient ascent on the negatives: the unlearning baseline that D²O's anchors are meant to fix."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import Method, SequenceLogps


@dataclass
class GAConfig:
    """GA has no hyperparameters beyond the learning rate and step budget in `train.*`."""


class GradientAscent(Method):
    """Gradient ascent (GA) on the human negatives: minimise their likelihood.

    loss(x, y_l) = + log π_θ(y_l|x) / |y_l|

    the per-token mean log-prob of the negative, minimised. It is unbounded below, which is why
    GA drifts into "catastrophic unlearning" (the paper's observation); the harness keeps it
    unclipped so that collapse shows up in the benchmark rather than being masked.
    """

    name = "ga"
    summary = "Gradient ascent: minimise the per-token log-likelihood of the human negatives"
    Config = GAConfig
    roles = ("negative",)
    reference_roles = ()
    # No hyperparameters of its own: tuning searches only the learning rate (added by the tuner).
    search_space = {}

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        negative_mean_logp = policy["negative"].mean
        return negative_mean_logp, {"negative_mean_logp": negative_mean_logp.detach().mean()}
