"""The selection rule of `d2o-bench tune`, declared before any run, as pure functions.

Everything here reads validation numbers only: a trial is (number, harm, help) measured on the
validation split, and the base policy's harm is its validation harm from the same runs. Nothing
in this module can see a test split. The rule's text is stored verbatim in every study file
(`study.json`, "selection_rule.text") and, through `d2o-bench run --selection`, in every test
entry, so a reader knows exactly how the configuration was chosen.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from harness.config import OPERATIONAL_FIELDS
from harness.errors import BadInput
from harness.provenance import flatten

RULE_TEXTS = {
    "max_helpful_under_harm_cap": (
        "max_helpful_under_harm_cap: among the COMPLETE trials of the budget, those whose "
        "validation harm metric (tune.harm_metric, lower is better) is at most harm_cap_ratio "
        "times the base policy's validation harm are eligible; the selected trial is the eligible "
        "one with the highest validation help metric (tune.help_metric, higher is better); ties "
        "go to the lower validation harm, then to the earlier trial (lower trial number). If no "
        "trial is eligible, the selected trial is the one with the lowest validation harm (ties "
        "to the higher help, then to the earlier trial), flagged as not under the cap. Only "
        "numbers measured on the validation split are read; the test split is never seen."
    ),
}


@dataclass(frozen=True)
class TrialPoint:
    """A COMPLETE trial's validation numbers."""

    number: int
    harm: float
    help: float


@dataclass(frozen=True)
class Selection:
    number: int
    under_cap: bool  # False: no trial was under the cap; the lowest-harm trial was taken
    harm_cap: float


def _check(trials: list[TrialPoint]) -> None:
    for t in trials:
        if not (math.isfinite(t.harm) and math.isfinite(t.help)):
            raise BadInput(f"trial {t.number}: validation harm/help must be finite numbers, got {t.harm}, {t.help}")


def select_trial(trials: list[TrialPoint], base_harm: float, harm_cap_ratio: float,
                 rule: str = "max_helpful_under_harm_cap") -> Selection:
    """Apply the declared rule to COMPLETE trials (see RULE_TEXTS)."""
    if rule not in RULE_TEXTS:
        raise BadInput(f"unknown selection rule {rule!r}; known: {', '.join(RULE_TEXTS)}")
    if not trials:
        raise BadInput("no COMPLETE trial to select from")
    _check(trials)
    cap = harm_cap_ratio * base_harm
    eligible = [t for t in trials if t.harm <= cap]
    if eligible:
        best = min(eligible, key=lambda t: (-t.help, t.harm, t.number))
        return Selection(best.number, True, cap)
    best = min(trials, key=lambda t: (t.harm, -t.help, t.number))
    return Selection(best.number, False, cap)


def pareto_front(trials: list[TrialPoint]) -> list[int]:
    """Numbers of the non-dominated trials (lower harm, higher help), ordered by harm, then number.

    A trial is dominated when another is no worse on both objectives and better on one; trials
    with identical numbers do not dominate each other, so both stay on the front.
    """
    _check(trials)

    def dominates(a: TrialPoint, b: TrialPoint) -> bool:
        return a.harm <= b.harm and a.help >= b.help and (a.harm < b.harm or a.help > b.help)

    front = [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]
    return [t.number for t in sorted(front, key=lambda t: (t.harm, t.number))]


def helpful_at_matched_harm(trials: list[TrialPoint], base_harm: float, matched_harm_ratio: float) -> dict:
    """The front's help read at harm = matched_harm_ratio × base harm, by linear interpolation.

    Along the front help rises with harm. The value is None (with a note saying why) when the
    level lies outside the front's harm range [lowest, highest]: the front does not reach it.
    """
    level = matched_harm_ratio * base_harm
    by_number = {t.number: t for t in trials}
    front = [by_number[n] for n in pareto_front(trials)]
    result = {"harm_level": level, "value": None}
    if not front:
        return {**result, "note": "no COMPLETE trial"}
    low, high = front[0].harm, front[-1].harm
    if level < low or level > high:
        return {**result, "note": f"the validation Pareto front spans harm {low:g} to {high:g} and does not "
                                  f"reach {level:g}"}
    for a, b in zip(front, front[1:] + [front[-1]]):
        if a.harm == level:
            return {**result, "value": a.help}
        if a.harm < level < b.harm:
            return {**result, "value": a.help + (b.help - a.help) * (level - a.harm) / (b.harm - a.harm)}
    return {**result, "value": front[-1].help}  # level == the highest harm


