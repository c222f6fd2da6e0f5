"""The untrained base policy, as a leaderboard entry every trained method is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.errors import RunFailure
from harness.registry import Method, SequenceLogps


@dataclass
class BaseConfig:
    """Nothing is trained, so nothing to tune."""


class BasePolicy(Method):
    """The base (reference) policy itself: no training, no loss.

    Its run skips the train stage and evaluates the base policy, so the leaderboard holds the
    starting point (the paper's "Alpaca" row) under the same generation and scoring settings.
    """

    name = "base"
    summary = "The untrained base policy (no training): the reference row of the leaderboard"
    Config = BaseConfig
    roles = ()
    reference_roles = ()
    # Read by the pipeline to skip the train stage; `Method` does not declare it (yet).
    trains: ClassVar[bool] = False

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        raise RunFailure("method 'base' does not train; the pipeline must skip its train stage")
