"""Suites: what a run is measured against, behind one registry (`suite:` in the config).

A suite resolves a run's models and data sources, names its instruments (with their validation
against human labels) and its capability tasks, and refuses configurations whose instruments
would be used outside their domain. The pipeline asks the suite; it never tests a dataset's name.
Adding a suite is one module here and one line below.

`data.train_dataset` (a user's file, folder or hub id, read through `data.format`) replaces only
the training source of whichever suite a run uses (`resolve_assets`): the suite's evaluation
prompts, instruments and capability tasks stay, so a user's negatives are measured the standard way.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness.errors import BadInput

# Lazy: a suite's module (and what it imports) loads only when the suite is used.
SUITES: dict[str, str] = {
    "tiny-world": "harness.suites.tiny_world:TinyWorldSuite",
    "real-safety": "harness.suites.real_safety:RealSafetySuite",
    "custom": "harness.suites.custom:CustomSuite",
}


@dataclass
class DataSource:
    """Where one part of a run's rows comes from and in which layout."""

    spec: str  # a hub id, a local file or folder (or a label for `local_dir`)
    format: str
    local_dir: Optional[Path] = None  # a folder of <split>.jsonl files the suite built
    # The user's rows rather than a layout the suite fixes: only they are read through the user's
    # column mapping (data.columns), and only they can check the suite's cost model, which the
    # harness fitted on other labels (if on any).
    user_rows: bool = False


@dataclass
class Assets:
    """Where the models and data of a run come from, resolved once per invocation."""

    policy: str
    references: dict[str, str]
    train_data: DataSource
    eval_data: DataSource
    # Score models for the cost-filtered chosen source (Self-Align SFT) and the score stage.
    cost: Optional[str] = None
    reward: Optional[str] = None
    capability_paths: list[Path] = field(default_factory=list)
    # The folder a suite assembled for its instruments' checks (refusal labels, HHH pairs, its
    # manifest): kept apart from train_data, which data.train_dataset may replace.
    suite_dir: Optional[Path] = None


@dataclass
class PlannedAsset:
    """One model or data source of a run as `--dry-run` shows it: where it is or will be, and its
    content hash when it is already on this machine. Found without building or downloading."""

    role: str  # "policy", "reference π_r−", "cost model", "training data", ...
    spec: str  # as configured
    path: Optional[Path] = None  # where it is (or will be built); None: a hub id or not known yet
    sha256: Optional[str] = None  # weights (models) or the recorded file digests (built folders)
    note: str = ""  # why it is absent, or how it will be made

    @property
    def present(self) -> bool:
        return self.sha256 is not None

    def line(self) -> str:
        where = f" at {self.path}" if self.path is not None else ""
        state = f"sha256 {self.sha256[:16]}" if self.present else "absent"
        return f"{self.role}: {self.spec}{where} [{state}]" + (f" ({self.note})" if self.note else "")


def built_folder_digest(folder: Path) -> Optional[str]:
    """The content hash of a folder built by harness/build_cache.py: over the sha256 of every file
    its COMPLETE marker recorded; None when it is not there intact (nothing is hashed anew)."""
    import json

    from harness.build_cache import COMPLETE_MARKER, problem
    from harness.hashing import sha256_json

    if problem(folder) is not None:
        return None
    try:
        return sha256_json(json.loads((Path(folder) / COMPLETE_MARKER).read_text()).get("sha256"))
    except (OSError, ValueError, AttributeError):
        return None


