"""Self-Align SFT: supervised fine-tuning on the base policy's own safe self-samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.anchors import AnchorSettings
from harness.registry import Method, SequenceLogps


@dataclass
class SelfAlignSFTConfig(AnchorSettings):
    """Same NLL as Safe SFT; only the data differ (chosen_source), so no hyperparameters. Its
    candidates are drawn with the same anchor options as D²O's (harness/anchors.py), unsteered
    by default."""


class SelfAlignSFT(Method):
    """Self-Align SFT (the paper's baseline): NLL on self-samples the cost model marks safe.

    loss(x, y_s) = − log π_θ(y_s|x) / |y_s|

    where y_s is a response the base policy sampled for x and the cost model scored as safe
    (`chosen_source = "safe_self_samples"`: the data stage fills the `chosen` role with it instead
    of the dataset's preferred response). Per-token mean per example, like `sft`.
    """

    name = "self-align-sft"
    summary = "Self-Align SFT: per-token NLL of the base policy's own self-samples judged safe"
    Config = SelfAlignSFTConfig
    roles = ("chosen",)
    reference_roles = ()
    chosen_source = "safe_self_samples"
    # No hyperparameters of its own: tuning searches only the learning rate (added by the tuner).
    search_space = {}

    def validate(self) -> None:
        self.config.validate()

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        chosen_mean_logp = policy["chosen"].mean
        return -chosen_mean_logp, {"chosen_mean_logp": chosen_mean_logp.detach().mean()}
