"""Settings you can discover: help on every config field, `d2o-bench config` listing every `--set`
key as the config resolves it, the closest key named for a typo, `--help` listing every
subcommand, preset and method from their registries."""

from __future__ import annotations

import dataclasses
import importlib
import typing

import pytest

from harness.cli import SUBCOMMANDS, main
from harness.config import RunConfig, preset_names, resolve_config
from harness.registry import method_names, registered_methods
from harness.settings import NOT_SET_KEYS, preset_summary, setting_keys


def _fields_without_help(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    missing = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("help", "").strip():
            missing.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            missing += _fields_without_help(hints[f.name], f"{prefix}{f.name}.")
    return missing


def test_every_config_field_has_help():
    assert _fields_without_help(RunConfig) == []


@pytest.mark.parametrize("method", method_names())
def test_every_method_hyperparameter_has_help(method):
    assert _fields_without_help(registered_methods()[method].Config, "method.") == []


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _same(resolved, listed) -> bool:
    # YAML reads 1e-4 as a string; the config coerces it to the field's float.
    return resolved == listed or (isinstance(resolved, float) and float(listed) == resolved)


def test_the_listed_keys_are_the_keys_set_accepts():
    listed = [item.key for item in setting_keys("d2o")]
    assert len(listed) == len(set(listed))
    resolved = _flatten(resolve_config(method="d2o", preset="tiny").to_dict())
    assert set(listed) == set(resolved) - set(NOT_SET_KEYS)


@pytest.mark.parametrize("method", method_names())
def test_each_preset_resolves_to_the_listed_value_or_the_listed_default(method):
    """What `d2o-bench config` says a preset sets is what a run of that preset gets."""
    keys = setting_keys(method)
    for preset in preset_names():
        resolved = _flatten(resolve_config(method=method, preset=preset).to_dict())
        for item in keys:
            expected = item.presets.get(preset, item.default)
            assert _same(resolved[item.key], expected), (preset, item.key, resolved[item.key], expected)


def test_config_lists_type_default_help_and_presets(capsys):
    assert main(["config", "train.max_steps", "method.k"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("train.max_steps  (int; default -1)\n    The training budget.")
    assert "tiny, tiny-benign-pairs, tiny-decline-and-help, tiny-distinct-shapes: 24" in " ".join(out.split())
    assert "method.k  (int; default 11)" in out and "paper, real-smollm2: 11" in out
    assert "world.seed" not in out


def test_config_lists_every_key_of_the_chosen_method(capsys):
    assert main(["config", "--method", "simpo"]) == 0
    out = capsys.readouterr().out
    for item in setting_keys("simpo"):
        assert f"\n{item.key}  ({item.type}; default " in "\n" + out
    assert "method.gamma  (float; default 0.5)" in out and "method.k " not in out


@pytest.mark.parametrize("argv,message", [
    (["--set", "train.learnig_rate=1e-4"], "unknown config field 'train.learnig_rate'; did you mean "
                                           "'train.learning_rate'?"),
    (["--set", "lm_eval_tasks=[mmlu]"], "did you mean 'eval.lm_eval_tasks'?"),
    (["--method", "dpo", "--set", "method.bta=0.5"], "unknown config field 'method.bta'; did you mean 'method.beta'?"),
    (["config", "trian"], "no config key or section 'trian'; did you mean 'train'?"),
])
def test_an_unknown_key_names_the_closest_one(argv, message, capsys):
    assert main([*argv, "--dry-run"] if argv[0] != "config" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_help_lists_every_subcommand_preset_and_method(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name, (_, summary) in SUBCOMMANDS.items():
        assert f"  {name} " in out and summary in out
    for preset in preset_names():
        assert f"  {preset} " in out and preset_summary(preset) in out
    assert ", ".join(method_names()) in " ".join(out.split())


def test_every_subcommand_resolves_to_its_main():
    for target, summary in SUBCOMMANDS.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)) and summary


def test_every_preset_says_what_it_is_in_one_line():
    for preset in preset_names():
        assert 20 <= len(preset_summary(preset)) <= 100, preset