def planned_model(role: str, spec: str, home: Path, tiny_parts: Optional[dict[str, Path]] = None,
                  part: str = "policy") -> PlannedAsset:
    """A model spec as the run will load it: the built tiny world's `part`, the converted SmolLM2
    checkpoint, a local folder or a hub id; hashed only where its weights are already here."""
    from harness.hashing import weights_sha256

    if spec == "tiny-world":
        if tiny_parts is None:
            return PlannedAsset(role, spec, note="needs the tiny world (suite tiny-world, or a custom suite's build)")
        path = tiny_parts[part]
        found = built_folder_digest(path) and weights_sha256(path, remember=False)
        return PlannedAsset(role, spec, path, found or None, "" if found else "the tiny world is built on first run")
    if spec == "smollm2":
        from harness.models.smollm2 import smollm2_checkpoint_path

        try:
            path = smollm2_checkpoint_path(home, remember=False)
        except BadInput as exc:
            return PlannedAsset(role, spec, note=str(exc))
        found = built_folder_digest(path) and weights_sha256(path, remember=False)
        return PlannedAsset(role, spec, path, found or None, "" if found else "converted from the GGUF on first run")
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            return PlannedAsset(role, spec, path, weights_sha256(path, remember=False))
        except FileNotFoundError:
            return PlannedAsset(role, spec, path, note="no weight files in it")
    return PlannedAsset(role, spec, note="a hub id: hashed once it is downloaded")


def planned_models(cfg, home: Path, tiny_parts: Optional[dict[str, Path]] = None,
                   cost: Optional[PlannedAsset] = None) -> list[PlannedAsset]:
    """The policy, the references that are not the policy, and the score models that are not
    `none`, as `planned_model` finds them; `cost`: the suite's own cost model in place of the spec."""
    m = cfg.model
    found = [planned_model("policy", m.policy, home, tiny_parts)]
    for role, spec in (("reference π_r− (samples)", m.reference_for_samples),
                       ("reference π_r+ (negatives)", m.reference_for_negatives)):
        if spec != "policy":
            found.append(planned_model(role, spec, home, tiny_parts))
    for part, spec in (("reward", m.reward_model), ("cost", m.cost_model)):
        if part == "cost" and cost is not None:
            found.append(cost)
        elif spec.strip().lower() not in ("none", ""):
            found.append(planned_model(f"{part} model", spec, home, tiny_parts, part))
    return found


def planned_data(role: str, source: "DataSource") -> PlannedAsset:
    """A data source as the data stage will read it; a local file is hashed, a folder the harness
    built by its recorded digests, a user's folder or hub id only named."""
    from harness.hashing import file_sha256

    where = source.local_dir if source.local_dir is not None else Path(source.spec).expanduser()
    if source.local_dir is not None and not where.exists():
        return PlannedAsset(role, source.spec, where, None, f"layout {source.format}; built on first run")
    if where.is_file():
        return PlannedAsset(role, source.spec, where, file_sha256(where), f"layout {source.format}")
    if where.is_dir():
        digest = built_folder_digest(where)
        return PlannedAsset(role, source.spec, where, digest,
                            f"layout {source.format}" + ("" if digest else "; a folder of the user's, not hashed"))
    return PlannedAsset(role, source.spec, None, None, f"layout {source.format}; read through `datasets` when the run starts")


