"""What a tuning study costs: each complete run's stages, their wall time and peak memory.

`d2o-bench tune --state-dir` merges every complete run's stage summaries (duration, peak
resident memory) into `<state-dir>/costs.json` after each run, because run directories do not
outlive the machine that ran them; this module reads the ledger back as a table:

    python -m harness.study_costs leaderboards/real-smollm2/study-state
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# What each complete run's stages cost (wall time, peak resident memory), kept beside the state:
# the run directories do not outlive the machine, and the study states its cost from this file.
COSTS_FILE = "costs.json"


def _stage_costs(run_dir: Path) -> dict:
    from harness.rundir import RunLayout

    layout, costs = RunLayout(run_dir), {}
    status = layout.status.read()
    for stage in status.get("stages", {}):
        try:
            summary = layout.complete_marker(stage).read()
        except (OSError, ValueError):
            continue
        costs[stage] = {key: summary[key] for key in ("duration_s", "peak_rss_mb", "peak_rss_scope", "finished_at")
                        if key in summary}
    return {"method": status.get("method"), "stages": costs}


def save_costs(out: Path, state_dir: Path, run_dirs: list[Path]) -> None:
    """Merge the stage costs of `run_dirs` into `state_dir/costs.json` (runs recorded in an earlier
    session stay)."""
    from harness.rundir import write_json_atomic

    target = state_dir / COSTS_FILE
    try:
        ledger = json.loads(target.read_text())
    except (OSError, ValueError):
        ledger = {}
    for run_dir in run_dirs:
        key = str(run_dir.relative_to(out))
        if key not in ledger:
            ledger[key] = _stage_costs(run_dir)
    write_json_atomic(target, dict(sorted(ledger.items())))


def cost_report(state_dir: Path) -> str:
    """The study's recorded cost as Markdown: per method and stage, total wall time and the
    largest peak resident memory, over every run in `state_dir/costs.json`."""
    ledger = json.loads((state_dir / COSTS_FILE).read_text())
    per: dict[tuple[str, str], list[float]] = {}
    runs: dict[str, int] = {}
    for key, record in ledger.items():
        label = f"{key.split('/', 1)[0]}: {record.get('method')}"
        runs[label] = runs.get(label, 0) + 1
        for stage, cost in record.get("stages", {}).items():
            entry = per.setdefault((label, stage), [0.0, 0.0])
            entry[0] += cost.get("duration_s", 0.0)
            entry[1] = max(entry[1], cost.get("peak_rss_mb", 0.0))
    lines = ["| runs | stage | wall time (min, total) | peak resident memory (GB, largest) |",
             "|---|---|---:|---:|"]
    for (label, stage), (seconds, peak) in sorted(per.items()):
        lines.append(f"| {label} ({runs[label]}) | {stage} | {seconds / 60:.1f} | {peak / 1024:.2f} |")
    total = sum(seconds for seconds, _ in per.values())
    lines.append(f"\nWhole study so far: {len(ledger)} runs, {total / 3600:.2f} h of stage wall time.")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.study_costs STATE_DIR", file=sys.stderr)
        return 2
    try:
        print(cost_report(Path(args[0])))
    except (OSError, ValueError) as exc:
        print(f"study_costs: cannot read {Path(args[0]) / COSTS_FILE}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
