"""Pooling: a leaderboard's entries grouped per preset × method (× hyperparameters), each metric
summarised as a value with its 95% interval (on `harness.stats`), and paired differences between
methods on the same test prompts.

* records with per-task data (`per_cluster`, schema 1.1.0): the across-runs interval of
  `harness.stats.across_runs`: the runs (seeds) are pooled per task, because they share the test
  prompts, the tasks are bootstrapped, and the between-run variance of the run means is added
  (law of total variance). `value` is the pooled mean over prompts and runs.
* legacy records (no per-task data): the mean over seeds with mean ± t(k−1)·sd/√k for k ≥ 2
  seeds; one seed keeps its own recorded interval, or ± 1.96·stderr.

Failed runs are counted, not averaged. The best value per metric and preset is marked, its
direction taken from the metric's `higher_is_better`. Instruments that failed their check against
human labels (harness/instruments/checks.py) are not results: their metrics are left out here, so
out of every table, pairing and plot.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Optional

from harness import stats
from harness.errors import BadInput
from harness.instruments import checks
from harness.leaderboard import check_no_duplicate_runs, check_one_base_policy_per_world, read_leaderboard, world_seed
from harness.scoring.metrics import bounds_of, clip_interval


# Duan et al., "Negating Negatives: Alignment with Human Negative Samples via Distributional
# Dispreference Optimization", Findings of EMNLP 2024 (arXiv:2403.03419), Table 1: Alpaca-7B on
# PKU-SafeRLHF, as reported by secondary sources (two agree); see /work/shared/paper-notes.md.
# harmfulness: the cost model's score, lower is better; win rate: GPT-4 vs Alpaca, in percent.
PAPER_CITATION = ('Duan et al., "Negating Negatives: Alignment with Human Negative Samples via Distributional '
                  'Dispreference Optimization", Findings of EMNLP 2024, Table 1 (Alpaca-7B, PKU-SafeRLHF), '
                  "as reported by secondary sources")
PAPER_TABLE1 = {
    # our method name: (the paper's label, harmfulness, GPT-4 win rate % or None)
    "base": ("Alpaca (base)", 1.36, None),
    "ga": ("GA", 1.21, 20.13),
    "simpo": ("SimPO", -0.57, 28.70),
    "dpo": ("DPO-Ori", -1.02, 32.43),
    "dpo-full": ("DPO-Full", -3.16, 40.20),
    "d2o": ("D²O", -4.27, 61.82),
}
PAPER_PRESET = "paper"

# Leading columns in this order; any other metric follows alphabetically.
METRIC_ORDER = ("harmful_rate", "helpful_rate", "harmful_unsafe_rate", "harmful_compliance_rate", "over_refusal_rate",
                "benign_answer_rate", "safe_rate", "cost", "reward", "judge_helpfulness_win_rate", "judge_harmlessness_win_rate")
HARMFULNESS_METRICS = ("harmful_rate", "cost")
HELPFULNESS_METRICS = ("helpful_rate", "reward")
# Compared with the base policy, paired on the shared test tasks.
PAIRED_METRICS = ("harmful_rate", "helpful_rate", "harmful_unsafe_rate", "harmful_compliance_rate", "over_refusal_rate")
BASE_METHOD = "base"
LEVEL = 0.95
# The metrics a paired difference between two methods is shown for (`publish --against`): the
# harm and helpfulness of every suite, the order deciding the columns.
DIFFERENCE_METRICS = ("harmful_rate", "helpful_rate", "safe_rate", "cost", "reward", "benign_answer_rate", "harmful_unsafe_rate",
                      "harmful_compliance_rate", "over_refusal_rate")
# The reference `--against` defaults to where a preset has it.
DEFAULT_AGAINST = "d2o"


# --------------------------------------------------------------------------- aggregation


def summarise(records: list[dict], name: str = "") -> Optional[dict]:
    """One metric over the runs of a row: value, interval, stderr; None when no run has a value.

    `mean` is the value shown (the pooled mean for per-task data), `low`/`high` its 95% interval,
    cut to the metric's bounds when it has some (`bounds_of`: a t interval over seeds of an
    accuracy near 1 would otherwise reach past 1).
    """
    usable = [r for r in records if r.get("value") is not None]
    if not usable:
        return None
    summary = _summarise(usable)
    summary["low"], summary["high"] = clip_interval(summary["low"], summary["high"], bounds_of(name, usable))
    return summary


def _summarise(usable: list[dict]) -> dict:
    higher_is_better = usable[0]["higher_is_better"]
    kinds = {stats.record_kind(r) for r in usable}
    if all(r.get("per_cluster") is not None for r in usable) and len(kinds) == 1:
        estimate = stats.across_runs([stats.record_table(r) for r in usable], kind=kinds.pop(), level=LEVEL)
        if estimate.value is not None:
            return {"mean": estimate.value, "stderr": estimate.stderr, "k": len(usable),
                    "higher_is_better": higher_is_better, "low": estimate.low, "high": estimate.high,
                    "method": estimate.method}
    values = [float(r["value"]) for r in usable]
    mean = statistics.fmean(values)
    if len(values) >= 2:
        stderr = statistics.stdev(values) / math.sqrt(len(values))
        half = stats.quantile(LEVEL, len(values) - 1) * stderr
        low, high, method = mean - half, mean + half, "legacy: t over seeds"
    else:
        stderr = usable[0].get("stderr")
        if usable[0].get("ci_low") is not None and usable[0].get("ci_high") is not None:
            low, high, method = usable[0]["ci_low"], usable[0]["ci_high"], usable[0].get("ci_method") or "recorded"
        elif stderr is not None:
            half = stats.quantile(LEVEL) * stderr
            low, high, method = mean - half, mean + half, "legacy: normal"
        else:
            low = high = method = None
    return {"mean": mean, "stderr": stderr, "k": len(values), "higher_is_better": higher_is_better,
            "low": low, "high": high, "method": method}


def judge_metrics(entry: dict) -> dict:
    """The judge section's win rates as metrics, so they sit in the table beside the scorers'."""
    judge = (entry.get("sections") or {}).get("judge")
    if not isinstance(judge, dict) or judge.get("status") == "failed":
        return {}
    out = {}
    for aspect, result in judge.items():
        win = result.get("win") if isinstance(result, dict) else None
        if isinstance(win, dict) and isinstance(win.get("value"), (int, float)):
            out[f"judge_{aspect}_win_rate"] = {"value": win["value"], "stderr": win.get("stderr"),
                                               "n": win.get("n", 0), "higher_is_better": True}
    return out


def capability_metrics(entry: dict) -> dict:
    """lm-eval results (e.g. MMLU accuracy) as `<task>_<metric>` metrics: forgetting shows in the table."""
    capability = (entry.get("sections") or {}).get("capability")
    tasks = capability.get("tasks") if isinstance(capability, dict) else None
    out = {}
    for task, result in (tasks or {}).items():
        for metric, record in ((result or {}).get("metrics") or {}).items() if isinstance(result, dict) else ():
            if isinstance(record, dict) and {"value", "higher_is_better"} <= record.keys():
                out[f"{task}_{metric}"] = record
    return out


def metrics_of(entry: dict) -> dict:
    """The entry's metrics that are results: those of an instrument that failed its check against
    human labels (harness/instruments/checks.py) are left out here, so out of every table, pairing
    and plot; `instrument_lines` names the instrument and its figure under the table instead."""
    invalid = checks.invalid_metrics(checks.entry_validation(entry))
    found = {**capability_metrics(entry), **judge_metrics(entry), **entry["metrics"]}
    if not invalid:
        return found
    return {name: record for name, record in found.items() if not checks.is_invalid(name, invalid)}


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_entries(leaderboard_paths: Iterable[Path]) -> list[dict]:
    """Entries of all leaderboards; a run_id seen again (a rerun published later) replaces the earlier one."""
    leaderboard_paths = list(leaderboard_paths)
    by_run: dict[str, dict] = {}
    for path in leaderboard_paths:
        for entry in read_leaderboard(Path(path))["entries"]:
            by_run.pop(entry["run_id"], None)
            by_run[entry["run_id"]] = entry
    entries = list(by_run.values())
    # The same run in two boards under two run_ids would be pooled as two seeds.
    sources = " + ".join(str(p) for p in leaderboard_paths)
    check_no_duplicate_runs(entries, sources)
    check_one_base_policy_per_world(entries, sources)
    return entries


def aggregate(entries: list[dict]) -> dict:
    """{"metrics": [names], "rows": [...]} with one row per preset × method (× hyperparameters)."""
    directions: dict[str, bool] = {}
    for entry in entries:
        for name, record in metrics_of(entry).items():
            previous = directions.setdefault(name, record["higher_is_better"])
            if previous != record["higher_is_better"]:
                raise BadInput(f"publish: metric {name!r} is higher-is-better in some entries and not in others "
                               f"(e.g. run {entry['run_id']!r})")
    names = [m for m in METRIC_ORDER if m in directions] + sorted(set(directions) - set(METRIC_ORDER))

    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        # The learning rate is not a method hyperparameter but tells configurations apart as much.
        settings = dict(entry["hyperparameters"])
        learning_rate = (((entry.get("provenance") or {}).get("config") or {}).get("train") or {}).get("learning_rate")
        if learning_rate is not None and entry["method"] != BASE_METHOD:
            settings["lr"] = learning_rate
        groups.setdefault((entry["preset"], entry["method"], canonical(settings)), []).append(entry)
    settings_per_method: dict[tuple, int] = {}
    for preset, method, _ in groups:
        settings_per_method[(preset, method)] = settings_per_method.get((preset, method), 0) + 1

    rows = []
    for (preset, method, hyper), runs in sorted(groups.items()):
        complete = [r for r in runs if r["status"] == "complete"]
        row = {
            "preset": preset, "method": method, "hyperparameters": json.loads(hyper),
            "label": method if settings_per_method[(preset, method)] == 1 else f"{method} {_hyper_label(json.loads(hyper))}",
            "n_seeds": len({r["seed"] for r in complete}), "n_runs": len(complete),
            "n_failed": len(runs) - len(complete),
            "metrics": {},
            "runs": sorted(runs, key=lambda r: (r["seed"], r["run_id"])),
            "paper": PAPER_TABLE1.get(method) if preset == PAPER_PRESET else None,
            "headline": _is_headline(method),
        }
        if not row["headline"]:
            row["label"] += " (ablation)"  # every table, page and plot says so, not only Markdown
        row["metrics"] = {name: summarise(_complete_records(row, name), name) for name in names}
        rows.append(row)
    _mark_best(rows, names, directions)
    _paired_against_base(rows)
    return {"metrics": names, "directions": directions, "rows": rows}


def _is_headline(method: str) -> bool:
    """Ablations that duplicate another method (registry `headline = False`) are listed apart."""
    from harness.registry import registered_methods

    cls = registered_methods().get(method)
    return True if cls is None else bool(cls.headline)


def _complete_records(row: dict, name: str) -> list[dict]:
    return list(_unit_records(row, name).values())


def _unit_records(row: dict, name: str) -> dict:
    """One record per independent unit of the row's complete runs, keyed by the unit.

    Training seeds are nested in world seeds (the runs of one world share its base policy, data
    and scorers), so the runs of one world are pooled per task into one record and the
    between-run variance is that of worlds; and an evaluation recorded several times (the base
    policy, scored once per world but entered once per training seed) counts once.
    """
    seen_evaluations: set = set()
    units: dict = {}
    for entry in row["runs"]:
        if entry["status"] != "complete" or name not in metrics_of(entry):
            continue
        if entry["method"] == BASE_METHOD:
            evaluation = ((entry.get("provenance") or {}).get("cache_keys") or {}).get("base_eval")
            if evaluation is not None:
                if evaluation in seen_evaluations:
                    continue
                seen_evaluations.add(evaluation)
        world = world_seed(entry)
        units.setdefault(entry["run_id"] if world is None else ("world", world), []).append(metrics_of(entry)[name])
    records = {}
    for key, group in units.items():
        if len(group) == 1 or any(r.get("per_cluster") is None for r in group) \
                or len({stats.record_kind(r) for r in group}) != 1:
            if len(group) == 1:
                records[key] = group[0]
            else:  # not poolable: each run stands alone (and the row is not paired by world)
                records.update(((key, i), r) for i, r in enumerate(group))
            continue
        kind = stats.record_kind(group[0])
        pooled = stats.pool_tables([stats.record_table(r) for r in group])
        records[key] = {"value": pooled.value, "higher_is_better": group[0]["higher_is_better"], "kind": kind,
                        "per_cluster": pooled.per_cluster(integer_sums=kind == "rate"), "n": pooled.n}
    return records


def paired_difference(row: dict, reference: dict, metric: str) -> Optional["stats.PairedDifference"]:
    """row − reference on `metric`, paired on the shared test tasks (runs pooled per task, tasks
    bootstrapped: the clustering of `harness.stats`); None where either lacks per-task data.

    When both have runs on the same world seeds, the worlds are paired too: the between-run part
    of the interval is the spread of the per-world differences, so a world that is easy for every
    policy does not widen the interval.
    """
    ours_by_unit, theirs_by_unit = _unit_records(row, metric), _unit_records(reference, metric)
    by_world = set(ours_by_unit) == set(theirs_by_unit) and len(ours_by_unit) > 1 \
        and all(isinstance(k, tuple) and k[0] == "world" for k in ours_by_unit)
    keys = sorted(ours_by_unit, key=repr) if by_world else None
    ours = [ours_by_unit[k] for k in keys] if by_world else list(ours_by_unit.values())
    theirs = [theirs_by_unit[k] for k in keys] if by_world else list(theirs_by_unit.values())
    records = ours + theirs
    if not ours or not theirs or any(r.get("per_cluster") is None for r in records):
        return None
    kinds = {stats.record_kind(r) for r in records}
    if len(kinds) != 1:
        return None
    difference = stats.paired_difference_runs(
        [stats.record_table(r) for r in ours], [stats.record_table(r) for r in theirs],
        kind=kinds.pop(), higher_is_better=ours[0]["higher_is_better"], level=LEVEL, paired_runs=by_world)
    return None if difference.delta is None else difference


def reference_row(rows: list[dict], preset: str, method: str) -> Optional[dict]:
    """The preset's one row of `method`; None when it has none, or several settings of it
    (nothing unambiguous to pair with)."""
    found = [r for r in rows if r["preset"] == preset and r["method"] == method]
    return found[0] if len(found) == 1 else None


def paired_against(rows: list[dict], method: str, metrics: Iterable[str], key: str) -> None:
    """row[key][metric]: the paired difference row − the preset's `method` row, for every other row."""
    metrics = list(metrics)
    for row in rows:
        row[key] = {}
    for preset in {r["preset"] for r in rows}:
        reference = reference_row(rows, preset, method)
        if reference is None:
            continue
        for row in rows:
            if row["preset"] != preset or row is reference:
                continue
            for metric in metrics:
                difference = paired_difference(row, reference, metric)
                if difference is not None:
                    row[key][metric] = difference


