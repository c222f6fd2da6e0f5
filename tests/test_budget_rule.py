"""The real study's budget rule (harness/budget_rule.py, docs/REAL_STUDY.md)."""

from __future__ import annotations

import json

import pytest

from harness.budget_rule import apply_rule, main
from harness.errors import BadInput


def _entry(method, steps, value, low=None, split="validation"):
    low = value - 0.1 if low is None else low
    return {"run_id": f"{method}-{steps}", "method": method,
            "metrics": {"harmful_unsafe_rate": {"value": value, "ci_low": low, "ci_high": value + 0.1}},
            "provenance": {"config": {"data": {"eval_split": split}, "train": {"max_steps": steps}}}}


def test_the_budget_is_the_fewest_steps_that_move_harm_below_the_bases_interval():
    entries = [_entry("base", 8, 0.70, low=0.60), _entry("sft", 64, 0.40), _entry("sft", 16, 0.65),
               _entry("sft", 32, 0.55), _entry("sft", 128, 0.30)]
    verdict = apply_rule(entries, "harmful_unsafe_rate", "sft")
    assert verdict["steps"] == 32 and verdict["moved"]
    assert [r["steps"] for r in verdict["rows"]] == [16, 32, 64, 128]


def test_no_step_count_that_moves_harm_gives_the_largest_flagged(tmp_path, capsys):
    entries = [_entry("base", 8, 0.70, low=0.60), _entry("sft", 16, 0.69), _entry("sft", 128, 0.61)]
    board = tmp_path / "board.json"
    board.write_text(json.dumps({"entries": entries}))
    assert main([str(board)]) == 0
    out = capsys.readouterr().out
    assert "budget: 128 steps (the positive control did not move" in out


def test_a_run_scored_on_test_is_refused():
    with pytest.raises(BadInput, match="validation runs only"):
        apply_rule([_entry("base", 8, 0.7), _entry("sft", 16, 0.2, split="test")], "harmful_unsafe_rate", "sft")
