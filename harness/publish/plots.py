"""The plots of a published leaderboard, readable at their published size with every method of a
preset, so nothing is drawn over anything else: the harm/help plot is a forest plot (one line per
method, labelled on the axis, no legend), the loss curves and the tuning frontier are small
multiples (one panel per method; the frontier on shared axes with one legend under the panels).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional

from harness.publish.files import write_atomic
from harness.publish.pooling import HARMFULNESS_METRICS, HELPFULNESS_METRICS, arrow

# Published width in inches at 100 dpi: the page shows plots at their pixel size up to 100% of
# the column, so a figure this wide is read unscaled on a laptop screen.
WIDTH = 9.6
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def plot_label(text: str) -> str:
    # matplotlib reads $...$ as mathtext; a run's name is plain text.
    return str(text).replace("$", r"\$")


def error_bar(summary: dict) -> list[list[float]]:
    """Asymmetric [[below], [above]] bar from the summary's interval (none when it has no interval)."""
    if summary.get("low") is None or summary.get("high") is None:
        return [[0.0], [0.0]]
    return [[max(summary["mean"] - summary["low"], 0.0)], [max(summary["high"] - summary["mean"], 0.0)]]


def save_figure(figure, path: Path) -> None:
    buffer = io.BytesIO()
    # bbox_inches="tight" keeps a legend outside the axes inside the image.
    figure.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.15)
    write_atomic(path, buffer.getvalue())


def _metric_present(rows: list[dict], names: tuple[str, ...]) -> Optional[str]:
    """The first of `names` every row has, else the first some row has."""
    return next((n for n in names if all(r["metrics"].get(n) for r in rows)), None) or \
        next((n for n in names if any(r["metrics"].get(n) for r in rows)), None)


def plot_tradeoff(rows: list[dict], path: Path) -> bool:
    """Harmfulness beside helpfulness, one line per method (a forest plot: the value and its 95%
    interval), methods ordered by harm, the base policy's value as a dashed line: intervals that
    overlap stay readable where a scatter of crosses would pile up. False if nothing to plot."""
    harm, helpful = _metric_present(rows, HARMFULNESS_METRICS), _metric_present(rows, HELPFULNESS_METRICS)
    points = [r for r in rows if harm and helpful and r["metrics"].get(harm) and r["metrics"].get(helpful)
              and r.get("headline", True)]
    if not points:
        return False
    points.sort(key=lambda r: (r["metrics"][harm]["mean"], r["label"]))
    plt = _pyplot()
    figure, panels = plt.subplots(1, 2, sharey=True, figsize=(WIDTH * 0.8, 1.4 + 0.3 * len(points)), dpi=DPI)
    try:
        for axes, metric, higher in ((panels[0], harm, False), (panels[1], helpful, True)):
            for index, row in enumerate(points):
                summary = row["metrics"][metric]
                base = row["method"] == "base"
                axes.errorbar(summary["mean"], index, xerr=error_bar(summary), fmt="s" if base else "o",
                              color="grey" if base else "C0", capsize=3, markersize=5)
                if base:
                    axes.axvline(summary["mean"], color="grey", linestyle="--", linewidth=1, zorder=0)
            axes.set_xlabel(f"{metric} ({arrow(higher)} better)")
            axes.grid(axis="x", alpha=0.3)
        panels[0].set_yticks(range(len(points)), [plot_label(r["label"]) for r in points])
        panels[0].invert_yaxis()
        figure.suptitle(plot_label(f"harmfulness and helpfulness, 95% intervals — preset {points[0]['preset']}"))
        figure.tight_layout()
        save_figure(figure, path)
    finally:
        plt.close(figure)
    return True


# Per-step diagnostics drawn under the loss when runs recorded them: (trajectory key, axis label).
DIAGNOSTIC_PANELS = (("diag/sigmoid_neg_margin", "σ(−u)"), ("diag/grad_share_anchor", "anchor share of ‖∇‖"))


def plot_loss_curves(rows: list[dict], path: Path) -> bool:
    """Training loss per method as small multiples, each method on its own scale (methods optimise
    different losses, so one shared axis flattens most of them), every run (seed) a line; under
    each method's loss, each per-step diagnostic some run recorded (D²O's σ(−u) and its anchor
    term's gradient share). False if no run recorded a curve."""
    runs = [(row, run["provenance"]["train"]) for row in rows for run in row["runs"]
            if run["status"] == "complete" and (run["provenance"].get("train") or {}).get("loss_curve")]
    if not runs:
        return False
    plt = _pyplot()
    labels = list(dict.fromkeys(row["label"] for row, _ in runs))
    panels = [(key, label) for key, label in DIAGNOSTIC_PANELS
              if any(key in step for _, train in runs for step in train.get("diagnostics") or [])]
    quantities = [(None, "training loss")] + panels
    columns = min(len(labels), 4)
    blocks = math.ceil(len(labels) / columns)
    width = WIDTH / 4 if columns == 4 else min(WIDTH / columns, 4.0)
    figure, grid = plt.subplots(blocks * len(quantities), columns, dpi=DPI, squeeze=False,
                                figsize=(width * columns, 2.0 * blocks * len(quantities) + 0.6))
    try:
        for index, label in enumerate(labels):
            block, column = divmod(index, columns)
            colour = f"C{index % 10}"
            for offset, (key, ylabel) in enumerate(quantities):
                axes = grid[block * len(quantities) + offset][column]
                drawn = False
                for row, train in (pair for pair in runs if pair[0]["label"] == label):
                    if key is None:
                        points = [(step, loss) for step, loss in train["loss_curve"] if loss is not None]
                    else:
                        points = [(d["step"], d[key]) for d in train.get("diagnostics") or [] if key in d]
                    if points:
                        axes.plot([p[0] for p in points], [p[1] for p in points], color=colour, alpha=0.8,
                                  linewidth=1.2, marker="." if len(points) < 20 else None)
                        drawn = True
                if key is None:
                    axes.set_title(plot_label(label), fontsize="medium")
                elif not drawn:
                    axes.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=axes.transAxes,
                              color="grey", fontsize="small")
                axes.set_ylabel(ylabel, fontsize="small")
                axes.tick_params(labelsize="small")
                axes.grid(alpha=0.3)
                if offset == len(quantities) - 1:
                    axes.set_xlabel("step", fontsize="small")
        for index in range(len(labels), blocks * columns):
            block, column = divmod(index, columns)
            for offset in range(len(quantities)):
                grid[block * len(quantities) + offset][column].set_visible(False)
        figure.suptitle(plot_label(f"training loss per method (one line per run) — preset {rows[0]['preset']}"))
        figure.tight_layout()
        save_figure(figure, path)
    finally:
        plt.close(figure)
    return True


