"""Safe SFT: supervised fine-tuning on the safer response of each pair."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import Method, SequenceLogps


@dataclass
class SFTConfig:
    """Plain NLL has no hyperparameters of its own; the learning rate lives in `train.*`."""


class SafeSFT(Method):
    """Safe SFT (the paper's "Safe SFT" baseline): maximum likelihood on the preferred response.

    loss(x, y_w) = − log π_θ(y_w|x) / |y_w|

    i.e. the negative log-likelihood averaged over the response's tokens, per example. The batch
    loss is the mean of these per-example values, so every example weighs the same whatever its
    length (Hugging Face's SFTTrainer instead averages over all tokens of the batch, which gives
    long responses more weight).
    """

    name = "sft"
    summary = "Safe SFT: per-token NLL of the preferred (safer) response of each pair"
    Config = SFTConfig
    roles = ("chosen",)
    reference_roles = ()
    # No hyperparameters of its own: tuning searches only the learning rate (added by the tuner).
    search_space = {}

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        chosen_mean_logp = policy["chosen"].mean
        return -chosen_mean_logp, {"chosen_mean_logp": chosen_mean_logp.detach().mean()}
