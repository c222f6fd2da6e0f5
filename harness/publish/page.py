"""The HTML page of a published leaderboard: one template (static/page.html) filled with escaped
tables, its style and script kept as static files (static/*.css, *.js) that `publish` copies beside
every index.html instead of inlining them per page, and its plots referenced as the PNG files
written beside it. The page fetches nothing from elsewhere (its Content-Security-Policy allows only
its own folder). Everything that came from a run (method and model names, configs) is
HTML-escaped: a leaderboard file is input, not trusted markup.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from string import Template
from typing import Any, Optional

from harness.publish.notes import (INTERVAL_NOTE, PAIRED_NOTE, against_note, failed_instrument_lines,
                                   instrument_lines, paired_metrics, paired_rows, refusal_bias_line, shown_metrics)
from harness.publish.pooling import (DIFFERENCE_METRICS, PAPER_CITATION, PAPER_PRESET, arrow, canonical,
                                     format_against, format_difference, format_summary, has_paper_rows, resolved)
from harness.publish.studies import FRONTIER_COLUMNS, FRONTIER_NOTE, cell, frontier_notes, frontier_rows
from harness.publish.tables import paper_number, paper_side_by_side

# The files copied beside every index.html, by name.
STATIC_FILES = ("leaderboard.css", "errors.js", "leaderboard.js")


def static_file(name: str) -> bytes:
    return resources.files("harness.publish").joinpath("static", name).read_bytes()


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _value_cell(summary: Optional[dict], best: bool) -> str:
    """The value on one line and its interval under it, so a cell stays narrow."""
    css = ' class="best"' if best else ""
    if summary is None:
        return '<td data-sort="">—</td>'
    text = format_summary(summary)
    value, _, interval = text.partition(" ")
    ci = f'<span class="ci">{_e(interval)}</span>' if interval else ""
    return f'<td{css} data-sort="{summary["mean"]!r}" title="{_e(text)}"><span class="v">{_e(value)}</span>{ci}</td>'


def _flat(value, prefix: str = "") -> dict:
    """A nested config as {"section.field": value}, to name what differs between runs."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat = {}
    for key, item in value.items():
        flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _provenance_html(row: dict) -> str:
    """The row's runs: what they share once (models, data, harness, environment, config), then one
    line per run. A page lists every run of a board, so repeating each run's full config would
    make it megabytes; the fields in which the runs' configs differ are named instead."""
    runs = row["runs"]
    first = runs[0]["provenance"]
    git = first.get("git") or {}
    shared = [
        ("base model", f"{first['base_model'].get('id')} sha256={first['base_model'].get('sha256')}"),
        ("dataset", f"{first['dataset'].get('id')} fingerprint={first['dataset'].get('fingerprint')}"),
        ("harness", f"{first.get('harness_version')} git {git.get('commit')}{' (dirty)' if git.get('dirty') else ''}"),
        ("image", first.get("container_image_digest")),
        ("environment", ", ".join(f"{k} {v}" for k, v in (first.get("environment") or {}).items())),
        ("hyperparameters", canonical(runs[0]["hyperparameters"])),
    ]
    configs = [_flat(run["provenance"].get("config") or {}) for run in runs]
    differing = sorted({key for config in configs for key in config
                        if any(other.get(key, None) != config.get(key, None) for other in configs)})
    per_run = []
    for run in runs:
        p = run["provenance"]
        run_git = (p.get("git") or {}).get("commit")
        per_run.append(f"{run['run_id']}  seed {run['seed']}  {run['status']}  config_hash {p.get('config_hash')}"
                       + (f"  git {run_git}" if run_git != git.get("commit") else "")
                       + f"  {p.get('started_at')} → {p.get('finished_at')} ({p.get('wall_time_s')} s)")
    facts = "".join(f"{_e(k)}: {_e(v)}\n" for k, v in shared)
    return (f"<details><summary>{len(runs)} run(s)</summary><pre class=\"run\">{facts}"
            f"runs:\n{_e(chr(10).join(per_run))}\n"
            f"config of the first run{' (the runs differ in ' + _e(', '.join(differing)) + ')' if differing else ''}:\n"
            f"{_e(json.dumps(first.get('config'), sort_keys=True, separators=(',', ':')))}</pre></details>")


