"""A preset's front page, `leaderboards/<preset>/README.md`, written by `publish --readme`: the
hand-written findings (rendered from the template beside it), the tables, the plots and the
provenance of the board. Nothing in it is typed by hand from a table.

The findings template (`FINDINGS.md.in` beside the README) is Markdown whose numbers are
references into the board, resolved when published, so the prose cannot disagree with the board
it describes:

    {{ d2o.harmful_rate }}              value [low, high] of the preset's d2o row
    {{ d2o.harmful_rate.value }}        one number of it: value, low, high (also n_seeds: {{ d2o.n_seeds }})
    {{ diff d2o dpo harmful_rate }}     d2o − dpo paired on the same prompts: Δ [low, high]
    {{ detectable d2o dpo harmful_rate }}  that interval's half-width: the smallest difference the
                                        board could detect between the two
    {{ verdict d2o dpo harmful_rate }}  "lower" / "higher" when the interval excludes 0, else
                                        "not resolved"

HTML comments in the template are notes to its authors, left out. A reference that does not resolve (unknown method, metric, or a pairing without per-task data) is
an error naming the template's line: nothing is written.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Optional

from harness.errors import BadInput
from harness.leaderboard import world_seed
from harness.publish.notes import INTERVAL_NOTE
from harness.publish.pooling import format_summary, half_width, paired_difference, resolved
from harness.publish.tables import (LEGEND, against_pairing, base_pairing, frontier_section, markdown_text,
                                    metric_tables, notes_under_table)

FINDINGS_TEMPLATE = "FINDINGS.md.in"
_REFERENCE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_FIELDS = ("value", "low", "high")


def _row(rows: list[dict], method: str, where: str) -> dict:
    found = [r for r in rows if r["method"] == method]
    if len(found) != 1:
        known = ", ".join(sorted({r["method"] for r in rows}))
        why = "no row" if not found else f"{len(found)} rows (several settings)"
        raise BadInput(f"{where}: method {method!r} has {why} on this board (methods: {known})")
    return found[0]


def _summary(row: dict, metric: str, where: str) -> dict:
    summary = row["metrics"].get(metric)
    if summary is None:
        known = ", ".join(sorted(m for m, s in row["metrics"].items() if s is not None))
        raise BadInput(f"{where}: {row['method']} has no value of {metric!r} (metrics: {known})")
    return summary


def _difference(rows: list[dict], a: str, b: str, metric: str, where: str):
    row_a, row_b = _row(rows, a, where), _row(rows, b, where)
    _summary(row_a, metric, where), _summary(row_b, metric, where)
    difference = paired_difference(row_a, row_b, metric)
    if difference is None:
        raise BadInput(f"{where}: {a} − {b} on {metric} cannot be paired (no per-task data on both sides)")
    return difference


def resolve(reference: str, rows: list[dict], where: str) -> str:
    """One `{{ … }}` reference's text (see the module's docstring)."""
    words = reference.split()
    if len(words) == 4 and words[0] in ("diff", "detectable", "verdict"):
        kind, a, b, metric = words
        d = _difference(rows, a, b, metric, where)
        if kind == "diff":
            return f"{d.delta:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
        if kind == "detectable":
            return f"{half_width(d):.3f}"
        if not resolved(d):
            return "not resolved"
        return "higher" if d.delta > 0 else "lower"
    if len(words) == 1 and "." in words[0]:
        method, _, rest = words[0].partition(".")
        row = _row(rows, method, where)
        if rest == "n_seeds":
            return str(row["n_seeds"])
        metric, _, field = rest.partition(".")
        summary = _summary(row, metric, where)
        if not field:
            return format_summary(summary)
        if field not in _FIELDS:
            raise BadInput(f"{where}: unknown field {field!r} (one of {', '.join(_FIELDS)})")
        value = summary["mean" if field == "value" else field]
        if value is None:
            raise BadInput(f"{where}: {method}.{metric} has no {field}")
        return f"{value:.3f}"
    raise BadInput(f"{where}: cannot read the reference {{{{ {reference} }}}} (METHOD.METRIC[.value|.low|.high], "
                   "METHOD.n_seeds, or diff|detectable|verdict A B METRIC)")


def render_findings(template: Path, rows: list[dict]) -> str:
    """The findings template with every reference replaced by the board's number."""
    try:
        text = Path(template).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{template}: unreadable ({getattr(exc, 'strerror', None) or exc})") from None
    # Comments are notes to the template's authors: dropped (keeping their line breaks, so the
    # line numbers of errors stay those of the template) and never resolved.
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    out = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        where = f"{template}:{number}"
        if "{{" in _REFERENCE.sub("", line) or "}}" in _REFERENCE.sub("", line):
            raise BadInput(f"{where}: unbalanced {{{{ }}}} in the findings template")
        out.append(_REFERENCE.sub(lambda m: resolve(m.group(1), rows, where), line))
    return "".join(out)