def invalid_objectives(objectives: dict[str, str], validation: dict) -> list[str]:
    """Why each objective ({"harm": metric, "help": metric}) may not select a configuration: its
    metric comes from an instrument whose check against human labels failed (the trial's
    `sections.instruments.validation`, thresholds in harness/instruments/checks.py). Empty when
    both may.

    The objective is refused, not the trial: every trial of a study is scored by the same
    instruments, so an instrument that fails for one fails for all, and dropping trials one by one
    would only end in a study with nothing to select, or select on numbers that are not results.
    """
    from harness.instruments.checks import failure_of, invalid_metrics, is_invalid

    invalid = invalid_metrics(validation)
    reasons = []
    for role, metric in objectives.items():
        if not is_invalid(metric, invalid):
            continue
        instrument, figure = failure_of(metric, invalid)
        reasons.append(f"tune.{role}_metric={metric} comes from {instrument}, which failed its check against human "
                       f"labels ({figure}): it is not a result and cannot select a configuration; "
                       f"choose a metric of an instrument that passed")
    return reasons


# ----------------------------------------------------------------------------------------------
# The one reader of a study file: `d2o-bench run --selection STUDY.json` (the provenance of a test
# run), `tune` (resuming, summarising) and `publish --studies` (frontiers) all read it here.

STUDY_FILE = "study.json"
DEFAULT_OBJECTIVES = {"harm": "harmful_rate", "help": "helpful_rate"}
# What a study must hold to be the provenance of a run (`--selection`); publish needs less.
STUDY_KEYS = ("method", "preset", "study_name", "selection_rule", "selected_trial", "trials", "search_space",
              "n_trials")


@dataclass(frozen=True)
class StudyFile:
    """A study file, checked: `document` is the JSON object as written (unknown keys kept), `blob`
    its bytes (hashed into a run's provenance), `checked` the normalised view publish draws."""

    path: Path
    document: dict
    blob: bytes
    checked: dict


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def describe_value(value) -> str:
    """A JSON value for an error message: its JSON type and (cut) text."""
    if value is None:
        return "null"
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    kind = ("boolean" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else
            "string" if isinstance(value, str) else "array" if isinstance(value, list) else
            "object" if isinstance(value, dict) else type(value).__name__)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _refuse_constant(constant: str):
    raise ValueError(f"{constant} is not valid JSON (record null instead)")


