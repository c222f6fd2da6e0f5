"""The text that stands beside every table, whatever its format: the notes on intervals and
pairings, each instrument's agreement with human labels, the instruments that failed their check
(their metrics are not results) and the refusal rules' bias under a table that shows their rates."""

from __future__ import annotations

from typing import Iterable, Optional

from harness.instruments import checks
from harness.instruments.refusal import bias_note, reference_bias_note
from harness.publish.pooling import PAIRED_METRICS
from harness.selection import is_number

INTERVAL_NOTE = ("value [low, high]: a 95% interval. With per-task data it resamples test tasks and pools the "
                 "seeds per task (they share the prompts), adding the between-seed variance; legacy records: "
                 "mean over seeds ± t·sd/√k (one seed: its own interval or ± 1.96·stderr).")
PAIRED_NOTE = ("Δ = method − base on the same test tasks (runs pooled per task, tasks bootstrapped) with its 95% "
               "interval; P(improvement) = P(method better than base on a prompt) + ½·P(tie), 0.5 = no "
               "difference, better meaning lower harmful_rate and higher helpful_rate.")


def against_note(method: str) -> str:
    return (f"Δ = method − {method} on the same test prompts (runs pooled per task, tasks bootstrapped, worlds "
            f"paired where both ran the same worlds) with its 95% interval. ±: the interval's half-width, the "
            f"smallest difference from {method} this board could detect; an interval that contains 0 leaves the "
            f"difference unresolved (marked ~), not shown to be absent.")


def paired_rows(table: dict, preset: str, key: str = "vs_base") -> list[dict]:
    return [r for r in table["rows"] if r["preset"] == preset and r.get(key)]


def paired_metrics(paired: list[dict], key: str = "vs_base", metrics: Iterable[str] = PAIRED_METRICS) -> list[str]:
    """The metrics some row of `paired` has a difference for, in `metrics` order (the suite
    decides which: the oracle's or the refusal rules')."""
    return [m for m in metrics if any(row[key].get(m) is not None for row in paired)]


def interval_text(record: Optional[dict]) -> str:
    if not isinstance(record, dict) or not is_number(record.get("value")):
        return "—"
    if is_number(record.get("ci_low")) and is_number(record.get("ci_high")):
        return f"{record['value']:.3f} [{record['ci_low']:.3f}, {record['ci_high']:.3f}]"
    return f"{record['value']:.3f}"


def validation_records(rows: list[dict]) -> dict[str, dict]:
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
    for name, record in sorted(validation_records(rows).items()):
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
    record = next((r for r in validation_records(rows).values()
                   if isinstance(r, dict) and r.get("instrument") == "refusal-rules"), None)
    return bias_note(record) if record is not None else reference_bias_note()


def shown_metrics(table: dict, rows: list[dict]) -> list[str]:
    """The columns a preset's table shows: metrics with a value in some row."""
    return [n for n in table["metrics"] if any(r["metrics"][n] is not None for r in rows)]


def instrument_lines(rows: list[dict]) -> list[str]:
    """One line per instrument of a preset's suite: its agreement with human labels, as the
    entries record it (`sections.instruments.validation`), with the verdict of its declared
    threshold. Printed beside every table it fed; an instrument that failed is also named, with
    its failed figure and rule, by `failed_instrument_lines` (its metrics are not in the table)."""
    found = validation_records(rows)
    lines = []
    for name, record in sorted(found.items()):
        if "auroc_test" in record:
            test, base = record["auroc_test"], record.get("baseline_refusal_rules_auroc_test") or {}
            lines.append(f"{name}: AUROC on held-out human labels {interval_text(test)} (n {test.get('n')}, "
                         f"{test.get('n_clusters')} objectives) against {interval_text(base)} for the refusal-rule baseline")
        elif "accuracy" in record:
            lines.append(f"{name}: accuracy on human labels {interval_text(record['accuracy'])} (n {record.get('n')}; "
                         f"precision {record.get('precision', 0):.2f}, recall {record.get('recall', 0):.2f})")
        elif "agreement" in record:
            aspects = "; ".join(f"{a}: {v.get('judged_both_orders', 0)} of {v.get('pairs', 0)} pairs judged in both "
                                f"orders, agree {interval_text(v.get('agree'))}, tie {interval_text(v.get('tie'))}"
                                for a, v in sorted((record.get("aspects") or {}).items()))
            lines.append(f"{name} ({record.get('model')}): agreement with the HHH human choice "
                         f"{interval_text(record.get('agreement'))} over {record.get('n_pairs')} pairs ({aspects})")
        else:
            lines.append(f"{name}: {record.get('note', 'no validation against human labels')}")
            continue
        verdict = checks.verdict(name, record)
        if verdict is not None:
            bound = verdict["threshold"].get("must_exceed")
            rule = f" (lower bound above {bound:.3f})" if isinstance(bound, (int, float)) else ""
            lines[-1] += f"; passed its check{rule}" if verdict["passed"] else "; FAILED its check (see below)"
    return lines


