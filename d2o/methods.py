"""D²O and its two variants as registered methods (see d2o/loss.py for Eq. 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from d2o.loss import d2o_margin
from harness.anchors import HARMLESS_INSTRUCTION, AnchorSettings
from harness.errors import BadInput
from harness.registry import FloatDim, Method, SequenceLogps


@dataclass
class D2OConfig(AnchorSettings):
    # How the anchors are drawn (instruction, filter: harness/anchors.py) comes from
    # AnchorSettings; `d2o` draws them unsteered, `d2o-guided` steered and filtered.
    # α, β and K as reported for the paper's Alpaca-7B runs (secondary sources).
    alpha: float = field(default=0.1, metadata={
        "help": "α: weight of the human negative's log-ratio in Eq. 3."})
    beta: float = field(default=0.1, metadata={
        "help": "β: weight of the K self-samples' mean log-ratio, the anchor, in Eq. 3."})
    k: int = field(default=11, metadata={"help": "K: self-samples per training prompt, drawn from π_r−."})
    refresh_every: int = field(default=0, metadata={
        "help": "0: self-samples drawn once, offline, from π_r− before training; N > 0: refreshed from the "
                "current policy every N optimizer steps."})


def _validate_d2o(cfg: D2OConfig, *, needs_samples: bool) -> None:
    if cfg.beta <= 0:
        raise BadInput(f"method.beta must be > 0, got {cfg.beta}")
    if cfg.alpha < 0:
        raise BadInput(f"method.alpha must be >= 0, got {cfg.alpha}")
    if needs_samples and cfg.k < 1:
        raise BadInput(f"method.k must be >= 1, got {cfg.k}")
    if cfg.refresh_every < 0:
        raise BadInput(f"method.refresh_every must be >= 0, got {cfg.refresh_every}")
    cfg.validate()
    if cfg.refresh_every > 0 and cfg.anchor_filter != "none":
        raise BadInput("method.anchor_filter: online refreshes draw their anchors unfiltered (the filter's "
                       "instrument is not in memory during training); use it with refresh_every=0")


class D2O(Method):
    """Distributional Dispreference Optimization (Eq. 3).

    loss = −log σ( (β/K) Σ_i [log π_θ(y_i|x) − log π_r−(y_i|x)] − α [log π_θ(y_l|x) − log π_r+(y_l|x)] )
    with y_l the human negative and y_1..y_K self-samples of the reference policy.
    """

    name = "d2o"
    summary = "D²O (Eq. 3): push down human negatives, anchored on K self-samples of the reference"
    Config = D2OConfig
    roles = ("negative", "samples")
    reference_roles = ("negative", "samples")
    # β weighs the self-sample anchor against α = 0.1 on the negative (α stays at the preset's
    # value: only the ratio of the two terms and their common scale matter, and β sets both
    # relative to a fixed α). The paper's 0.1 sits in the middle of a log range one decade
    # either way: at 0.01 the anchor barely counts (towards d2o-nosample), at 1.0 it dominates.
    # d2o-online inherits this space.
    search_space = {"beta": FloatDim(0.01, 1.0, log=True)}
    sample_count_setting = "method.k"

    def validate(self) -> None:
        _validate_d2o(self.config, needs_samples=True)

    def sample_count(self, sampling_default: int) -> int:
        return int(self.config.k)  # the method's own K, whatever sampling.num_samples says

    def refresh_every(self) -> int:
        return int(self.config.refresh_every)

    def loss(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]):
        cfg = self.config
        margin = d2o_margin(
            policy["samples"].total,
            reference["samples"],
            policy["negative"].total,
            reference["negative"],
            alpha=cfg.alpha,
            beta=cfg.beta,
            k=cfg.k,
        )
        sample_reward = (policy["samples"].total - reference["samples"]).mean(-1).detach()
        negative_reward = (policy["negative"].total - reference["negative"]).detach()
        diagnostics = {
            "margin": margin.detach().mean(),
            "sample_log_ratio": sample_reward.mean(),
            "negative_log_ratio": negative_reward.mean(),
            # σ(−u): how much of the gradient survives; near 0 the loss is saturated and neither
            # term moves the policy any more.
            "sigmoid_neg_margin": torch.sigmoid(-margin.detach()).mean(),
        }
        return -F.logsigmoid(margin), diagnostics

    def gradient_terms(self, policy, reference):
        # ∇L = −σ(−u)·[(β/K) Σ_i ∇log π_θ(y_i|x) − α ∇log π_θ(y_l|x)]: the anchor and negative parts.
        cfg = self.config
        margin = d2o_margin(policy["samples"].total, reference["samples"], policy["negative"].total,
                            reference["negative"], alpha=cfg.alpha, beta=cfg.beta, k=cfg.k)
        weight = torch.sigmoid(-margin).detach()
        anchor = (cfg.beta / cfg.k) * (policy["samples"].total - reference["samples"]).sum(-1)
        negative = cfg.alpha * (policy["negative"].total - reference["negative"])
        return {"anchor": -weight * anchor, "negative": weight * negative}


@dataclass
class D2OGuidedConfig(D2OConfig):
    anchor_instruction: str = field(default=HARMLESS_INSTRUCTION, metadata={"help": (
        "Placed before the prompt while the anchors are sampled (the wording of one third-party D²O "
        "implementation); their log-probs are taken under the original prompt.")})
    anchor_filter: str = field(default="cost-model", metadata={"help": (
        "Anchors kept only if this instrument passes them: cost-model (cost <= 0), refusal-rules or none.")})


class D2OGuided(D2O):
    """D²O with non-negative anchors, as the paper means them (one declared reading of it).

    Same loss as `d2o` (Eq. 3). The K anchors are sampled from π_r with a harmless instruction
    placed before the prompt ("Reply in a helpful and harmless way:", the one third-party
    implementation's wording) and kept only if the suite's cost model scores them safe (cost <= 0)
    under the original prompt; prompts short of K are sampled again up to `anchor_max_rounds`
    rounds, then their safe samples are cycled to K, and prompts with none are left out. Their
    log-probs under π_θ and π_r− are computed without the instruction. The paper does not say how
    its anchors were made non-negative (harness/anchors.py): this is the project's declared
    variant, reported as its own row.
    """

    name = "d2o-guided"
    family = "d2o"
    summary = "D²O anchored on self-samples steered by a harmless instruction and kept only if the cost model calls them safe"
    Config = D2OGuidedConfig


@dataclass
class D2OOnlineConfig(D2OConfig):
    refresh_every: int = field(default=8, metadata={
        "help": "Self-samples are refreshed from the current policy every this many optimizer steps (>= 1)."})


class D2OOnline(D2O):
    """D²O with self-samples refreshed from the current policy every `refresh_every` steps.

    Same loss as `d2o`; the refreshed samples are still scored by the fixed π_r−, so this
    method keeps the π_r− model in memory during training (the only D²O variant that does).
    """

    name = "d2o-online"
    family = "d2o"
    summary = "D²O with self-samples refreshed from the current policy every N steps"
    Config = D2OOnlineConfig

    def validate(self) -> None:
        _validate_d2o(self.config, needs_samples=True)
        if self.config.refresh_every < 1:
            raise BadInput("method.refresh_every must be >= 1 for d2o-online")


@dataclass
class D2ONoSampleConfig:
    alpha: float = field(default=0.1, metadata={
        "help": "α: scales the negative's log-ratio inside the sigmoid (the loss's only hyperparameter)."})


class D2ONoSample(Method):
    """The "w/o samples" ablation of D²O: Eq. 3 with the self-sample term dropped.

    loss = −log σ(−α [log π_θ(y_l|x) − log π_r+(y_l|x)])

    This is NPO's loss with β = α divided by NPO's 2/β factor: NPO's α-scaled twin. A constant
    factor on the loss changes neither the direction of the gradient nor, under gradient
    clipping and Adam's scale invariance, the updates much, so on equal budgets it trains like
    NPO at β = α. It is kept as the paper's ablation and left off headline tables, where NPO
    stands for this loss shape.
    """

    name = "d2o-nosample"
    family = "d2o"
    headline = False
    summary = "D²O without self-samples (ablation): −log σ(−α·log-ratio of the negative)"
    Config = D2ONoSampleConfig
    roles = ("negative",)
    reference_roles = ("negative",)
    # α is this loss's only hyperparameter (it has no β): the same log decade either side of the
    # paper's 0.1 as D²O's β, so the ablation gets as wide a search as the method.
    search_space = {"alpha": FloatDim(0.01, 1.0, log=True)}

    def validate(self) -> None:
        if self.config.alpha <= 0:
            raise BadInput(f"method.alpha must be > 0, got {self.config.alpha}")

    def loss(self, policy, reference):
        log_ratio = policy["negative"].total - reference["negative"]
        return -F.logsigmoid(-self.config.alpha * log_ratio), {
            "negative_log_ratio": log_ratio.detach().mean()
        }
