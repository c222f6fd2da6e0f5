"""Run `d2o-bench` jobs in containers of the pinned image through the Docker SDK.

Each job gets its own container: no network, the caller's UID/GID (so files in the mounted output
directory belong to the user who ran the executor), one GPU of its own when GPUs are given, and
`D2O_BENCH_IMAGE_DIGEST` naming the image. A failing job is recorded, never fatal to the others;
every container is removed afterwards.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.errors import BadInput, RunFailure
from harness.executors.jobs import (
    CONTAINER_CACHE_DIR,
    CONTAINER_OUT_DIR,
    IMAGE_DIGEST_ENV,
    ContainerJob,
    JobResult,
    validate_jobs,
)

_console_lock = threading.Lock()


def image_digest(image) -> str:
    """The registry digest (repo@sha256:...) of a pulled image, else the local image id.

    A repo digest identifies the same bytes on every machine that pulls it; a locally built,
    never-pushed image has only its id (sha256 of its config), which is still content-addressed.
    """
    repo_digests = image.attrs.get("RepoDigests") or []
    return sorted(repo_digests)[0] if repo_digests else image.id


def run_jobs_in_containers(
    jobs: list[ContainerJob],
    *,
    image: str,
    out_dir: Path,
    concurrency: int,
    gpus: list[int] | None,
    docker_client=None,
    cache_dir: Path | None = None,
    user: str | None = None,
    echo: bool = True,
) -> list[JobResult]:
    """Run every job to completion; results come back in the order of `jobs`.

    `out_dir` is mounted at /out (jobs should pass `--out /out`) and holds `logs/<job>.log`.
    `cache_dir`, when given, is mounted at /cache/d2o-bench so jobs share built worlds and
    reference log-probs; otherwise each container caches into a volume removed with it.
    With `gpus`, at most one job runs per listed GPU, each seeing only its own device.
    `user` ("uid:gid") defaults to the caller's, so the files in out_dir belong to them.
    """
    validate_jobs(jobs)
    if concurrency < 1:
        raise BadInput(f"concurrency must be >= 1, got {concurrency}")
    if gpus is not None and (not gpus or len(set(gpus)) != len(gpus) or min(gpus) < 0):
        raise BadInput(f"gpus must be distinct non-negative device indices, got {gpus}")
    if docker_client is None:
        import docker

        try:
            docker_client = docker.from_env()
        except docker.errors.DockerException as error:
            raise RunFailure(f"cannot reach the Docker daemon: {error}") from error
    import docker

    try:
        image_obj = docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        raise BadInput(f"image {image!r} not found on the Docker daemon (build or pull it first)") from None
    digest = image_digest(image_obj)
    user = user or f"{os.getuid()}:{os.getgid()}"

    out_dir = Path(out_dir).resolve()
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if cache_dir is not None:
        cache_dir = Path(cache_dir).resolve()
        cache_dir.mkdir(parents=True, exist_ok=True)

    free_gpus: queue.Queue[int] | None = None
    workers = concurrency
    if gpus is not None:
        free_gpus = queue.Queue()
        for gpu in gpus:
            free_gpus.put(gpu)
        workers = min(concurrency, len(gpus))

    def run_one(job: ContainerJob) -> JobResult:
        gpu = free_gpus.get() if free_gpus is not None else None
        try:
            return _run_container(docker_client, job, image=image, digest=digest, user=user, out_dir=out_dir,
                                  log_path=log_dir / f"{job.name}.log", cache_dir=cache_dir,
                                  gpu=gpu, echo=echo)
        finally:
            if gpu is not None:
                free_gpus.put(gpu)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="d2o-job") as pool:
        return list(pool.map(run_one, jobs))


def _run_container(client, job: ContainerJob, *, image: str, digest: str, user: str, out_dir: Path,
                   log_path: Path, cache_dir: Path | None, gpu: int | None, echo: bool) -> JobResult:
    import docker

    started = time.monotonic()
    volumes = {str(out_dir): {"bind": CONTAINER_OUT_DIR, "mode": "rw"}}
    if cache_dir is not None:
        volumes[str(cache_dir)] = {"bind": CONTAINER_CACHE_DIR, "mode": "rw"}
    device_requests = None
    if gpu is not None:
        device_requests = [docker.types.DeviceRequest(device_ids=[str(gpu)], capabilities=[["gpu"]])]
    container = None
    result = JobResult(name=job.name, status="failed", exit_code=None, log_path=log_path, gpu=gpu)
    try:
        container = client.containers.create(
            image,
            command=list(job.args),
            environment={**job.environment, IMAGE_DIGEST_ENV: digest},
            user=user,
            network_mode="none",
            volumes=volumes,
            working_dir=CONTAINER_OUT_DIR,
            device_requests=device_requests,
            labels={"io.d2o-bench.job": job.name},
            detach=True,
        )
        container.start()
        with open(log_path, "wb") as log:
            _stream_logs(container, log, prefix=f"[{job.name}] " if echo else None)
        result.exit_code = int(container.wait()["StatusCode"])
        result.status = "succeeded" if result.exit_code == 0 else "failed"
        if result.exit_code != 0:
            result.error = f"exited with code {result.exit_code}; last line: {_last_line(log_path)}"
    except docker.errors.DockerException as error:
        result.error = " ".join(f"docker: {error}".split())
        with open(log_path, "a") as log:
            log.write(result.error + "\n")
    finally:
        if container is not None:
            try:
                container.remove(v=True, force=True)
            except docker.errors.DockerException:
                pass  # already gone; nothing left to clean
        result.wall_time_s = time.monotonic() - started
    if echo:
        _echo(f"[{job.name}] {result.status}" + (f": {result.error}" if result.error else ""))
    return result


def _stream_logs(container, log, prefix: str | None) -> None:
    """Copy the container's combined output to `log` as it comes, echoing whole lines."""
    pending = b""
    for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
        log.write(chunk)
        log.flush()
        if prefix is None:
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _echo(prefix + line.decode(errors="replace"))
    if prefix is not None and pending:
        _echo(prefix + pending.decode(errors="replace"))


def _echo(line: str) -> None:
    with _console_lock:
        print(line, file=sys.stderr, flush=True)


def _last_line(log_path: Path) -> str:
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][-300:] if lines else "(empty log)"