def parse_study(path: Path, *, context: str = "", required: Iterable[str] = ()) -> StudyFile:
    """Read and check a study file; BadInput naming the file (after `context`, e.g. "--selection ")
    and the field on anything malformed. `required`: top-level keys the caller needs beyond those
    every study has. Unknown keys are ignored. Trials that did not complete, or have no validation
    value for both objectives, are kept but marked not `plotted`."""
    path = Path(path)
    where_file = f"{context}{path}"

    def fail(where: str, message: str) -> BadInput:
        return BadInput(f"{where_file}: {where + ': ' if where else ''}{message}")

    try:
        blob = path.read_bytes()
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{where_file}: not JSON: the file is not UTF-8 text") from None
    except OSError as exc:
        raise BadInput(f"{where_file}: unreadable ({exc.strerror or exc})") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where_file}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise BadInput(f"{where_file}: not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise fail("", f"expected a study object, got {describe_value(document)}")
    missing = [k for k in required if k not in document]
    if missing:
        raise fail("", f"not a study file written by `d2o-bench tune` (lacks {', '.join(missing)})")

    def point(where: str, record) -> Optional[dict]:
        """{"value", "ci_low", "ci_high"} from a validation record (a bare number is a value)."""
        if record is None:
            return None
        if is_number(record):
            return {"value": float(record), "ci_low": None, "ci_high": None}
        if not isinstance(record, dict):
            raise fail(where, f"expected an object with a numeric value, got {describe_value(record)}")
        found = {}
        for name in ("value", "ci_low", "ci_high"):
            value = record.get(name)
            if value is None and name != "value":
                found[name] = None
                continue
            if not is_number(value):
                raise fail(f"{where}.{name}", f"expected a number, got {describe_value(value)}")
            found[name] = float(value)
        return found

    for name in ("method", "preset"):
        if not isinstance(document.get(name), str) or not document[name]:
            raise fail(name, f"expected a non-empty string, got {describe_value(document.get(name))}")
    objectives = document.get("objectives", DEFAULT_OBJECTIVES)
    if not isinstance(objectives, dict):
        raise fail("objectives", f"expected an object, got {describe_value(objectives)}")
    objectives = {**DEFAULT_OBJECTIVES, **objectives}
    for role in ("harm", "help"):
        if not isinstance(objectives[role], str) or not objectives[role]:
            raise fail(f"objectives.{role}", f"expected a metric name, got {describe_value(objectives[role])}")
    if "search_space" in document and not isinstance(document["search_space"], dict):
        raise fail("search_space", f"expected an object, got {describe_value(document['search_space'])}")
    trials_in = document.get("trials")
    if not isinstance(trials_in, list):
        raise fail("trials", f"expected an array, got {describe_value(trials_in)}")
    trials, numbers = [], set()
    for index, trial in enumerate(trials_in):
        where = f"trials[{index}]"
        if not isinstance(trial, dict):
            raise fail(where, f"expected an object, got {describe_value(trial)}")
        number = trial.get("number")
        if not isinstance(number, int) or isinstance(number, bool):
            raise fail(f"{where}.number", f"expected an integer, got {describe_value(number)}")
        if number in numbers:
            raise fail(f"{where}.number", f"duplicate trial number {number}")
        numbers.add(number)
        state = trial.get("state", "COMPLETE")
        if not isinstance(state, str):
            raise fail(f"{where}.state", f"expected a string, got {describe_value(state)}")
        validation = trial.get("validation")
        if validation is not None and not isinstance(validation, dict):
            raise fail(f"{where}.validation", f"expected an object, got {describe_value(validation)}")
        validation = validation or {}
        harm = point(f"{where}.validation.{objectives['harm']}", validation.get(objectives["harm"]))
        helpful = point(f"{where}.validation.{objectives['help']}", validation.get(objectives["help"]))
        params = trial.get("params", {})
        if not isinstance(params, dict):
            raise fail(f"{where}.params", f"expected an object, got {describe_value(params)}")
        trials.append({"number": number, "state": state, "params": params, "harm": harm, "help": helpful,
                       "validation": validation,
                       "plotted": state == "COMPLETE" and harm is not None and helpful is not None})
    front = document.get("pareto_front", [])
    if not isinstance(front, list):
        raise fail("pareto_front", f"expected an array of trial numbers, got {describe_value(front)}")
    for index, number in enumerate(front):
        if not isinstance(number, int) or isinstance(number, bool) or number not in numbers:
            raise fail(f"pareto_front[{index}]", f"{describe_value(number)} is not a trial number of this study")
    selected = document.get("selected_trial")
    if selected is not None and (not isinstance(selected, int) or isinstance(selected, bool) or selected not in numbers):
        raise fail("selected_trial", f"{describe_value(selected)} is not a trial number of this study")
    matched = document.get("helpful_at_matched_harm")
    if matched is not None:
        if not isinstance(matched, dict):
            raise fail("helpful_at_matched_harm", f"expected an object or null, got {describe_value(matched)}")
        for name in ("harm_level", "value"):
            if matched.get(name) is not None and not is_number(matched[name]):
                raise fail(f"helpful_at_matched_harm.{name}", f"expected a number or null, got {describe_value(matched[name])}")
    rule = document.get("selection_rule")
    rule_name = rule.get("name") if isinstance(rule, dict) else rule if isinstance(rule, str) else None
    base = document.get("base_validation")
    base_point = None
    if isinstance(base, dict) and is_number(base.get(objectives["harm"])) and is_number(base.get(objectives["help"])):
        base_point = (float(base[objectives["harm"]]), float(base[objectives["help"]]))
    study_name = document.get("study_name")
    checked = {"path": path, "method": document["method"], "preset": document["preset"],
               "study_name": study_name if isinstance(study_name, str) else path.parent.name,
               "objectives": objectives, "trials": trials, "pareto_front": list(front), "selected_trial": selected,
               "helpful_at_matched_harm": matched, "selection_rule": rule_name if isinstance(rule_name, str) else None,
               "base_validation": base_point}
    return StudyFile(path, document, blob, checked)


def read_study(path: Path) -> dict:
    """The study file's JSON object as `tune` wrote it, after the checks of `parse_study`."""
    return parse_study(path).document


# Fields that differ between a study's trials and its test runs by design.
_PER_RUN_FIELDS = (("data", "eval_split"), ("world", "seed"))
# The judge reads a run's answers after the fact and takes no part in selection: trials never
# call it (harness/tune.py), test runs may.
JUDGE_FIELDS = tuple(("eval", name) for name in ("judge_model", "judge_base_url", "judge_api_key_env",
                                                 "judge_max_calls", "judge_concurrency", "judge_max_tokens"))
# Likewise the capability tasks when `tune.capability_on_trials` is false.
CAPABILITY_FIELDS = (("eval", "lm_eval_tasks"), ("eval", "lm_eval_limit"))


def comparable_config(config: dict, tuned: Iterable[str]) -> dict:
    """A resolved config without what the protocol varies on purpose: the tune section, the tuned
    fields, the run seed, the evaluated split and the world seed. A test run and the trials of
    the study that selected it must agree on everything else (instruments that take no part in
    selection aside: JUDGE_FIELDS, CAPABILITY_FIELDS)."""
    config = json.loads(json.dumps(config, default=str))
    for key in ("tune", "seed", "preset", "method_name"):
        config.pop(key, None)
    for name in tuned:
        section, _, field_name = name.partition(".")
        (config.get(section) or {}).pop(field_name, None)
    for section, field_name in _PER_RUN_FIELDS + OPERATIONAL_FIELDS + JUDGE_FIELDS + CAPABILITY_FIELDS:
        (config.get(section) or {}).pop(field_name, None)
    return config


_MISSING = object()


def selection_summary(path: Path, cfg) -> dict:
    """What a test run's entry says about how its configuration was chosen.

    Refuses (BadInput) a study of another method or preset, a study with no selected trial, and
    a run whose configuration differs from the selected trial's parameters.
    """
    path = Path(path)
    parsed = parse_study(path, context="--selection ", required=STUDY_KEYS)
    study, blob = parsed.document, parsed.blob
    if study["method"] != cfg.method_name:
        raise BadInput(f"--selection {path}: the study tuned {study['method']!r}, this run trains {cfg.method_name!r}")
    if study["preset"] != cfg.preset:
        raise BadInput(f"--selection {path}: the study used preset {study['preset']!r}, this run {cfg.preset!r}")
    number = study["selected_trial"]
    trial = next((t for t in study["trials"] if isinstance(t, dict) and t.get("number") == number), None)
    if number is None or trial is None:
        raise BadInput(f"--selection {path}: the study selected no trial")
    params = trial.get("params") or {}
    config = cfg.to_dict()
    if isinstance(study.get("trial_config"), dict):
        # Flattened so a mismatch can be named field by field.
        ours = flatten(comparable_config(config, study.get("search_space") or {}))
        theirs = flatten(comparable_config(study["trial_config"], study.get("search_space") or {}))
        differing = sorted(key for key in set(ours) | set(theirs) if ours.get(key, _MISSING) != theirs.get(key, _MISSING))
        if differing:
            raise BadInput(f"--selection {path}: this run's configuration differs from the study's trials in "
                           f"{', '.join(differing[:5])}")
    for name, value in params.items():
        section, _, field = name.partition(".")
        actual = (config.get(section) or {}).get(field, object())
        if actual != value:
            raise BadInput(f"--selection {path}: this run's {name} is {actual!r}, the selected trial's is {value!r} "
                           f"(pass --set {name}={value!r})")
    return {
        "study": str(path.resolve()),
        "study_sha256": hashlib.sha256(blob).hexdigest(),
        "study_name": study["study_name"],
        "rule": study["selection_rule"],
        "selected_trial": number,
        "params": params,
        "search_space": study["search_space"],
        "n_trials": study["n_trials"],
    }


def selected_params(study: dict) -> Optional[dict]:
    number = study.get("selected_trial")
    for trial in study.get("trials", []):
        if trial.get("number") == number:
            return dict(trial.get("params") or {})
    return None
