"""Run many `d2o-bench` invocations in the pinned image: locally through Docker, or on a Slurm
cluster through submitit.

A job is one `d2o-bench` command line (`ContainerJob.args`, without the program name). Both
executors set `D2O_BENCH_IMAGE_DIGEST` in each job's environment so the leaderboard records which
image produced each entry (provenance.container_image_digest).
"""

from harness.executors.docker_executor import run_jobs_in_containers
from harness.executors.jobs import (
    CONTAINER_CACHE_DIR,
    CONTAINER_OUT_DIR,
    IMAGE_DIGEST_ENV,
    ContainerJob,
    JobResult,
    validate_jobs,
)
from harness.executors.slurm_executor import submit_jobs_to_slurm

__all__ = [
    "CONTAINER_CACHE_DIR", "CONTAINER_OUT_DIR", "IMAGE_DIGEST_ENV", "ContainerJob", "JobResult",
    "run_jobs_in_containers", "submit_jobs_to_slurm", "validate_jobs",
]
