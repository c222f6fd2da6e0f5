"""What both executors share: a job, its result, the checks on a list of jobs, and where the
host's directories are mounted inside the image."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import BadInput

IMAGE_DIGEST_ENV = "D2O_BENCH_IMAGE_DIGEST"
# Where the executors mount the host's output and cache directories inside the image (the
# image declares both as volumes).
CONTAINER_OUT_DIR = "/out"
CONTAINER_CACHE_DIR = "/cache/d2o-bench"

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class ContainerJob:
    """One `d2o-bench` invocation; `name` names its log file and container."""

    name: str
    args: list[str]
    environment: dict[str, str] = field(default_factory=dict)


@dataclass
class JobResult:
    name: str
    status: str  # "succeeded" | "failed"
    exit_code: int | None  # None when the container never ran
    log_path: Path
    gpu: int | None = None
    error: str | None = None  # one line, for failures
    wall_time_s: float = 0.0


def validate_jobs(jobs: list[ContainerJob]) -> None:
    if not jobs:
        raise BadInput("no jobs to run")
    seen: set[str] = set()
    for job in jobs:
        if not _JOB_NAME.fullmatch(job.name):
            raise BadInput(f"job name {job.name!r} must be 1-63 of [A-Za-z0-9_.-], starting alphanumeric")
        if job.name in seen:
            raise BadInput(f"job name {job.name!r} used twice (names key the log files)")
        seen.add(job.name)
        if not job.args or not all(isinstance(arg, str) for arg in job.args):
            raise BadInput(f"job {job.name!r}: args must be a non-empty list of strings")
        if IMAGE_DIGEST_ENV in job.environment:
            raise BadInput(f"job {job.name!r}: {IMAGE_DIGEST_ENV} is set by the executor, not per job")
