"""Typed run configuration: dataclass defaults, then a YAML preset, then `--set` overrides.

Every field has a type; a value from YAML or the command line that does not fit it, or a key that
names no field, is a `BadInput` (exit 2) with the dotted path of the offending key. The method's
hyperparameters are a section of their own (`method.*`) typed by the method's `Config` class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Optional

import yaml

from harness.errors import BadInput
from harness.registry import get_method


@dataclass
class WorldConfig:
    """The embedded tiny world (used when `data.dataset` is `tiny-world`)."""

    seed: int = 0
    # Share of harmful training prompts whose SFT target complies: makes the base "helpful but
    # unsafe" like Alpaca.
    base_compliance: float = 0.8
    eval_prompts_per_kind: int = 64
    # Training schedule of the built models; tests shrink them for a fast (if weaker) world.
    policy_epochs: float = 12.0
    scorer_epochs: float = 4.0


@dataclass
class ModelConfig:
    # `tiny-world` builds the embedded models; otherwise a Hugging Face id or a local path.
    policy: str = "tiny-world"
    gguf_file: Optional[str] = None
    # References: π_r− scores the self-samples, π_r+ the negatives. `policy` means the base policy.
    reference_for_samples: str = "policy"
    reference_for_negatives: str = "policy"
    reward_model: str = "tiny-world"
    cost_model: str = "tiny-world"
    # How a prompt becomes model input: `plain` (the world's own template) or `chat` (tokenizer's).
    prompt_format: Literal["plain", "chat", "alpaca"] = "plain"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass
class DataConfig:
    dataset: str = "tiny-world"
    train_split: str = "train"
    eval_split: str = "eval"
    # Which response counts as y_l: the less safe one or the worse one of each pair.
    negative_from: Literal["safer", "better"] = "safer"
    # Keep only pairs whose negative is actually unsafe (D²O trains on harmful negatives).
    only_unsafe_negatives: bool = True
    max_train_examples: Optional[int] = None
    max_eval_prompts: Optional[int] = None


@dataclass
class SamplingConfig:
    """How the K self-samples are drawn (the anchors of D²O)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 48
    batch_size: int = 64
    # Samples per prompt for methods whose config has no `k` of its own (Self-Align SFT's
    # candidates); D²O uses `method.k`.
    num_samples: int = 4


@dataclass
class TrainConfig:
    learning_rate: float = 5e-4
    epochs: float = 2.0
    max_steps: int = -1
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 128
    bf16: bool = False
    gradient_checkpointing: bool = False
    # None, a ZeRO preset name (zero0, zero1, zero2, zero3, zero2-offload, zero3-offload) or a
    # path to a DeepSpeed JSON config.
    deepspeed: Optional[str] = None
    logging_steps: int = 1


@dataclass
class EvalConfig:
    max_new_tokens: int = 48
    batch_size: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    sampling_seed: int = 1234
    scorer_batch_size: int = 64
    scorer_template: str = "BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:"
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: Optional[int] = None
    judge_model: Optional[str] = None
    judge_base_url: Optional[str] = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_max_calls: int = 2000
    judge_concurrency: int = 4


@dataclass
class RunConfig:
    preset: str = "tiny"
    method_name: str = "d2o"
    seed: int = 0
    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # The method's own typed hyperparameters (an instance of its Config dataclass).
    method: Any = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


PRESETS = ("tiny", "smollm2", "paper")


