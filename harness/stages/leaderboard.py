"""The leaderboard stage: the run's entries (and its base entry) appended to the leaderboard."""

from __future__ import annotations

from harness.stages.context import RunContext


def run(ctx: RunContext) -> dict:
    from harness.entries import build_entries
    from harness.leaderboard import append_entries

    entries = build_entries(ctx)
    path = ctx.out_dir / "leaderboard.json"
    append_entries(path, entries)
    return {"leaderboard": str(path), "run_ids": [e["run_id"] for e in entries]}
