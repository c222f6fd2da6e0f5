"""Container and Slurm executors.

Fast tests: job validation, the Slurm submission (a stand-in `sbatch` records the script submitit
renders; the pickled command is loaded back and inspected), the requeue hook, and a `host`-runtime
job run in-process through submitit's debug executor; the Docker executor's scheduling against a
recording client. The `docker`-marked test runs two real jobs on the CPU image through a private
daemon.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import sys
import threading
import time
import pytest

from harness.errors import BadInput, RunFailure
from harness.executors import ContainerJob, run_jobs_in_containers, submit_jobs_to_slurm, validate_jobs
from harness.executors.slurm_executor import SlurmContainerCommand

import docker_daemon
from docker_daemon import TEST_GID, TEST_UID

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"ghcr.io/example/d2o-bench@{DIGEST}"


def test_validate_jobs_rejects_bad_names_duplicates_and_digest_overrides():
    with pytest.raises(BadInput, match="no jobs"):
        validate_jobs([])
    with pytest.raises(BadInput, match="job name"):
        validate_jobs([ContainerJob("bad/name", ["methods"])])
    with pytest.raises(BadInput, match="used twice"):
        validate_jobs([ContainerJob("a", ["methods"]), ContainerJob("a", ["methods"])])
    with pytest.raises(BadInput, match="args"):
        validate_jobs([ContainerJob("a", [])])
    with pytest.raises(BadInput, match="D2O_BENCH_IMAGE_DIGEST"):
        validate_jobs([ContainerJob("a", ["methods"], {"D2O_BENCH_IMAGE_DIGEST": "x"})])


# --- Slurm ----------------------------------------------------------------------------------

@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An `sbatch` on PATH that keeps each submitted script and answers like Slurm does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "submitted"
    record.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(ls "{record}" | wc -l); n=$((n + 1000))\n'
        f'cp "$1" "{record}/$n.sh"\n'
        'echo "Submitted batch job $n"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    # submitit only checks that srun exists before it will build a Slurm executor.
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_slurm_submission_renders_requeueable_gpu_jobs(tmp_path, fake_sbatch):
    jobs = [ContainerJob("d2o-s0", ["--method", "d2o", "--out", "/out"]),
            ContainerJob("dpo-s0", ["--method", "dpo", "--out", "/out"], {"HF_HUB_OFFLINE": "1"})]
    submitted = submit_jobs_to_slurm(jobs, image=IMAGE, out_dir=tmp_path / "out",
                                     cache_dir=tmp_path / "cache", partition="gpu", time_min=120)
    assert [job.job_id for job in submitted] == ["1000", "1001"]
    scripts = sorted(fake_sbatch.iterdir())
    assert len(scripts) == 2
    text = scripts[0].read_text()
    for line in ("#SBATCH --requeue", "#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu",
                 "#SBATCH --time=120", "#SBATCH --job-name=d2o-bench-d2o-s0", "#SBATCH --mem=64GB"):
        assert line in text.splitlines(), f"{line!r} not in sbatch script:\n{text}"
    # submitit's warning signal before the time limit is what triggers checkpoint/requeue.
    assert "#SBATCH --signal=USR2@90" in text
    assert "submitit.core._submit" in text
    assert "#SBATCH --job-name=d2o-bench-dpo-s0" in scripts[1].read_text()

    # The pickled callable is what the node runs: load it back and check the command line.
    pickled = submitted[1].paths.submitted_pickle
    with open(pickled, "rb") as handle:
        delayed = pickle.load(handle)
    command = delayed.function
    assert isinstance(command, SlurmContainerCommand)
    argv = command.command_line({"CUDA_VISIBLE_DEVICES": "3"})
    assert argv[:2] == ["apptainer", "run"] and "--nv" in argv
    assert f"{(tmp_path / 'out').resolve()}:/out" in argv
    assert f"{(tmp_path / 'cache').resolve()}:/cache/d2o-bench" in argv
    assert f"D2O_BENCH_IMAGE_DIGEST={DIGEST}" in argv and "HF_HUB_OFFLINE=1" in argv
    assert argv[-5:] == [f"docker://{IMAGE}", "--method", "dpo", "--out", "/out"]


def test_requeue_checkpoint_resubmits_the_same_command(tmp_path):
    import submitit

    command = SlurmContainerCommand(ContainerJob("a", ["--method", "d2o"]), image=IMAGE,
                                    image_digest=DIGEST, runtime="apptainer", out_dir=tmp_path,
                                    cache_dir=None, gpus_per_job=1)
    resubmission = command.checkpoint()
    assert isinstance(resubmission, submitit.helpers.DelayedSubmission)
    assert resubmission.function is command


def _host_command_running(tmp_path, monkeypatch, script: str) -> SlurmContainerCommand:
    fake_cli = tmp_path / "bin" / "d2o-bench"
    fake_cli.parent.mkdir()
    fake_cli.write_text(f"#!{sys.executable}\nimport os, signal, time\n{script}\n")
    fake_cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_cli.parent}{os.pathsep}{os.environ['PATH']}")
    return SlurmContainerCommand(ContainerJob("a", ["--method", "d2o"]), image="installed", image_digest=None,
                                 runtime="host", out_dir=tmp_path, cache_dir=None, gpus_per_job=0)


def test_the_run_ignores_submitits_requeue_notice(tmp_path, monkeypatch):
    # Slurm sends the notice (USR2) to every process of the job; only submitit should act on it.
    command = _host_command_running(tmp_path, monkeypatch, "os.kill(os.getpid(), signal.SIGUSR2); time.sleep(0.2)")
    assert command() == 0


def test_a_run_ended_by_slurms_sigterm_waits_for_the_requeue_instead_of_failing(tmp_path, monkeypatch, capsys):
    import harness.executors.slurm_executor as slurm_executor

    waited = []
    monkeypatch.setattr(slurm_executor.time, "sleep", waited.append)
    command = _host_command_running(tmp_path, monkeypatch, "os.kill(os.getpid(), signal.SIGTERM)")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with pytest.raises(RunFailure, match="exited with code -15"):
        command()  # only reached if Slurm never sends the SIGKILL
    assert waited == [slurm_executor.SLURM_KILL_WAIT_BOUND_S]
    assert "waiting for Slurm to requeue or end the job" in capsys.readouterr().out
    monkeypatch.delenv("SLURM_JOB_ID")
    waited.clear()
    with pytest.raises(RunFailure, match="exited with code -15"):
        command()  # outside Slurm a SIGTERM is just a failure
    assert waited == []


def test_docker_runtime_on_slurm_hands_over_exactly_the_allocated_gpus(tmp_path):
    command = SlurmContainerCommand(ContainerJob("a", ["--method", "d2o", "--out", "/out"]),
                                    image=IMAGE, image_digest=DIGEST, runtime="docker",
                                    out_dir=tmp_path, cache_dir=None, gpus_per_job=2)
    argv = command.command_line({"CUDA_VISIBLE_DEVICES": "2,5"})
    assert argv[:2] == ["docker", "run"]
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[argv.index("--gpus") + 1] == '"device=2,5"'
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert f"D2O_BENCH_IMAGE_DIGEST={DIGEST}" in argv
    with pytest.raises(RunFailure, match="CUDA_VISIBLE_DEVICES"):
        command.command_line({})


def test_unpinned_image_and_unknown_runtime_are_bad_input(tmp_path):
    jobs = [ContainerJob("a", ["methods"])]
    with pytest.raises(BadInput, match="not pinned"):
        submit_jobs_to_slurm(jobs, image="d2o-bench:latest", out_dir=tmp_path)
    with pytest.raises(BadInput, match="runtime"):
        submit_jobs_to_slurm(jobs, image=IMAGE, out_dir=tmp_path, runtime="podman-compose")


def test_host_runtime_job_runs_through_submitit(tmp_path, monkeypatch):
    """Real jobs through submitit's local executor (a subprocess each, as on a node):
    success returns 0, a failing command raises."""
    import submitit

    fake_cli = tmp_path / "bin" / "d2o-bench"
    fake_cli.parent.mkdir()
    # Stands in for the CLI so the test checks the executor, not the pipeline: records its
    # arguments and the digest it was given, fails when asked to.
    fake_cli.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "if '--fail' in sys.argv: sys.exit(3)\n"
        f"open({str(tmp_path / 'calls.jsonl')!r}, 'a').write(json.dumps("
        "[sys.argv[1:], os.environ.get('D2O_BENCH_IMAGE_DIGEST')]) + '\\n')\n")
    fake_cli.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_cli.parent}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=2)
    ok, bad = submit_jobs_to_slurm(
        [ContainerJob("ok", ["--method", "base"]), ContainerJob("bad", ["--fail"])],
        image="installed", image_digest=DIGEST, runtime="host", out_dir=tmp_path / "out",
        gpus_per_job=0, executor=executor)
    assert ok.result() == 0
    with pytest.raises(Exception, match="exited with code 3"):
        bad.result()
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls == [[["--method", "base"], DIGEST]]


# --- Docker, against a recording client -----------------------------------------------------

class RecordingContainer:
    def __init__(self, client, kwargs):
        self.client, self.kwargs, self.removed = client, kwargs, False
        self.exit_code = 7 if "--fail" in kwargs["command"] else 0

    def start(self):
        with self.client.lock:
            self.client.running += 1
            self.client.peak = max(self.client.peak, self.client.running)

    def logs(self, **_):
        time.sleep(0.05)  # overlap with other jobs so the concurrency bound is exercised
        yield b"hello from " + self.kwargs["command"][-1].encode() + b"\npartial"
        with self.client.lock:
            self.client.running -= 1

    def wait(self):
        return {"StatusCode": self.exit_code}

    def remove(self, v=False, force=False):
        self.removed = v and force


class RecordingClient:
    def __init__(self):
        self.lock = threading.Lock()
        self.running = self.peak = 0
        self.created: list[RecordingContainer] = []
        client = self

        class Images:
            def get(self, name):
                if name != "d2o-bench:cpu":
                    import docker
                    raise docker.errors.ImageNotFound(name)
                return type("Image", (), {"id": "sha256:" + "cd" * 32, "attrs": {"RepoDigests": []}})()

        class Containers:
            def create(self, image, **kwargs):
                container = RecordingContainer(client, kwargs)
                with client.lock:
                    client.created.append(container)
                return container

        self.images, self.containers = Images(), Containers()


def test_docker_executor_bounds_concurrency_pins_gpus_and_records_failures(tmp_path, capsys):
    client = RecordingClient()
    jobs = [ContainerJob(f"job{i}", ["--method", "d2o", "--out", "/out", f"j{i}"]) for i in range(5)]
    jobs.append(ContainerJob("broken", ["--fail", "jb"]))
    results = run_jobs_in_containers(jobs, image="d2o-bench:cpu", out_dir=tmp_path, concurrency=4,
                                     gpus=[0, 3], docker_client=client)
    assert [r.name for r in results] == [j.name for j in jobs]
    assert client.peak <= 2, "one job per GPU at a time"
    assert [r.status for r in results] == ["succeeded"] * 5 + ["failed"]
    assert results[-1].exit_code == 7 and "partial" in results[-1].error
    assert {r.gpu for r in results} <= {0, 3}
    for container in client.created:
        kwargs = container.kwargs
        assert container.removed
        assert kwargs["network_mode"] == "none"
        assert kwargs["user"] == f"{os.getuid()}:{os.getgid()}"
        assert kwargs["environment"]["D2O_BENCH_IMAGE_DIGEST"] == "sha256:" + "cd" * 32
        assert kwargs["volumes"][str(tmp_path.resolve())]["bind"] == "/out"
        (request,) = kwargs["device_requests"]
        assert request["DeviceIDs"] in (["0"], ["3"])
    assert (tmp_path / "logs" / "job2.log").read_bytes() == b"hello from j2\npartial"
    err = capsys.readouterr().err
    assert "[job2] hello from j2" in err and "[broken] failed" in err


def test_docker_executor_without_gpus_runs_up_to_concurrency_and_checks_the_image(tmp_path):
    client = RecordingClient()
    jobs = [ContainerJob(f"job{i}", ["x", f"j{i}"]) for i in range(4)]
    results = run_jobs_in_containers(jobs, image="d2o-bench:cpu", out_dir=tmp_path, concurrency=3,
                                     gpus=None, docker_client=client, echo=False)
    assert all(r.status == "succeeded" and r.gpu is None for r in results)
    assert 1 <= client.peak <= 3
    assert all(c.kwargs["device_requests"] is None for c in client.created)
    with pytest.raises(BadInput, match="not found"):
        run_jobs_in_containers(jobs, image="missing:tag", out_dir=tmp_path, concurrency=1,
                               gpus=None, docker_client=client)
    with pytest.raises(BadInput, match="concurrency"):
        run_jobs_in_containers(jobs, image="d2o-bench:cpu", out_dir=tmp_path, concurrency=0,
                               gpus=None, docker_client=client)


# --- Docker, for real -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def cpu_image(request):
    return docker_daemon.cpu_image_for_session(request)


@pytest.mark.docker
def test_two_jobs_in_real_containers(cpu_image, tmp_path):
    """A real pipeline run (base: no training, so it is the quick one) next to a job that fails."""
    client, image_id = cpu_image
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.chown(out_dir, TEST_UID, TEST_GID)  # the unprivileged "host user" the jobs run as
    jobs = [ContainerJob("base", ["--method", "base", "--out", "/out"]),
            ContainerJob("bad-method", ["--method", "no-such-method", "--dry-run", "--out", "/out"])]
    results = run_jobs_in_containers(jobs, image=image_id, out_dir=out_dir, concurrency=2, gpus=None,
                                     docker_client=client, user=f"{TEST_UID}:{TEST_GID}",
                                     cache_dir=docker_daemon.harness_home_for_tests())
    by_name = {r.name: r for r in results}
    assert by_name["base"].status == "succeeded", by_name["base"].error
    assert "leaderboard" in (out_dir / "logs" / "base.log").read_text()
    assert by_name["bad-method"].status == "failed" and by_name["bad-method"].exit_code == 2
    assert "no-such-method" in by_name["bad-method"].error
    entries = json.loads((out_dir / "leaderboard.json").read_text())["entries"]
    assert [e["method"] for e in entries] == ["base"]
    assert entries[0]["provenance"]["container_image_digest"] == image_id
    assert (out_dir / "leaderboard.json").stat().st_uid == TEST_UID
    leftovers = client.containers.list(all=True, filters={"label": "io.d2o-bench.job"})
    assert not leftovers, "containers must be removed afterwards"