def _paired_against_base(rows: list[dict]) -> None:
    """row["vs_base"][metric]: the paired difference method − base where both have per-task data."""
    paired_against(rows, BASE_METHOD, PAIRED_METRICS, "vs_base")


def _hyper_label(hyperparameters: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in sorted(hyperparameters.items())) + ")"


def _mark_best(rows: list[dict], names: list[str], directions: dict[str, bool]) -> None:
    """Best mean per metric within each preset (presets are different experiments); ties all win."""
    for row in rows:
        row["best"] = set()
    for preset in {r["preset"] for r in rows}:
        in_preset = [r for r in rows if r["preset"] == preset and r.get("headline", True)]
        for name in names:
            means = [r["metrics"][name]["mean"] for r in in_preset if r["metrics"][name] is not None]
            if len(means) < 2:
                continue
            best = max(means) if directions[name] else min(means)
            for row in in_preset:
                if row["metrics"][name] is not None and row["metrics"][name]["mean"] == best:
                    row["best"].add(name)


def format_summary(summary: Optional[dict], digits: int = 3) -> str:
    """`value [low, high]`; the value alone when no interval is known."""
    if summary is None:
        return "—"
    if summary.get("low") is None or summary.get("high") is None:
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} [{summary['low']:.{digits}f}, {summary['high']:.{digits}f}]"


