"""Benchmark: peak memory and time of the self-samples stage's heaviest `generate` work, calls
cut to `sampling.memory_budget_mb` against one call per batch of `sampling.batch_size` prompts,
side by side.

    D2O_BENCH_HOME=... .venv/bin/python benchmarks/self_samples_memory.py \
        [--prompts-from $D2O_BENCH_HOME/cache/self_samples/<key>.json] [--batch 32] [--k 11] \
        [--tokens 48] [--budgets 0 1024]

SmolLM2-135M-Instruct (the harness's converted checkpoint, built once into $D2O_BENCH_HOME),
fp32. The prompts are a self-samples cache entry's (a real run's training prompts) or, without
`--prompts-from`, the real-data fixture's (benchmarks/sampling.py's `benchmark_prompts`),
chat-formatted as the stage formats them. Of the length-sorted runs of `--batch` prompts the
stage generates in, only the one the memory estimate puts highest is generated: it holds the
stage's peak, and the others would only add time. Each budget runs in a fresh process (the
policy loaded, then the high-water mark reset through /proc/self/clear_refs, so "peak" is the
generation's own); budget 0 is the unbudgeted stage (every call `--batch` prompts × K
sequences). Prints, per budget, the calls, the peak, the estimate of the largest call
(`GenerationFootprint`) against the peak above the loaded policy, the time, and the peaks'
ratios to the unbudgeted one. Defaults are real-smollm2's (sampling.batch_size 32, K = 11,
48 new tokens, temperature 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from pathlib import Path
from harness.generation import generate_completions, model_footprint, plan_calls, prompt_token_counts
from harness.models.loading import load_policy

def high_water_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

args = json.loads(sys.argv[1])
model, tokenizer = load_policy(args["policy"], dtype="float32")
texts = args["texts"]
budget = args["budget_mb"] * 2**20 or None
footprint = model_footprint(model)
order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
counts = prompt_token_counts(tokenizer, [texts[i] for i in order])
calls = plan_calls(counts, batch_size=args["batch"], sequences_per_prompt=args["k"], new_tokens=args["tokens"],
                   footprint=footprint, budget_bytes=budget)
estimate = max(len(c) * args["k"] * footprint.per_sequence(max(counts[i] for i in c), args["tokens"]) for c in calls)
Path("/proc/self/clear_refs").write_text("5")
loaded_mb = high_water_mb()
started = time.perf_counter()
out = generate_completions(model, tokenizer, texts, max_new_tokens=args["tokens"], do_sample=True, temperature=1.0,
                           num_return_sequences=args["k"], batch_size=args["batch"], seed=0,
                           memory_budget_bytes=budget)
print(json.dumps({"seconds": time.perf_counter() - started, "loaded_mb": loaded_mb, "peak_mb": high_water_mb(),
                  "calls": [len(c) for c in calls], "estimate_mb": estimate / 2**20,
                  "tokens": sum(len(tokenizer(c.text)["input_ids"]) for g in out for c in g)}))
"""


def heaviest_run(policy: str, texts: list[str], batch: int, k: int, tokens: int) -> tuple[list[str], int]:
    """The run of `batch` length-sorted prompts the estimate puts highest, and its longest prompt in tokens."""
    from transformers import AutoConfig, AutoTokenizer

    from harness.generation import footprint_of, plan_calls, prompt_token_counts

    tokenizer = AutoTokenizer.from_pretrained(policy)
    footprint = footprint_of(AutoConfig.from_pretrained(policy), 4)
    ordered = sorted(texts, key=len)
    counts = prompt_token_counts(tokenizer, ordered)
    runs = plan_calls(counts, batch_size=batch, sequences_per_prompt=k, new_tokens=tokens, footprint=None,
                      budget_bytes=None)
    run = max(runs, key=lambda r: len(r) * footprint.per_sequence(max(counts[i] for i in r), tokens))
    return [ordered[i] for i in run], max(counts[i] for i in run)


def prompts(policy: str, prompts_from: str | None) -> tuple[list[str], str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy)
    if prompts_from is None:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from sampling import benchmark_prompts

        return benchmark_prompts(tokenizer, 64), "the real-data fixture's first 64 distinct prompts"
    from harness.prompting import format_prompt

    try:
        entry = json.loads(Path(prompts_from).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--prompts-from: cannot read {prompts_from}: {exc}")
    entry = entry.get("value", entry)
    if not isinstance(entry, dict) or not isinstance(entry.get("texts"), dict):
        raise SystemExit(f"--prompts-from: {prompts_from} is not a self-samples cache entry (no 'texts')")
    raw = sorted(entry["texts"])
    return [format_prompt(p, "chat", tokenizer) for p in raw], f"the {len(raw)} training prompts of {prompts_from}"


def run(config: dict) -> dict:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"budget {config['budget_mb']} MB failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts-from", help="a self-samples cache entry whose prompts to use (default: the fixture's)")
    parser.add_argument("--batch", type=int, default=32, help="sampling.batch_size")
    parser.add_argument("--k", type=int, default=11, help="samples per prompt")
    parser.add_argument("--tokens", type=int, default=48, help="sampling.max_new_tokens")
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 1024],
                        help="sampling.memory_budget_mb values to compare (0: unbudgeted, the first is the baseline)")
    args = parser.parse_args()
    if min(args.batch, args.k, args.tokens) < 1 or min(args.budgets) < 0:
        parser.error("--batch, --k and --tokens must be >= 1 and --budgets >= 0")
    sys.path.insert(0, str(ROOT))
    from harness.models.smollm2 import ensure_smollm2_checkpoint

    home = Path(os.environ.get("D2O_BENCH_HOME") or Path.home() / ".cache" / "d2o-bench")
    policy = str(ensure_smollm2_checkpoint(home))
    texts, source = prompts(policy, args.prompts_from)
    run_texts, longest = heaviest_run(policy, texts, args.batch, args.k, args.tokens)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"self-samples, heaviest run of {len(run_texts)} prompts (longest {longest} tokens) × K = {args.k}, "
          f"{args.tokens} new tokens, batch {args.batch}; prompts: {source} ({started})", flush=True)
    results = {}
    for budget in args.budgets:
        r = results[budget] = run({"policy": policy, "texts": run_texts, "batch": args.batch, "k": args.k,
                                   "tokens": args.tokens, "budget_mb": budget})
        name = "unbudgeted" if budget == 0 else f"{budget} MB"
        print(f"  {name:11s} calls {r['calls']}  peak {r['peak_mb']:6.0f} MB (policy loaded {r['loaded_mb']:.0f} MB; "
              f"above it {r['peak_mb'] - r['loaded_mb']:.0f} MB, estimated {r['estimate_mb']:.0f} MB)  "
              f"{r['seconds']:6.1f} s  {r['tokens'] / r['seconds']:.1f} tokens/s", flush=True)
    base = results[args.budgets[0]]
    for budget in args.budgets[1:]:
        print(f"  peak ratio {budget} MB / {args.budgets[0] or 'unbudgeted'}: "
              f"{results[budget]['peak_mb'] / base['peak_mb']:.3f}; time ratio "
              f"{results[budget]['seconds'] / base['seconds']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
