"""The README's Quick start holds exactly two commands, and CI runs the test one verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, flags=re.S)


def test_quick_start_has_a_run_command_and_a_test_command():
    commands = quick_start_commands()
    assert len(commands) == 2
    run, test = commands
    assert "\n" not in run and "\n" not in test
    assert run.startswith("python3 -m venv") and run.endswith("d2o-bench --method d2o")
    assert test.startswith("python3 -m venv") and test.endswith("-m pytest")
    assert "torch" not in run  # the pinned CPU torch comes from the requirements file


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quick_start_commands()[1] in ci


def test_the_readme_is_a_front_door():
    """At most ~12 KB, every link resolves, and no result is hand-copied into it: numbers with
    intervals live in the generated leaderboards/<preset>/README.md pages only."""
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12_288, f"README.md is {len(text.encode())} bytes; move detail to docs/"
    for section in ("## Quick start", "## A run's stages", "## How to read a leaderboard", "## Current verdicts"):
        assert section in text
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links {target}, which does not exist"
    # A result cell: a value followed by its interval, in a table row or in prose.
    copied = [line for line in text.splitlines() if re.search(r"-?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]", line)
              and "0.076 [0.007, 0.252]" not in line]  # the one worked example of the cell format
    assert not copied, f"results copied by hand into README.md: {copied[:2]}"


def test_no_result_table_is_hand_copied_into_the_docs():
    """A table row with a value and its interval belongs to a board's generated pages only."""
    for path in sorted((ROOT / "docs").glob("*.md")):
        rows = [line for line in path.read_text().splitlines()
                if line.startswith("|") and re.search(r"\d\.\d{3} \[\d", line)]
        assert not rows, f"{path.name} holds hand-copied result rows: {rows[:1]}"


def test_the_reliability_table_moved_to_docs_with_its_tests():
    """The "What survives what" table, each failure with the test that shows it, lives in docs/."""
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`tests/" in line]
    assert len(rows) >= 15
    for test in sorted(set(re.findall(r"`(tests/test_\w+\.py)`", text))):
        assert (ROOT / test).is_file(), f"docs/RELIABILITY.md names {test}, which does not exist"
    assert "RELIABILITY.md" in (ROOT / "README.md").read_text()
