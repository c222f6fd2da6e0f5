"""Versioned leaderboard files: validate, migrate old versions on read, append safely.

A leaderboard is one JSON file, `{"schema_version": "1.1.0", "entries": [...]}`, validated against
the JSON Schemas in `leaderboards/schema/`, plus the checks a schema cannot state (a metric's
ci_low <= value <= ci_high, its per-cluster counts adding up to n). Readers accept any 1.x file
(minor versions only add optional fields: 1.1.0 added the metric fields ci_low, ci_high, ci_level,
ci_method, n_clusters, per_cluster and kind, so a 1.0.0 file still reads); older formats are
migrated in memory through `MIGRATIONS`; a newer major version is refused rather than
half-understood. Many runs (sweeps, Slurm arrays) append to the same file, so `append_entries`
serialises writers with a lock file and replaces the file atomically: a reader never sees a
partial file and a crash never leaves one behind.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

import filelock
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource

from harness import atomic
from harness.errors import BadInput, RunFailure
from harness.faults import kill_point
from harness.scoring.metrics import HIGHER_IS_BETTER  # noqa: F401  (re-exported: one source of truth)

SCHEMA_VERSION = "1.1.0"
CURRENT_MAJOR = 1
CURRENT_SCHEMA_FILE = "leaderboard-v1.schema.json"
# Old formats that can still be read, each with the schema its files must satisfy before migrating.
LEGACY_SCHEMA_FILES = {"0.1.0": "leaderboard-v0.1.0.schema.json"}
# How long to wait for another writer before giving up; a leaderboard write takes milliseconds,
# so a minute means a stuck process, not contention.
LOCK_TIMEOUT_S = 60.0
_SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_MESSAGE = 200
# How far a metric's value may sit from the mean of its per_cluster sums (float rounding only:
# both are written from the same per-prompt numbers).
_SUMMARY_TOLERANCE = 1e-9


# --------------------------------------------------------------------------- schemas


def schema_dir() -> Path:
    """`$D2O_BENCH_SCHEMA_DIR`, else the checkout's `leaderboards/schema/`.

    The variable exists for installs that do not carry the repository tree (container images).
    """
    override = os.environ.get("D2O_BENCH_SCHEMA_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "leaderboards" / "schema"


@lru_cache(maxsize=None)
def _load_schemas(directory: str) -> dict[str, dict]:
    schemas = {}
    for name in [CURRENT_SCHEMA_FILE, *LEGACY_SCHEMA_FILES.values()]:
        path = Path(directory) / name
        try:
            schemas[name] = json.loads(path.read_text())
        except OSError as exc:
            raise RunFailure(f"leaderboard schema {path} unreadable ({exc.strerror}); "
                             "set D2O_BENCH_SCHEMA_DIR to the directory holding it") from exc
    return schemas


@lru_cache(maxsize=None)
def _validator(schema_file: str, directory: str) -> Draft202012Validator:
    schemas = _load_schemas(directory)
    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()
    )
    return Draft202012Validator(schemas[schema_file], registry=registry)


def _entry_validator() -> Draft202012Validator:
    """Validates one entry on its own, reusing the file schema's `$defs/entry`."""
    directory = str(schema_dir())
    return _entry_validator_for(directory)


@lru_cache(maxsize=None)
def _entry_validator_for(directory: str) -> Draft202012Validator:
    file_schema = _load_schemas(directory)[CURRENT_SCHEMA_FILE]
    registry = Registry().with_resource(file_schema["$id"], Resource.from_contents(file_schema))
    return Draft202012Validator({"$ref": file_schema["$id"] + "#/$defs/entry"}, registry=registry)


# --------------------------------------------------------------------------- messages


def format_path(parts: Iterable[Any], root: str = "") -> str:
    """`entries[3].metrics.cost.n`: the JSON path a human reads, not jsonschema's deque."""
    text = root
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(str(part)):
            text += f".{part}" if text else str(part)
        else:
            text += f"[{json.dumps(part)}]"
    return text


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: ValidationError) -> str:
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return f"expected {' or '.join(expected)}, got {_json_type(error.instance)} {_short(error.instance)}"
    if error.validator == "enum":
        return f"{_short(error.instance)} is not one of {', '.join(json.dumps(v) for v in error.validator_value)}"
    if error.validator == "pattern" and isinstance(error.schema, dict) and error.schema.get("title"):
        # A titled pattern stands for a named format; the regex itself helps nobody.
        return f"{_short(error.instance)} is not a valid {error.schema['title']}"
    message = error.message
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _schema_error(validator: Draft202012Validator, document: Any) -> ValidationError | None:
    return best_match(validator.iter_errors(document))


