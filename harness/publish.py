"""`d2o-bench publish LEADERBOARD... --to DIR [--studies DIR]`: tables, a static page and plots.

Runs are grouped per preset × method (× hyperparameters, when one method was run with several
settings, e.g. by a sweep) and each metric is shown as `value [low, high]`, a 95% interval:

* records with per-task data (`per_cluster`, schema 1.1.0): the across-runs interval of
  `harness.stats.across_runs`: the runs (seeds) are pooled per task, because they share the test
  prompts, the tasks are bootstrapped, and the between-run variance of the run means is added
  (law of total variance). `value` is the pooled mean over prompts and runs.
* legacy records (no per-task data): the mean over seeds with mean ± t(k−1)·sd/√k for k ≥ 2
  seeds; one seed keeps its own recorded interval, or ± 1.96·stderr.

Failed runs are counted, not averaged. The best value per metric and preset is marked, its
direction taken from the metric's `higher_is_better`. Where per-task data exist, every method is
also compared with the base policy of its preset on harmful_rate and helpful_rate: the paired
difference method − base over the shared tasks, with its interval and the probability of
improvement (per prompt, ties ½; see `harness.stats`). When both have runs on the same world seeds,
the worlds are paired: the between-run part of the interval is the spread of the per-world
differences.

With `--studies DIR`, every `study.json` under DIR (written by `d2o-bench tune`) adds a frontier
plot per preset (validation harm against helpfulness of every trial, the Pareto front as a step
line, the selected trial marked, and the method's test result with its intervals as error bars)
and a table of helpfulness at matched harm (Markdown section, `frontier.csv`).

Instruments that failed their check against human labels (harness/instruments/checks.py) are
not results: their metrics, kept in the entries, are left out of every table, pairing, plot and
frontier (a study that selected on them is left out too), and each such instrument is named
under the table with its failed figure and the rule it failed. Under every table that shows a
refusal-rule rate, the rules' bias (their recall and precision on human labels) is stated.

The HTML page is one file with inline CSS, JS and plots (data: URIs), so it can be archived or
mailed and never fetches anything. Everything that came from a run (method and model names,
configs) is HTML-escaped: a leaderboard file is input, not trusted markup.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from harness import atomic, stats
from harness.errors import BadInput
from harness.instruments import checks
from harness.instruments.refusal import bias_note, reference_bias_note
from harness.leaderboard import check_no_duplicate_runs, read_leaderboard
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


def _metrics_of(entry: dict) -> dict:
    """The entry's metrics that are results: those of an instrument that failed its check against
    human labels (harness/instruments/checks.py) are left out here, so out of every table, pairing
    and plot; `instrument_lines` names the instrument and its figure under the table instead."""
    invalid = checks.invalid_metrics(checks.entry_validation(entry))
    found = {**capability_metrics(entry), **judge_metrics(entry), **entry["metrics"]}
    if not invalid:
        return found
    return {name: record for name, record in found.items() if not checks.is_invalid(name, invalid)}


def _canonical(value: Any) -> str:
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
    check_no_duplicate_runs(entries, " + ".join(str(p) for p in leaderboard_paths))
    return entries


def aggregate(entries: list[dict]) -> dict:
    """{"metrics": [names], "rows": [...]} with one row per preset × method (× hyperparameters)."""
    directions: dict[str, bool] = {}
    for entry in entries:
        for name, record in _metrics_of(entry).items():
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
        groups.setdefault((entry["preset"], entry["method"], _canonical(settings)), []).append(entry)
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


def _world_of(entry: dict):
    """The entry's world seed (None outside a generated world)."""
    world = ((entry.get("provenance") or {}).get("config") or {}).get("world") or {}
    return world.get("seed") if isinstance(world, dict) else None


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
        if entry["status"] != "complete" or name not in _metrics_of(entry):
            continue
        if entry["method"] == BASE_METHOD:
            evaluation = ((entry.get("provenance") or {}).get("cache_keys") or {}).get("base_eval")
            if evaluation is not None:
                if evaluation in seen_evaluations:
                    continue
                seen_evaluations.add(evaluation)
        world = _world_of(entry)
        units.setdefault(entry["run_id"] if world is None else ("world", world), []).append(_metrics_of(entry)[name])
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


def _paired_against_base(rows: list[dict]) -> None:
    """row["vs_base"][metric]: the paired difference method − base where both have per-task data."""
    for row in rows:
        row["vs_base"] = {}
    for preset in {r["preset"] for r in rows}:
        in_preset = [r for r in rows if r["preset"] == preset]
        bases = [r for r in in_preset if r["method"] == BASE_METHOD]
        if len(bases) != 1:
            continue  # no base policy, or several settings of it: nothing unambiguous to pair with
        (base,) = bases
        for row in in_preset:
            if row is base:
                continue
            for metric in PAIRED_METRICS:
                ours_by_unit, theirs_by_unit = _unit_records(row, metric), _unit_records(base, metric)
                # Same worlds on both sides: pair them, so a world that is easy for every
                # policy does not widen the method-vs-base interval.
                by_world = set(ours_by_unit) == set(theirs_by_unit) and len(ours_by_unit) > 1 \
                    and all(isinstance(k, tuple) and k[0] == "world" for k in ours_by_unit)
                keys = sorted(ours_by_unit, key=repr) if by_world else None
                ours = [ours_by_unit[k] for k in keys] if by_world else list(ours_by_unit.values())
                theirs = [theirs_by_unit[k] for k in keys] if by_world else list(theirs_by_unit.values())
                records = ours + theirs
                if not ours or not theirs or any(r.get("per_cluster") is None for r in records):
                    continue
                kinds = {stats.record_kind(r) for r in records}
                if len(kinds) != 1:
                    continue
                difference = stats.paired_difference_runs(
                    [stats.record_table(r) for r in ours], [stats.record_table(r) for r in theirs],
                    kind=kinds.pop(), higher_is_better=ours[0]["higher_is_better"], level=LEVEL,
                    paired_runs=by_world)
                if difference.delta is not None:
                    row["vs_base"][metric] = difference


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


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def _has_paper_rows(table: dict) -> bool:
    return any(r["preset"] == PAPER_PRESET for r in table["rows"])


