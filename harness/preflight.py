"""Checks made before any expensive stage, for what would otherwise make a run fail late.

A run that cannot append to its leaderboard, write its output, fit its checkpoints on disk or
load its models finds out here, in one line and exit 2, before building a world or training.
The judge is optional (a run without it still has every other number), so an unreachable judge
is a one-line warning, not a refusal.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
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


def preflight(cfg, out: Path, *, warn: Callable[[str], None] = log.warning, strict_sources: bool = True) -> None:
    """Raise BadInput (one line) on the first problem; warn about the judge.

    strict_sources=False (a dry run: seeing the paper preset's plan on a laptop without its
    models) reports models, datasets and disk as warnings instead."""
    from harness.leaderboard import read_leaderboard
    from harness.registry import get_method
    from harness.suites import get_suite

    out = Path(out)
    existing = _nearest_existing(out)
    if not existing.is_dir():
        raise BadInput(f"--out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"--out {out}: {existing} is not writable")
    board = out / "leaderboard.json"
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
        for field, spec in _model_fields(cfg):
            _check_model(field, spec, cfg.model.gguf_file if field == "model.policy" else None)

    def local_rows() -> None:
        train = cfg.data.train_dataset
        if train is not None and Path(train).expanduser().exists():
            _check_training_rows(cfg.data, train, cfg.method_name)
        if Path(cfg.data.dataset).expanduser().exists():
            _check_local_splits(cfg.data, cfg.method_name)

    # What data.train_dataset may name is a matter of the configuration, not of what is reachable:
    # refused even in a dry run.
    _check_train_dataset_setting(cfg.data)
    check_sources(models, lambda: _check_dataset(cfg.data.dataset),
                  lambda: _check_dataset(cfg.data.train_dataset, "data.train_dataset")
                  if cfg.data.train_dataset is not None else None)
    # An instrument outside its domain (the tiny world's scorers on other data) is refused even
    # in a dry run, and before the rows are read: the plan itself would be wrong.
    get_suite(cfg.suite).check(cfg)
    check_sources(local_rows, lambda: _check_disk(cfg, existing))
    method = get_method(cfg.method_name)
    if cfg.sampling.backend == "openai" and method.trains and method.draws_self_samples():
        check_sources(lambda: _check_sampling_server(cfg.sampling))
    if cfg.eval.judge_model:
        problem = judge_problem(cfg.eval)
        if problem:
            warn(f"judge: {problem}; the run goes on and its judge section will say why it failed")


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


def _check_model(field: str, spec: str, gguf_file: Optional[str]) -> None:
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

    if isinstance(try_to_load_from_cache(spec, gguf_file or "config.json"), str):
        return
    if _offline():
        raise BadInput(f"{field} {spec}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
    _resolve_on_hub(field, spec, "model")


def _check_local_splits(data_cfg, method_name: str) -> None:
    """A local dataset's train and evaluated splits load, every row is well formed (a malformed
    row found by the data stage would leave a run directory behind), and the method has what it
    trains on (a preferred response, where it needs one)."""
    from harness.data.adapters import adapter_for
    from harness.data.pairs import load_rows

    adapter = adapter_for(data_cfg)
    # With data.train_dataset the run trains on those rows (checked on their own), not these.
    if data_cfg.format != "prompts" and data_cfg.train_dataset is None:
        _check_training_rows(data_cfg, data_cfg.dataset, method_name)
    name = f"{data_cfg.dataset}[{data_cfg.eval_split}]"
    adapter.prompts(load_rows(data_cfg.dataset, data_cfg.eval_split), name, None, data_cfg.group_column)


def _check_training_rows(data_cfg, spec: str, method_name: str) -> None:
    """The training split of local rows loads through the layout's adapter, and the method has
    what it trains on (a preferred response, where it needs one)."""
    from harness.data.adapters import adapter_for, needs_chosen, with_chosen
    from harness.data.pairs import load_rows
    from harness.registry import get_method

    name = f"{spec}[{data_cfg.train_split}]"
    rows = load_rows(spec, data_cfg.train_split)
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


def _check_dataset(spec: str, field: str = "data.dataset") -> None:
    if spec in EMBEDDED_DATASETS or Path(spec).expanduser().exists():
        return
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise BadInput(f"{field} {spec}: no such file or directory")
    if _offline():
        return  # a hub dataset may sit in the datasets cache; loading it says so if it does not
    _resolve_on_hub(field, spec, "dataset")


def _resolve_on_hub(field: str, spec: str, kind: str) -> None:
    """One cheap Hub call (the repository's info) for a model or dataset id that is not local."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    info = HfApi().model_info if kind == "model" else HfApi().dataset_info
    try:
        info(spec, timeout=10)
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


def checkpoint_bytes(cfg) -> Optional[int]:
    """Disk the run's checkpoints need at most (kept ones plus the one being written)."""
    if cfg.train.save_steps <= 0:
        return 0
    params = parameter_count(cfg.model.policy)
    if params is None:
        return None  # built or downloaded later: nothing to measure yet
    return params * _CHECKPOINT_BYTES_PER_PARAM * (cfg.train.save_total_limit + 1)


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


def judge_problem(eval_cfg) -> Optional[str]:
    """Why the configured judge endpoint would fail (one cheap call: list its models), or None."""
    from harness.scoring.judge import api_key_for, redact

    secret, api_key = api_key_for(eval_cfg.judge_api_key_env, eval_cfg.judge_base_url)
    if not api_key:
        return f"no API key: the environment variable {eval_cfg.judge_api_key_env} is not set"
    import openai

    client = openai.OpenAI(api_key=api_key, base_url=eval_cfg.judge_base_url, max_retries=0, timeout=5)
    try:
        client.models.list()
    except Exception as exc:  # noqa: BLE001 - any failure is reported, never raised
        reason = redact(" ".join(f"{type(exc).__name__}: {exc}".split()), secret)
        return f"endpoint {eval_cfg.judge_base_url or 'api.openai.com'} did not answer a model list ({reason[:200]})"
    finally:
        client.close()
    return None