def _non_finite(value: Any, path: tuple = ()) -> tuple | None:
    """Path of the first NaN/Infinity: JSON has no such numbers and browsers refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _non_finite(item, (*path, index))
            if found is not None:
                return found
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metric_problem(record: dict) -> tuple[tuple, str] | None:
    """(path inside the record, message) of the first inconsistency the schema cannot express."""
    value, low, high = record.get("value"), record.get("ci_low"), record.get("ci_high")
    if _number(low) and _number(high) and low > high:
        return ("ci_low",), f"ci_low {low:.6g} > ci_high {high:.6g}"
    if _number(value) and _number(low) and value < low:
        return ("value",), f"value {value:.6g} is below ci_low {low:.6g}"
    if _number(value) and _number(high) and value > high:
        return ("value",), f"value {value:.6g} is above ci_high {high:.6g}"
    per_cluster = record.get("per_cluster")
    if isinstance(per_cluster, dict):
        if record.get("kind") == "rate":
            for cluster, (total, count) in per_cluster.items():
                if not 0 <= total <= count:
                    return (("per_cluster", cluster),
                            f"a rate's cluster sum must lie in [0, count], got [{total}, {count}]")
        counted = sum(pair[1] for pair in per_cluster.values())
        if _number(record.get("n")) and counted != record["n"]:
            return ("per_cluster",), f"cluster counts add up to {counted:g}, not n = {record['n']}"
        n_clusters = record.get("n_clusters")
        nonempty = sum(1 for pair in per_cluster.values() if pair[1] > 0)
        if _number(n_clusters) and nonempty != n_clusters:
            return ("per_cluster",), f"{nonempty} non-empty clusters, not n_clusters = {n_clusters}"
        # The value a table prints and the per-task data compare and publish compute from must be
        # one number: a board whose two disagree would be read as OK while showing another one.
        total = sum(pair[0] for pair in per_cluster.values())
        if _number(value) and counted > 0:
            pooled = total / counted
            if abs(value - pooled) > _SUMMARY_TOLERANCE * max(1.0, abs(pooled)):
                return ("value",), (f"value {value:.6g} disagrees with its per-task data "
                                    f"(per_cluster sums give {pooled:.6g})")
    return None


def _entry_problem(entry: dict) -> tuple[tuple, str] | None:
    for metric, record in entry["metrics"].items():
        problem = _metric_problem(record)
        if problem is not None:
            return ("metrics", metric, *problem[0]), problem[1]
    # Capability metrics carry intervals too (since lm-eval samples are logged), so the same checks.
    capability = (entry.get("sections") or {}).get("capability")
    for task, result in ((capability or {}).get("tasks") or {}).items() if isinstance(capability, dict) else ():
        for metric, record in ((result or {}).get("metrics") or {}).items() if isinstance(result, dict) else ():
            problem = _metric_problem(record) if isinstance(record, dict) else None
            if problem is not None:
                return ("sections", "capability", "tasks", task, "metrics", metric, *problem[0]), problem[1]
    return None


# --------------------------------------------------------------------------- migrations


def _migrate_0_1_0_to_1_0_0(document: dict, name: str) -> dict:
    """0.1.0 recorded finished runs only and no directions: add status, sections and directions."""
    entries = []
    for index, old in enumerate(document["entries"]):
        entry = dict(old)
        entry["status"] = "complete"
        entry["sections"] = {"judge": None, "capability": None}
        metrics = {}
        for metric, record in old["metrics"].items():
            if metric not in HIGHER_IS_BETTER:
                # Guessing a direction could turn a regression into an improvement.
                raise BadInput(f"{name}: {format_path(('entries', index, 'metrics', metric))}: cannot migrate "
                               f"0.1.0 metric {metric!r}: its direction is unknown "
                               f"(known: {', '.join(sorted(HIGHER_IS_BETTER))})")
            metrics[metric] = {**record, "higher_is_better": HIGHER_IS_BETTER[metric]}
        entry["metrics"] = metrics
        entries.append(entry)
    return {**document, "schema_version": "1.0.0", "entries": entries}


# version read -> (version written, function). Each step is validated against its source schema
# first, so a migration only ever sees well-formed input.
MIGRATIONS: dict[str, tuple[str, Callable[[dict, str], dict]]] = {
    "0.1.0": ("1.0.0", _migrate_0_1_0_to_1_0_0),
}


def _parse_version(version: Any, name: str) -> tuple[int, int, int]:
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise BadInput(f"{name}: schema_version: {_short(version)} is not a semantic version MAJOR.MINOR.PATCH")
    major, minor, patch = (int(x) for x in version.split("."))
    return major, minor, patch


# --------------------------------------------------------------------------- reading


def empty_leaderboard() -> dict:
    return {"schema_version": SCHEMA_VERSION, "entries": []}


def _raise_for_constant(constant: str):
    raise ValueError(f"{constant} is not valid JSON (record null instead)")


def parse_leaderboard(text: str, name: str) -> dict:
    """Validated, migrated leaderboard from JSON text; `name` labels every error message."""
    if not text.strip():
        raise BadInput(f"{name}: not JSON: the file is empty")
    try:
        document = json.loads(text, parse_constant=_raise_for_constant)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{name}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise BadInput(f"{name}: not JSON: {exc}") from None
    except RecursionError:
        raise BadInput(f"{name}: not a leaderboard: JSON nested too deeply to read") from None
    # 1e400 parses as a float infinity: every later sum, interval and table would carry it.
    bad = _non_finite(document)
    if bad is not None:
        raise BadInput(f"{name}: {format_path(bad)}: a number too large for a float (it reads as "
                       "Infinity); a leaderboard holds finite numbers only")
    try:
        return check_leaderboard(document, name)
    except RecursionError:
        raise BadInput(f"{name}: not a leaderboard: JSON nested too deeply to read") from None


def check_leaderboard(document: Any, name: str) -> dict:
    """Validates (and migrates) an already parsed leaderboard document."""
    if not isinstance(document, dict):
        raise BadInput(f"{name}: expected an object with schema_version and entries, got {_json_type(document)}")
    if "schema_version" not in document:
        raise BadInput(f"{name}: 'schema_version' is a required property")
    directory = str(schema_dir())
    seen = set()
    while True:
        version = document["schema_version"]
        major, _, _ = _parse_version(version, name)
        if major > CURRENT_MAJOR:
            raise BadInput(f"{name}: schema_version: {version} is newer than this d2o-bench reads "
                           f"({CURRENT_MAJOR}.x); upgrade d2o-bench")
        if major == CURRENT_MAJOR:
            _validate_current(document, name, directory)
            _check_unique_run_ids(document["entries"], name)
            check_no_duplicate_runs(document["entries"], name)
            check_one_base_policy_per_world(document["entries"], name)
            return document
        if version not in MIGRATIONS or version in seen:
            known = ", ".join([*MIGRATIONS, f"{CURRENT_MAJOR}.x"])
            raise BadInput(f"{name}: schema_version: {version} is not a version this d2o-bench reads (known: {known})")
        seen.add(version)
        _validate_document(_validator(LEGACY_SCHEMA_FILES[version], directory), document, name)
        _check_unique_run_ids(document["entries"], name)
        _, migrate = MIGRATIONS[version]
        document = migrate(document, name)


# Canonical JSON of entries already found valid. Every append re-reads and re-validates the whole
# file under the lock, so without this a sweep's writers spend O(entries²) time validating.
_KNOWN_VALID_ENTRIES: dict[str, None] = {}
_KNOWN_VALID_LIMIT = 100_000


def _validate_current(document: dict, name: str, directory: str) -> None:
    _validate_document(_shell_validator(directory), document, name)
    entry_validator = _entry_validator_for(directory)
    for index, entry in enumerate(document["entries"]):
        canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        if canonical in _KNOWN_VALID_ENTRIES:
            continue
        error = _schema_error(entry_validator, entry)
        if error is not None:
            where = format_path(error.absolute_path, root=f"entries[{index}]")
            raise BadInput(f"{name}: {where}: {_describe(error)}")
        problem = _entry_problem(entry)
        if problem is not None:
            raise BadInput(f"{name}: {format_path(problem[0], root=f'entries[{index}]')}: {problem[1]}")
        if len(_KNOWN_VALID_ENTRIES) >= _KNOWN_VALID_LIMIT:
            _KNOWN_VALID_ENTRIES.clear()
        _KNOWN_VALID_ENTRIES[canonical] = None


@lru_cache(maxsize=None)
def _shell_validator(directory: str) -> Draft202012Validator:
    """The file schema minus its entries, which `_validate_current` checks one by one."""
    schema = copy.deepcopy(_load_schemas(directory)[CURRENT_SCHEMA_FILE])
    schema["properties"]["entries"] = {"type": "array", "items": {"type": "object"}}
    return Draft202012Validator(schema)


def _validate_document(validator: Draft202012Validator, document: dict, name: str) -> None:
    error = _schema_error(validator, document)
    if error is not None:
        where = format_path(error.absolute_path)
        raise BadInput(f"{name}: {where + ': ' if where else ''}{_describe(error)}")


def _check_unique_run_ids(entries: list[dict], name: str) -> None:
    first_seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        run_id = entry["run_id"]
        if run_id in first_seen:
            raise BadInput(f"{name}: entries[{index}].run_id: duplicate run_id {run_id!r} "
                           f"(first at entries[{first_seen[run_id]}])")
        first_seen[run_id] = index


# The model spec that names a part of the generated world (harness/suites: policy, cost and reward
# models built from `world.seed`).
WORLD_MODEL_SPEC = "tiny-world"


def world_seed(entry: dict):
    """The seed of the generated world the entry's models came from; None when none of them did.

    Every config carries a `world` section, defaults included, so a real preset's entries name
    world seed 0 although no world was built: taken at its word, that seed would make a method's
    training seeds one world and drop the between-seed spread from its interval. An entry without
    a `model` section (hand-written, legacy) keeps the seed its config names."""
    config = (entry.get("provenance") or {}).get("config") or {}
    world = config.get("world")
    if not isinstance(world, dict):
        return None
    models = config.get("model")
    if isinstance(models, dict) and WORLD_MODEL_SPEC not in models.values():
        return None
    return world.get("seed")


def run_identity(entry: dict) -> tuple | None:
    """What makes two entries the same run whatever their run_ids: method, preset, config hash,
    seed, world seed (and the hyperparameters, which the hash covers in every entry a run
    writes). None for an entry without a config hash (legacy, hand-written): not comparable."""
    config_hash = (entry.get("provenance") or {}).get("config_hash")
    if not config_hash:
        return None
    hyperparameters = json.dumps(entry.get("hyperparameters"), sort_keys=True, default=str)
    return (entry.get("method"), entry.get("preset"), config_hash, entry.get("seed"), world_seed(entry),
            hyperparameters)


def check_no_duplicate_runs(entries: list[dict], name: str) -> None:
    """One run entered twice under two run_ids would be pooled as two seeds: the interval narrows
    while "n seeds" stays the same. Refused wherever entries are read or appended."""
    first_seen: dict[tuple, int] = {}
    for index, entry in enumerate(entries):
        identity = run_identity(entry)
        if identity is None:
            continue
        if identity in first_seen:
            first = first_seen[identity]
            raise BadInput(f"{name}: entries[{index}] (run_id {entry['run_id']!r}) is the same run as "
                           f"entries[{first}] (run_id {entries[first]['run_id']!r}): same method, preset, "
                           "config hash, seed and world; a run may be entered once")
        first_seen[identity] = index


def check_one_base_policy_per_world(entries: list[dict], name: str) -> None:
    """Runs of one preset whose world and model settings are the same are pooled (and paired) as
    runs on one base policy. A world rebuilt on another machine keeps its key but not its weights
    (docs/GPU_CHECK.md, "Re-check at 63aff4f"), so entries that name the same settings but record
    a different base-policy sha256 are refused rather than pooled."""
    first_seen: dict[tuple, int] = {}
    for index, entry in enumerate(entries):
        provenance = entry.get("provenance") or {}
        digest = (provenance.get("base_model") or {}).get("sha256")
        config = provenance.get("config") or {}
        if not digest or not config:
            continue
        settings = (entry.get("preset"), json.dumps(config.get("world"), sort_keys=True, default=str),
                    json.dumps(config.get("model"), sort_keys=True, default=str))
        first = first_seen.setdefault(settings, index)
        theirs = (entries[first]["provenance"].get("base_model") or {}).get("sha256")
        if theirs != digest:
            raise BadInput(f"{name}: entries[{index}] (run_id {entry['run_id']!r}) has base policy sha256 "
                           f"{digest[:12]}… but entries[{first}] (run_id {entries[first]['run_id']!r}), with the "
                           f"same preset, world and model settings, has {str(theirs)[:12]}…: the base policy was "
                           "built twice with different weights (another machine?); write to a separate board")


def read_leaderboard(path, *, missing_ok: bool = False) -> dict:
    """The leaderboard at `path`, validated and migrated to the current version.

    A missing file is an error unless `missing_ok`, when it reads as an empty leaderboard.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return empty_leaderboard()
        raise BadInput(f"{path}: no such leaderboard file") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory, not a leaderboard file") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not JSON: the file is not UTF-8 text") from None
    except OSError as exc:
        raise BadInput(f"{path}: unreadable ({exc.strerror})") from None
    return parse_leaderboard(text, str(path))