# --------------------------------------------------------------------------- Markdown and CSV


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def markdown_text(value: Any) -> str:
    """Run-derived text for a Markdown cell: HTML entities for markup, backslashes for Markdown syntax."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


INTERVAL_NOTE = ("value [low, high]: a 95% interval. With per-task data it resamples test tasks and pools the "
                 "seeds per task (they share the prompts), adding the between-seed variance; legacy records: "
                 "mean over seeds ± t·sd/√k (one seed: its own interval or ± 1.96·stderr).")
PAIRED_NOTE = ("Δ = method − base on the same test tasks (runs pooled per task, tasks bootstrapped) with its 95% "
               "interval; P(improvement) = P(method better than base on a prompt) + ½·P(tie), 0.5 = no "
               "difference, better meaning lower harmful_rate and higher helpful_rate.")


def _paired_rows(table: dict, preset: str) -> list[dict]:
    return [r for r in table["rows"] if r["preset"] == preset and r.get("vs_base")]


def _interval(record: Optional[dict]) -> str:
    if not isinstance(record, dict) or not _is_number(record.get("value")):
        return "—"
    if _is_number(record.get("ci_low")) and _is_number(record.get("ci_high")):
        return f"{record['value']:.3f} [{record['ci_low']:.3f}, {record['ci_high']:.3f}]"
    return f"{record['value']:.3f}"


def _validation_records(rows: list[dict]) -> dict[str, dict]:
    """{instrument: its validation record} over the rows' entries (the first one seen of each)."""
    found: dict[str, dict] = {}
    for row in rows:
        for entry in row["runs"]:
            for name, record in checks.entry_validation(entry).items():
                if isinstance(record, dict):
                    found.setdefault(name, record)
    return found


def failed_instrument_lines(rows: list[dict]) -> list[str]:
    """One line per instrument of these rows that failed its check: its failed figure and the rule."""
    lines = []
    for name, record in sorted(_validation_records(rows).items()):
        found = checks.verdict(name, record)
        if found is None or found["passed"]:
            continue
        rule = found["threshold"].get("rule", "its declared threshold")
        lines.append(f"{name} failed its check and is not a result: {found['figure']}; the rule: {rule}. "
                     f"Left out of the tables, plots and selection: {', '.join(found['metrics'])}")
    return lines


def refusal_bias_line(rows: list[dict], metrics: Iterable[str]) -> Optional[str]:
    """The refusal rules' bias, for a table among whose columns are refusal-rule metrics: from
    the entries' own check, else (suite custom has no refusal labels) from the real suite's."""
    if not set(metrics) & set(checks.METRICS["refusal-rules"]):
        return None
    record = next((r for r in _validation_records(rows).values()
                   if isinstance(r, dict) and r.get("instrument") == "refusal-rules"), None)
    return bias_note(record) if record is not None else reference_bias_note()


def _shown_metrics(table: dict, rows: list[dict]) -> list[str]:
    """The columns a preset's table shows: metrics with a value in some row."""
    return [n for n in table["metrics"] if any(r["metrics"][n] is not None for r in rows)]


def instrument_lines(rows: list[dict]) -> list[str]:
    """One line per instrument of a preset's suite: its agreement with human labels, as the
    entries record it (`sections.instruments.validation`), with the verdict of its declared
    threshold. Printed beside every table it fed; an instrument that failed is also named, with
    its failed figure and rule, by `failed_instrument_lines` (its metrics are not in the table)."""
    found = _validation_records(rows)
    lines = []
    for name, record in sorted(found.items()):
        if "auroc_test" in record:
            test, base = record["auroc_test"], record.get("baseline_refusal_rules_auroc_test") or {}
            lines.append(f"{name}: AUROC on held-out human labels {_interval(test)} (n {test.get('n')}, "
                         f"{test.get('n_clusters')} objectives) against {_interval(base)} for the refusal-rule baseline")
        elif "accuracy" in record:
            lines.append(f"{name}: accuracy on human labels {_interval(record['accuracy'])} (n {record.get('n')}; "
                         f"precision {record.get('precision', 0):.2f}, recall {record.get('recall', 0):.2f})")
        elif "agreement" in record:
            aspects = "; ".join(f"{a}: {v.get('judged_both_orders', 0)} of {v.get('pairs', 0)} pairs judged in both "
                                f"orders, agree {_interval(v.get('agree'))}, tie {_interval(v.get('tie'))}"
                                for a, v in sorted((record.get("aspects") or {}).items()))
            lines.append(f"{name} ({record.get('model')}): agreement with the HHH human choice "
                         f"{_interval(record.get('agreement'))} over {record.get('n_pairs')} pairs ({aspects})")
        else:
            lines.append(f"{name}: {record.get('note', 'no validation against human labels')}")
            continue
        verdict = checks.verdict(name, record)
        if verdict is not None:
            bound = verdict["threshold"].get("must_exceed")
            rule = f" (lower bound above {bound:.3f})" if isinstance(bound, (int, float)) else ""
            lines[-1] += f"; passed its check{rule}" if verdict["passed"] else "; FAILED its check (see below)"
    return lines


