"""Benchmark: peak memory and time of the score stage's capability run (lm-eval), batches cut to
the logits budget against lm-eval's fixed batches, side by side.

    D2O_BENCH_HOME=... .venv/bin/python benchmarks/capability_memory.py \
        --tasks-dir $D2O_BENCH_HOME/cache/suites/real-safety-<hash>/lm_eval_tasks \
        --policy $D2O_BENCH_HOME/models/smollm2-135m-instruct-<hash> [--batch 32] [--limit 5]

Each configuration runs in a fresh process (the policy loaded, then the high-water mark reset
through /proc/self/clear_refs, so "peak" is the capability run's own); "fixed" sets the budget
so high that every batch holds `--batch` requests, which is what lm-eval's HFLM does with an
integer batch size. Prints both peaks, their ratio and both accuracies (which must agree).
Defaults are real-smollm2's (eval.batch_size 32, eval.lm_eval_limit 5, MMLU and ARC-Easy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, sys, time
from pathlib import Path
from harness.models.loading import load_policy
from harness.scoring import capability

def high_water_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

args = json.loads(sys.argv[1])
if args["budget_bytes"]:
    capability.LOGITS_BUDGET_BYTES = args["budget_bytes"]
model, tokenizer = load_policy(args["policy"], dtype="float32")
Path("/proc/self/clear_refs").write_text("5")
loaded_mb = high_water_mb()
started = time.perf_counter()
out = capability.run_capability(model, tokenizer, args["tasks"], limit=args["limit"], batch_size=args["batch"],
                                include_paths=[Path(args["tasks_dir"])])
print(json.dumps({"seconds": time.perf_counter() - started, "loaded_mb": loaded_mb, "peak_mb": high_water_mb(),
                  "acc": {name: task["metrics"]["acc"]["value"] for name, task in out["tasks"].items()}}))
"""


def run(config: dict) -> dict:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks-dir", required=True, help="the suite's lm_eval_tasks folder")
    parser.add_argument("--policy", required=True, help="the converted policy's folder")
    parser.add_argument("--tasks", nargs="+", default=["mmlu_offline", "arc_easy_offline"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--limit", type=int, default=5)
    args = parser.parse_args()
    base = {"policy": args.policy, "tasks_dir": args.tasks_dir, "tasks": args.tasks, "batch": args.batch,
            "limit": args.limit}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = {"budgeted": run({**base, "budget_bytes": None}),
               "fixed": run({**base, "budget_bytes": 1 << 62})}
    print(f"capability run, batch {args.batch}, limit {args.limit}, tasks {' '.join(args.tasks)} ({started})")
    for name, result in results.items():
        print(f"  {name:9s} peak {result['peak_mb']:7.0f} MB (policy loaded: {result['loaded_mb']:.0f} MB)  "
              f"{result['seconds']:6.1f} s  acc {json.dumps(result['acc'])}")
    print(f"  peak ratio budgeted/fixed: {results['budgeted']['peak_mb'] / results['fixed']['peak_mb']:.3f}; "
          f"accuracies equal: {results['budgeted']['acc'] == results['fixed']['acc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