def validate_entry(entry: dict) -> None:
    """Raises BadInput naming the first problem with one leaderboard entry (current schema)."""
    label = entry.get("run_id") if isinstance(entry, dict) else None
    name = f"leaderboard entry {label!r}" if isinstance(label, str) else "leaderboard entry"
    if not isinstance(entry, dict):
        raise BadInput(f"{name}: expected object, got {_json_type(entry)}")
    error = _schema_error(_entry_validator(), entry)
    if error is not None:
        where = format_path(error.absolute_path)
        raise BadInput(f"{name}: {where + ': ' if where else ''}{_describe(error)}")
    problem = _entry_problem(entry)
    if problem is not None:
        raise BadInput(f"{name}: {format_path(problem[0])}: {problem[1]}")
    bad = _non_finite(entry)
    if bad is not None:
        raise BadInput(f"{name}: {format_path(bad)}: NaN/Infinity cannot be stored in JSON (record null instead)")


# --------------------------------------------------------------------------- writing


def write_leaderboard_atomic(path: Path, document: dict) -> None:
    """Through harness/atomic.py: a temp file beside the board, fsync, rename over. The caller holds
    the board's lock, so any other temp file of the board is a killed writer's and goes."""
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with atomic.replacing(Path(path), exclusive=True) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
        kill_point("leaderboard:unreplaced")