def plot_frontier(studies: list[dict], rows: list[dict], path: Path) -> bool:
    """Validation harm (x) against helpfulness (y), one panel per method on shared axes: its trials,
    its Pareto front (step line), its selected trial, the base policy, and the test result of the
    method's leaderboard rows with 95% interval bars. One legend for the marks, under the panels."""
    if not any(t["plotted"] for s in studies for t in s["trials"]):
        return False
    plt = _pyplot()
    from matplotlib.lines import Line2D

    methods = sorted({s["method"] for s in studies})
    columns = min(len(methods), 4)
    lines = math.ceil(len(methods) / columns)
    harm_name, help_name = studies[0]["objectives"]["harm"], studies[0]["objectives"]["help"]
    panel = WIDTH / 4 if columns == 4 else min(WIDTH / columns, 4.0)
    figure, grid = plt.subplots(lines, columns, figsize=(panel * columns, panel * 0.95 * lines + 0.9), dpi=DPI,
                                sharex=True, sharey=True, squeeze=False)
    try:
        for index, method in enumerate(methods):
            axes = grid[index // columns][index % columns]
            colour = f"C{index % 10}"
            for study in (s for s in studies if s["method"] == method):
                points = {t["number"]: t for t in study["trials"] if t["plotted"]}
                axes.scatter([t["harm"]["value"] for t in points.values()],
                             [t["help"]["value"] for t in points.values()], s=22, alpha=0.5, color=colour)
                front = sorted((points[n] for n in study["pareto_front"] if n in points),
                               key=lambda t: (t["harm"]["value"], t["help"]["value"]))
                if front:
                    axes.plot([t["harm"]["value"] for t in front], [t["help"]["value"] for t in front], color=colour,
                              drawstyle="steps-post", linewidth=1.5)
                chosen = points.get(study["selected_trial"])
                if chosen is not None:
                    axes.scatter([chosen["harm"]["value"]], [chosen["help"]["value"]], marker="*", s=200,
                                 color=colour, edgecolors="black", linewidths=0.8, zorder=5)
                if study["base_validation"] is not None:
                    axes.scatter([study["base_validation"][0]], [study["base_validation"][1]], marker="X", s=70,
                                 color="grey", zorder=4)
            for row in (r for r in rows if r["method"] == method):
                x, y = row["metrics"].get(harm_name), row["metrics"].get(help_name)
                if x is not None and y is not None:
                    axes.errorbar(x["mean"], y["mean"], xerr=error_bar(x), yerr=error_bar(y), fmt="D",
                                  color=colour, markeredgecolor="black", capsize=4, zorder=6)
            axes.set_title(plot_label(method), fontsize="medium")
            axes.grid(alpha=0.3)
        for index in range(len(methods), lines * columns):
            grid[index // columns][index % columns].set_visible(False)
        for column in range(columns):
            # The lowest panel of each column carries the x axis (with shared axes matplotlib
            # labels only the last row, which is empty under a short last row).
            lowest = grid[(len(methods) - 1 - column) // columns][column]
            lowest.tick_params(labelbottom=True)
            lowest.set_xlabel(f"{harm_name} ({arrow(False)})", fontsize="small")
        for axes in (line[0] for line in grid):
            axes.set_ylabel(f"{help_name} ({arrow(True)})", fontsize="small")
        # One legend for what the marks mean, the colour being the panel's method.
        marks = [Line2D([], [], linestyle="", marker="o", color="C0", alpha=0.5, label="trial (validation)"),
                 Line2D([], [], color="C0", drawstyle="steps-post", label="Pareto front (validation)"),
                 Line2D([], [], linestyle="", marker="*", markersize=13, color="C0", markeredgecolor="black",
                        label="selected trial"),
                 Line2D([], [], linestyle="", marker="X", markersize=8, color="grey", label="base (validation)"),
                 Line2D([], [], linestyle="", marker="D", color="C0", markeredgecolor="black",
                        label="test result, 95% interval")]
        figure.suptitle(plot_label(f"tuning frontier — preset {studies[0]['preset']}"))
        figure.tight_layout(rect=(0, 0.09 if lines == 1 else 0.05, 1, 1))
        figure.legend(handles=marks, loc="lower center", ncol=len(marks) if columns >= 3 else 2,
                      fontsize="small", frameon=False)
        save_figure(figure, path)
    finally:
        plt.close(figure)
    return True
