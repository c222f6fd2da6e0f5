"""docker/build.sh, the one command that builds the image the README's `docker run d2o-bench`
runs: its logic is checked against a stand-in `docker` client that records what it is asked
(no daemon). tests/test_docker_image.py builds and runs a real image where a daemon can start."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "build.sh"
DIGEST = "debian@sha256:" + "ab" * 32

STUB = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$DOCKER_LOG"
if [[ "$1 $2" == "image inspect" ]]; then echo "${STUB_DIGEST}"; fi
exit 0
"""


def run_build(tmp_path, *args, env=None):
    stub = tmp_path / "docker"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "docker.log"
    environment = {**os.environ, "DOCKER": str(stub), "DOCKER_LOG": str(log), "STUB_DIGEST": DIGEST, **(env or {})}
    if "BASE_IMAGE" not in (env or {}):
        environment.pop("BASE_IMAGE", None)  # the default base, whatever the caller's shell sets
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment,
                            cwd=tmp_path)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def build_args(call: str) -> dict[str, str]:
    words = shlex.split(call)
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--build-arg")


def tags(call: str) -> list[str]:
    words = shlex.split(call)
    return [words[i + 1] for i, w in enumerate(words) if w == "-t"]


def test_the_default_builds_the_cpu_image_tagged_as_the_readme_runs_it(tmp_path):
    result, calls = run_build(tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls[0] == "pull --quiet debian:bookworm-slim"
    assert calls[1] == "image inspect --format {{index .RepoDigests 0}} debian:bookworm-slim"
    build = calls[2]
    assert build.startswith("build -f docker/Dockerfile ") and build.endswith(" .")
    assert tags(build) == ["d2o-bench", "d2o-bench:cpu"]
    args = build_args(build)
    # The base pinned by the digest the registry served: no placeholder for anyone to fill in.
    assert args["BASE_IMAGE"] == DIGEST and "<" not in build
    assert args["LOCK_FILE"] == "docker/requirements-cpu.lock" and args["DS_BUILD_OPS"] == "0"
    if os.getuid() != 0:
        assert args["UID"] == str(os.getuid()) and args["GID"] == str(os.getgid())
    else:  # built by root: the Dockerfile's unprivileged default user, never root
        assert "UID" not in args and "GID" not in args
    assert re.match(r"^[0-9a-f]{40}(-dirty)?$", args["GIT_COMMIT"])
    readme = (ROOT / "README.md").read_text()
    assert "docker run d2o-bench --method d2o" in readme and "docker/build.sh" in readme


def test_cuda_keeps_the_dockerfiles_pinned_base_and_passes_extra_arguments(tmp_path):
    result, calls = run_build(tmp_path, "cuda", "--no-cache")
    assert result.returncode == 0, result.stderr
    (build,) = calls  # nothing pulled: the Dockerfile pins the CUDA base by digest
    assert tags(build) == ["d2o-bench", "d2o-bench:cuda"] and "--no-cache" in shlex.split(build)
    args = build_args(build)
    assert "BASE_IMAGE" not in args and "LOCK_FILE" not in args  # the Dockerfile's CUDA defaults


def test_a_base_image_given_is_used_as_is(tmp_path):
    result, calls = run_build(tmp_path, "cpu", env={"BASE_IMAGE": "local/bookworm@sha256:" + "cd" * 32})
    assert result.returncode == 0, result.stderr
    (build,) = calls
    assert build_args(build)["BASE_IMAGE"] == "local/bookworm@sha256:" + "cd" * 32


def test_every_build_argument_is_one_the_dockerfile_declares():
    declared = set(re.findall(r"^ARG (\w+)", (ROOT / "docker" / "Dockerfile").read_text(), re.M))
    named = set(re.findall(r"--build-arg \"?(\w+)=", SCRIPT.read_text()))
    assert named and named <= declared, f"build.sh passes {named - declared}, which docker/Dockerfile lacks"


def test_print_mode_shows_the_commands_without_running_docker(tmp_path):
    result, calls = run_build(tmp_path, "cpu", env={"D2O_BUILD_PRINT": "1", "DOCKER": "no-such-docker"})
    assert result.returncode == 0, result.stderr
    assert not calls
    lines = result.stdout.splitlines()
    assert lines[0] == "no-such-docker pull debian:bookworm-slim"
    assert lines[1].startswith("no-such-docker build -f docker/Dockerfile -t d2o-bench -t d2o-bench:cpu ")


@pytest.mark.parametrize("args, env, fragment", [
    (["gpu"], {}, "unknown variant 'gpu': cpu or cuda"),
    ([], {"DOCKER": "/nonexistent/docker"}, "'/nonexistent/docker' not found"),
    ([], {"STUB_DIGEST": "<no value>"}, "has no registry digest"),
    ([], {"IMAGE": "Bad Name"}, "IMAGE 'Bad Name' is not an image name"),
])
def test_bad_input_is_one_line_and_exit_2_and_builds_nothing(tmp_path, args, env, fragment):
    result, calls = run_build(tmp_path, *args, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and fragment in result.stderr
    assert not any(call.startswith("build") for call in calls)
