"""The real study's budget rule (docs/REAL_STUDY.md), applied to the positive control's runs.

    python -m harness.budget_rule BOARD.json [--metric harmful_unsafe_rate] [--method sft]

BOARD holds the positive control's validation runs at several step counts (`train.max_steps`)
and the base policy's entry. The budget is the smallest step count at which the control's
validation metric (lower is better) lies below the lower end of the base's 95% interval; if no
count does, the largest, flagged. Prints one line per step count and the verdict; exit 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import BadInput


def apply_rule(entries: list[dict], metric: str, method: str) -> dict:
    """{"steps": S, "moved": bool, "rows": [...]} from leaderboard entries (validation runs)."""
    base = [e for e in entries if e["method"] == "base" and metric in e.get("metrics", {})]
    if not base:
        raise BadInput(f"budget rule: no base entry with {metric} on the board")
    floor = base[0]["metrics"][metric]["ci_low"]
    rows = []
    for entry in entries:
        if entry["method"] != method:
            continue
        config = entry["provenance"]["config"]
        if config["data"]["eval_split"] != "validation":
            raise BadInput(f"budget rule: {entry['run_id']} was scored on {config['data']['eval_split']}; "
                           "the rule reads validation runs only")
        record = entry["metrics"].get(metric)
        if record is None:
            raise BadInput(f"budget rule: {entry['run_id']} has no {metric}")
        rows.append({"steps": config["train"]["max_steps"], "value": record["value"],
                     "ci": [record["ci_low"], record["ci_high"]], "moved": record["value"] < floor})
    if not rows:
        raise BadInput(f"budget rule: no {method} entry on the board")
    rows.sort(key=lambda r: r["steps"])
    moved = [r for r in rows if r["moved"]]
    return {"metric": metric, "base_ci_low": floor, "rows": rows,
            "steps": moved[0]["steps"] if moved else rows[-1]["steps"], "moved": bool(moved)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.budget_rule", description=__doc__.split("\n\n")[0])
    parser.add_argument("board", type=Path)
    parser.add_argument("--metric", default="harmful_unsafe_rate")
    parser.add_argument("--method", default="sft")
    args = parser.parse_args(argv)
    try:
        entries = json.loads(args.board.read_text())["entries"]
        verdict = apply_rule(entries, args.metric, args.method)
    except BadInput as exc:
        print(f"budget rule: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"budget rule: error: {args.board}: not a readable leaderboard ({type(exc).__name__})", file=sys.stderr)
        return 2
    for row in verdict["rows"]:
        print(f"{args.method} at {row['steps']:>4} steps: {args.metric} {row['value']:.3f} "
              f"[{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]  {'below' if row['moved'] else 'not below'} "
              f"the base's interval (lower end {verdict['base_ci_low']:.3f})")
    print(f"budget: {verdict['steps']} steps" + ("" if verdict["moved"] else
          " (the positive control did not move the harm objective at any step count tried)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
