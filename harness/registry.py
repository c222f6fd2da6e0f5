"""The method registry: every training objective is one `Method` subclass behind a name.

The training loop only talks to this interface. It asks a method which response *roles* its
batches need and which of them need reference log-probs, computes the policy's sequence
log-probs for those roles, and hands both to `Method.loss`. It never looks at a method's name.

Roles (the columns a training example can carry):

- ``negative``: the human-annotated dispreferred response y_l, one per example.
- ``chosen``:   the preferred response y_w (the safer or better one, per config), one per example.
- ``samples``:  K responses sampled from a policy (self-generated anchors), shape [B, K].
- ``kl``:       a mismatched (prompt, response) pair used for KTO's KL reference estimate.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Union

import torch

from harness.errors import BadInput

ROLES = ("negative", "chosen", "samples", "kl")


@dataclass
class SequenceLogps:
    """Summed response-token log-probs and the number of response tokens, per sequence.

    ``total`` and ``n_tokens`` share a shape: [B] for single-response roles, [B, K] for samples.
    """

    total: torch.Tensor
    n_tokens: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.n_tokens.clamp(min=1)


@dataclass(frozen=True)
class FloatDim:
    """A real hyperparameter searched over [low, high], uniformly or (log=True) log-uniformly."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"FloatDim needs finite low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"FloatDim(log=True) needs low > 0, got {self.low}")

    def to_json(self) -> dict:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class IntDim:
    """An integer hyperparameter searched over low..high (inclusive), optionally log-uniformly."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"IntDim needs low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"IntDim(log=True) needs low > 0, got {self.low}")

    def to_json(self) -> dict:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class CategoricalDim:
    """A hyperparameter searched over a few named choices (str, int, float or bool)."""

    choices: tuple

    def __post_init__(self):
        if len(self.choices) < 2 or len(set(self.choices)) != len(self.choices):
            raise ValueError(f"CategoricalDim needs two or more distinct choices, got {self.choices!r}")

    def to_json(self) -> dict:
        return {"type": "categorical", "choices": list(self.choices)}


Dim = Union[FloatDim, IntDim, CategoricalDim]


class Method(ABC):
    """A training objective. Subclasses set the class attributes and implement `loss`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    # A dataclass of the method's hyperparameters, with the paper's defaults where it gives them.
    Config: ClassVar[type]
    # Response roles the batches must carry.
    roles: ClassVar[tuple[str, ...]]
    # Roles whose reference log-probs are precomputed before training (reference model unloaded).
    reference_roles: ClassVar[tuple[str, ...]] = ()
    # Methods of one family share a preset's `methods.<family>` settings (the D²O variants get
    # the preset's D²O K, α, β unless they set their own). Defaults to the method's own name.
    family: ClassVar[str] = ""
    # False for ablations that duplicate another method up to a constant (d2o-nosample is NPO's
    # α-scaled twin): published tables list them apart from the headline comparison.
    headline: ClassVar[bool] = True
    # False only for the untrained base policy: the pipeline then skips training.
    trains: ClassVar[bool] = True
    # Where the `chosen` role comes from: the dataset's preferred response, or (Self-Align SFT)
    # the base policy's own self-samples that the cost model marks safe.
    chosen_source: ClassVar[str] = "dataset"  # "dataset" | "safe_self_samples"
    # Which pairs feed training: those whose negative passes the data filter
    # (`data.only_unsafe_negatives`), or every pair of the dataset (DPO-Full).
    pair_selection: ClassVar[str] = "filtered"  # "filtered" | "all_pairs"
    # Self-samples are refreshed from the current policy every N optimizer steps when the
    # method's Config has a positive `refresh_every`; otherwise they are drawn once, offline,
    # from the reference policy before training.
    # What `d2o-bench tune` searches besides the learning rate: the method's own key
    # hyperparameters, keyed by their `Config` field name (the tuner sets `method.<name>`). The
    # learning rate is not declared here: the tuner adds it to every method over the same range
    # (`tune.learning_rate_low..high`, log scale). Empty: only the learning rate is tuned.
    search_space: ClassVar[dict[str, Dim]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("family") and "name" in cls.__dict__:
            cls.family = cls.name

    def __init__(self, config):
        self.config = config
        self.validate()

    def anchor_settings(self):
        """How its self-samples are drawn (harness/anchors.py): an instruction used only while
        sampling, a filter. Configs that inherit AnchorSettings carry them; others are unsteered."""
        from harness.anchors import anchor_settings_of

        return anchor_settings_of(self.config)

    # The setting that holds K when a method names its own (`sample_count`); others draw
    # `sampling.num_samples` self-samples per prompt.
    sample_count_setting: ClassVar[str] = "sampling.num_samples"

    def sample_count(self, sampling_default: int) -> int:
        """K: self-samples per training prompt. Asked once, by the run plan (harness/plan.py); every
        stage, the trainer and the online refresher take it from there, never from a tensor's shape."""
        return int(sampling_default)

    def refresh_every(self) -> int:
        """Optimizer steps between online refreshes of the self-samples; 0: drawn once, offline."""
        return 0

    def sequences_per_example(self, k: int) -> int:
        """Sequences one training example puts through the model: K for the samples role, one per other role."""
        return sum(k if role == "samples" else 1 for role in self.roles)

    @classmethod
    def draws_self_samples(cls) -> bool:
        """Whether its runs need self-samples: a samples role, or the chosen picked from them."""
        return "samples" in cls.roles or cls.chosen_source == "safe_self_samples"

    def validate(self) -> None:
        """Raise BadInput for hyperparameters outside the method's domain."""

    @abstractmethod
    def loss(
        self,
        policy: dict[str, SequenceLogps],
        reference: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-example losses [B] and a dict of scalar diagnostics to log (rewards, margins)."""

    def gradient_terms(self, policy: dict[str, SequenceLogps], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-example terms whose gradients add up to the loss's, by name, for the per-step
        diagnostic of which term moves the weights (`train.term_gradient_every`); {}: none."""
        return {}

    def hyperparameters(self) -> dict:
        from harness.anchors import ANCHOR_FIELD_DEFAULTS

        # Anchor options left at their unsteered defaults say nothing (and entries written before
        # they existed do not have them), as in the config hash.
        return {name: value for name, value in dataclasses.asdict(self.config).items()
                if not (name in ANCHOR_FIELD_DEFAULTS and value == ANCHOR_FIELD_DEFAULTS[name])}


# Lazy, like the suites: a method's module loads only when the method is used or the methods are
# listed, and this module imports none of them (they import it, for `Method`). Adding a method is
# one class and one line here.
METHODS: dict[str, str] = {
    "base": "baselines.base:BasePolicy",
    "d2o": "d2o.methods:D2O",
    "d2o-guided": "d2o.methods:D2OGuided",
    "d2o-nosample": "d2o.methods:D2ONoSample",
    "d2o-online": "d2o.methods:D2OOnline",
    "dpo": "baselines.dpo:DPO",
    "dpo-full": "baselines.dpo:DPOFull",
    "ga": "baselines.ga:GradientAscent",
    "ipo": "baselines.ipo:IPO",
    "kto": "baselines.kto:KTO",
    "npo": "baselines.npo:NPO",
    "orpo": "baselines.orpo:ORPO",
    "self-align-sft": "baselines.self_align_sft:SelfAlignSFT",
    "sft": "baselines.sft:SafeSFT",
    "simpo": "baselines.simpo:SimPO",
}

_LOADED: dict[str, type[Method]] = {}


def check_method(cls: type[Method]) -> None:
    """Refuse a method class that the loop could not drive (raised when the method is loaded)."""
    for attr in ("name", "summary", "Config", "roles"):
        if not hasattr(cls, attr):
            raise TypeError(f"method {cls.__name__} lacks {attr}")
    unknown = set(cls.roles) - set(ROLES)
    if unknown:
        raise TypeError(f"method {cls.name} names unknown roles {sorted(unknown)}")
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    for key, dim in cls.search_space.items():
        if key not in fields:
            raise TypeError(f"method {cls.name}: search_space names {key!r}, not a field of its Config")
        if not isinstance(dim, (FloatDim, IntDim, CategoricalDim)):
            raise TypeError(f"method {cls.name}: search_space[{key!r}] is not a FloatDim, IntDim or CategoricalDim")


def _load(name: str) -> type[Method]:
    if name not in _LOADED:
        module, _, attr = METHODS[name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if getattr(cls, "name", None) != name:
            raise TypeError(f"METHODS[{name!r}] names {METHODS[name]}, whose name is {getattr(cls, 'name', None)!r}")
        check_method(cls)
        _LOADED[name] = cls
    return _LOADED[name]


def method_names() -> list[str]:
    """The registered methods' names, without loading any of them."""
    return sorted(METHODS)


def registered_methods() -> dict[str, type[Method]]:
    return {name: _load(name) for name in method_names()}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise BadInput(f"unknown method {name!r}; known: {', '.join(method_names())}")
    return _load(name)


MethodFactory = Callable[[object], Method]
