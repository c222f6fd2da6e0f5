"""`d2o-bench publish`: read and check every input, pool, then write every file (each atomically).

Every input (leaderboards, studies, the findings template and its references) is read and checked
before anything is written, so bad input leaves the output as it was.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from harness import atomic
from harness.errors import BadInput
from harness.publish.files import file_stem, write_atomic
from harness.publish.page import STATIC_FILES, render_html, static_file
from harness.publish.plots import plot_frontier, plot_loss_curves, plot_tradeoff
from harness.publish.pooling import DEFAULT_AGAINST, DIFFERENCE_METRICS, aggregate, load_entries, paired_against
from harness.publish.readme import FINDINGS_TEMPLATE, render_findings, render_readme
from harness.publish.studies import load_studies, render_frontier_csv, studies_with_valid_objectives
from harness.publish.tables import render_csv, render_differences_csv, render_markdown


def _against(table: dict, against: Optional[str]) -> None:
    """Pair every row with the preset's `against` row (default d2o where a preset has it)."""
    method = against or DEFAULT_AGAINST
    if against is not None and not any(r["method"] == method for r in table["rows"]):
        known = ", ".join(sorted({r["method"] for r in table["rows"]}))
        raise BadInput(f"publish: --against {against}: no row of that method (methods: {known})")
    paired_against(table["rows"], method, DIFFERENCE_METRICS, "vs_against")
    table["against"] = method if any(r["vs_against"] for r in table["rows"]) else None


# Its files land together or not at all (a full disk on the last leaves the previous set), and two
# publishers of one folder never interleave: never a page from one board beside a table from another.
@atomic.all_or_none(lock=True)
def publish(leaderboard_paths: list[Path], out_dir: Path, studies_dir: Optional[Path] = None, *,
            against: Optional[str] = None, readme: Optional[Path] = None) -> dict[str, Path]:
    """Writes leaderboard.md, leaderboard.csv, index.html with its static files, per-preset PNG
    plots (plus, with `studies_dir`, frontier-<preset>.png and frontier.csv), differences.csv
    where a preset has the `against` method, and with `readme` the preset's README (findings from
    FINDINGS.md.in beside it); returns them by name."""
    if not leaderboard_paths:
        raise BadInput("publish: no leaderboard given")
    entries = load_entries(leaderboard_paths)
    if not entries:
        raise BadInput("publish: the leaderboards hold no entries")
    studies = load_studies(Path(studies_dir)) if studies_dir is not None else None
    table = aggregate(entries)
    _against(table, against)
    if studies is not None:
        studies, table["studies_left_out"] = studies_with_valid_objectives(studies, table)
    presets = sorted({r["preset"] for r in table["rows"]} | {s["preset"] for s in studies or []})
    findings = None
    if readme is not None:
        readme = Path(readme)
        if len(presets) != 1 or len(leaderboard_paths) != 1:
            raise BadInput(f"publish: --readme writes one preset's page from one leaderboard; got "
                           f"{len(leaderboard_paths)} leaderboard(s) of preset(s) {', '.join(presets)}")
        template = readme.parent / FINDINGS_TEMPLATE
        if template.is_file():
            findings = render_findings(template, [r for r in table["rows"] if r["preset"] == presets[0]])
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"publish: cannot create {out_dir} ({exc.strerror})") from None
    written: dict[str, Path] = {}
    for preset in presets:
        rows = [r for r in table["rows"] if r["preset"] == preset]
        stem = file_stem(preset)
        for kind, plot in (("tradeoff", plot_tradeoff), ("loss", plot_loss_curves)):
            path = out_dir / f"{kind}-{stem}.png"
            if rows and plot(rows, path):
                written[f"plot_{kind}_{preset}"] = path
        in_preset = [s for s in studies or [] if s["preset"] == preset]
        if in_preset and plot_frontier(in_preset, rows, out_dir / f"frontier-{stem}.png"):
            written[f"plot_frontier_{preset}"] = out_dir / f"frontier-{stem}.png"
    plots = {name: path.name for name, path in written.items()}
    outputs = [("markdown", "leaderboard.md", render_markdown(table, studies)),
               ("csv", "leaderboard.csv", render_csv(table)),
               ("html", "index.html", render_html(table, plots, studies))]
    outputs += [(f"static_{name}", name, static_file(name)) for name in STATIC_FILES]
    if table["against"]:
        outputs.append(("differences_csv", "differences.csv", render_differences_csv(table)))
    if studies:
        outputs.append(("frontier_csv", "frontier.csv", render_frontier_csv(studies)))
    for name, filename, content in outputs:
        write_atomic(out_dir / filename, content if isinstance(content, bytes) else content.encode("utf-8"))
        written[name] = out_dir / filename
    if readme is not None:
        relative = Path(_relative(out_dir, readme.parent))
        text = render_readme(table, presets[0], Path(leaderboard_paths[0]), plots, relative.as_posix(), studies,
                             findings)
        write_atomic(readme, text.encode("utf-8"))
        written["readme"] = readme
    return written


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target.resolve(), start.resolve())


def publish_main(argv: list[str]) -> int:
    from harness.arguments import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="d2o-bench publish",
                                   description="Tables (Markdown, CSV), a static HTML page and plots from leaderboards: "
                                               "every metric as value [95% interval] over seeds, each method paired "
                                               "with the base policy and with --against, and tuning frontiers from "
                                               "--studies.")
    parser.add_argument("leaderboards", nargs="+", metavar="LEADERBOARD", help="leaderboard.json file(s)")
    parser.add_argument("--to", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--studies", default=None, metavar="DIR",
                        help="directory searched for study.json files of `d2o-bench tune`: adds frontier-<preset>.png "
                             "and a helpfulness-at-matched-harm table (frontier.csv)")
    parser.add_argument("--against", default=None, metavar="METHOD",
                        help=f"pair every other method with METHOD on the same prompts (default {DEFAULT_AGAINST} "
                             "where a preset has it): each difference with its 95%% interval and half-width, the "
                             "smallest difference the board could detect (differences.csv)")
    parser.add_argument("--readme", default=None, metavar="FILE",
                        help=f"also write the preset's README (findings from {FINDINGS_TEMPLATE} beside it, tables, "
                             "plots, provenance); one leaderboard of one preset")
    try:
        args = parser.parse_args(argv)
        written = publish([Path(p) for p in args.leaderboards], Path(args.to),
                          Path(args.studies) if args.studies is not None else None,
                          against=args.against, readme=Path(args.readme) if args.readme else None)
    except BadInput as exc:
        print(f"d2o-bench publish: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk: nothing was replaced (the outputs land all or none)
        print(f"d2o-bench publish: error: {atomic.describe_os_error(exc)}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0
