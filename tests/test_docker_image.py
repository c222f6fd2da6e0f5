"""The CPU image, built from docker/Dockerfile on a debootstrapped bookworm base by a private
daemon, runs the whole pipeline offline and leaves a leaderboard the host user owns whose
provenance names the image.

Needs root, docker.io and debootstrap (skipped with the reason otherwise). Slow the first time:
the build installs the CPU lock (~5 minutes); the bookworm rootfs is cached across runs.
"""

from __future__ import annotations

import json
import os

import pytest

import docker_daemon
from docker_daemon import TEST_GID, TEST_UID

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="session")
def cpu_image(request):
    return docker_daemon.cpu_image_for_session(request)


def test_image_metadata(cpu_image):
    client, image_id = cpu_image
    config = client.images.get(image_id).attrs["Config"]
    assert config["Entrypoint"] == ["d2o-bench"]
    assert config["User"] == f"{TEST_UID}:{TEST_GID}", "image must not run as root"
    assert set(config["Volumes"]) >= {"/cache/d2o-bench", "/cache/huggingface", "/out"}
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"]
    assert len(labels["org.opencontainers.image.revision"]) == 40
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["D2O_BENCH_HOME"] == "/cache/d2o-bench" and env["HF_HOME"] == "/cache/huggingface"


def test_image_has_the_locked_cpu_stack(cpu_image):
    client, image_id = cpu_image
    output = client.containers.run(
        image_id, entrypoint=["python", "-c"], network_mode="none", remove=True,
        command=["import torch, deepspeed, transformers, harness; "
                 "print(torch.__version__, torch.version.cuda, deepspeed.__version__, transformers.__version__)"])
    torch_version, cuda, deepspeed_version, transformers_version = output.decode().split()[-4:]
    assert torch_version == "2.13.0+cpu" and cuda == "None"
    lock = open(os.path.join(os.path.dirname(__file__), "..", "docker", "requirements-cpu.lock")).read()
    assert f"deepspeed=={deepspeed_version} " in lock and f"transformers=={transformers_version} " in lock


def test_pipeline_runs_offline_and_records_the_image_digest(cpu_image, tmp_path):
    client, image_id = cpu_image
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.chown(out_dir, TEST_UID, TEST_GID)  # as a host user's own directory would be
    harness_home = docker_daemon.harness_home_for_tests()
    container = client.containers.run(
        image_id, command=["--method", "d2o", "--out", "/out"],
        user=f"{TEST_UID}:{TEST_GID}", network_mode="none",
        environment={"D2O_BENCH_IMAGE_DIGEST": image_id},
        volumes={str(out_dir): {"bind": "/out", "mode": "rw"},
                 str(harness_home): {"bind": "/cache/d2o-bench", "mode": "rw"}},
        detach=True)
    try:
        exit_code = container.wait(timeout=1500)["StatusCode"]
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(v=True, force=True)
    assert exit_code == 0, logs[-3000:]

    leaderboard_path = out_dir / "leaderboard.json"
    assert leaderboard_path.exists(), logs[-3000:]
    leaderboard = json.loads(leaderboard_path.read_text())
    entries = [entry for entry in leaderboard["entries"] if entry["method"] == "d2o"]
    assert entries, leaderboard
    assert entries[-1]["provenance"]["container_image_digest"] == image_id
    # Written by the container as the host user, so the host user can manage the results.
    for path in [leaderboard_path, *out_dir.rglob("*")]:
        assert path.stat().st_uid == TEST_UID, f"{path} owned by uid {path.stat().st_uid}"