def format_difference(difference: Optional["stats.PairedDifference"], digits: int = 3) -> tuple[str, str]:
    """(`Δ [low, high]`, `P(improvement) [low, high]`) of a paired difference, dashes when absent."""
    if difference is None:
        return "—", "—"
    return (f"{difference.delta:+.{digits}f} [{difference.low:+.{digits}f}, {difference.high:+.{digits}f}]",
            f"{difference.poi:.2f} [{difference.poi_low:.2f}, {difference.poi_high:.2f}]")


def arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def has_paper_rows(table: dict) -> bool:
    return any(r["preset"] == PAPER_PRESET for r in table["rows"])




def csv_text(value: Any) -> str:
    """Spreadsheets run cells starting with = + - @ as formulas; a run's name must stay text."""
    text = value if isinstance(value, str) else canonical(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_number(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))


def half_width(difference: "stats.PairedDifference") -> float:
    """Half the interval's width: the smallest difference the board could have detected."""
    return (difference.high - difference.low) / 2


def resolved(difference: "stats.PairedDifference") -> bool:
    """The interval excludes 0: the sign of the difference is resolved at the interval's level."""
    return difference.low > 0 or difference.high < 0


def format_against(difference: Optional["stats.PairedDifference"], digits: int = 3) -> str:
    """`Δ [low, high] ±half-width`, with `~` when the interval contains 0 (unresolved)."""
    if difference is None:
        return "—"
    text = (f"{difference.delta:+.{digits}f} [{difference.low:+.{digits}f}, {difference.high:+.{digits}f}] "
            f"±{half_width(difference):.{digits}f}")
    return text if resolved(difference) else text + " ~"
