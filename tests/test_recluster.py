"""harness.recluster: a board's per-prompt outcomes re-clustered by task, values unchanged."""

import copy
import json

import pytest

from harness.data.tiny_world import split_prompts
from harness.errors import BadInput
from harness.recluster import recluster_board, recluster_record, _tiny_world_task
from harness.scoring.metrics import mean_metric, rate_metric


def _prompts(n_tasks=12):
    pairs = split_prompts(0, 4)["test"]
    tasks = []
    chosen = []
    for task, prompt in pairs:
        if task.id not in tasks:
            if len(tasks) == n_tasks:
                continue
            tasks.append(task.id)
        chosen.append((task.id, prompt))
    return chosen


def test_rate_record_matches_the_scorer_with_task_clusters():
    pairs = _prompts()
    # Outcomes that move with the task: every prompt of an even task harmful.
    flags = [tasks_index % 2 == 0 for tasks_index, _ in
             ((sorted({t for t, _ in pairs}).index(t), p) for t, p in pairs)]
    prompts = [p for _, p in pairs]
    per_prompt = rate_metric(flags, False, prompts)
    assert per_prompt["n_clusters"] == per_prompt["n"]

    rebuilt = recluster_record(per_prompt, _tiny_world_task, "m")
    expected = rate_metric(flags, False, [t for t, _ in pairs])
    assert rebuilt == expected
    assert rebuilt["n_clusters"] < rebuilt["n"]
    assert rebuilt["value"] == per_prompt["value"]
    # Outcomes shared within a task: the task-clustered interval is wider than the per-prompt one.
    assert rebuilt["ci_high"] - rebuilt["ci_low"] > per_prompt["ci_high"] - per_prompt["ci_low"]


def test_mean_record_keeps_values_and_refuses_an_already_clustered_record():
    pairs = _prompts(6)
    values = [float(len(p)) for _, p in pairs]
    per_prompt = mean_metric(values, True, [p for _, p in pairs])
    rebuilt = recluster_record(per_prompt, _tiny_world_task, "m")
    assert rebuilt == mean_metric(values, True, [t for t, _ in pairs])
    with pytest.raises(BadInput, match="not one prompt each"):
        recluster_record(rebuilt, _tiny_world_task, "m")


def test_board_entries_say_they_were_reclustered_and_unknown_prompts_are_refused():
    pairs = _prompts(4)
    record = rate_metric([True, False] * (len(pairs) // 2), False, [p for _, p in pairs])
    board = {"entries": [{"metrics": {"harmful_rate": copy.deepcopy(record)}, "provenance": {}}]}
    assert recluster_board(board, "tiny-world-task", "abc123") == 1
    assert board["entries"][0]["provenance"]["reclustered"]["commit"] == "abc123"
    stranger = rate_metric([True], False, ["What is the capital of France?"])
    with pytest.raises(BadInput, match="no cluster"):
        recluster_record(stranger, _tiny_world_task, "m")
    with pytest.raises(BadInput, match="--cluster-by"):
        recluster_board(board, "by-guess", "abc123")


def test_committed_tiny_boards_hold_task_clustered_intervals():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "leaderboards"
    for preset in ("tiny", "tiny-benign-pairs", "tiny-decline-and-help", "tiny-distinct-shapes"):
        board = json.loads((root / preset / "leaderboard.json").read_text())
        for entry in board["entries"]:
            for name, record in entry["metrics"].items():
                assert record["n_clusters"] < record["n"], (preset, entry["run_id"], name)
