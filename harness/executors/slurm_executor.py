"""Submit `d2o-bench` jobs to Slurm through submitit, each running in the pinned image.

On the compute node each job runs one command line: the image through Apptainer (the usual HPC
container runtime, `runtime="apptainer"`), through Docker (`runtime="docker"`, for clusters
whose nodes run a Docker daemon), or the harness installed on the node (`runtime="host"`, no
container). Jobs are requeued when Slurm preempts them or their time limit is near: submitit
traps the warning signal, calls `SlurmContainerCommand.checkpoint`, and resubmits the same
command; a rerun of `d2o-bench` skips every stage whose COMPLETE marker exists, so a requeued
job resumes instead of starting over. Output and caches must be on a filesystem the nodes share.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.errors import BadInput, RunFailure
from harness.executors.jobs import (
    CONTAINER_CACHE_DIR,
    CONTAINER_OUT_DIR,
    IMAGE_DIGEST_ENV,
    ContainerJob,
    validate_jobs,
)

RUNTIMES = ("apptainer", "docker", "host")


class SlurmContainerCommand:
    """The picklable callable submitit runs on the node: one `d2o-bench` invocation.

    Returns the exit code on success and raises RunFailure otherwise, so submitit marks the job
    failed. `checkpoint` is what makes the job requeueable.
    """

    def __init__(self, job: ContainerJob, *, image: str, image_digest: str | None, runtime: str,
                 out_dir: Path, cache_dir: Path | None, gpus_per_job: int) -> None:
        self.job = job
        self.image = image
        self.image_digest = image_digest
        self.runtime = runtime
        self.out_dir = Path(out_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.gpus_per_job = gpus_per_job

    def command_line(self, node_environment: dict[str, str] | None = None) -> list[str]:
        """The argv run on the node (given the node's environment, for its GPU assignment)."""
        node_environment = os.environ if node_environment is None else node_environment
        environment = dict(self.job.environment)
        if self.image_digest:
            environment[IMAGE_DIGEST_ENV] = self.image_digest
        if self.runtime == "host":
            return [_installed_cli(), *self.job.args]
        if self.runtime == "apptainer":
            argv = ["apptainer", "run", "--containall", "--no-home", "--pwd", CONTAINER_OUT_DIR,
                    "--bind", f"{self.out_dir}:{CONTAINER_OUT_DIR}"]
            if self.cache_dir is not None:
                argv += ["--bind", f"{self.cache_dir}:{CONTAINER_CACHE_DIR}"]
            if self.gpus_per_job:
                argv.append("--nv")  # honours the CUDA_VISIBLE_DEVICES Slurm set for this job
            for key, value in sorted(environment.items()):
                argv += ["--env", f"{key}={value}"]
            # `apptainer run` executes the image's ENTRYPOINT (d2o-bench) with these args.
            return [*argv, _apptainer_source(self.image), *self.job.args]
        if self.runtime == "docker":
            argv = ["docker", "run", "--rm", "--network", "none",
                    "--user", f"{os.getuid()}:{os.getgid()}",
                    "--volume", f"{self.out_dir}:{CONTAINER_OUT_DIR}", "--workdir", CONTAINER_OUT_DIR]
            if self.cache_dir is not None:
                argv += ["--volume", f"{self.cache_dir}:{CONTAINER_CACHE_DIR}"]
            if self.gpus_per_job:
                # The daemon is outside the job's cgroup: hand it exactly the GPUs Slurm gave us.
                visible = node_environment.get("CUDA_VISIBLE_DEVICES", "")
                if not visible:
                    raise RunFailure(f"job {self.job.name}: Slurm set no CUDA_VISIBLE_DEVICES")
                argv += ["--gpus", f'"device={visible}"']
            for key, value in sorted(environment.items()):
                argv += ["--env", f"{key}={value}"]
            return [*argv, self.image, *self.job.args]
        raise BadInput(f"unknown runtime {self.runtime!r} (choose from {', '.join(RUNTIMES)})")

    def __call__(self) -> int:
        argv = self.command_line()
        environment = dict(os.environ)
        if self.runtime == "host":
            environment.update(self.job.environment)
            if self.image_digest:
                environment[IMAGE_DIGEST_ENV] = self.image_digest
        print("+ " + shlex.join(argv), flush=True)
        # Slurm delivers submitit's preemption/timeout notice to every process of the job; it is
        # meant for submitit's handler in this process, which checkpoints and requeues. Left at
        # its default action it would kill the run first and look like a failure.
        notice = _requeue_notice_signal()
        completed = subprocess.run(argv, env=environment, check=False,
                                   preexec_fn=lambda: signal.signal(notice, signal.SIG_IGN))
        # Dead of SIGTERM, or a container runtime reporting that its container was (128 + 15).
        if completed.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM) and "SLURM_JOB_ID" in os.environ:
            _wait_for_slurm_to_end_this_job(self.job.name)
        if completed.returncode != 0:
            raise RunFailure(f"job {self.job.name}: `{argv[0]}` exited with code {completed.returncode}")
        return completed.returncode

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption/timeout: requeue the same command (it resumes)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# Slurm sends SIGTERM to every process of a job it requeues, preempts or cancels, and SIGKILL
# KillWait seconds later. The run dies of the SIGTERM at once; reporting that as a failure would
# make submitit record a failed result that the requeued copy cannot take back. So the job waits
# for the SIGKILL instead (bounded, in case the SIGTERM came from somewhere else).
SLURM_KILL_WAIT_BOUND_S = 300


