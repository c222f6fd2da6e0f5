"""Where a preset's settings come from: the paper, a secondary source, or the project's own guess.

A preset that stands for a published set-up declares, beside it in
`harness/presets/provenance/<preset>.yaml`, one row per setting it makes: a label (`paper`,
`secondary` or `guess`) and a note. `--dry-run` prints them with the value in effect; a value a
`--set` changed is labelled `yours` instead, since it no longer stands for any source.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Optional

import yaml

from harness.errors import BadInput

LABELS = ("paper", "secondary", "guess")
YOURS = "yours"
_NOT_THIS_METHOD = object()


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"model.policy": ..., "methods.d2o.k": ...} from a nested preset mapping."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _provenance_file(preset: str) -> Optional[dict]:
    node = resources.files("harness.presets").joinpath("provenance", f"{preset}.yaml")
    if not node.is_file():
        return None
    try:
        data = yaml.safe_load(node.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"provenance of preset {preset}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise BadInput(f"provenance of preset {preset}: top level must be a mapping")
    return data


def recommended_method(preset: str) -> Optional[dict]:
    """{"name", "why"}: the method variant the docs recommend with this preset, if any."""
    data = _provenance_file(preset)
    return (data or {}).get("recommended_method")


def load_provenance(preset: str) -> Optional[dict[str, dict]]:
    """The preset's declared provenance rows, or None when it declares none."""
    data = _provenance_file(preset)
    if data is None:
        return None
    rows = data.get("settings")
    if not isinstance(rows, dict):
        raise BadInput(f"provenance of preset {preset}: needs a `settings` mapping")
    for key, row in rows.items():
        if not isinstance(row, dict) or row.get("source") not in LABELS:
            raise BadInput(f"provenance of preset {preset}: {key} needs a source, one of {', '.join(LABELS)}")
    return rows


def _value_in_effect(cfg, key: str) -> Any:
    parts = key.split(".")
    if parts[0] == "methods":
        from harness.registry import get_method

        method_cls = get_method(cfg.method_name)
        if parts[1] not in (method_cls.name, method_cls.family) or not hasattr(cfg.method, parts[2]):
            return _NOT_THIS_METHOD
        return getattr(cfg.method, parts[2])
    node: Any = cfg
    for part in parts:
        node = getattr(node, part)
    return node


def provenance_rows(cfg) -> Optional[list[tuple[str, str, str, str]]]:
    """(setting, value in effect, source, note) for every setting of the run's preset."""
    from harness.config import load_preset

    declared = load_provenance(cfg.preset)
    if declared is None:
        return None
    rows = []
    for key, preset_value in flatten(load_preset(cfg.preset)).items():
        row = declared.get(key, {"source": "unlabelled", "note": "no provenance declared"})
        value = _value_in_effect(cfg, key)
        if value is _NOT_THIS_METHOD:
            rows.append((key, f"{preset_value} (not this run's method)", row["source"], row.get("note", "")))
            continue
        source = row["source"] if value == preset_value else YOURS
        note = row.get("note", "") if source != YOURS else f"preset {preset_value}, changed by --set"
        rows.append((key, str(value), source, note))
    return rows


def provenance_table(cfg) -> list[str]:
    rows = provenance_rows(cfg)
    if rows is None:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"provenance:  each setting of preset {cfg.preset} (harness/presets/provenance/{cfg.preset}.yaml): "
             f"paper, secondary (third-party summaries, the Safe-RLHF project), guess (this project's own), "
             f"{YOURS} (changed by --set)"]
    for key, value, source, note in rows:
        lines.append(f"  {key:<{widths[0]}}  {value:<{widths[1]}}  {source:<{widths[2]}}  {note}")
    counts = {label: sum(1 for r in rows if r[2] == label) for label in (*LABELS, YOURS)}
    lines.append("  " + ", ".join(f"{n} {label}" for label, n in counts.items()))
    recommended = recommended_method(cfg.preset)
    if recommended:
        from harness.registry import get_method

        wanted, running = get_method(recommended["name"]), get_method(cfg.method_name)
        if running.family == wanted.family and running.name != wanted.name:
            lines.append(f"anchors:     the docs recommend --method {wanted.name} with preset {cfg.preset}: "
                         f"{recommended['why']}")
    return lines
