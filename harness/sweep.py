"""`d2o-bench sweep`: a grid of (method × seed × hyperparameter point) runs into one leaderboard.

Every run of the grid is resolved and validated before any starts (bad input exits 2 at once).
Each run executes in its own process (`--executor local`), container (`docker`) or Slurm job
(`slurm`), so one crash or OOM cannot take the sweep down; a failed run is recorded in
`OUT/sweep-status.json` and the sweep goes on, exiting 1 at the end. Runs whose directory says
complete are skipped, which is also how a requeued or repeated sweep resumes.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.arguments import OneLineArgumentParser
from harness.config import parse_set_options, resolve_config
from harness.errors import BadInput
from harness.plan import resolve_plan
from harness.rundir import RunLayout, write_json_atomic


@dataclass
class SweepRun:
    method: str
    seed: int
    overrides: list[str]  # --set KEY=VALUE strings, grid point included
    run_id: str

    def cli_args(self, preset: str, out: str) -> list[str]:
        args = ["--method", self.method, "--preset", preset, "--seed", str(self.seed), "--out", out]
        for pair in self.overrides:
            args += ["--set", pair]
        return args


def _csv(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise BadInput(f"--{what}: empty list")
    return items


def parse_grid(specs: list[str]) -> list[list[str]]:
    """['beta=0.05,0.1'] → [['method.beta=0.05'], ['method.beta=0.1']] (cross product)."""
    axes = []
    for spec in specs:
        if "=" not in spec:
            raise BadInput(f"--grid expects key=v1,v2,..., got {spec!r}")
        key, values = spec.split("=", 1)
        key = key.strip()
        # A bare name is a method hyperparameter; a dotted one is any config field.
        path = key if "." in key else f"method.{key}"
        axes.append([f"{path}={v}" for v in _csv(values, "grid")])
    return [list(point) for point in itertools.product(*axes)] if axes else [[]]


def plan_sweep(methods: list[str], seeds: list[int], preset: str, sets: list[str], grid: list[str]) -> list[SweepRun]:
    runs = []
    for method, seed, point in itertools.product(methods, seeds, parse_grid(grid)):
        overrides = list(sets) + point
        try:
            cfg = resolve_config(method=method, preset=preset, seed=seed, overrides=parse_set_options(overrides))
            # Each run's plan names it (a method refuses bad settings here); the suite's domain
            # check is each run's own, so one refused run does not stop the sweep.
            plan = resolve_plan(cfg, check=False)
        except BadInput as exc:
            raise BadInput(f"sweep run {method} seed {seed} {' '.join(point)}: {exc}") from None
        runs.append(SweepRun(method, seed, overrides, plan.run_id))
    return runs


def _is_complete(out: Path, run_id: str) -> bool:
    try:
        return bool(RunLayout.of(out, run_id).status.read().get("complete"))
    except (OSError, ValueError):
        return False


def run_local(run: SweepRun, preset: str, out: Path) -> dict:
    log_path = out / "logs" / f"{run.run_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "harness", *run.cli_args(preset, str(out))],
                              stdout=log, stderr=subprocess.STDOUT)
    status = "complete" if proc.returncode == 0 else "failed"
    error = None
    if proc.returncode != 0:
        lines = [l for l in log_path.read_text().splitlines() if l.startswith("d2o-bench: error")]
        error = lines[-1] if lines else f"exit code {proc.returncode}"
    return {"status": status, "exit_code": proc.returncode, "error": error, "log": str(log_path),
            "wall_time_s": time.perf_counter() - started}


def sweep_main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(prog="d2o-bench sweep")
    parser.add_argument("--methods", required=True, help="comma-separated method names")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--out", default="./d2o-bench-out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="sweep a field over values (bare names are method hyperparameters)")
    parser.add_argument("--executor", choices=["local", "docker", "slurm"], default="local")
    parser.add_argument("--image", default="d2o-bench:latest", help="image for --executor docker/slurm")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--gpus", default=None, help="comma-separated GPU indices for --executor docker")
    parser.add_argument("--cache-dir", default=None,
                        help="host directory shared by containers/jobs as the harness cache (worlds, samples)")
    parser.add_argument("--slurm-runtime", choices=["apptainer", "docker", "host"], default="apptainer",
                        help="how a Slurm job runs the harness: the pinned image, or the installed one")
    parser.add_argument("--slurm-partition", default=None)
    parser.add_argument("--slurm-time-min", type=int, default=240)
    parser.add_argument("--slurm-gpus-per-job", type=int, default=1)
    parser.add_argument("--slurm-cpus-per-task", type=int, default=8)
    parser.add_argument("--slurm-mem-gb", type=int, default=64)
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in _csv(args.seeds, "seeds")]
    except ValueError:
        raise BadInput(f"--seeds must be integers, got {args.seeds!r}") from None
    if args.gpus is not None and not all(g.strip().isdigit() for g in _csv(args.gpus, "gpus")):
        raise BadInput(f"--gpus must be comma-separated GPU indices, got {args.gpus!r}")
    if args.executor == "slurm":
        from harness.executors.slurm_executor import check_slurm_options

        check_slurm_options(image=args.image, runtime=args.slurm_runtime, image_digest=None,
                            time_min=args.slurm_time_min, gpus_per_job=args.slurm_gpus_per_job,
                            cpus_per_task=args.slurm_cpus_per_task, mem_gb=args.slurm_mem_gb)
    out = Path(args.out)
    runs = plan_sweep(_csv(args.methods, "methods"), seeds, args.preset, args.overrides, args.grid)
    pending = [r for r in runs if not _is_complete(out, r.run_id)]
    print(f"sweep: {len(runs)} runs, {len(runs) - len(pending)} already complete", file=sys.stderr)
    status_path = out / "sweep-status.json"
    status = {r.run_id: {"status": "complete" if r not in pending else "pending", "method": r.method,
                         "seed": r.seed, "overrides": r.overrides} for r in runs}
    if args.executor == "local":
        write_json_atomic(status_path, status)
        for run in pending:
            print(f"sweep: running {run.run_id}", file=sys.stderr, flush=True)
            status[run.run_id].update(run_local(run, args.preset, out))
            write_json_atomic(status_path, status)
    elif pending:
        # The executors check their options and the image before they start anything, so a
        # refusal (exit 2) leaves nothing behind; the status is written once the jobs are done.
        for run, result in zip(pending, _run_external(args, pending, out)):
            status[run.run_id].update(result)
    write_json_atomic(status_path, status)
    failed = [rid for rid, s in status.items() if s["status"] != "complete"]
    for rid in failed:
        print(f"sweep: FAILED {rid}: {status[rid].get('error')}", file=sys.stderr)
    print(f"sweep: {len(runs) - len(failed)}/{len(runs)} complete; leaderboard {out / 'leaderboard.json'}")
    return 1 if failed else 0


def _run_external(args: argparse.Namespace, runs: list[SweepRun], out: Path) -> list[dict]:
    """Run the pending runs in containers or Slurm jobs; one status dict per run, in order."""
    from harness.executors import ContainerJob

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    if args.executor == "docker":
        from harness.executors.docker_executor import CONTAINER_OUT_DIR, run_jobs_in_containers

        gpus = [int(g) for g in _csv(args.gpus, "gpus")] if args.gpus else None
        jobs = [ContainerJob(name=r.run_id, args=r.cli_args(args.preset, CONTAINER_OUT_DIR)) for r in runs]
        results = run_jobs_in_containers(jobs, image=args.image, out_dir=out, concurrency=args.concurrency,
                                         gpus=gpus, cache_dir=cache_dir)
        return [{"status": "complete" if r.status == "succeeded" else "failed", "exit_code": r.exit_code,
                 "error": r.error, "log": str(r.log_path), "gpu": r.gpu, "wall_time_s": r.wall_time_s}
                for r in results]

    from harness.executors.slurm_executor import CONTAINER_OUT_DIR, submit_jobs_to_slurm

    in_container = args.slurm_runtime != "host"
    target = CONTAINER_OUT_DIR if in_container else str(out.resolve())
    jobs = [ContainerJob(name=r.run_id, args=r.cli_args(args.preset, target)) for r in runs]
    submitted = submit_jobs_to_slurm(jobs, image=args.image, out_dir=out, runtime=args.slurm_runtime,
                                     cache_dir=cache_dir, partition=args.slurm_partition,
                                     time_min=args.slurm_time_min, gpus_per_job=args.slurm_gpus_per_job,
                                     cpus_per_task=args.slurm_cpus_per_task, mem_gb=args.slurm_mem_gb)
    print(f"sweep: submitted Slurm jobs {', '.join(str(j.job_id) for j in submitted)}; waiting", file=sys.stderr)
    statuses = []
    for job in submitted:
        try:
            job.result()  # blocks; raises when the job failed for good (after requeues)
            statuses.append({"status": "complete", "exit_code": 0, "error": None, "slurm_job_id": str(job.job_id)})
        except Exception as error:  # noqa: BLE001 - submitit re-raises the job's own exception
            line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            statuses.append({"status": "failed", "exit_code": None, "error": line, "slurm_job_id": str(job.job_id)})
    return statuses
