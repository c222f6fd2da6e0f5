"""RunLayout names every file of a run directory, and no other module spells one.

The layout's names are read from a `RunLayout` itself, so a file added there is searched for at
once. The search reads the code's string literals (ast): a literal equal to one of the layout's
file names, or a stage's directory joined onto a path with `/`, outside harness/rundir.py fails.
Tests may spell the files: they pin the on-disk format from outside.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.pipeline import STAGES
from harness.rundir import JsonArtifact, JsonlArtifact, RunDir, RunLayout

ROOT = Path(__file__).parents[1]
CODE = ("harness", "d2o", "baselines", "benchmarks")
LAYOUT_MODULE = ROOT / "harness" / "rundir.py"
# Folders of the same name in directories that are no run directory.
ELSEWHERE = {
    ("harness/models/tiny_build.py", "/ 'data'"): "the built world's data folder in the cache",
    ("harness/models/tiny_build.py", "/ 'policy'"): "the built world's base policy in the cache",
}


def _layout_paths(layout: RunLayout) -> list[Path]:
    paths = []
    for value in vars(layout).values():
        if isinstance(value, (JsonArtifact, JsonlArtifact)):
            paths.append(value.path)
        elif isinstance(value, Path) and value != layout.root:
            paths.append(value)
    stage = STAGES[0]
    return paths + [layout.complete_marker(stage).path, layout.checkpoint_dir(stage)]


def layout_names() -> tuple[set[str], set[str]]:
    """(file names with a suffix, directory names) that the layout puts in a run directory."""
    layout = RunLayout(Path("/run"))
    parts = {part for path in _layout_paths(layout) for part in path.relative_to(layout.root).parts}
    files = {part for part in parts if "." in part}
    return files, (parts - files) | set(STAGES)


def spellings(path: Path, files: set[str], directories: set[str]) -> list[str]:
    """Where a module spells a run-directory file, or joins a run-directory folder onto a path."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Constant) and node.value in files:
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
        if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
                and node.right.value in directories):
            found.append(f"{path.name}:{node.lineno}: / {node.right.value!r}")
    return sorted(found)


def test_the_layout_knows_the_run_files():
    files, directories = layout_names()
    assert {"run.json", "run.lock", "train_examples.jsonl", "samples.json", "metrics.json"} <= files
    assert {"COMPLETE", "checkpoints", "policy", "score"} <= directories
    layout = RunLayout(Path("/run"))
    for path in _layout_paths(layout):
        first = path.relative_to(layout.root).parts[0]
        assert first in STAGES or first in ("run.json", "run.lock", "checkpoints"), path


def searched_modules() -> list[Path]:
    return [path for package in CODE for path in sorted((ROOT / package).rglob("*.py")) if path != LAYOUT_MODULE]


def test_no_module_but_the_layout_spells_a_run_directory_file():
    files, directories = layout_names()
    found = []
    for path in searched_modules():
        module = str(path.relative_to(ROOT))
        found += [f"{path.parent.relative_to(ROOT)}/{spot}" for spot in spellings(path, files, directories)
                  if (module, spot.split(": ", 1)[1]) not in ELSEWHERE]
    assert not found, "run-directory paths built outside harness/rundir.py: " + "; ".join(found)


def test_the_search_covers_every_stage_module_and_the_orchestrator():
    """The stages (harness/stages/), the orchestrator, the plan and the caches are where a run
    directory's files are most likely spelled again."""
    searched = {str(path.relative_to(ROOT)) for path in searched_modules()}
    stages = {str(path.relative_to(ROOT)) for path in (ROOT / "harness" / "stages").glob("*.py")}
    assert {f"harness/stages/{stage}.py" for stage in STAGES} <= stages
    assert stages | {"harness/pipeline.py", "harness/plan.py", "harness/cache.py"} <= searched
    # The LoRA adapter the train stage saves before merging is a layout name too.
    assert "adapter" in layout_names()[1]


def test_the_search_finds_a_spelled_path(tmp_path):
    module = tmp_path / "reader.py"
    module.write_text('import json\n\n\ndef read(root):\n    return json.loads((root / "score" / "metrics.json").read_text())\n')
    assert spellings(module, *layout_names()) == ["reader.py:5: 'metrics.json'", "reader.py:5: / 'score'"]


@pytest.mark.parametrize("kind", [JsonArtifact, JsonlArtifact])
def test_artifacts_round_trip_and_write_their_folder(tmp_path, kind):
    value = [{"prompt": "p", "text": "t"}]
    artifact = kind(tmp_path / "stage" / ("x.jsonl" if kind is JsonlArtifact else "x.json"))
    assert not artifact.exists()
    artifact.write(value)
    assert artifact.exists() and artifact.read() == value
    assert [p.name for p in artifact.path.parent.iterdir()] == [artifact.path.name]  # no temp file left


def test_the_run_dir_keeps_its_status_and_markers_where_the_layout_says(tmp_path):
    run_dir = RunDir(tmp_path / "r", "r", ["data"], {"method": "d2o"})
    run_dir.mark("data", "complete", {"rows": 3})
    layout = RunLayout.of(tmp_path, "r")
    assert layout.status.read()["complete"] is True
    assert layout.complete_marker("data").read() == {"rows": 3}