def _wait_for_slurm_to_end_this_job(name: str) -> None:
    print(f"job {name}: the run got SIGTERM; waiting for Slurm to requeue or end the job", flush=True)
    time.sleep(SLURM_KILL_WAIT_BOUND_S)


def _requeue_notice_signal() -> signal.Signals:
    from submitit.core.job_environment import JobEnvironment

    name = JobEnvironment.USR_SIG  # "USR2" unless SUBMITIT_PREEMPT_SIGNAL says otherwise
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}")


def _installed_cli() -> str:
    """`d2o-bench` on the node's PATH, else the one beside this interpreter (a venv that the job
    runs without activating: submitit starts the job with the submitting interpreter)."""
    return (shutil.which("d2o-bench") or shutil.which("d2o-bench", path=str(Path(sys.executable).parent))
            or "d2o-bench")


def _apptainer_source(image: str) -> str:
    """A local .sif path as is; otherwise a registry reference pulled through docker://."""
    if image.endswith(".sif") or image.startswith(("docker://", "oras://", "library://", "/")):
        return image
    return f"docker://{image}"


def check_slurm_options(*, image: str, runtime: str, image_digest: str | None, time_min: int,
                        gpus_per_job: int, cpus_per_task: int, mem_gb: int) -> str | None:
    """Refuse unusable job options (BadInput) before anything is written or submitted.

    Returns the image digest to record: `image_digest`, else the digest part of `image`.
    """
    if runtime not in RUNTIMES:
        raise BadInput(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    if gpus_per_job < 0 or time_min < 1 or cpus_per_task < 1 or mem_gb < 1:
        raise BadInput("gpus_per_job must be >= 0 and time_min, cpus_per_task, mem_gb >= 1")
    if image_digest is None and "@sha256:" in image:
        image_digest = image.split("@", 1)[1]
    if runtime != "host" and image_digest is None:
        raise BadInput(f"image {image!r} is not pinned: pass registry/name@sha256:... or image_digest=")
    return image_digest


def submit_jobs_to_slurm(
    jobs: list[ContainerJob],
    *,
    image: str,
    out_dir: Path,
    runtime: str = "apptainer",
    image_digest: str | None = None,
    cache_dir: Path | None = None,
    folder: Path | None = None,
    partition: str | None = None,
    time_min: int = 240,
    gpus_per_job: int = 1,
    cpus_per_task: int = 8,
    mem_gb: int = 64,
    max_num_timeout: int = 3,
    slurm_additional_parameters: dict | None = None,
    python: str | None = None,
    executor=None,
):
    """Submit one Slurm job per ContainerJob; returns the submitit Job objects in order.

    `image` should name the image by digest (registry/name@sha256:...) or be a .sif built from
    it; `image_digest` (default: the digest part of `image`, if any) is passed to each job as
    D2O_BENCH_IMAGE_DIGEST. `folder` (default out_dir/slurm) holds submitit's scripts, pickles
    and logs. `executor` replaces the submitit.SlurmExecutor (tests pass submitit's local or
    debug executors).
    """
    validate_jobs(jobs)
    image_digest = check_slurm_options(image=image, runtime=runtime, image_digest=image_digest,
                                       time_min=time_min, gpus_per_job=gpus_per_job,
                                       cpus_per_task=cpus_per_task, mem_gb=mem_gb)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if cache_dir is not None:
        cache_dir = Path(cache_dir).resolve()
        cache_dir.mkdir(parents=True, exist_ok=True)

    import submitit

    if executor is None:
        folder = Path(folder) if folder is not None else out_dir / "slurm"
        executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=max_num_timeout,
                                          python=python or shlex.quote(sys.executable))
        parameters = dict(time=time_min, cpus_per_task=cpus_per_task, mem=f"{mem_gb}GB",
                          ntasks_per_node=1, nodes=1,
                          # Let Slurm requeue the job itself too (node failure, preemption
                          # by a higher-priority partition), not only through submitit.
                          additional_parameters={"requeue": True, **(slurm_additional_parameters or {})})
        if gpus_per_job:
            parameters["gpus_per_node"] = gpus_per_job
        if partition:
            parameters["partition"] = partition
        executor.update_parameters(**parameters)

    submitted = []
    for job in jobs:
        command = SlurmContainerCommand(job, image=image, image_digest=image_digest, runtime=runtime,
                                        out_dir=out_dir, cache_dir=cache_dir, gpus_per_job=gpus_per_job)
        if hasattr(executor, "update_parameters") and isinstance(executor, submitit.SlurmExecutor):
            executor.update_parameters(job_name=f"d2o-bench-{job.name}")
        submitted.append(executor.submit(command))
    return submitted
