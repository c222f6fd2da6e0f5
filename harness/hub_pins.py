"""Hub revisions and dataset folders: a pinned id reaches the code that downloads it.

A Hub repository's files change under the same id (PKU-SafeRLHF's June 2024 release replaced the
rows under the id the paper used), so a configuration that claims a particular set-up pins the
commit it loads: `model.policy_revision`, `model.reward_model_revision`,
`model.cost_model_revision`, `data.revision`, and `data.data_dir` for a folder of a dataset
repository (PKU-SafeRLHF's `data/Alpaca-7B`).

When a run resolves its assets, each pinned Hub id is fetched by `huggingface_hub.snapshot_download`
at that revision (the same download `from_pretrained` does, cached in the same Hugging Face
cache) and the run then loads the local snapshot: every later `from_pretrained` and every dataset
read sees exactly the pinned files, whichever stage loads them. Ids without a pin pass through
unchanged (their default branch, as before).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path, PurePosixPath
from typing import Optional

from harness.errors import BadInput

# (model field, its revision field)
MODEL_PINS = (("policy", "policy_revision"), ("reward_model", "reward_model_revision"),
              ("cost_model", "cost_model_revision"))
# A commit hash, or a branch or tag name as git allows them (no spaces, no "..", no leading "-").
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


def model_revision(cfg, field: str) -> Optional[str]:
    """The revision pinned for a `model.*` field (`model.policy` …), None when unpinned."""
    name = field.split(".", 1)[-1]
    for model_field, revision_field in MODEL_PINS:
        if model_field == name:
            return getattr(cfg.model, revision_field)
    return None


def is_hub_id(spec: str) -> bool:
    from harness.preflight import _HUB_ID, EMBEDDED_DATASETS, EMBEDDED_MODELS, _looks_like_path

    if spec in EMBEDDED_MODELS or spec in EMBEDDED_DATASETS or Path(spec).expanduser().exists():
        return False
    return not _looks_like_path(spec) and bool(_HUB_ID.match(spec))


def _check_revision(field: str, revision: str, target_field: str, target: str) -> None:
    if not _REVISION.match(revision) or ".." in revision:
        raise BadInput(f"{field}: {revision!r} is not a revision (a commit hash, or a branch or tag name)")
    if not is_hub_id(target):
        raise BadInput(f"{field} pins a Hub repository's revision, and {target_field}={target} is not a Hub id")


def validate_pins(cfg) -> None:
    """Refuse a revision or folder that cannot apply, in one line, before anything runs."""
    for model_field, revision_field in MODEL_PINS:
        revision = getattr(cfg.model, revision_field)
        if revision is not None:
            _check_revision(f"model.{revision_field}", revision, f"model.{model_field}",
                            getattr(cfg.model, model_field))
    pinned = {}
    for model_field, revision_field in MODEL_PINS:
        spec, revision = getattr(cfg.model, model_field), getattr(cfg.model, revision_field)
        if revision is not None and pinned.setdefault(spec, revision) != revision:
            raise BadInput(f"model.{revision_field}: {spec} is pinned at two revisions ({pinned[spec]} and {revision})")
    if cfg.data.revision is not None:
        _check_revision("data.revision", cfg.data.revision, "data.dataset", cfg.data.dataset)
    if cfg.data.data_dir is not None:
        folder = cfg.data.data_dir
        parts = PurePosixPath(folder).parts
        if not folder.strip() or folder.startswith(("/", "\\")) or ".." in parts or "\\" in folder:
            raise BadInput(f"data.data_dir: {folder!r} must be a relative folder inside the dataset repository "
                           f"(e.g. data/Alpaca-7B)")
        if not is_hub_id(cfg.data.dataset):
            raise BadInput(f"data.data_dir selects a folder of a Hub dataset, and data.dataset={cfg.data.dataset} "
                           f"is not a Hub id (point data.dataset at the folder itself)")


def snapshot(spec: str, *, revision: Optional[str], repo_type: str, allow_patterns=None) -> str:
    """The local folder of `spec` at `revision`, downloaded into the Hugging Face cache once."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=spec, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns)
    except Exception as exc:  # hub and network errors arrive as many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{repo_type} {spec} at revision {revision or 'default'}: cannot be fetched "
                       f"({type(exc).__name__}: {first})") from None


def pin_assets(cfg, assets):
    """`assets` with every pinned Hub model and dataset replaced by its local snapshot."""
    local: dict[str, str] = {}
    for model_field, revision_field in MODEL_PINS:
        spec, revision = getattr(cfg.model, model_field), getattr(cfg.model, revision_field)
        if revision is not None and spec not in local:
            local[spec] = snapshot(spec, revision=revision, repo_type="model")

    def swap(spec):
        return local.get(spec, spec) if spec is not None else None

    changes = {}
    if local:
        # A reference that names the policy's repository is the policy at its pinned revision.
        changes.update(policy=swap(assets.policy), cost=swap(assets.cost), reward=swap(assets.reward),
                       references={role: swap(spec) for role, spec in assets.references.items()})
    if cfg.data.revision is not None or cfg.data.data_dir is not None:
        folder = dataset_folder(cfg.data)
        for role in ("train_data", "eval_data"):
            source = getattr(assets, role)
            if source.spec == cfg.data.dataset and source.local_dir is None:
                changes[role] = dataclasses.replace(source, spec=str(folder))
    return dataclasses.replace(assets, **changes) if changes else assets


def dataset_folder(data_cfg) -> Path:
    """data.dataset at data.revision, narrowed to data.data_dir: a local folder of <split> files."""
    data_dir = data_cfg.data_dir
    patterns = [f"{data_dir.rstrip('/')}/*"] if data_dir else None
    root = Path(snapshot(data_cfg.dataset, revision=data_cfg.revision, repo_type="dataset", allow_patterns=patterns))
    folder = root / data_dir if data_dir else root
    if not folder.is_dir():
        raise BadInput(f"data.data_dir {data_dir}: no such folder in {data_cfg.dataset} at revision "
                       f"{data_cfg.revision or 'default'}")
    return folder
