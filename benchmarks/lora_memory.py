"""Where a training step's peak resident memory goes, phase by phase: full training against LoRA.

    .venv/bin/python benchmarks/lora_memory.py [--only NAME ...] [--steps 2] [--trim] [--profile] [--dynamic]

Runs configurations of benchmarks/training.py (D²O at K = 11, batch 4, SmolLM2-135M fp32, the run
defaults; by default full training and LoRA r = 8), each in its own process, and splits every
optimizer step into its phases with the Trainer's own callbacks: forward (the step's start to
`compute_loss` returning), backward and gradient clipping (to `on_pre_optimizer_step`), the
optimizer's update (to `on_optimizer_step`) and zeroing the gradients (to the step's end). At
every boundary it resets the kernel's peak-RSS counter (Linux `/proc/self/clear_refs`), so each
phase's peak is its own, and it records the resident memory there together with what the
tensors the step keeps hold: parameters, gradients, optimizer state. With `--trim` it also calls
glibc's `malloc_trim(0)` at each boundary and records how much resident memory that returned,
which is memory the allocator kept after the tensors in it were freed. With `--profile` every step
after the first runs under `torch.profiler(profile_memory=True)`, whose allocation events give
the bytes live in tensors at their peak in each phase (RSS read under the profiler is inflated
by its own records; read peak RSS from a run without it).

Prints, per configuration and step, each phase's peak RSS and the RSS and tensor bytes at its
start, so the question "which phase holds the peak, and what is in memory there" has numbers.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import training as bench  # noqa: E402  (benchmarks/training.py: its configurations and worker)

PHASES = ("forward", "backward+clip", "optimizer", "zero_grad")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _tensor_mb(trainer) -> dict:
    """Bytes the step keeps in tensors the Trainer can name: parameters (trainable or frozen),
    their gradients, the optimizer's state."""
    params = list(trainer.model.parameters())
    seen, frozen, trainable, grads = set(), 0, 0, 0
    for p in params:
        if id(p) in seen:  # tied weights counted once
            continue
        seen.add(id(p))
        size = p.numel() * p.element_size()
        if p.requires_grad:
            trainable += size
        else:
            frozen += size
        if p.grad is not None:
            grads += p.grad.numel() * p.grad.element_size()
    state = 0
    if trainer.optimizer is not None:
        for per_param in trainer.optimizer.state.values():
            for value in per_param.values():
                if hasattr(value, "numel"):
                    state += value.numel() * value.element_size()
    mb = 2**20
    return {"frozen_mb": frozen / mb, "trainable_mb": trainable / mb, "grads_mb": grads / mb, "optimizer_mb": state / mb}


