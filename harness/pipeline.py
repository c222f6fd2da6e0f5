"""The benchmark run as a pipeline of named, cached stages: the orchestrator only.

    data → self_samples → reference_logps → train → generate → score → leaderboard

Each stage is a module of harness/stages/ with one entry point, `run(ctx)`; it reads what
earlier stages wrote to the run directory (harness/rundir.py's RunLayout) and returns the
summary its COMPLETE marker keeps. This module decides the order, skips stages already complete,
runs collective stages on every rank and the others on rank 0, and records each stage's state,
duration and peak memory. What a run is (method, suite, K, run id, stages) was resolved once, in
its RunPlan (harness/plan.py); the pipeline never tests a method's or a suite's name.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import resource
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from harness import distributed
from harness.allocator import release_freed_memory
from harness.cache import JsonCache, bench_home  # noqa: F401 - the caches' home, as the pipeline's
from harness.errors import BadInput, D2OBenchError, RunFailure
from harness.faults import kill_point
from harness.plan import STAGES, RunPlan, run_id_for  # noqa: F401 - run_id_for: the run's name, for callers
from harness.rundir import RunDir, RunLayout, acquire_run_lock
from harness.stages import data, generate, leaderboard, reference_logps, score, self_samples, train
from harness.stages.context import RunContext, now

log = logging.getLogger("d2o_bench")

# Stages every rank runs under a multi-process launcher; the others run on rank 0 alone.
COLLECTIVE_STAGES = {"train"}

STAGE_FUNCTIONS: dict[str, Callable[[RunContext], dict]] = {
    "data": data.run,
    "self_samples": self_samples.run,
    "reference_logps": reference_logps.run,
    "train": train.run,
    "generate": generate.run,
    "score": score.run,
    "leaderboard": leaderboard.run,
}


def _describe_os_error(stage: str, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"stage {stage} failed: disk full{where}; free space and rerun (finished stages and "
                "sealed checkpoints are kept, partial ones removed)")
    return f"stage {stage} failed: {type(exc).__name__}: {exc}"


def resolve_assets(cfg, home: Path):
    """A configuration's models and data, resolved through its plan (for callers outside a run)."""
    from harness.plan import resolve_plan

    return resolve_plan(cfg).assets(home)


def run_pipeline(plan: RunPlan, out_dir: Path, *, progress: Callable[[str], None] = print,
                 stop_after: Optional[str] = None, selection: Optional[dict] = None) -> RunContext:
    """Run (or resume) the stages of one run's plan (harness/plan.py), all of them or up to
    `stop_after` inclusive.

    `selection` (how the configuration was chosen: study, rule, selected trial) goes into the
    leaderboard entry as it is. Returns the context; the run directory says which stages are
    complete.
    """
    if not isinstance(plan, RunPlan):
        raise TypeError("run_pipeline takes a RunPlan: harness.plan.resolve_plan(cfg)")
    plan.check()  # done already where preflight ran; a plan is never run unchecked
    stages = plan.stages
    if stop_after is not None and stop_after not in stages:
        raise BadInput(f"unknown stage {stop_after!r} (stages: {', '.join(stages)})")
    cfg, run_id, home = plan.cfg, plan.run_id, bench_home()
    distributed.init_if_launched()
    main_process = distributed.is_main_process()
    header = {"method": cfg.method_name, "preset": cfg.preset, "seed": cfg.seed,
              "config": cfg.to_dict(), "config_hash": cfg.hash()}
    torch.manual_seed(cfg.seed)
    root = RunLayout.of(out_dir, run_id).root
    opened: dict = {}

    def open_run():
        # The ranks of one launch share the run; another invocation of it is refused.
        opened["lock"] = acquire_run_lock(root)
        assets = plan.assets(home)
        opened["run_dir"] = RunDir(root, run_id, stages, header)
        return assets

    completed = False
    try:
        # Rank 0 builds the world (resolving and hashing every asset) and opens the run directory
        # before any other rank looks at them; the others receive its assets, never resolve them.
        assets = distributed.from_main_process(open_run)
        if main_process:
            run_dir = opened["run_dir"]
        else:
            plan._assets = assets
            run_dir = RunDir(root, run_id, stages, header, writer=False)
        ctx = RunContext(plan=plan, run_dir=run_dir, home=home, assets=assets,
                         out_dir=Path(out_dir), progress=progress if main_process else (lambda _: None),
                         selection=selection)
        for name in stages:
            if run_dir.is_complete(name):
                ctx.progress(f"[{run_id}] {name}: already complete, skipped")
            else:
                _run_stage(ctx, name, main_process)
            if name == stop_after:
                break
        completed = True
    finally:
        distributed.leave_process_group(completed=completed)
        if opened.get("lock") is not None:
            opened["lock"].release()
    return ctx


_PEAK_RESETTABLE = True


def _reset_peak_rss() -> None:
    """Start the process's peak-resident-memory counter afresh (Linux's clear_refs "5" resets the
    high-water mark that ru_maxrss reports), so each stage's summary holds its own peak."""
    global _PEAK_RESETTABLE
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        _PEAK_RESETTABLE = False


def _run_stage(ctx: RunContext, name: str, main_process: bool) -> None:
    """Run one stage: on every rank if it is collective, else on rank 0 while the others wait."""
    run_dir = ctx.run_dir
    ctx.progress(f"[{run_dir.run_id}] {name} ...")
    run_dir.reset_stage(name)
    distributed.barrier()
    started = time.perf_counter()
    # What earlier stages freed (their models, a Trainer's gradients) is handed back first, so
    # this stage's peak is its own, not theirs left in malloc's heap.
    release_freed_memory()
    _reset_peak_rss()
    try:
        run_dir.mark(name, "running")
    except OSError as exc:  # a full disk before the stage began: one line, nothing else changed
        raise RunFailure(_describe_os_error(name, exc)) from exc
    kill_point(f"stage:{name}:start")
    error = None
    if name in COLLECTIVE_STAGES or main_process:
        # A stage rank 0 runs alone is a one-process job even under a launcher (its models, a
        # Trainer or a ZeRO-3 config left by train would otherwise take the launch for their own).
        solo = contextlib.nullcontext() if name in COLLECTIVE_STAGES else distributed.single_process_job()
        try:
            with solo:
                summary = STAGE_FUNCTIONS[name](ctx)
            kill_point(f"stage:{name}:end")
        except D2OBenchError as exc:
            error = exc
        except OSError as exc:
            error = RunFailure(_describe_os_error(name, exc))
            error.__cause__ = exc
        except Exception as exc:
            error = RunFailure(f"stage {name} failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        if error is not None:
            error = run_dir.record_failure(name, error)
    # Every rank learns whether rank 0's stage failed, so none waits forever on the next one.
    failure = distributed.main_process_outcome(None if error is None else str(error))
    if error is not None:
        raise error
    if failure is not None:
        raise RunFailure(f"rank 0 failed: {failure}")
    if main_process:
        summary["duration_s"] = time.perf_counter() - started
        summary["finished_at"] = now()
        # This stage's own peak resident memory where the kernel lets the peak be reset (Linux),
        # else the process's peak so far (which never falls: a stage's own peak is then a step up).
        summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary["peak_rss_scope"] = "stage" if _PEAK_RESETTABLE else "process"
        try:
            run_dir.mark(name, "complete", summary)
        except OSError as exc:  # the COMPLETE marker or run.json on a full disk
            raise run_dir.record_failure(name, RunFailure(_describe_os_error(name, exc))) from exc
    distributed.barrier()