def append_entries(path, entries: list[dict]) -> None:
    """Adds `entries` to the leaderboard at `path` (created if missing); a rerun's run_id replaces its old entry.

    Every entry is validated before the file is touched, and an existing file that does not
    validate is left as it is: a leaderboard is never silently repaired or truncated.
    """
    path = Path(path)
    if path.is_symlink():
        # A linked board is updated where it lives: renaming a new file over the link would
        # replace the link with a copy, and the two boards would silently drift apart.
        path = path.resolve()
    if not isinstance(entries, list):
        raise BadInput(f"{path}: entries to append must be a list, got {_json_type(entries)}")
    positions: dict[str, int] = {}
    for index, entry in enumerate(entries):
        validate_entry(entry)
        if entry["run_id"] in positions:
            raise BadInput(f"{path}: run_id {entry['run_id']!r} appears twice among the entries to append")
        positions[entry["run_id"]] = index
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        document = read_leaderboard(path, missing_ok=True)
        existing = {entry["run_id"]: index for index, entry in enumerate(document["entries"])}
        merged = list(document["entries"])
        for entry in entries:
            if entry["run_id"] in existing:
                merged[existing[entry["run_id"]]] = entry
            else:
                existing[entry["run_id"]] = len(merged)
                merged.append(entry)
        # Before the write: a duplicate refused here leaves the file as it was.
        check_no_duplicate_runs(merged, str(path))
        check_one_base_policy_per_world(merged, str(path))
        major, minor, patch = _parse_version(document["schema_version"], str(path))
        ours = _parse_version(SCHEMA_VERSION, "SCHEMA_VERSION")
        # A newer 1.x file keeps its version: its extra fields are still there, untouched.
        version = document["schema_version"] if (major, minor, patch) > ours else SCHEMA_VERSION
        write_leaderboard_atomic(path, {**document, "schema_version": version, "entries": merged})