def load_preset(name: str) -> dict:
    if name not in PRESETS:
        raise BadInput(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    text = resources.files("harness.presets").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise BadInput(f"preset {name}: top level must be a mapping")
    return data


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp, where: str) -> Any:
    """Convert `value` (from YAML or a `--set` string) to the annotated type `tp`, or fail."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except BadInput as exc:
                errors.append(str(exc))
        raise BadInput(errors[0] if errors else f"{where}: cannot be None")
    if origin is Literal:
        if value not in args:
            raise BadInput(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        (item_tp,) = args
        if isinstance(value, str):
            # --set accepts "a,b", "[a, b]" and "[]" (YAML-style flow lists without quoting).
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            value = [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise BadInput(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise BadInput(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise BadInput(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value), 10)
        except ValueError:
            raise BadInput(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise BadInput(f"{where}: expected a number, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise BadInput(f"{where}: expected a number, got {value!r}") from None
        if result != result or result in (float("inf"), float("-inf")):
            raise BadInput(f"{where}: expected a finite number, got {value!r}")
        return result
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise BadInput(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise BadInput(f"{where}: unsupported field type {_type_name(tp)}")


def _apply(obj, updates: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise BadInput(f"unknown config field {where!r}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise BadInput(f"{where}: expected a mapping of fields")
            _apply(current, value, f"{where}.")
        else:
            setattr(obj, key, coerce(value, hints[key], where))


def parse_set_options(pairs: list[str]) -> dict:
    """Turn ['train.learning_rate=1e-4', ...] into a nested dict (values stay strings)."""
    nested: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise BadInput(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise BadInput(f"--set: malformed key {key!r}")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BadInput(f"--set: {key!r} conflicts with another --set")
        node[parts[-1]] = value
    return nested


_TOP_LEVEL_SECTIONS = ("world", "model", "data", "sampling", "train", "eval")


def resolve_config(
    *,
    method: str = "d2o",
    preset: str = "tiny",
    seed: Optional[int] = None,
    overrides: Optional[dict] = None,
) -> RunConfig:
    """Defaults ← preset ← overrides, with the method's hyperparameters typed by its Config."""
    method_cls = get_method(method)
    preset_data = load_preset(preset)
    overrides = dict(overrides or {})
    cfg = RunConfig(preset=preset, method_name=method)
    cfg.method = method_cls.Config()

    preset_methods = preset_data.pop("methods", {}) or {}
    unknown_sections = set(preset_data) - set(_TOP_LEVEL_SECTIONS) - {"seed"}
    if unknown_sections:
        raise BadInput(f"preset {preset}: unknown section(s) {sorted(unknown_sections)}")
    for source, data in (("preset", preset_data), ("--set", overrides)):
        method_updates = data.pop("method", None) if source == "--set" else None
        if "seed" in data:
            cfg.seed = coerce(data.pop("seed"), int, "seed")
        _apply(cfg, {k: v for k, v in data.items()}, "")
        if source == "preset" and method in preset_methods:
            _apply(cfg.method, preset_methods[method], "method.")
        if method_updates is not None:
            if not isinstance(method_updates, dict):
                raise BadInput("--set method: expected method.FIELD=VALUE")
            _apply(cfg.method, method_updates, "method.")
    if seed is not None:
        cfg.seed = seed
    method_cls(cfg.method)  # validates the hyperparameters' domain
    validate_config(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    checks = [
        (cfg.train.learning_rate > 0, "train.learning_rate must be > 0"),
        (cfg.train.per_device_batch_size >= 1, "train.per_device_batch_size must be >= 1"),
        (cfg.train.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1"),
        (cfg.train.epochs > 0 or cfg.train.max_steps > 0, "train.epochs or train.max_steps must be > 0"),
        (cfg.sampling.temperature > 0, "sampling.temperature must be > 0"),
        (0 < cfg.sampling.top_p <= 1, "sampling.top_p must be in (0, 1]"),
        (cfg.sampling.max_new_tokens >= 1, "sampling.max_new_tokens must be >= 1"),
        (cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens must be >= 1"),
        (0 <= cfg.world.base_compliance <= 1, "world.base_compliance must be in [0, 1]"),
        (cfg.world.eval_prompts_per_kind >= 1, "world.eval_prompts_per_kind must be >= 1"),
        (cfg.world.policy_epochs > 0 and cfg.world.scorer_epochs > 0, "world.*_epochs must be > 0"),
        (cfg.eval.judge_max_calls >= 0, "eval.judge_max_calls must be >= 0"),
        (cfg.eval.judge_concurrency >= 1, "eval.judge_concurrency must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise BadInput(message)
