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


class Suite:
    name: str = ""

    def check(self, cfg) -> None:
        """Raise BadInput when the configuration uses an instrument outside its domain."""

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


def resolve_assets(cfg, home: Path) -> Assets:
    """The run's models and data as its suite resolves them (after checking their domain), with
    the training source replaced by the user's rows when `data.train_dataset` names them."""
    from harness.hub_pins import pin_assets

    suite = get_suite(cfg.suite)
    suite.check(cfg)
    # Pinned Hub revisions (model.*_revision, data.revision, data.data_dir) are fetched here, so
    # every stage loads the pinned files whichever loader it calls.
    assets = pin_assets(cfg, suite.resolve(cfg, home))
    if cfg.data.train_dataset is None:
        return assets
    return dataclasses.replace(assets, train_data=DataSource(cfg.data.train_dataset, cfg.data.format, user_rows=True))


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise BadInput(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    module, _, attr = SUITES[name].partition(":")
    return getattr(importlib.import_module(module), attr)()