def _live_tensor_peaks(prof, marks: list[tuple[str, int]]) -> dict:
    """From the profiler's allocation events: how far the bytes live in tensors rose above their
    level at the profile's start, at its highest within each phase (`marks`: each phase's start,
    in the events' clock)."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    peaks, live, index = {}, 0, 0
    bounds = marks + [("end", float("inf"))]
    for (phase, _), (_, until) in zip(bounds, bounds[1:]):
        peak = live
        while index < len(events) and events[index][0] < until:
            live += events[index][1]
            peak = max(peak, live)
            index += 1
        peaks[phase] = {"peak_mb": peak / 2**20, "end_mb": live / 2**20}
    return peaks


def worker(spec: dict, trim: bool, profile: bool) -> dict:
    from transformers import TrainerCallback

    import harness.training

    libc = ctypes.CDLL("libc.so.6")
    records: list[dict] = []
    current: dict = {}
    profiled: dict = {"marks": []}

    def boundary(trainer, phase_ended: str | None, phase_starting: str | None, step: int) -> None:
        if "prof" in profiled and phase_starting is not None:
            profiled["marks"].append((f"{step} {phase_starting}", time.time_ns()))
        if phase_ended is not None:
            current[phase_ended] = {**current.get(phase_ended, {}), "peak_rss_mb": _hwm_mb()}
        mark = {"rss_mb": _rss_mb(), **_tensor_mb(trainer)}
        if trim:
            libc.malloc_trim(0)
            mark["rss_after_trim_mb"] = _rss_mb()
        if phase_starting is not None:
            current[phase_starting] = {"start": mark}
        else:
            current["end"] = mark
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        if phase_starting is None:
            records.append({"step": step, **current})
            current.clear()

    holder: dict = {}

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if profile and state.global_step == 1:
                # From the second step on, after the first one's one-off allocations (Adam's state).
                from torch.profiler import ProfilerActivity
                from torch.profiler import profile as torch_profile

                profiled["prof"] = torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True)
                profiled["prof"].__enter__()
                profiled["start"] = _tensor_mb(holder["trainer"])
            boundary(holder["trainer"], None if not current else "zero_grad", "forward", state.global_step)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            boundary(holder["trainer"], "backward+clip", "optimizer", state.global_step)

        def on_optimizer_step(self, args, state, control, **kwargs):
            boundary(holder["trainer"], "optimizer", "zero_grad", state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            boundary(holder["trainer"], "zero_grad", None, state.global_step - 1)
            # Every step after the first is profiled (the peak may be in any of them).
            if "prof" in profiled and "peaks" not in profiled and state.global_step >= state.max_steps:
                profiled["prof"].__exit__(None, None, None)
                profiled["peaks"] = _live_tensor_peaks(profiled["prof"], profiled["marks"])

    original_init = harness.training.MethodTrainer.__init__

    def init(self, *args, **kwargs):
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [Phases()]
        original_init(self, *args, **kwargs)
        holder["trainer"] = self
        compute = self.compute_loss

        def compute_loss(*a, **kw):
            out = compute(*a, **kw)
            boundary(self, "forward", "backward+clip", self.state.global_step)
            return out

        self.compute_loss = compute_loss

    harness.training.MethodTrainer.__init__ = init
    result = bench.worker(spec)
    return {"records": records, "median_step_s": result["median_step_s"], "last_loss": result["last_loss"],
            "live": {"start": profiled.get("start"), "peaks": profiled.get("peaks")}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) at every phase boundary")
    parser.add_argument("--profile", action="store_true",
                        help="every step after the first under torch.profiler: the bytes live in tensors, phase by phase")
    parser.add_argument("--dynamic", action="store_true",
                        help="glibc's dynamic mmap threshold, as training ran before harness/allocator.py")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker), args.trim, args.profile)), flush=True)
        return 0
    configs = bench.configurations(args.steps * 2, [512])
    names = args.only or ["d2o-k11-b4-defaults", "d2o-k11-b4-defaults-lora"]
    unknown = sorted(set(names) - set(configs))
    if unknown:
        parser.error(f"--only: unknown configuration(s) {', '.join(unknown)}")
    for name in names:
        spec = {**configs[name], "steps": args.steps, **({"allocator": "glibc-dynamic"} if args.dynamic else {})}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)] + (["--trim"] if args.trim else []) + (["--profile"] if args.profile else []),
                              capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{name} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-3:]}", file=sys.stderr)
            return 1
        result = json.loads(lines[-1][len("RESULT "):])
        print(f"\n{name}: median step {result['median_step_s']:.1f}s, last loss {result['last_loss']:.4f} "
              f"({time.perf_counter() - started:.0f}s)")
        print(f"  {'step':>4} {'phase':14s} {'peak RSS':>9} {'RSS@start':>10} {'trim→':>8} {'params':>8} "
              f"{'trainable':>9} {'grads':>7} {'optim':>7}   (MB)")
        for record in result["records"]:
            for phase in PHASES:
                if phase not in record:
                    continue
                r, s = record[phase], record[phase]["start"]
                print(f"  {record['step']:>4} {phase:14s} {r.get('peak_rss_mb', float('nan')):9.0f} {s['rss_mb']:10.0f} "
                      f"{s.get('rss_after_trim_mb', float('nan')):8.0f} {s['frozen_mb'] + s['trainable_mb']:8.0f} "
                      f"{s['trainable_mb']:9.1f} {s['grads_mb']:7.0f} {s['optimizer_mb']:7.0f}")
        live = result["live"]
        if live["peaks"]:
            start = live["start"]
            known = start["frozen_mb"] + start["trainable_mb"] + start["grads_mb"] + start["optimizer_mb"]
            print(f"  in tensors (torch.profiler, every step after the first): {known:.0f} MB of parameters, "
                  "gradients and optimizer state at step 1's start; peak rise above that, and rise at the phase's end:")
            for phase, value in live["peaks"].items():
                print(f"  {phase:19s} peak +{value['peak_mb']:6.0f}   end +{value['end_mb']:6.0f}   "
                      f"(peak in tensors ≈ {known + value['peak_mb']:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
