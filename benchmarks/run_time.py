"""Benchmark: the one-time tiny-world build and `d2o-bench --method d2o` after it, side by side.

    .venv/bin/python benchmarks/run_time.py [--method d2o] [--extra-set KEY=VALUE ...]

Uses a fresh D2O_BENCH_HOME. Times (1) the world build alone, then (2) a full run with the built
world but cold run caches (no self-samples, reference log-probs or base evaluation cached), as a
user's first `d2o-bench --method d2o` after setup would be, then (3) the same run again from a
new output directory with warm caches. Prints each wall time and its ratio to the budget
(build ≤ 300 s, run ≤ 180 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD_BUDGET_S = 300.0
RUN_BUDGET_S = 180.0


def timed(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="d2o")
    parser.add_argument("--extra-set", action="append", default=[])
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="d2o-bench-home-"))
    out = Path(tempfile.mkdtemp(prefix="d2o-bench-out-"))
    env = dict(os.environ, D2O_BENCH_HOME=str(home))
    sets = [a for pair in args.extra_set for a in ("--set", pair)]
    build_code = (
        "from pathlib import Path; from harness.config import WorldConfig; "
        "from harness.models.tiny_build import ensure_tiny_world; "
        f"ensure_tiny_world(Path({str(home)!r}), WorldConfig())"
    )
    try:
        build = timed([sys.executable, "-c", build_code], env)
        cold = timed([sys.executable, "-m", "harness", "--method", args.method, "--out", str(out / "cold"), *sets], env)
        warm = timed([sys.executable, "-m", "harness", "--method", args.method, "--out", str(out / "warm"), *sets], env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    print(f"cpu cores: {os.cpu_count()}")
    print(f"world build (one-time):            {build:7.1f} s   {build / BUILD_BUDGET_S:5.2f} × the 300 s budget")
    print(f"d2o-bench --method {args.method} (cold caches): {cold:7.1f} s   {cold / RUN_BUDGET_S:5.2f} × the 180 s budget")
    print(f"d2o-bench --method {args.method} (warm caches): {warm:7.1f} s   {warm / RUN_BUDGET_S:5.2f} × the 180 s budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
