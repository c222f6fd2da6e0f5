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
