"""Every committed leaderboard entry still resolves to its recorded config hash and run id.

A refactor of the config, the registry or the CLI must not move a published run: its hash keys
the caches and names its run directory, and the studies point at trials by it. Each entry's
recorded config is fed back through `resolve_config` (preset, method, seed and every recorded
value as overrides), so field defaults, coercion and the hash's exclusions are all exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import resolve_config
from harness.entries import base_entry_config
from harness.hashing import sha256_json
from harness.pipeline import run_id_for

LEADERBOARDS = sorted((Path(__file__).parents[1] / "leaderboards").glob("*/leaderboard.json"))
NOT_SETTINGS = ("preset", "method_name", "seed", "method")


def _committed_entries(trained: bool = True) -> list:
    params = []
    for board_path in LEADERBOARDS:
        board = json.loads(board_path.read_text())
        for index, entry in enumerate(board["entries"]):
            if (entry["method"] != "base") == trained:
                params.append(pytest.param(entry, id=f"{board_path.parent.name}-{index}-{entry['run_id']}"))
    return params


def _with_later_fields_at_default(recorded: dict, defaults: dict) -> dict:
    """The recorded settings, plus every field added since at its default: a field that did not
    exist when the entry was written cannot have taken a value a preset gives it today."""
    merged = dict(recorded)
    for key, default in defaults.items():
        if key not in recorded:
            merged[key] = default
        elif isinstance(default, dict) and isinstance(recorded[key], dict):
            merged[key] = _with_later_fields_at_default(recorded[key], default)
    return merged


def _re_resolve(recorded: dict):
    from harness.config import RunConfig

    defaults = {k: v for k, v in RunConfig().to_dict().items() if k not in NOT_SETTINGS}
    settings = _with_later_fields_at_default({k: v for k, v in recorded.items() if k not in NOT_SETTINGS}, defaults)
    overrides = {key: value for key, value in settings.items() if value is not None}
    overrides["method"] = dict(recorded["method"] or {})
    return resolve_config(method=recorded["method_name"], preset=recorded["preset"], seed=recorded["seed"],
                          overrides=overrides)


def test_there_are_committed_entries():
    assert len(LEADERBOARDS) >= 5
    assert len(_committed_entries()) >= 100 and len(_committed_entries(trained=False)) >= 10


@pytest.mark.parametrize("entry", _committed_entries())
def test_trained_entry_resolves_to_its_hash_and_run_id(entry):
    cfg = _re_resolve(entry["provenance"]["config"])
    assert cfg.hash() == entry["provenance"]["config_hash"]
    assert run_id_for(cfg) == entry["run_id"]


@pytest.mark.parametrize("entry", _committed_entries(trained=False))
def test_base_entry_resolves_to_its_hash_and_run_id(entry):
    """The base entry hashes its whole recorded config (no exclusions), so an entry recorded
    before a field was added cannot be re-derived from today's dataclasses; for those the
    recorded config must still hash to the recorded value and re-resolve to the same settings."""
    recorded = entry["provenance"]["config"]
    config, config_hash = base_entry_config(_re_resolve(recorded))
    if _leaf_paths(config) == _leaf_paths(recorded):
        assert config == recorded
        assert config_hash == entry["provenance"]["config_hash"]
        assert f"base-{recorded['preset']}-s{recorded['seed']}-{config_hash[:8]}" == entry["run_id"]
    else:
        assert _leaf_paths(recorded) < _leaf_paths(config)
        assert all(_leaf(config, path) == _leaf(recorded, path) for path in _leaf_paths(recorded))
        assert sha256_json(recorded)[:16] == entry["provenance"]["config_hash"]
        assert entry["run_id"].endswith(entry["provenance"]["config_hash"][:8])


def _leaf_paths(config: dict, prefix: tuple = ()) -> set[tuple]:
    paths = set()
    for key, value in config.items():
        if isinstance(value, dict):
            paths |= _leaf_paths(value, prefix + (key,))
        else:
            paths.add(prefix + (key,))
    return paths


def _leaf(config: dict, path: tuple):
    for key in path:
        config = config[key]
    return config
