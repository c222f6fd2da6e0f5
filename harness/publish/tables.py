"""Markdown and CSV tables of a pooled leaderboard (`harness.publish.pooling.aggregate`).

Tables fit a laptop screen: a preset's metrics are split over tables of at most
`METRICS_PER_TABLE` columns (the harm and helpfulness metrics first), and the pairings are written
long, one row per method and metric, instead of two wide columns per metric.
"""

from __future__ import annotations

import csv
import html
import io
import re
from typing import Any, Optional

from harness.publish.notes import (INTERVAL_NOTE, PAIRED_NOTE, against_note, failed_instrument_lines,
                                   instrument_lines, paired_metrics, paired_rows, refusal_bias_line, shown_metrics)
from harness.publish.pooling import (DIFFERENCE_METRICS, PAIRED_METRICS, PAPER_CITATION, PAPER_PRESET, arrow,
                                     csv_number, csv_text, format_against, format_difference, format_summary,
                                     half_width, has_paper_rows, resolved)
from harness.publish.studies import FRONTIER_COLUMNS, FRONTIER_NOTE, cell, frontier_notes, frontier_rows

METRICS_PER_TABLE = 4

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def markdown_text(value: Any) -> str:
    """Run-derived text for a Markdown cell: HTML entities for markup, backslashes for Markdown syntax."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def column_groups(names: list[str]) -> list[list[str]]:
    """The metrics in tables of at most METRICS_PER_TABLE columns, in `names` order."""
    return [names[i:i + METRICS_PER_TABLE] for i in range(0, len(names), METRICS_PER_TABLE)] or [[]]


def metric_tables(table: dict, rows: list[dict]) -> list[str]:
    """The preset's results: the first table has the n-seeds column and the leading metrics, each
    further table the next METRICS_PER_TABLE metrics; headline methods first, ablations apart."""
    names = shown_metrics(table, rows)
    lines: list[str] = []
    ablations = [r for r in rows if not r.get("headline", True)]
    for index, group in enumerate(column_groups(names)):
        first = index == 0
        lead = "| method | n seeds | " if first else "| method | "
        lines += [lead + " | ".join(f"{markdown_text(n)} {arrow(table['directions'][n])}" for n in group) + " |",
                  ("|---|---:|" if first else "|---|") + "---:|" * len(group)]
        for row in [r for r in rows if r.get("headline", True)] + ablations:
            if ablations and row is ablations[0]:
                lines.append("| *ablations (not in the headline comparison)* |" + (" |" if first else "")
                             + " |" * len(group))
            cells = []
            for name in group:
                text = format_summary(row["metrics"][name])
                cells.append(f"**{text}**" if name in row["best"] else text)
            seeds = f"{row['n_seeds']} | " if first else ""
            lines.append(f"| {markdown_text(row['label'])} | {seeds}" + " | ".join(cells) + " |")
        lines.append("")
    return lines[:-1]


def notes_under_table(table: dict, rows: list[dict]) -> list[str]:
    lines: list[str] = []
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
    bias = refusal_bias_line(rows, shown_metrics(table, rows))
    if bias:
        lines += ["", markdown_text(bias)]
    return lines


def base_pairing(table: dict, preset: str, level: str = "###") -> list[str]:
    """Each method − base, long: one row per method and metric."""
    paired = paired_rows(table, preset)
    if not paired:
        return []
    metrics = paired_metrics(paired)
    lines = [f"{level} against the base policy (preset {markdown_text(preset)})", "", markdown_text(PAIRED_NOTE), "",
             "| method | metric | Δ [95% interval] | P(improvement) [95% interval] |", "|---|---|---:|---:|"]
    for row in paired:
        for metric in metrics:
            if row["vs_base"].get(metric) is None:
                continue
            delta, poi = format_difference(row["vs_base"][metric])
            lines.append(f"| {markdown_text(row['label'])} | {markdown_text(metric)} | {delta} | {poi} |")
    rows = [r for r in table["rows"] if r["preset"] == preset]
    bias = refusal_bias_line(rows, metrics)
    if bias:
        lines += ["", markdown_text(bias)]
    return lines + [""]


def against_pairing(table: dict, preset: str, level: str = "###") -> list[str]:
    """Each method − the `--against` method, long, with the smallest detectable difference."""
    method = table.get("against")
    paired = paired_rows(table, preset, "vs_against")
    if not method or not paired:
        return []
    metrics = paired_metrics(paired, "vs_against", DIFFERENCE_METRICS)
    lines = [f"{level} against {markdown_text(method)} (preset {markdown_text(preset)})", "",
             markdown_text(against_note(method)), "",
             f"| method | metric | Δ vs {markdown_text(method)} [95% interval] ±detectable |", "|---|---|---:|"]
    for row in paired:
        for metric in metrics:
            if row["vs_against"].get(metric) is not None:
                lines.append(f"| {markdown_text(row['label'])} | {markdown_text(metric)} {arrow(table['directions'][metric])} "
                             f"| {format_against(row['vs_against'][metric])} |")
    rows = [r for r in table["rows"] if r["preset"] == preset]
    bias = refusal_bias_line(rows, metrics)
    if bias:
        lines += ["", markdown_text(bias)]
    return lines + [""]


def paper_section(table: dict) -> list[str]:
    if not has_paper_rows(table):
        return []
    lines = ["## Beside the paper (preset paper)", "",
             "| method | harmfulness ↓ (ours: cost) | harmfulness ↓ (paper) | win rate vs base % (ours: judge) "
             "| GPT-4 win rate % (paper) |", "|---|---:|---:|---:|---:|"]
    for row in (r for r in table["rows"] if r["preset"] == PAPER_PRESET):
        ours_cost, ours_win = paper_side_by_side(row)
        paper = row["paper"]
        lines.append(f"| {markdown_text(row['label'])}"
                     f"{' (' + markdown_text(paper[0]) + ')' if paper else ''} | {ours_cost} | "
                     f"{paper_number(paper, 1)} | {ours_win} | {paper_number(paper, 2)} |")
    return lines + ["", f"Paper numbers: {markdown_text(PAPER_CITATION)}.", ""]


def frontier_section(table: dict, studies: Optional[list[dict]], level: str = "##") -> list[str]:
    left_out = table.get("studies_left_out") or []
    if not studies and not left_out:
        return []
    lines = [f"{level} Helpfulness at matched harm (tuning studies)", "", FRONTIER_NOTE, "",
             "| preset | method | study | selection rule | selected trial | trials | harm level | "
             "helpful at matched harm |", "|---|---|---|---|---:|---:|---:|---:|"]
    for row in frontier_rows(studies or []):
        lines.append("| " + " | ".join(markdown_text(cell(row[c])) for c in FRONTIER_COLUMNS[:6]) + " | "
                     + " | ".join(cell(row[c], 3) for c in FRONTIER_COLUMNS[6:]) + " |")
    lines.append("")
    for note in frontier_notes(table, studies or []):
        lines += [markdown_text(note), ""]
    return lines


LEGEND = "**bold** is the best per metric within a preset; ↑/↓ higher/lower is better."


def render_markdown(table: dict, studies: Optional[list[dict]] = None) -> str:
    lines = ["# d2o-bench leaderboard", "", f"{INTERVAL_NOTE} {LEGEND}", ""]
    for preset in sorted({r["preset"] for r in table["rows"]}):
        rows = [r for r in table["rows"] if r["preset"] == preset]
        lines += [f"## preset {markdown_text(preset)}", "", *metric_tables(table, rows),
                  *notes_under_table(table, rows), ""]
        lines += base_pairing(table, preset) + against_pairing(table, preset)
    lines += paper_section(table) + frontier_section(table, studies)
    return "\n".join(lines)


def paper_number(paper: Optional[tuple], index: int) -> str:
    if paper is None or paper[index] is None:
        return "—"
    return f"{paper[index]:.2f}"


def paper_side_by_side(row: dict) -> tuple[str, str]:
    cost = row["metrics"].get("cost")
    win = row["metrics"].get("judge_helpfulness_win_rate")
    win_pct = None if win is None else {
        **win, **{k: None if win.get(k) is None else 100 * win[k] for k in ("mean", "stderr", "low", "high")}}
    return format_summary(cost, 2), format_summary(win_pct, 2)


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
    paper = has_paper_rows(table)
    if paper:
        header += ["paper_harmfulness", "paper_gpt4_win_rate_pct"]
    writer.writerow(header)
    for row in table["rows"]:
        line = [csv_text(row["preset"]), csv_text(row["method"]), csv_text(row["hyperparameters"]),
                row["n_seeds"], row["n_runs"], row["n_failed"]]
        for name in table["metrics"]:
            summary = row["metrics"][name]
            line += (["", "", "", "", 0, table["directions"][name]] if summary is None else
                     [repr(summary["mean"]), csv_number(summary["stderr"]), csv_number(summary.get("low")),
                      csv_number(summary.get("high")), summary["k"], summary["higher_is_better"]])
        for name in PAIRED_METRICS:
            d = row.get("vs_base", {}).get(name)
            line += ([""] * 6 if d is None else
                     [csv_number(x) for x in (d.delta, d.low, d.high, d.poi, d.poi_low, d.poi_high)])
        if paper:
            line += ["" if row["paper"] is None or row["paper"][i] is None else row["paper"][i] for i in (1, 2)]
        writer.writerow(line)
    return buffer.getvalue()




DIFFERENCE_COLUMNS = ("preset", "method", "against", "metric", "higher_is_better", "delta", "ci_low", "ci_high",
                      "half_width", "resolved", "interval_method")


def render_differences_csv(table: dict) -> str:
    """Every paired difference against the `--against` method, one row per method and metric."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(DIFFERENCE_COLUMNS)
    for row in table["rows"]:
        for metric in DIFFERENCE_METRICS:
            d = (row.get("vs_against") or {}).get(metric)
            if d is None:
                continue
            writer.writerow([csv_text(row["preset"]), csv_text(row["label"]), csv_text(table["against"]), metric,
                             table["directions"][metric], *(csv_number(x) for x in (d.delta, d.low, d.high)),
                             csv_number(half_width(d)), resolved(d), csv_text(d.method or "")])
    return buffer.getvalue()