def _provenance_lines(rows: list[dict], board: Path, studies: Optional[list[dict]]) -> list[str]:
    entries = [e for row in rows for e in row["runs"]]
    complete = [e for e in entries if e["status"] == "complete"]
    commits = sorted({(e["provenance"].get("git") or {}).get("commit") or "unknown" for e in entries})
    dirty = sum(1 for e in entries if (e["provenance"].get("git") or {}).get("dirty"))
    worlds = sorted({w for e in entries if (w := world_seed(e)) is not None})
    seeds = sorted({e["seed"] for e in entries})
    reclustered = sorted({(e["provenance"].get("reclustered") or {}).get("rule") for e in entries
                          if e["provenance"].get("reclustered")})
    clustered = [(r.get("n"), r.get("n_clusters")) for e in complete for r in e["metrics"].values()
                 if isinstance(r, dict) and r.get("per_cluster") is not None]
    digest = hashlib.sha256(Path(board).read_bytes()).hexdigest()
    lines = [f"- Board: `{board.name}` (sha256 `{digest[:16]}…`), {len(entries)} entries ({len(complete)} complete, "
             f"{len(entries) - len(complete)} failed), {len(rows)} rows; training seeds {seeds}"
             + (f", world seeds {worlds}" if worlds else "") + ".",
             f"- Harness commits of the runs: {', '.join(f'`{c[:12]}`' for c in commits)}"
             + (f" ({dirty} entries from a dirty tree)" if dirty else " (all from clean trees)") + "."]
    if clustered:
        below = sum(1 for n, c in clustered if c is not None and n is not None and c < n)
        grouped = ("prompts clustered by task, so correlated prompts do not narrow the interval" if below
                   else "each prompt its own cluster: this board's prompts are not grouped into tasks")
        lines.append(f"- Intervals: {below} of {len(clustered)} metric records with per-task data have fewer "
                     f"clusters than prompts ({grouped})"
                     + (f"; re-clustered after the runs by rule {', '.join(reclustered)} "
                        "(`harness/recluster.py`, values unchanged)" if reclustered else "") + ".")
    if studies is not None:
        lines.append(f"- Tuning studies: {len(studies)} (`studies/*/study.json`).")
    return lines


def render_readme(table: dict, preset: str, board: Path, plots: dict[str, str], published: str,
                  studies: Optional[list[dict]], findings: Optional[str]) -> str:
    """The preset's README; `plots` maps a plot's name to its file name in the `published` folder
    (relative to the README)."""
    rows = [r for r in table["rows"] if r["preset"] == preset]
    title = markdown_text(preset)
    lines = [f"<!-- Generated by `d2o-bench publish --readme` from {board.name}"
             + (", studies/" if studies is not None else "")
             + (f" and {FINDINGS_TEMPLATE}" if findings is not None else "")
             + ". Do not edit: edit those, then run leaderboards/publish-all.sh. -->", "",
             f"# Leaderboard: preset {title}", "",
             f"Tables, CSV and a sortable page: [{published}/]({published}/index.html) "
             f"([leaderboard.csv]({published}/leaderboard.csv)). How to read it: "
             "[the main README](../../README.md#how-to-read-a-leaderboard).", ""]
    if findings is not None:
        lines += ["## Findings", "", findings.strip(), ""]
    lines += ["## Results", "", f"{INTERVAL_NOTE} {LEGEND}", "", *metric_tables(table, rows),
              *notes_under_table(table, rows), ""]
    lines += against_pairing(table, preset, "##") + base_pairing(table, preset, "##")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{markdown_text(name)}]({published}/{filename})" for name, filename in sorted(plots.items())]
        lines.append("")
    lines += frontier_section(table, [s for s in studies or [] if s["preset"] == preset], "##")
    lines += ["## Provenance", "", *_provenance_lines(rows, board, studies), ""]
    return "\n".join(lines)
