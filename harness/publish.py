"""`d2o-bench publish LEADERBOARD... --to DIR`: tables, a static page and plots from leaderboards.

Runs are grouped per preset × method (× hyperparameters, when one method was run with several
settings, e.g. by a sweep) and each metric is summarised over seeds as mean ± stderr: the
standard error across seeds (sample sd / √k) when there are ≥ 2 seeds, else the single run's own
recorded stderr. Failed runs are counted, not averaged. The best value per metric and preset is
marked, its direction taken from the metric's `higher_is_better`.

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
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

from harness.errors import BadInput
from harness.leaderboard import read_leaderboard

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
METRIC_ORDER = ("harmful_rate", "helpful_rate", "safe_rate", "cost", "reward",
                "judge_helpfulness_win_rate", "judge_harmlessness_win_rate")
HARMFULNESS_METRICS = ("harmful_rate", "cost")
HELPFULNESS_METRICS = ("helpful_rate", "reward")


# --------------------------------------------------------------------------- aggregation


def summarise(records: list[dict]) -> Optional[dict]:
    """mean ± stderr of one metric over seeds; None when no run has a value."""
    usable = [r for r in records if r.get("value") is not None]
    if not usable:
        return None
    values = [float(r["value"]) for r in usable]
    if len(values) >= 2:
        stderr = statistics.stdev(values) / math.sqrt(len(values))
    else:
        stderr = usable[0].get("stderr")
    return {"mean": statistics.fmean(values), "stderr": stderr, "k": len(values),
            "higher_is_better": usable[0]["higher_is_better"]}


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
    return {**capability_metrics(entry), **judge_metrics(entry), **entry["metrics"]}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_entries(leaderboard_paths: Iterable[Path]) -> list[dict]:
    """Entries of all leaderboards; a run_id seen again (a rerun published later) replaces the earlier one."""
    by_run: dict[str, dict] = {}
    for path in leaderboard_paths:
        for entry in read_leaderboard(Path(path))["entries"]:
            by_run.pop(entry["run_id"], None)
            by_run[entry["run_id"]] = entry
    return list(by_run.values())


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
        groups.setdefault((entry["preset"], entry["method"], _canonical(entry["hyperparameters"])), []).append(entry)
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
            "metrics": {name: summarise([_metrics_of(r)[name] for r in complete if name in _metrics_of(r)])
                        for name in names},
            "runs": sorted(runs, key=lambda r: (r["seed"], r["run_id"])),
            "paper": PAPER_TABLE1.get(method) if preset == PAPER_PRESET else None,
        }
        rows.append(row)
    _mark_best(rows, names, directions)
    return {"metrics": names, "directions": directions, "rows": rows}


def _hyper_label(hyperparameters: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in sorted(hyperparameters.items())) + ")"


def _mark_best(rows: list[dict], names: list[str], directions: dict[str, bool]) -> None:
    """Best mean per metric within each preset (presets are different experiments); ties all win."""
    for row in rows:
        row["best"] = set()
    for preset in {r["preset"] for r in rows}:
        in_preset = [r for r in rows if r["preset"] == preset]
        for name in names:
            means = [r["metrics"][name]["mean"] for r in in_preset if r["metrics"][name] is not None]
            if len(means) < 2:
                continue
            best = max(means) if directions[name] else min(means)
            for row in in_preset:
                if row["metrics"][name] is not None and row["metrics"][name]["mean"] == best:
                    row["best"].add(name)


def format_summary(summary: Optional[dict], digits: int = 3) -> str:
    if summary is None:
        return "—"
    stderr = "?" if summary["stderr"] is None else f"{summary['stderr']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {stderr}"


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


def render_markdown(table: dict) -> str:
    lines = ["# d2o-bench leaderboard", "",
             "mean ± stderr over seeds (a single seed shows its own stderr); **bold** is the best per metric "
             "within a preset; ↑/↓ higher/lower is better.", ""]
    for preset in sorted({r["preset"] for r in table["rows"]}):
        rows = [r for r in table["rows"] if r["preset"] == preset]
        names = [n for n in table["metrics"] if any(r["metrics"][n] is not None for r in rows)]
        lines += [f"## preset {markdown_text(preset)}", "",
                  "| method | n seeds | " + " | ".join(f"{markdown_text(n)} {_arrow(table['directions'][n])}"
                                                       for n in names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for row in rows:
            cells = []
            for name in names:
                text = format_summary(row["metrics"][name])
                cells.append(f"**{text}**" if name in row["best"] else text)
            lines.append(f"| {markdown_text(row['label'])} | {row['n_seeds']} | " + " | ".join(cells) + " |")
        failed = [f"{markdown_text(r['label'])} ({r['n_failed']})" for r in rows if r["n_failed"]]
        if failed:
            lines += ["", "Failed runs (not averaged): " + ", ".join(failed) + "."]
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
    return "\n".join(lines)


def _paper_number(paper: Optional[tuple], index: int) -> str:
    if paper is None or paper[index] is None:
        return "—"
    return f"{paper[index]:.2f}"


def _paper_side_by_side(row: dict) -> tuple[str, str]:
    cost = row["metrics"].get("cost")
    win = row["metrics"].get("judge_helpfulness_win_rate")
    win_pct = None if win is None else {**win, "mean": 100 * win["mean"],
                                        "stderr": None if win["stderr"] is None else 100 * win["stderr"]}
    return format_summary(cost, 2), format_summary(win_pct, 2)


def _csv_text(value: Any) -> str:
    """Spreadsheets run cells starting with = + - @ as formulas; a run's name must stay text."""
    text = value if isinstance(value, str) else _canonical(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render_csv(table: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["preset", "method", "hyperparameters", "n_seeds", "n_runs", "n_failed"]
    for name in table["metrics"]:
        header += [f"{name}_mean", f"{name}_stderr", f"{name}_k", f"{name}_higher_is_better"]
    paper = _has_paper_rows(table)
    if paper:
        header += ["paper_harmfulness", "paper_gpt4_win_rate_pct"]
    writer.writerow(header)
    for row in table["rows"]:
        line = [_csv_text(row["preset"]), _csv_text(row["method"]), _csv_text(row["hyperparameters"]),
                row["n_seeds"], row["n_runs"], row["n_failed"]]
        for name in table["metrics"]:
            summary = row["metrics"][name]
            line += (["", "", 0, table["directions"][name]] if summary is None else
                     [repr(summary["mean"]), "" if summary["stderr"] is None else repr(float(summary["stderr"])),
                      summary["k"], summary["higher_is_better"]])
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


def plot_tradeoff(rows: list[dict], path: Path) -> bool:
    """Harmfulness against helpfulness, one point per method with stderr bars; False if nothing to plot."""
    harm = next((n for n in HARMFULNESS_METRICS if all(r["metrics"].get(n) for r in rows)), None) or \
        next((n for n in HARMFULNESS_METRICS if any(r["metrics"].get(n) for r in rows)), None)
    helpful = next((n for n in HELPFULNESS_METRICS if all(r["metrics"].get(n) for r in rows)), None) or \
        next((n for n in HELPFULNESS_METRICS if any(r["metrics"].get(n) for r in rows)), None)
    points = [r for r in rows if harm and helpful and r["metrics"].get(harm) and r["metrics"].get(helpful)]
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
            axes.errorbar(x["mean"], y["mean"], xerr=x["stderr"] or 0.0, yerr=y["stderr"] or 0.0,
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


def plot_loss_curves(rows: list[dict], path: Path) -> bool:
    """Training loss per method (every seed, one colour per method); False if no run recorded a curve."""
    curves = [(row, run["provenance"]["train"]["loss_curve"]) for row in rows for run in row["runs"]
              if run["status"] == "complete" and (run["provenance"].get("train") or {}).get("loss_curve")]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    try:
        colours = {}
        for row, curve in curves:
            points = [(step, loss) for step, loss in curve if loss is not None]
            first = row["label"] not in colours
            colour = colours.setdefault(row["label"], f"C{len(colours) % 10}")
            axes.plot([p[0] for p in points], [p[1] for p in points], color=colour, alpha=0.8, linewidth=1.2,
                      label=_plot_label(row["label"]) if first else None)
        axes.set_xlabel("step")
        axes.set_ylabel("training loss")
        axes.set_title(_plot_label(f"training loss — preset {rows[0]['preset']}"))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        figure.tight_layout()
        _save_figure(figure, path)
    finally:
        plt.close(figure)
    return True


def _save_figure(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    _write_atomic(path, buffer.getvalue())


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
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(table: dict, plots: dict[str, Path]) -> str:
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
        "<p class=\"note\">mean ± stderr over seeds (one seed: its own stderr); highlighted: best per metric within "
        "a preset; ↑/↓ higher/lower is better. Click a header to sort; <code>?sort=COLUMN&amp;dir=desc</code> "
        "sorts on load.</p>"
        f"<table id=\"leaderboard\"><thead><tr>{''.join(header)}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"{paper}<h2>Plots</h2>{images}<script>{_PAGE_JS}</script></body></html>\n"
    )


# --------------------------------------------------------------------------- output


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _file_stem(preset: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", preset).strip("._") or "preset"


def publish(leaderboard_paths: list[Path], out_dir: Path) -> dict[str, Path]:
    """Writes leaderboard.md, leaderboard.csv, index.html and per-preset PNG plots; returns them by name."""
    if not leaderboard_paths:
        raise BadInput("publish: no leaderboard given")
    entries = load_entries(leaderboard_paths)
    if not entries:
        raise BadInput("publish: the leaderboards hold no entries")
    table = aggregate(entries)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"publish: cannot create {out_dir} ({exc.strerror})") from None
    written: dict[str, Path] = {}
    plots: dict[str, Path] = {}
    for preset in sorted({r["preset"] for r in table["rows"]}):
        rows = [r for r in table["rows"] if r["preset"] == preset]
        stem = _file_stem(preset)
        for kind, plot in (("tradeoff", plot_tradeoff), ("loss", plot_loss_curves)):
            path = out_dir / f"{kind}-{stem}.png"
            if plot(rows, path):
                plots[f"plot_{kind}_{preset}"] = path
    written.update(plots)
    for name, filename, text in (("markdown", "leaderboard.md", render_markdown(table)),
                                 ("csv", "leaderboard.csv", render_csv(table)),
                                 ("html", "index.html", render_html(table, plots))):
        _write_atomic(out_dir / filename, text.encode("utf-8"))
        written[name] = out_dir / filename
    return written


def publish_main(argv: list[str]) -> int:
    from harness.cli import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="d2o-bench publish",
                                   description="Tables (Markdown, CSV), a static HTML page and plots from leaderboards.")
    parser.add_argument("leaderboards", nargs="+", metavar="LEADERBOARD", help="leaderboard.json file(s)")
    parser.add_argument("--to", required=True, metavar="DIR", help="output directory")
    try:
        args = parser.parse_args(argv)
        written = publish([Path(p) for p in args.leaderboards], Path(args.to))
    except BadInput as exc:
        print(f"d2o-bench publish: error: {exc}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0