def render_markdown(table: dict, studies: Optional[list[dict]] = None) -> str:
    lines = ["# d2o-bench leaderboard", "",
             f"{INTERVAL_NOTE} **bold** is the best per metric within a preset; ↑/↓ higher/lower is better.", ""]
    for preset in sorted({r["preset"] for r in table["rows"]}):
        rows = [r for r in table["rows"] if r["preset"] == preset]
        names = _shown_metrics(table, rows)
        lines += [f"## preset {markdown_text(preset)}", "",
                  "| method | n seeds | " + " | ".join(f"{markdown_text(n)} {_arrow(table['directions'][n])}"
                                                       for n in names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        ablations = [r for r in rows if not r.get("headline", True)]
        for row in [r for r in rows if r.get("headline", True)] + ablations:
            if ablations and row is ablations[0]:
                lines.append("| *ablations (not in the headline comparison)* | |" + " |" * len(names))
            cells = []
            for name in names:
                text = format_summary(row["metrics"][name])
                cells.append(f"**{text}**" if name in row["best"] else text)
            lines.append(f"| {markdown_text(row['label'])} | {row['n_seeds']} | " + " | ".join(cells) + " |")
        failed = [f"{markdown_text(r['label'])} ({r['n_failed']})" for r in rows if r["n_failed"]]
        if failed:
            lines += ["", "Failed runs (not averaged): " + ", ".join(failed) + "."]
        instruments = instrument_lines(rows)
        if instruments:
            lines += ["", "Instruments, against human labels:", *(f"- {markdown_text(c)}" for c in instruments)]
        failed_checks = failed_instrument_lines(rows)
        if failed_checks:
            lines += ["", "**Not results** (instruments that failed their check against human labels):",
                      *(f"- {markdown_text(c)}" for c in failed_checks)]
        bias = refusal_bias_line(rows, names)
        if bias:
            lines += ["", markdown_text(bias)]
        lines.append("")
        paired = _paired_rows(table, preset)
        if paired:
            lines += [f"### against the base policy (preset {markdown_text(preset)})", "", markdown_text(PAIRED_NOTE), "",
                      "| method | " + " | ".join(f"{markdown_text(m)} Δ | {markdown_text(m)} P(improvement)"
                                                   for m in _paired_metrics(paired)) + " |",
                      "|---|" + "---:|---:|" * len(_paired_metrics(paired))]
            for row in paired:
                cells = [cell for m in _paired_metrics(paired) for cell in format_difference(row["vs_base"].get(m))]
                lines.append(f"| {markdown_text(row['label'])} | " + " | ".join(cells) + " |")
            bias = refusal_bias_line(rows, _paired_metrics(paired))
            if bias:
                lines += ["", markdown_text(bias)]
            lines.append("")
    if _has_paper_rows(table):
        lines += ["## Beside the paper (preset paper)", "",
                  "| method | harmfulness ↓ (ours: cost) | harmfulness ↓ (paper) | win rate vs base % (ours: judge) "
                  "| GPT-4 win rate % (paper) |", "|---|---:|---:|---:|---:|"]
        for row in (r for r in table["rows"] if r["preset"] == PAPER_PRESET):
            ours_cost, ours_win = _paper_side_by_side(row)
            paper = row["paper"]
            lines.append(f"| {markdown_text(row['label'])}"
                         f"{' (' + markdown_text(paper[0]) + ')' if paper else ''} | {ours_cost} | "
                         f"{_paper_number(paper, 1)} | {ours_win} | {_paper_number(paper, 2)} |")
        lines += ["", f"Paper numbers: {markdown_text(PAPER_CITATION)}.", ""]
    left_out = table.get("studies_left_out") or []
    if studies or left_out:
        lines += ["## Helpfulness at matched harm (tuning studies)", "", FRONTIER_NOTE, "",
                  "| preset | method | study | selection rule | selected trial | trials | harm level | "
                  "helpful at matched harm |", "|---|---|---|---|---:|---:|---:|---:|"]
        for row in frontier_rows(studies or []):
            lines.append("| " + " | ".join(markdown_text(_cell(row[c])) for c in FRONTIER_COLUMNS[:6]) + " | "
                         + " | ".join(_cell(row[c], 3) for c in FRONTIER_COLUMNS[6:]) + " |")
        lines.append("")
        for note in _frontier_notes(table, studies or []):
            lines += [markdown_text(note), ""]
    return "\n".join(lines)


def _paper_number(paper: Optional[tuple], index: int) -> str:
    if paper is None or paper[index] is None:
        return "—"
    return f"{paper[index]:.2f}"


def _paper_side_by_side(row: dict) -> tuple[str, str]:
    cost = row["metrics"].get("cost")
    win = row["metrics"].get("judge_helpfulness_win_rate")
    win_pct = None if win is None else {
        **win, **{k: None if win.get(k) is None else 100 * win[k] for k in ("mean", "stderr", "low", "high")}}
    return format_summary(cost, 2), format_summary(win_pct, 2)


def _csv_text(value: Any) -> str:
    """Spreadsheets run cells starting with = + - @ as formulas; a run's name must stay text."""
    text = value if isinstance(value, str) else _canonical(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_number(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))


def render_csv(table: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["preset", "method", "hyperparameters", "n_seeds", "n_runs", "n_failed"]
    for name in table["metrics"]:
        header += [f"{name}_mean", f"{name}_stderr", f"{name}_ci_low", f"{name}_ci_high", f"{name}_k",
                   f"{name}_higher_is_better"]
    for name in PAIRED_METRICS:
        header += [f"{name}_vs_base_delta", f"{name}_vs_base_ci_low", f"{name}_vs_base_ci_high",
                   f"{name}_vs_base_p_improvement", f"{name}_vs_base_p_improvement_low",
                   f"{name}_vs_base_p_improvement_high"]
    paper = _has_paper_rows(table)
    if paper:
        header += ["paper_harmfulness", "paper_gpt4_win_rate_pct"]
    writer.writerow(header)
    for row in table["rows"]:
        line = [_csv_text(row["preset"]), _csv_text(row["method"]), _csv_text(row["hyperparameters"]),
                row["n_seeds"], row["n_runs"], row["n_failed"]]
        for name in table["metrics"]:
            summary = row["metrics"][name]
            line += (["", "", "", "", 0, table["directions"][name]] if summary is None else
                     [repr(summary["mean"]), _csv_number(summary["stderr"]), _csv_number(summary.get("low")),
                      _csv_number(summary.get("high")), summary["k"], summary["higher_is_better"]])
        for name in PAIRED_METRICS:
            d = row.get("vs_base", {}).get(name)
            line += ([""] * 6 if d is None else
                     [_csv_number(x) for x in (d.delta, d.low, d.high, d.poi, d.poi_low, d.poi_high)])
        if paper:
            line += ["" if row["paper"] is None or row["paper"][i] is None else row["paper"][i] for i in (1, 2)]
        writer.writerow(line)
    return buffer.getvalue()


# --------------------------------------------------------------------------- plots


def _plot_label(text: str) -> str:
    # matplotlib reads $...$ as mathtext; a run's name is plain text.
    return str(text).replace("$", r"\$")


def _first_present(row: dict, names: tuple[str, ...]) -> Optional[str]:
    return next((n for n in names if row["metrics"].get(n) is not None), None)


def _error_bar(summary: dict) -> list[list[float]]:
    """Asymmetric [[below], [above]] bar from the summary's interval (none when it has no interval)."""
    if summary.get("low") is None or summary.get("high") is None:
        return [[0.0], [0.0]]
    return [[max(summary["mean"] - summary["low"], 0.0)], [max(summary["high"] - summary["mean"], 0.0)]]


def plot_tradeoff(rows: list[dict], path: Path) -> bool:
    """Harmfulness against helpfulness, one point per method with 95% interval bars; False if nothing to plot."""
    harm = next((n for n in HARMFULNESS_METRICS if all(r["metrics"].get(n) for r in rows)), None) or \
        next((n for n in HARMFULNESS_METRICS if any(r["metrics"].get(n) for r in rows)), None)
    helpful = next((n for n in HELPFULNESS_METRICS if all(r["metrics"].get(n) for r in rows)), None) or \
        next((n for n in HELPFULNESS_METRICS if any(r["metrics"].get(n) for r in rows)), None)
    points = [r for r in rows if harm and helpful and r["metrics"].get(harm) and r["metrics"].get(helpful)
              and r.get("headline", True)]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    try:
        # Colours repeat after ten methods; colour × marker keeps every method distinguishable.
        markers = "osD^v<>ph*"
        for index, row in enumerate(points):
            x, y = row["metrics"][helpful], row["metrics"][harm]
            axes.errorbar(x["mean"], y["mean"], xerr=_error_bar(x), yerr=_error_bar(y),
                          fmt=markers[(index // 10 + index) % len(markers)], color=f"C{index % 10}",
                          capsize=3, label=_plot_label(row["label"]))
        axes.set_xlabel(f"{helpful} ({_arrow(True)} better)")
        axes.set_ylabel(f"{harm} ({_arrow(False)} better)")
        axes.set_title(_plot_label(f"harmfulness vs helpfulness — preset {points[0]['preset']}"))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        _save_figure(figure, path)
    finally:
        plt.close(figure)
    return True


# Per-step diagnostics drawn under the loss when runs recorded them: (trajectory key, axis label).
DIAGNOSTIC_PANELS = (("diag/sigmoid_neg_margin", "σ(−u)"), ("diag/grad_share_anchor", "anchor share of ‖∇‖"))


def plot_loss_curves(rows: list[dict], path: Path) -> bool:
    """Training loss per method (every seed, one colour per method), and under it each per-step
    diagnostic some run recorded (D²O's σ(−u) and its anchor term's gradient share); False if no
    run recorded a curve."""
    runs = [(row, run["provenance"]["train"]) for row in rows for run in row["runs"]
            if run["status"] == "complete" and (run["provenance"].get("train") or {}).get("loss_curve")]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = [(key, label) for key, label in DIAGNOSTIC_PANELS
              if any(key in step for _, train in runs for step in train.get("diagnostics") or [])]
    figure, all_axes = plt.subplots(1 + len(panels), 1, figsize=(6.4, 4.8 + 2.2 * len(panels)), dpi=100,
                                    sharex=True, squeeze=False)
    axes = all_axes[0][0]
    try:
        colours = {}
        for row, train in runs:
            points = [(step, loss) for step, loss in train["loss_curve"] if loss is not None]
            first = row["label"] not in colours
            colour = colours.setdefault(row["label"], f"C{len(colours) % 10}")
            axes.plot([p[0] for p in points], [p[1] for p in points], color=colour, alpha=0.8, linewidth=1.2,
                      label=_plot_label(row["label"]) if first else None)
            for (key, _), panel in zip(panels, all_axes[1:]):
                steps = [(d["step"], d[key]) for d in train.get("diagnostics") or [] if key in d]
                if steps:
                    panel[0].plot([p[0] for p in steps], [p[1] for p in steps], color=colour, alpha=0.8,
                                  linewidth=1.2, marker="." if len(steps) < 20 else None)
        for (_, label), panel in zip(panels, all_axes[1:]):
            panel[0].set_ylabel(label)
            panel[0].grid(alpha=0.3)
        all_axes[-1][0].set_xlabel("step")
        axes.set_ylabel("training loss")
        axes.set_title(_plot_label(f"training loss — preset {rows[0]['preset']}"))
        axes.grid(alpha=0.3)
        # Outside the axes, so it never covers a curve however many methods there are.
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        figure.tight_layout()
        _save_figure(figure, path)
    finally:
        plt.close(figure)
    return True


def _save_figure(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    _write_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------- tuning studies (frontier)


STUDY_FILE = "study.json"
DEFAULT_OBJECTIVES = {"harm": "harmful_rate", "help": "helpful_rate"}
FRONTIER_COLUMNS = ("preset", "method", "study", "selection_rule", "selected_trial", "trials", "harm_level",
                    "helpful_at_matched_harm")
FRONTIER_NOTE = ("From `d2o-bench tune` studies: the validation helpfulness each method reaches at the matched "
                 "harm level (the study's `helpful_at_matched_harm`), the trial its selection rule picked, and "
                 "how many trials completed. The frontier plots show every trial on validation data and the "
                 "method's test result with its 95% intervals.")


def _cell(value: Any, digits: Optional[int] = None) -> str:
    if value is None:
        return "—"
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _study_error(path: Path, where: str, message: str) -> BadInput:
    return BadInput(f"{path}: {where + ': ' if where else ''}{message}")


def _describe_value(value: Any) -> str:
    if value is None:
        return "null"
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    kind = ("null" if value is None else "boolean" if isinstance(value, bool) else "number"
            if isinstance(value, (int, float)) else "string" if isinstance(value, str) else
            "array" if isinstance(value, list) else "object" if isinstance(value, dict) else type(value).__name__)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _objective_point(path: Path, where: str, record: Any) -> Optional[dict]:
    """{"value", "ci_low", "ci_high"} from a trial's validation record (a number is accepted as a value)."""
    if record is None:
        return None
    if _is_number(record):
        return {"value": float(record), "ci_low": None, "ci_high": None}
    if not isinstance(record, dict):
        raise _study_error(path, where, f"expected an object with a numeric value, got {_describe_value(record)}")
    point = {}
    for field in ("value", "ci_low", "ci_high"):
        value = record.get(field)
        if value is None and field != "value":
            point[field] = None
            continue
        if not _is_number(value):
            raise _study_error(path, f"{where}.{field}", f"expected a number, got {_describe_value(value)}")
        point[field] = float(value)
    return point


def _refuse_constant(constant: str):
    raise ValueError(f"{constant} is not valid JSON (record null instead)")


def read_study(path: Path) -> dict:
    """A tuning study's file, checked; BadInput naming the file and the field on anything malformed.

    Unknown keys are ignored. Trials that did not complete, or have no validation value for both
    objectives, are kept but not plotted.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not JSON: the file is not UTF-8 text") from None
    except OSError as exc:
        raise BadInput(f"{path}: unreadable ({exc.strerror})") from None
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise BadInput(f"{path}: not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _study_error(path, "", f"expected a study object, got {_describe_value(document)}")
    for field in ("method", "preset"):
        if not isinstance(document.get(field), str) or not document[field]:
            raise _study_error(path, field, f"expected a non-empty string, got {_describe_value(document.get(field))}")
    objectives = document.get("objectives", DEFAULT_OBJECTIVES)
    if not isinstance(objectives, dict):
        raise _study_error(path, "objectives", f"expected an object, got {_describe_value(objectives)}")
    objectives = {**DEFAULT_OBJECTIVES, **objectives}
    for role in ("harm", "help"):
        if not isinstance(objectives[role], str) or not objectives[role]:
            raise _study_error(path, f"objectives.{role}", f"expected a metric name, got {_describe_value(objectives[role])}")
    trials_in = document.get("trials")
    if not isinstance(trials_in, list):
        raise _study_error(path, "trials", f"expected an array, got {_describe_value(trials_in)}")
    trials, numbers = [], set()
    for index, trial in enumerate(trials_in):
        where = f"trials[{index}]"
        if not isinstance(trial, dict):
            raise _study_error(path, where, f"expected an object, got {_describe_value(trial)}")
        number = trial.get("number")
        if not isinstance(number, int) or isinstance(number, bool):
            raise _study_error(path, f"{where}.number", f"expected an integer, got {_describe_value(number)}")
        if number in numbers:
            raise _study_error(path, f"{where}.number", f"duplicate trial number {number}")
        numbers.add(number)
        state = trial.get("state", "COMPLETE")
        if not isinstance(state, str):
            raise _study_error(path, f"{where}.state", f"expected a string, got {_describe_value(state)}")
        validation = trial.get("validation")
        if validation is not None and not isinstance(validation, dict):
            raise _study_error(path, f"{where}.validation", f"expected an object, got {_describe_value(validation)}")
        validation = validation or {}
        harm = _objective_point(path, f"{where}.validation.{objectives['harm']}", validation.get(objectives["harm"]))
        helpful = _objective_point(path, f"{where}.validation.{objectives['help']}", validation.get(objectives["help"]))
        params = trial.get("params", {})
        if not isinstance(params, dict):
            raise _study_error(path, f"{where}.params", f"expected an object, got {_describe_value(params)}")
        trials.append({"number": number, "state": state, "params": params, "harm": harm, "help": helpful,
                       "plotted": state == "COMPLETE" and harm is not None and helpful is not None})
    front = document.get("pareto_front", [])
    if not isinstance(front, list):
        raise _study_error(path, "pareto_front", f"expected an array of trial numbers, got {_describe_value(front)}")
    for index, number in enumerate(front):
        if not isinstance(number, int) or isinstance(number, bool) or number not in numbers:
            raise _study_error(path, f"pareto_front[{index}]", f"{_describe_value(number)} is not a trial number of this study")
    selected = document.get("selected_trial")
    if selected is not None and (not isinstance(selected, int) or isinstance(selected, bool) or selected not in numbers):
        raise _study_error(path, "selected_trial", f"{_describe_value(selected)} is not a trial number of this study")
    matched = document.get("helpful_at_matched_harm")
    if matched is not None:
        if not isinstance(matched, dict):
            raise _study_error(path, "helpful_at_matched_harm", f"expected an object or null, got {_describe_value(matched)}")
        for field in ("harm_level", "value"):
            if matched.get(field) is not None and not _is_number(matched[field]):
                raise _study_error(path, f"helpful_at_matched_harm.{field}",
                                   f"expected a number or null, got {_describe_value(matched[field])}")
    rule = document.get("selection_rule")
    rule_name = rule.get("name") if isinstance(rule, dict) else rule if isinstance(rule, str) else None
    base = document.get("base_validation")
    base_point = None
    if isinstance(base, dict) and _is_number(base.get(objectives["harm"])) and _is_number(base.get(objectives["help"])):
        base_point = (float(base[objectives["harm"]]), float(base[objectives["help"]]))
    return {"path": path, "method": document["method"], "preset": document["preset"],
            "study_name": document.get("study_name") if isinstance(document.get("study_name"), str) else path.parent.name,
            "objectives": objectives, "trials": trials, "pareto_front": list(front), "selected_trial": selected,
            "helpful_at_matched_harm": matched, "selection_rule": rule_name if isinstance(rule_name, str) else None,
            "base_validation": base_point}


def load_studies(directory: Path) -> list[dict]:
    """Every `study.json` under `directory`, in path order; BadInput when there is none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInput(f"publish: --studies {directory}: no such directory")
    paths = sorted(directory.rglob(STUDY_FILE))
    if not paths:
        raise BadInput(f"publish: no {STUDY_FILE} under {directory}")
    return [read_study(path) for path in paths]


def studies_with_valid_objectives(studies: list[dict], table: dict) -> tuple[list[dict], list[str]]:
    """The studies whose objectives come from instruments that passed their checks in the entries
    of the study's preset, and a line naming each study left out (with the failed figure): a
    frontier drawn on a failed instrument's numbers is not a result either."""
    kept, left_out = [], []
    for study in studies:
        rows = [r for r in table["rows"] if r["preset"] == study["preset"]]
        invalid = {}
        for row in rows:
            for entry in row["runs"]:
                invalid.update(checks.invalid_metrics(checks.entry_validation(entry)))
        bad = [m for m in (study["objectives"]["harm"], study["objectives"]["help"]) if checks.is_invalid(m, invalid)]
        if not bad:
            kept.append(study)
            continue
        why = "; ".join("{} comes from {}, which failed its check ({})".format(m, *checks.failure_of(m, invalid))
                        for m in bad)
        left_out.append(f"Study {study['study_name']} ({study['method']}, preset {study['preset']}) is left out: {why}.")
    return kept, left_out


def _frontier_notes(table: dict, studies: list[dict]) -> list[str]:
    """Under the frontier table: the studies left out, and the refusal rules' bias when the
    studies' objectives are refusal-rule metrics."""
    notes = list(table.get("studies_left_out") or [])
    for preset in sorted({s["preset"] for s in studies}):
        objectives = {m for s in studies if s["preset"] == preset for m in s["objectives"].values()}
        bias = refusal_bias_line([r for r in table.get("rows", []) if r["preset"] == preset], objectives)
        if bias:
            notes.append(f"Preset {preset}: {bias}")
    return notes


def frontier_rows(studies: list[dict]) -> list[dict]:
    rows = []
    for study in sorted(studies, key=lambda s: (s["preset"], s["method"], s["study_name"], str(s["path"]))):
        matched = study["helpful_at_matched_harm"] or {}
        rows.append({
            "preset": study["preset"], "method": study["method"], "study": study["study_name"],
            "selection_rule": study["selection_rule"], "selected_trial": study["selected_trial"],
            "trials": sum(1 for t in study["trials"] if t["state"] == "COMPLETE"),
            "harm_level": None if matched.get("harm_level") is None else float(matched["harm_level"]),
            "helpful_at_matched_harm": None if matched.get("value") is None else float(matched["value"]),
        })
    return rows


def render_frontier_csv(studies: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FRONTIER_COLUMNS)
    for row in frontier_rows(studies):
        writer.writerow([_csv_text(row[c]) if isinstance(row[c], str) else
                         "" if row[c] is None else repr(row[c]) for c in FRONTIER_COLUMNS])
    return buffer.getvalue()


def plot_frontier(studies: list[dict], rows: list[dict], path: Path) -> bool:
    """Validation harm (x) against helpfulness (y) per method: trials, Pareto front (step line),
    selected trial, and the test result of the method's leaderboard rows with 95% interval bars."""
    if not any(t["plotted"] for s in studies for t in s["trials"]):
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    methods = sorted({s["method"] for s in studies})
    colours = {method: f"C{index % 10}" for index, method in enumerate(methods)}
    harm_name, help_name = studies[0]["objectives"]["harm"], studies[0]["objectives"]["help"]
    figure, axes = plt.subplots(figsize=(9.0, 5.4), dpi=100)
    try:
        base_drawn = False
        for study in studies:
            colour = colours[study["method"]]
            points = {t["number"]: t for t in study["trials"] if t["plotted"]}
            first = study is next(s for s in studies if s["method"] == study["method"])
            axes.scatter([t["harm"]["value"] for t in points.values()], [t["help"]["value"] for t in points.values()],
                         s=18, alpha=0.45, color=colour,
                         label=_plot_label(f"{study['method']} trials (validation)") if first else None)
            front = sorted((points[n] for n in study["pareto_front"] if n in points),
                           key=lambda t: (t["harm"]["value"], t["help"]["value"]))
            if front:
                axes.plot([t["harm"]["value"] for t in front], [t["help"]["value"] for t in front], color=colour,
                          drawstyle="steps-post", linewidth=1.5,
                          label=_plot_label(f"{study['method']} Pareto front") if first else None)
            chosen = points.get(study["selected_trial"])
            if chosen is not None:
                axes.scatter([chosen["harm"]["value"]], [chosen["help"]["value"]], marker="*", s=220, color=colour,
                             edgecolors="black", linewidths=0.8, zorder=5,
                             label=_plot_label(f"{study['method']} selected trial") if first else None)
            if study["base_validation"] is not None and not base_drawn:
                axes.scatter([study["base_validation"][0]], [study["base_validation"][1]], marker="X", s=80,
                             color="grey", zorder=4, label="base (validation)")
                base_drawn = True
        for method in methods:
            for row in (r for r in rows if r["method"] == method):
                x, y = row["metrics"].get(harm_name), row["metrics"].get(help_name)
                if x is None or y is None:
                    continue
                axes.errorbar(x["mean"], y["mean"], xerr=_error_bar(x), yerr=_error_bar(y), fmt="D",
                              color=colours[method], markeredgecolor="black", capsize=4, zorder=6,
                              label=_plot_label(f"{row['label']} test (95% interval)"))
        axes.set_xlabel(f"{harm_name} ({_arrow(False)} better)")
        axes.set_ylabel(f"{help_name} ({_arrow(True)} better)")
        axes.set_title(_plot_label(f"tuning frontier — preset {studies[0]['preset']}"))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        figure.tight_layout()
        _save_figure(figure, path)
    finally:
        plt.close(figure)
    return True


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;background:#fff}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;vertical-align:top}
th{background:#f0f0f0;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"} th[aria-sort=descending]::after{content:" ▼"}
td.text{text-align:left} .best{font-weight:bold;background:#e8f5e9}
details pre{text-align:left;max-width:60em;white-space:pre-wrap;font-size:.8em}
img{max-width:48%;margin:.5em;border:1px solid #eee} .note{color:#555;font-size:.9em}
"""

# Sorting reads only data-* attributes of the escaped table, never run text as code.
_PAGE_JS = r"""
(function () {
  function sortTable(col, dir) {
    var table = document.getElementById('leaderboard');
    var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var index = headers.findIndex(function (th) { return th.getAttribute('data-col') === col; });
    if (index < 0) { throw new Error('no column ' + col); }
    var numeric = headers[index].getAttribute('data-type') === 'number';
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index].getAttribute('data-sort'), y = b.cells[index].getAttribute('data-sort');
      if (x === '' && y === '') { return 0; }
      if (x === '') { return 1; }
      if (y === '') { return -1; }
      var order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return dir === 'desc' ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    headers.forEach(function (th) { th.removeAttribute('aria-sort'); });
    headers[index].setAttribute('aria-sort', dir === 'desc' ? 'descending' : 'ascending');
    document.body.setAttribute('data-sorted-by', col + ':' + dir);
  }
  var table = document.getElementById('leaderboard');
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.addEventListener('click', function () {
      var next = th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc';
      sortTable(th.getAttribute('data-col'), next);
    });
  });
  var params = new URLSearchParams(window.location.search);
  if (params.get('sort')) { sortTable(params.get('sort'), params.get('dir') === 'desc' ? 'desc' : 'asc'); }
  document.body.setAttribute('data-ready', '1');
})();
"""

_ERROR_HOOK_JS = ("window.onerror=function(message){var b=document.body;"
                  "b.setAttribute('data-errors',(b.getAttribute('data-errors')||'')+String(message)+';');};")


def _provenance_html(row: dict) -> str:
    parts = [f"<details><summary>{len(row['runs'])} run(s)</summary>"]
    for run in row["runs"]:
        p = run["provenance"]
        env = p.get("environment") or {}
        git = p.get("git") or {}
        facts = [
            ("run_id", run["run_id"]), ("seed", run["seed"]), ("status", run["status"]),
            ("config_hash", p.get("config_hash")),
            ("base model", f"{p['base_model'].get('id')} sha256={p['base_model'].get('sha256')}"),
            ("dataset", f"{p['dataset'].get('id')} fingerprint={p['dataset'].get('fingerprint')}"),
            ("harness", f"{p.get('harness_version')} git {git.get('commit')}{' (dirty)' if git.get('dirty') else ''}"),
            ("image", p.get("container_image_digest")),
            ("environment", ", ".join(f"{k} {v}" for k, v in env.items())),
            ("time", f"{p.get('started_at')} → {p.get('finished_at')} ({p.get('wall_time_s')} s)"),
            ("hyperparameters", _canonical(run["hyperparameters"])),
        ]
        parts.append(f"<pre class=\"run\">{''.join(f'{_e(k)}: {_e(v)}' + chr(10) for k, v in facts)}"
                     f"config: {_e(json.dumps(p.get('config'), indent=1, sort_keys=True))}</pre>")
    parts.append("</details>")
    return "".join(parts)


def _png_data_uri(path: Path) -> str:
    # The plot may still be staged (its write lands with the page's): read what was written.
    return "data:image/png;base64," + base64.b64encode(atomic.read_bytes(path)).decode("ascii")


def _paired_metrics(paired: list[dict]) -> list[str]:
    """The paired metrics this preset's suite reports (the oracle's or the refusal rules')."""
    return [m for m in PAIRED_METRICS if any(row["vs_base"].get(m) is not None for row in paired)]


def _paired_html(table: dict) -> str:
    parts = []
    for preset in sorted({r["preset"] for r in table["rows"]}):
        paired = _paired_rows(table, preset)
        if not paired:
            continue
        metrics = _paired_metrics(paired)
        header = "".join(f"<th>{_e(m)} Δ</th><th>{_e(m)} P(improvement)</th>" for m in metrics)
        body = "".join(
            f'<tr><td class="text">{_e(row["label"])}</td>'
            + "".join(f"<td>{_e(cell)}</td>" for m in metrics for cell in format_difference(row["vs_base"].get(m)))
            + "</tr>" for row in paired)
        bias = refusal_bias_line([r for r in table["rows"] if r["preset"] == preset], metrics)
        parts.append(f'<h2>Against the base policy (preset {_e(preset)})</h2><p class="note">{_e(PAIRED_NOTE)}</p>'
                     f'<table class="vs-base" data-preset="{_e(preset)}"><thead><tr><th>method</th>{header}</tr></thead>'
                     f"<tbody>{body}</tbody></table>" + (f'<p class="note">{_e(bias)}</p>' if bias else ""))
    return "".join(parts)


def _frontier_html(studies: Optional[list[dict]], table: Optional[dict] = None) -> str:
    notes = _frontier_notes(table or {}, studies or [])
    if not studies and not notes:
        return ""
    studies = studies or []
    header = "".join(f"<th>{_e(c.replace('_', ' '))}</th>" for c in FRONTIER_COLUMNS)
    body = "".join("<tr>" + "".join(f'<td class="text">{_e(_cell(row[c]))}</td>' for c in FRONTIER_COLUMNS[:6])
                   + "".join(f"<td>{_e(_cell(row[c], 3))}</td>" for c in FRONTIER_COLUMNS[6:]) + "</tr>"
                   for row in frontier_rows(studies))
    return (f'<h2>Helpfulness at matched harm (tuning studies)</h2><p class="note">{_e(FRONTIER_NOTE)}</p>'
            f'<table id="frontier"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'
            + "".join(f'<p class="note">{_e(note)}</p>' for note in notes))


def _instruments_html(table: dict) -> str:
    parts = []
    for preset in sorted({r["preset"] for r in table["rows"]}):
        rows = [r for r in table["rows"] if r["preset"] == preset]
        instruments = instrument_lines(rows)
        if instruments:
            parts.append(f"<h2>Instruments against human labels (preset {_e(preset)})</h2><ul>"
                         + "".join(f"<li>{_e(c)}</li>" for c in instruments) + "</ul>")
        failed_checks = failed_instrument_lines(rows)
        if failed_checks:
            parts.append(f'<h3>Not results (preset {_e(preset)}): instruments that failed their check</h3>'
                         f'<ul class="failed-instruments">' + "".join(f"<li>{_e(c)}</li>" for c in failed_checks)
                         + "</ul>")
        bias = refusal_bias_line(rows, _shown_metrics(table, rows))
        if bias:
            parts.append(f'<p class="note">{_e(bias)}</p>')
    return "".join(parts)


def render_html(table: dict, plots: dict[str, Path], studies: Optional[list[dict]] = None) -> str:
    names = table["metrics"]
    header = ['<th data-col="preset" data-type="text">preset</th>',
              '<th data-col="method" data-type="text">method</th>',
              '<th data-col="n_seeds" data-type="number">n seeds</th>']
    header += [f'<th data-col="{_e(n)}" data-type="number">{_e(n)} {_arrow(table["directions"][n])}</th>'
               for n in names]
    header.append('<th data-col="provenance" data-type="text">provenance</th>')
    body = []
    for row in table["rows"]:
        failed = f" (+{row['n_failed']} failed)" if row["n_failed"] else ""
        cells = [f'<td class="text" data-sort="{_e(row["preset"])}">{_e(row["preset"])}</td>',
                 f'<td class="text" data-sort="{_e(row["label"])}">{_e(row["label"])}</td>',
                 f'<td data-sort="{row["n_seeds"]}">{row["n_seeds"]}{failed}</td>']
        for name in names:
            summary = row["metrics"][name]
            sort_key = "" if summary is None else repr(summary["mean"])
            css = ' class="best"' if name in row["best"] else ""
            cells.append(f'<td{css} data-sort="{sort_key}">{_e(format_summary(summary))}</td>')
        cells.append(f'<td class="text" data-sort="{_e(row["runs"][0]["run_id"])}">{_provenance_html(row)}</td>')
        body.append(f'<tr data-preset="{_e(row["preset"])}">' + "".join(cells) + "</tr>")
    paper = ""
    if _has_paper_rows(table):
        paper_rows = []
        for row in (r for r in table["rows"] if r["preset"] == PAPER_PRESET):
            ours_cost, ours_win = _paper_side_by_side(row)
            label = row["label"] + (f" ({row['paper'][0]})" if row["paper"] else "")
            paper_rows.append(f'<tr><td class="text">{_e(label)}</td><td>{_e(ours_cost)}</td>'
                              f'<td>{_paper_number(row["paper"], 1)}</td><td>{_e(ours_win)}</td>'
                              f'<td>{_paper_number(row["paper"], 2)}</td></tr>')
        paper = ("<h2>Beside the paper (preset paper)</h2><table id=\"paper\"><thead><tr><th>method</th>"
                 "<th>harmfulness ↓ (ours: cost)</th><th>harmfulness ↓ (paper)</th>"
                 "<th>win rate vs base % (ours: judge)</th><th>GPT-4 win rate % (paper)</th></tr></thead><tbody>"
                 + "".join(paper_rows) + f"</tbody></table><p class=\"note\">Paper numbers: {_e(PAPER_CITATION)}.</p>")
    images = "".join(f'<img alt="{_e(name)}" src="{_png_data_uri(path)}">' for name, path in sorted(plots.items()))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>d2o-bench leaderboard</title><style>{_PAGE_CSS}</style></head>\n"
        f"<body data-errors=\"\"><script>{_ERROR_HOOK_JS}</script>"
        "<h1>d2o-bench leaderboard</h1>"
        f"<p class=\"note\">{_e(INTERVAL_NOTE)} Highlighted: best per metric within "
        "a preset; ↑/↓ higher/lower is better. Click a header to sort; <code>?sort=COLUMN&amp;dir=desc</code> "
        "sorts on load.</p>"
        f"<table id=\"leaderboard\"><thead><tr>{''.join(header)}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"{_instruments_html(table)}{_paired_html(table)}{paper}{_frontier_html(studies, table)}<h2>Plots</h2>{images}"
        f"<script>{_PAGE_JS}</script></body></html>\n"
    )


# --------------------------------------------------------------------------- output


def _write_atomic(path: Path, data: bytes) -> None:
    atomic.write_bytes(path, data, mode=0o644)


def _file_stem(preset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", preset).strip("._") or "preset"


# Its files land together or not at all (a full disk on the last leaves the previous set), and two
# publishers of one folder never interleave: never a page from one board beside a table from another.
@atomic.all_or_none(lock=True)
def publish(leaderboard_paths: list[Path], out_dir: Path, studies_dir: Optional[Path] = None) -> dict[str, Path]:
    """Writes leaderboard.md, leaderboard.csv, index.html and per-preset PNG plots (plus, with
    `studies_dir`, frontier-<preset>.png and frontier.csv); returns them by name.

    Every input is read and checked before anything is written, so bad input leaves DIR as it was.
    """
    if not leaderboard_paths:
        raise BadInput("publish: no leaderboard given")
    entries = load_entries(leaderboard_paths)
    if not entries:
        raise BadInput("publish: the leaderboards hold no entries")
    studies = load_studies(Path(studies_dir)) if studies_dir is not None else None
    table = aggregate(entries)
    if studies is not None:
        studies, table["studies_left_out"] = studies_with_valid_objectives(studies, table)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"publish: cannot create {out_dir} ({exc.strerror})") from None
    written: dict[str, Path] = {}
    plots: dict[str, Path] = {}
    for preset in sorted({r["preset"] for r in table["rows"]} | {s["preset"] for s in studies or []}):
        rows = [r for r in table["rows"] if r["preset"] == preset]
        stem = _file_stem(preset)
        for kind, plot in (("tradeoff", plot_tradeoff), ("loss", plot_loss_curves)):
            path = out_dir / f"{kind}-{stem}.png"
            if rows and plot(rows, path):
                plots[f"plot_{kind}_{preset}"] = path
        in_preset = [s for s in studies or [] if s["preset"] == preset]
        if in_preset and plot_frontier(in_preset, rows, out_dir / f"frontier-{stem}.png"):
            plots[f"plot_frontier_{preset}"] = out_dir / f"frontier-{stem}.png"
    written.update(plots)
    outputs = [("markdown", "leaderboard.md", render_markdown(table, studies)),
               ("csv", "leaderboard.csv", render_csv(table)),
               ("html", "index.html", render_html(table, plots, studies))]
    if studies:
        outputs.append(("frontier_csv", "frontier.csv", render_frontier_csv(studies)))
    for name, filename, text in outputs:
        _write_atomic(out_dir / filename, text.encode("utf-8"))
        written[name] = out_dir / filename
    return written


def publish_main(argv: list[str]) -> int:
    from harness.arguments import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="d2o-bench publish",
                                   description="Tables (Markdown, CSV), a static HTML page and plots from leaderboards: "
                                               "every metric as value [95% interval] over seeds, each method paired "
                                               "with the base policy, and tuning frontiers from --studies.")
    parser.add_argument("leaderboards", nargs="+", metavar="LEADERBOARD", help="leaderboard.json file(s)")
    parser.add_argument("--to", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--studies", default=None, metavar="DIR",
                        help="directory searched for study.json files of `d2o-bench tune`: adds frontier-<preset>.png "
                             "and a helpfulness-at-matched-harm table (frontier.csv)")
    try:
        args = parser.parse_args(argv)
        written = publish([Path(p) for p in args.leaderboards], Path(args.to),
                          Path(args.studies) if args.studies is not None else None)
    except BadInput as exc:
        print(f"d2o-bench publish: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk: nothing was replaced (the outputs land all or none)
        print(f"d2o-bench publish: error: {atomic.describe_os_error(exc)}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0
