"""`sweep --executor slurm` against a real single-node Slurm (Debian's slurm-wlm, started here).

The jobs run the installed harness (`--slurm-runtime host`): the container runtimes are what
tests/test_executors.py checks through the rendered job scripts. What only a real cluster shows:
the sbatch scripts submitit writes are accepted, jobs run and report back, and a preempted job
is requeued by Slurm and resumes from its finished stages and, mid-training, from its newest
checkpoint.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REDUCED_WORLD
from harness.cli import main
from harness.executors import ContainerJob, submit_jobs_to_slurm
from slurm_cluster import PARTITION, PrivateSlurmCluster, why_slurm_tests_cannot_run

SMALL = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=2", "train.per_device_batch_size=4",
         "sampling.max_new_tokens=16", "eval.max_new_tokens=16", "eval.lm_eval_tasks=[]"]

slurm_test = pytest.mark.slurm
pytestmark = [slurm_test, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster():
    reason = why_slurm_tests_cannot_run()
    if reason:
        pytest.skip(reason)
    started = PrivateSlurmCluster()
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.fixture(scope="module")
def built_world(bench_home):
    """The reduced world, built here first: jobs that find it share it instead of building it."""
    from harness.config import parse_set_options, resolve_config
    from harness.pipeline import bench_home as home_of, resolve_assets

    resolve_assets(resolve_config(method="base", overrides=parse_set_options(REDUCED_WORLD)), home_of())
    return bench_home


@pytest.fixture
def on_cluster(cluster, built_world, monkeypatch):
    for key, value in cluster.environment.items():
        monkeypatch.setenv(key, value)
    return cluster


def test_sweep_runs_each_method_as_a_slurm_job(on_cluster, tmp_path, capsys):
    out = tmp_path / "out"
    sets = [a for s in SMALL for a in ("--set", s)]
    argv = ["sweep", "--methods", "sft,npo", "--seeds", "0", "--executor", "slurm", "--slurm-runtime", "host",
            "--slurm-partition", PARTITION, "--slurm-gpus-per-job", "0", "--slurm-cpus-per-task", "1",
            "--slurm-mem-gb", "1", "--slurm-time-min", "15", "--out", str(out), *sets]
    assert main(argv) == 0, on_cluster.logs()
    assert "submitted Slurm jobs" in capsys.readouterr().err
    status = json.loads((out / "sweep-status.json").read_text())
    assert sorted(s["status"] for s in status.values()) == ["complete", "complete"]
    assert all(s["slurm_job_id"].isdigit() for s in status.values())
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(e["method"] for e in board["entries"]) == ["base", "npo", "sft"]
    # submitit's own record of each job: its sbatch script went through the real sbatch.
    scripts = sorted((out / "slurm").glob("*/*_submission.sh"))
    assert len(scripts) == 2 and all("#SBATCH --requeue" in p.read_text() for p in scripts)


def _stage_states(run_json: Path) -> dict:
    try:
        return json.loads(run_json.read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return {}


def _job_field(job_id: str, field: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return re.search(rf"\b{field}=(\S+)", shown).group(1)


def _start_requeued_job_now(job_id: str) -> None:
    """Slurm holds a requeued job for two minutes before it may start again; skip the wait.

    Not at once, though: requeueing revokes the job's credential, and slurmd refuses a new
    launch whose credential was issued in the same second as the revocation ("Job credential
    revoked": the job then ends with exit 1 and never runs again; seen once in three runs when
    the start was forced within the second). Two seconds after the requeue, the new credential
    is newer."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if _job_field(job_id, "Restarts") != "0" and _job_field(job_id, "JobState") == "PENDING":
            time.sleep(2)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
            return
        time.sleep(0.5)
    pytest.fail(f"job {job_id} was not requeued: JobState={_job_field(job_id, 'JobState')}")


def _sealed_checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.parent.name.rsplit("-", 1)[1])
                  for p in out.glob("d2o-*/checkpoints/train/checkpoint-*/CHECKPOINT_COMPLETE"))


@pytest.mark.parametrize("interruption", ["submitit-preemption-notice", "scontrol-requeue"])
def test_an_interrupted_job_is_requeued_and_resumes_from_its_checkpoint(on_cluster, tmp_path, interruption):
    out = tmp_path / "out"
    # Long enough a training (40 steps, a checkpoint every 2) to be interrupted in the middle.
    mid_training = [*SMALL, "train.max_steps=40", "train.save_steps=2"]
    args = ["--method", "d2o", "--out", str(out.resolve()), *[a for s in mid_training for a in ("--set", s)]]
    (job,) = submit_jobs_to_slurm([ContainerJob("d2o-s0", args)], image="installed", runtime="host",
                                  out_dir=out, partition=PARTITION, gpus_per_job=0, cpus_per_task=1, mem_gb=1,
                                  time_min=15)
    # Interrupt it once training has sealed a checkpoint and is still training.
    deadline = time.monotonic() + 600
    run_json = None
    while time.monotonic() < deadline:
        run_json = next(out.glob("d2o-*/run.json"), None)
        if run_json and _stage_states(run_json).get("train") == "running" and _sealed_checkpoint_steps(out):
            break
        assert not job.paths.result_pickle.exists(), "the job finished before it could be interrupted"
        time.sleep(0.1)
    else:
        pytest.fail(f"the run never sealed a checkpoint:\n{on_cluster.logs()}")
    seen = _sealed_checkpoint_steps(out)[-1]
    if interruption == "submitit-preemption-notice":
        # What Slurm sends before a time limit (--signal=USR2@90): submitit's handler requeues.
        job._interrupt(timeout=True)
    else:
        # Slurm requeueing the job itself (preemption with PreemptMode=REQUEUE, node failure):
        # SIGTERM to every process of the job, SIGKILL after KillWait, and the job runs again.
        subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    _start_requeued_job_now(job.job_id)

    assert job.result() == 0, f"{job.paths.stderr.read_text()}\n{on_cluster.logs()}"
    assert _job_field(job.job_id, "Restarts") == "1"
    assert json.loads(run_json.read_text())["complete"]
    log = job.paths.stderr.read_text()
    # The second start skipped what the first had finished, and did the rest.
    assert "data: already complete, skipped" in log and "reference_logps: already complete, skipped" in log
    # ... and trained on from the newest checkpoint, not from step 0.
    train = json.loads((run_json.parent / "train" / "COMPLETE").read_text())
    assert seen <= train["resumed_from_step"] < 40 and train["first_step_trained"] == train["resumed_from_step"] + 1
    assert train["steps"] == 40
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(e["method"] for e in board["entries"]) == ["base", "d2o"]
