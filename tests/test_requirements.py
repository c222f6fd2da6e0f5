"""requirements/ holds pins that plain PyPI resolves, and pyproject's extras name what the README
tells users to install for each optional feature."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def test_no_local_version_label_in_requirements():
    # A local label such as torch==2.13.0+cpu exists only on the PyTorch index (or a wheel on
    # disk): PyPI cannot resolve it, so a fresh machine following the Quick start would fail.
    files = sorted((ROOT / "requirements").glob("*.txt"))
    assert files
    labelled = [f"{path.name}: {line}" for path in files for line in requirement_lines(path)
                if any("+" in str(spec.version) for spec in Requirement(line).specifier)]
    assert not labelled, f"local version labels in requirements/: {labelled}"


def test_every_requirements_line_is_an_exact_pin():
    for path in sorted((ROOT / "requirements").glob("*.txt")):
        for line in requirement_lines(path):
            specs = list(Requirement(line).specifier)
            assert len(specs) == 1 and specs[0].operator == "==", f"{path.name}: {line!r} is not pinned exactly"


def test_optional_features_are_named_extras_pinned_in_requirements():
    # `pip install -e .[lora]` (and the others) must install a version CI tests.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    pins = {}
    for line in requirement_lines(ROOT / "requirements" / "dev-cpu.txt"):
        requirement = Requirement(line)
        pins[re.sub(r"[-_.]+", "-", requirement.name).lower()] = str(next(iter(requirement.specifier)).version)
    for extra in ("lora", "tracking"):
        assert extra in extras, f"pyproject lacks the [{extra}] extra"
        for text in extras[extra]:
            requirement = Requirement(text)
            name = re.sub(r"[-_.]+", "-", requirement.name).lower()
            assert name in pins, f"[{extra}] needs {name}, which requirements/dev-cpu.txt does not pin"
            assert requirement.specifier.contains(pins[name]), (
                f"[{extra}] {text} excludes the CI pin {name}=={pins[name]}")
