"""A private single-node Slurm cluster for the `slurm`-marked tests.

Debian's slurm-wlm and munge packages, started as root with everything under one temp dir:
munged on its own socket and key, slurmctld and slurmd on free loopback ports, one partition
holding this machine. The tests never touch a system Slurm; `stop()` ends exactly the
processes `start()` started, by PID. Commands find the cluster through SLURM_CONF.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness.distributed import free_loopback_port

DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "d2o"
NODE = "localhost"


def why_slurm_tests_cannot_run() -> str | None:
    """None when a private cluster can be started here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root to start private munged/slurmctld/slurmd"
    for tool in (*DAEMONS, "sbatch", "srun", "scontrol"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install -y slurm-wlm munge)"
    return None


class PrivateSlurmCluster:
    def __init__(self) -> None:
        # Short prefix under /tmp: munge's unix socket path is limited to ~108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="d2os-", dir="/tmp"))
        self.conf_path = self.root / "slurm.conf"
        self._processes: dict[str, subprocess.Popen] = {}

    @property
    def environment(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf_path)}

    def _write_config(self) -> None:
        for name in ("state", "spool", "log"):
            (self.root / name).mkdir()
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        cpus = os.cpu_count() or 1
        self.conf_path.write_text("\n".join([
            "ClusterName=d2obench",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={free_loopback_port()}",
            f"SlurmdPort={free_loopback_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.root / 'munge.sock'}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "SlurmUser=root",
            "SlurmdUser=root",
            # Track a job's processes by parentage: no cgroup setup needed in a container.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "ReturnToService=2",
            # Seconds between the SIGTERM and the SIGKILL that end a requeued job (default 30).
            "KillWait=5",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        env = {**os.environ, **self.environment}
        self._processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                 start_new_session=True)
        log.close()

    def start(self, timeout_s: float = 60.0) -> "PrivateSlurmCluster":
        self._write_config()
        self._spawn("munged", ["munged", "--foreground", "--force",
                               f"--key-file={self.root / 'munge.key'}", f"--socket={self.root / 'munge.sock'}",
                               f"--pid-file={self.root / 'munged.pid'}", f"--seed-file={self.root / 'munged.seed'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}"])
        self._wait_for(lambda: (self.root / "munge.sock").exists(), "munged", timeout_s)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._spawn("slurmd", ["slurmd", "-D", "-N", NODE])
        self._wait_for(lambda: self.node_state() == "idle", "an idle node", timeout_s)
        return self

    def node_state(self) -> str:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                                env={**os.environ, **self.environment}, timeout=30)
        return result.stdout.strip() if result.returncode == 0 else ""

    def _wait_for(self, ready, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: {self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"no {what} after {timeout_s:.0f} s: {self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        # Reverse order: slurmd's running jobs end before the controller and munge go.
        for name in reversed(list(self._processes)):
            process = self._processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._processes.clear()
        shutil.rmtree(self.root, ignore_errors=True)
