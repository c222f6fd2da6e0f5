"""Recompute a board's intervals with each prompt clustered by its task, from the outcomes it holds.

Entries scored before b5183fe dropped each prompt's task before computing intervals: every
metric's `per_cluster` holds one prompt per cluster (`n_clusters == n`), so the intervals resample
prompts and are too narrow where prompts of one task move together. Those entries still hold each
prompt's outcome (a rate's 0/1, a mean's value: every cluster has count 1), so the task-clustered
record the scorer writes today can be rebuilt exactly, without retraining or generating: the same
per-prompt values, in the same order, through the same `rate_metric` / `mean_metric` with the
task as the cluster. Values do not change; intervals, `stderr`, `n_clusters` and `per_cluster`
do. Each rewritten entry says so in `provenance.reclustered` (the commit and the rule).

    python -m harness.recluster leaderboards/tiny/leaderboard.json --cluster-by tiny-world-task

`--cluster-by` names a prompt → cluster rule from `CLUSTER_RULES`; the board is rewritten in
place through the leaderboard writer's validation, and a record whose clusters are not one
prompt each (already clustered, or pooled) is refused rather than guessed at.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional

from harness.errors import BadInput


def _tiny_world_task(prompt: str) -> Optional[str]:
    from harness.data.tiny_world import task_for_prompt

    task = task_for_prompt(prompt)
    return task.id if task else None


# Name → rule giving a prompt's cluster (None: the prompt is not one the rule knows).
CLUSTER_RULES: dict[str, Callable[[str], Optional[str]]] = {"tiny-world-task": _tiny_world_task}


def recluster_record(record: dict, cluster_of: Callable[[str], Optional[str]], where: str) -> dict:
    """The metric record rebuilt with clusters from `cluster_of`, its values unchanged."""
    from harness.scoring.metrics import mean_metric, rate_metric

    per_prompt = record.get("per_cluster")
    if not isinstance(per_prompt, dict) or not per_prompt:
        raise BadInput(f"{where}: no per_cluster outcomes to recluster")
    if record.get("n_clusters") != record.get("n") or any(count != 1 for _, count in per_prompt.values()):
        raise BadInput(f"{where}: clusters are not one prompt each (already clustered?); refusing to guess "
                       "its per-prompt outcomes")
    clusters = []
    for prompt in per_prompt:
        cluster = cluster_of(prompt)
        if cluster is None:
            raise BadInput(f"{where}: prompt {prompt[:60]!r} belongs to no cluster under the rule")
        clusters.append(cluster)
    values = [value for value, _ in per_prompt.values()]
    kind = record.get("kind")
    if kind == "rate":
        rebuilt = rate_metric([bool(v) for v in values], record["higher_is_better"], clusters,
                              level=record.get("ci_level", 0.95))
    elif kind == "mean":
        rebuilt = mean_metric(values, record["higher_is_better"], clusters, level=record.get("ci_level", 0.95))
    else:
        raise BadInput(f"{where}: unknown record kind {kind!r}")
    if abs(rebuilt["value"] - record["value"]) > 1e-9:
        raise BadInput(f"{where}: value {record['value']} would change to {rebuilt['value']}; refusing")
    return rebuilt


def recluster_board(board: dict, rule: str, commit: str) -> int:
    """Rewrite every metric of every entry in `board` (in place); returns how many were rebuilt."""
    if rule not in CLUSTER_RULES:
        raise BadInput(f"--cluster-by must be one of {', '.join(CLUSTER_RULES)}, got {rule!r}")
    cluster_of, rebuilt = CLUSTER_RULES[rule], 0
    for index, entry in enumerate(board.get("entries") or []):
        for name, record in (entry.get("metrics") or {}).items():
            entry["metrics"][name] = recluster_record(record, cluster_of, f"entries[{index}].metrics.{name}")
            rebuilt += 1
        entry.setdefault("provenance", {})["reclustered"] = {
            "rule": rule, "commit": commit, "by": "harness/recluster.py",
            "note": "intervals recomputed from this entry's per-prompt outcomes with prompts clustered by "
                    "the rule; values unchanged, training and generation as recorded above"}
    return rebuilt


def _head_commit() -> str:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise BadInput("cannot read the git commit; run it from a checkout") from None
    if dirty:
        raise BadInput("the tree has uncommitted changes; commit first so the entries name a real commit")
    return commit


def main(argv: Optional[list[str]] = None) -> int:
    from harness.leaderboard import check_leaderboard, read_leaderboard
    from harness.rundir import write_json_atomic

    parser = argparse.ArgumentParser(prog="python -m harness.recluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("board", help="leaderboard.json to rewrite in place")
    parser.add_argument("--cluster-by", required=True, help=f"cluster rule: {', '.join(CLUSTER_RULES)}")
    args = parser.parse_args(argv)
    try:
        path = Path(args.board)
        board = read_leaderboard(path)
        count = recluster_board(board, args.cluster_by, _head_commit())
        check_leaderboard(json.loads(json.dumps(board)), str(path))
        write_json_atomic(path, board)
    except BadInput as exc:
        print(f"recluster: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {count} metric records reclustered by {args.cluster_by}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
