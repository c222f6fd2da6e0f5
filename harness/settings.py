"""`d2o-bench config`: every `--set` key with its type, default, help and the presets that set it.

Read from the config dataclasses (`harness/config.py`; a field's help is its `metadata["help"]`),
the method's own `Config` for the `method.*` keys, and the presets as `load_preset` reads them
(with `extends` followed), so the list cannot drift from what `--set` accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import textwrap
import types
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from harness.arguments import OneLineArgumentParser
from harness.config import RunConfig, load_preset, preset_names
from harness.errors import BadInput
from harness.registry import get_method, method_names

# Set by --preset and --method, which also pick the preset's and the method's settings: a
# `--set` of either would leave those behind.
NOT_SET_KEYS = ("preset", "method_name")


@dataclass(frozen=True)
class SettingKey:
    key: str  # dotted, as `--set` takes it
    type: str
    default: Any
    help: str
    presets: dict[str, Any]  # preset name -> the value it sets, for the presets that set this key


def type_name(tp) -> str:
    """A field's type as a user writes its value: int, str or none, one of a|b, list of int."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        names = [type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(names) + (" or none" if type(None) in args else "")
    if origin is Literal:
        return "one of " + "|".join(map(str, args))
    if origin is list:
        return f"list of {type_name(args[0])}"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _fields(cls: type, prefix: str) -> list[tuple[str, Any, dataclasses.Field]]:
    """(dotted key, type, field) for every leaf field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            leaves += _fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            leaves.append((prefix + f.name, hints[f.name], f))
    return leaves


def _lookup(settings: dict, key: str) -> tuple[bool, Any]:
    node: Any = settings
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _method_settings(preset: dict, method_cls) -> dict:
    """What a preset's `methods:` gives this method: its family's settings, then its own."""
    methods = preset.get("methods") or {}
    settings = {}
    if method_cls.family != method_cls.name:
        settings.update(methods.get(method_cls.family) or {})
    settings.update(methods.get(method_cls.name) or {})
    return settings


def setting_keys(method: str = "d2o") -> list[SettingKey]:
    """Every `--set` key of a run of `method`: the run's sections, then `method.*`."""
    method_cls = get_method(method)
    presets = {name: load_preset(name) for name in preset_names()}
    keys = []
    for key, tp, f in _fields(RunConfig, ""):
        if key in NOT_SET_KEYS or key == "method":
            continue
        set_by = {}
        for name, preset in presets.items():
            found, value = _lookup(preset, key)
            if found:
                set_by[name] = value
        keys.append(SettingKey(key, type_name(tp), _default(f), f.metadata.get("help", ""), set_by))
    for key, tp, f in _fields(method_cls.Config, "method."):
        field_name = key[len("method."):]
        set_by = {name: _method_settings(preset, method_cls)[field_name] for name, preset in presets.items()
                  if field_name in _method_settings(preset, method_cls)}
        keys.append(SettingKey(key, type_name(tp), _default(f), f.metadata.get("help", ""), set_by))
    return keys


def preset_summary(name: str) -> str:
    """The preset file's first line, a one-line comment saying what the preset is."""
    first = resources.files("harness.presets").joinpath(f"{name}.yaml").read_text().split("\n", 1)[0]
    return first[1:].strip() if first.startswith("#") else ""


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def format_setting_keys(keys: list[SettingKey], width: int = 100) -> str:
    lines = []
    for item in keys:
        lines.append(f"{item.key}  ({item.type}; default {_value(item.default)})")
        lines += textwrap.wrap(item.help, width, initial_indent="    ", subsequent_indent="    ",
                               break_on_hyphens=False)
        if item.presets:
            by_value: dict[str, list[str]] = {}
            for name, value in item.presets.items():
                by_value.setdefault(_value(value), []).append(name)
            sets = "; ".join(f"{', '.join(names)}: {value}" for value, names in by_value.items())
            lines += textwrap.wrap(f"presets: {sets}", width, initial_indent="    ", subsequent_indent="      ",
                                   break_on_hyphens=False)
    return "\n".join(lines)


def config_main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(
        prog="d2o-bench config",
        description="Every --set key with its type, default, help and the presets that set it.")
    parser.add_argument("--method", default="d2o", help=f"whose method.* keys to list: {', '.join(method_names())}")
    parser.add_argument("keys", nargs="*", metavar="KEY",
                        help="list only these keys or sections (train, train.max_steps, method)")
    args = parser.parse_args(argv)
    keys = setting_keys(args.method)
    if args.keys:
        wanted = [k.rstrip(".") for k in args.keys]
        known = sorted({item.key for item in keys} | {item.key.rpartition(".")[0] for item in keys} - {""})
        for prefix in wanted:
            if prefix not in known:
                close = difflib.get_close_matches(prefix, known, n=1, cutoff=0.6)
                raise BadInput(f"no config key or section {prefix!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        keys = [item for item in keys if any(item.key == p or item.key.startswith(p + ".") for p in wanted)]
    print(format_setting_keys(keys))
    return 0