class Suite:
    name: str = ""
    # Whether a run may name its own evaluation rows (data.eval_dataset) or hold out a share of its
    # training rows (data.held_out_share); a suite that assembles its own evaluation data refuses both.
    reads_user_evaluation_data: bool = False
    # Endings of the lm-eval task names the suite writes over its own packaged data.
    capability_task_suffixes: tuple[str, ...] = ()
    # Whether the score stage records the instruments' checks with every run; a suite whose
    # instruments are all built with it (the tiny world) records them only when a check was
    # made on the run's own rows.
    reports_instrument_checks: bool = True
    # Whether the suite holds human harm and refusal labels to check guard models on (eval.guards).
    checks_guards_on_human_labels: bool = False
    # Whether the suite's evaluation data can take standard safety sets (real.extra_eval_sets).
    takes_extra_eval_sets: bool = False

    def check_settings(self, cfg) -> None:
        """Settings this suite cannot take, refused as soon as the run plan is resolved."""
        if cfg.eval.guards and not self.checks_guards_on_human_labels:
            raise BadInput(f"eval.guards needs human harm and refusal labels to check each guard on; suite "
                           f"{self.name} has none (use suite real-safety)")
        if cfg.real.extra_eval_sets and not self.takes_extra_eval_sets:
            raise BadInput(f"real.extra_eval_sets applies to suite real-safety; suite {self.name} has its own "
                           "evaluation data")
        if cfg.data.eval_dataset is not None and not self.reads_user_evaluation_data:
            raise BadInput(f"data.eval_dataset applies to suite custom only; suite {self.name} assembles its own "
                           "evaluation data")
        if cfg.data.held_out_share is not None and not self.reads_user_evaluation_data:
            raise BadInput(f"data.held_out_share applies to suite custom only; suite {self.name} assembles its own "
                           "splits")

    def check(self, cfg) -> None:
        """Raise BadInput when the configuration uses an instrument outside its domain."""

    def planned_assets(self, cfg, home: Path) -> list[PlannedAsset]:
        """The run's models and data as `resolve` would give them, found without building or
        downloading anything (`--dry-run`)."""
        raise NotImplementedError

    def base_score_identity(self) -> dict:
        """What joins the key of the base policy's cached generations and scores besides the
        models and settings: instruments differ between suites, so base scores are never shared."""
        from harness.instruments.refusal import RULES_VERSION

        return {"suite": self.name, "refusal_rules": RULES_VERSION}

    def resolve(self, cfg, home: Path) -> Assets:
        raise NotImplementedError

    def instruments(self, cfg, assets: Assets, home: Path) -> list:
        raise NotImplementedError

    def metric_directions(self, cfg) -> dict[str, bool]:
        """Every metric this suite's instruments report, with its direction."""
        raise NotImplementedError

    def capability_tasks(self, cfg) -> list[str]:
        return list(cfg.eval.lm_eval_tasks)

    def validation_extra(self, cfg, assets: Assets, home: Path) -> dict:
        """Instrument checks that depend on the run (the judge's on the HHH pairs)."""
        return {}

    def dataset_record(self, assets: Assets) -> dict:
        return {}


def resolve_policy(spec: str, home: Path, tiny: Optional[dict]) -> str:
    """A model spec as a loadable path or id: `tiny-world` (built), `smollm2` (converted), else as given."""
    if spec == "tiny-world":
        if tiny is None:
            raise BadInput("model tiny-world needs the tiny world (suite tiny-world, or a custom suite's build)")
        return str(tiny["policy"])
    if spec == "smollm2":
        from harness.models.smollm2 import ensure_smollm2_checkpoint

        return str(ensure_smollm2_checkpoint(home))
    return spec


def references_for(cfg, policy: str) -> dict[str, str]:
    return {
        "samples": policy if cfg.model.reference_for_samples == "policy" else cfg.model.reference_for_samples,
        "negatives": policy if cfg.model.reference_for_negatives == "policy" else cfg.model.reference_for_negatives,
    }


def user_training_source(cfg) -> Optional[DataSource]:
    """The user's rows that replace a suite's training source (`data.train_dataset`), or None."""
    if cfg.data.train_dataset is None:
        return None
    return DataSource(cfg.data.train_dataset, cfg.data.format, user_rows=True)


def resolve_assets(suite: Suite, cfg, home: Path) -> Assets:
    """The run's models and data as its suite resolves them (the run plan checked the suite), with
    the training source replaced by the user's rows when `data.train_dataset` names them."""
    from harness.hub_pins import pin_assets

    # Pinned Hub revisions (model.*_revision, data.revision, data.data_dir) are fetched here, so
    # every stage loads the pinned files whichever loader it calls.
    assets = pin_assets(cfg, suite.resolve(cfg, home))
    user_rows = user_training_source(cfg)
    return assets if user_rows is None else dataclasses.replace(assets, train_data=user_rows)


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise BadInput(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    module, _, attr = SUITES[name].partition(":")
    return getattr(importlib.import_module(module), attr)()