def _table(attributes: str, header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table {attributes}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _paired_html(table: dict) -> str:
    parts = []
    for preset in sorted({r["preset"] for r in table["rows"]}):
        paired = paired_rows(table, preset)
        if not paired:
            continue
        metrics = paired_metrics(paired)
        rows = [[f'<td class="text">{_e(row["label"])}</td>', f'<td class="text">{_e(m)}</td>',
                 *(f"<td>{_e(c)}</td>" for c in format_difference(row["vs_base"][m]))]
                for row in paired for m in metrics if row["vs_base"].get(m) is not None]
        bias = refusal_bias_line([r for r in table["rows"] if r["preset"] == preset], metrics)
        parts.append(f'<h2>Against the base policy (preset {_e(preset)})</h2><p class="note">{_e(PAIRED_NOTE)}</p>'
                     + _table(f'class="vs-base" data-preset="{_e(preset)}"',
                              ["method", "metric", "Δ [95% interval]", "P(improvement) [95% interval]"], rows)
                     + (f'<p class="note">{_e(bias)}</p>' if bias else ""))
    return "".join(parts)


def _against_html(table: dict) -> str:
    method = table.get("against")
    parts = []
    for preset in sorted({r["preset"] for r in table["rows"]}):
        paired = paired_rows(table, preset, "vs_against")
        if not method or not paired:
            continue
        metrics = paired_metrics(paired, "vs_against", DIFFERENCE_METRICS)
        rows = []
        for row in paired:
            for m in metrics:
                d = row["vs_against"].get(m)
                if d is not None:
                    css = "" if resolved(d) else ' class="unresolved"'
                    rows.append([f'<td class="text">{_e(row["label"])}</td>',
                                 f'<td class="text">{_e(m)} {arrow(table["directions"][m])}</td>',
                                 f"<td{css}>{_e(format_against(d))}</td>"])
        bias = refusal_bias_line([r for r in table["rows"] if r["preset"] == preset], metrics)
        parts.append(f"<h2>Against {_e(method)} (preset {_e(preset)})</h2>"
                     f'<p class="note">{_e(against_note(method))}</p>'
                     + _table(f'class="vs-against" data-preset="{_e(preset)}"',
                              ["method", "metric", f"Δ vs {method} [95% interval] ±detectable"], rows)
                     + (f'<p class="note">{_e(bias)}</p>' if bias else ""))
    return "".join(parts)


def _frontier_html(studies: Optional[list[dict]], table: dict) -> str:
    notes = frontier_notes(table, studies or [])
    if not studies and not notes:
        return ""
    rows = [[f'<td class="text">{_e(cell(row[c]))}</td>' for c in FRONTIER_COLUMNS[:6]]
            + [f"<td>{_e(cell(row[c], 3))}</td>" for c in FRONTIER_COLUMNS[6:]] for row in frontier_rows(studies or [])]
    return (f'<h2>Helpfulness at matched harm (tuning studies)</h2><p class="note">{_e(FRONTIER_NOTE)}</p>'
            + _table('id="frontier"', [c.replace("_", " ") for c in FRONTIER_COLUMNS], rows)
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
        bias = refusal_bias_line(rows, shown_metrics(table, rows))
        if bias:
            parts.append(f'<p class="note">{_e(bias)}</p>')
    return "".join(parts)


def _paper_html(table: dict) -> str:
    if not has_paper_rows(table):
        return ""
    rows = []
    for row in (r for r in table["rows"] if r["preset"] == PAPER_PRESET):
        ours_cost, ours_win = paper_side_by_side(row)
        label = row["label"] + (f" ({row['paper'][0]})" if row["paper"] else "")
        rows.append([f'<td class="text">{_e(label)}</td>', f"<td>{_e(ours_cost)}</td>",
                     f"<td>{paper_number(row['paper'], 1)}</td>", f"<td>{_e(ours_win)}</td>",
                     f"<td>{paper_number(row['paper'], 2)}</td>"])
    return ("<h2>Beside the paper (preset paper)</h2>"
            + _table('id="paper"', ["method", "harmfulness ↓ (ours: cost)", "harmfulness ↓ (paper)",
                                    "win rate vs base % (ours: judge)", "GPT-4 win rate % (paper)"], rows)
            + f'<p class="note">Paper numbers: {_e(PAPER_CITATION)}.</p>')


def render_html(table: dict, plots: dict[str, str], studies: Optional[list[dict]] = None) -> str:
    """The page; `plots` maps a plot's name to its file name beside the page."""
    names = table["metrics"]
    header = ['<th data-col="preset" data-type="text">preset</th>',
              '<th data-col="method" data-type="text">method</th>',
              '<th data-col="n_seeds" data-type="number">n seeds</th>']
    # A break opportunity after each underscore: long metric names wrap instead of widening the table.
    header += [f'<th data-col="{_e(n)}" data-type="number">{_e(n).replace("_", "_<wbr>")} '
               f'{arrow(table["directions"][n])}</th>' for n in names]
    header.append('<th data-col="provenance" data-type="text">provenance</th>')
    body = []
    for row in table["rows"]:
        failed = f" (+{row['n_failed']} failed)" if row["n_failed"] else ""
        cells = [f'<td class="text" data-sort="{_e(row["preset"])}">{_e(row["preset"])}</td>',
                 f'<td class="text" data-sort="{_e(row["label"])}">{_e(row["label"])}</td>',
                 f'<td data-sort="{row["n_seeds"]}">{row["n_seeds"]}{failed}</td>']
        cells += [_value_cell(row["metrics"][name], name in row["best"]) for name in names]
        cells.append(f'<td class="text" data-sort="{_e(row["runs"][0]["run_id"])}">{_provenance_html(row)}</td>')
        body.append(f'<tr data-preset="{_e(row["preset"])}">' + "".join(cells) + "</tr>")
    images = "".join(f'<figure><img alt="{_e(name)}" src="{_e(filename)}"></figure>'
                     for name, filename in sorted(plots.items()))
    sections = (_instruments_html(table) + _paired_html(table) + _against_html(table) + _paper_html(table)
                + _frontier_html(studies, table))
    template = Template(static_file("page.html").decode("utf-8"))
    return template.substitute(interval_note=_e(INTERVAL_NOTE), header="".join(header), body="".join(body),
                               sections=sections, plots=images)
