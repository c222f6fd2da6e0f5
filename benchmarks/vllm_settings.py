"""Benchmark: vLLM server settings against each other on the sampling benchmark's workload.

    .venv/bin/python benchmarks/vllm_settings.py --setting default= \\
        --setting uni='--distributed-executor-backend uni' \\
        --setting no-split-kv='VLLM_CPU_ATTN_SPLIT_KV=0' [--rounds 3] [--prompts 64] [--k 1] [--tokens 48]

Each `--setting NAME=SPEC` starts the server as `harness.server_sampling.launch_vllm` does (the
recipe of docs/SAMPLING_SERVER.md) with SPEC on top: `KEY=VALUE` words set environment variables,
the other words are server arguments appended to the recipe's. The workload, prompts, request
seeding and token count are `benchmarks/sampling.py`'s (`sample_from_server`, temperature 1, the
prompts all in flight at once, `--k` completions each). Per setting: one warm-up pass, then
`--rounds` seeded passes, the prefix cache emptied before each.

A server start takes minutes (vllm-cpu recompiles), so settings cannot alternate round by round
as the sampling benchmark's ways do; instead the first setting is the baseline and runs again
last, and each setting's ratio is given against both baseline runs, so drift over the run shows.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ENV_WORD = re.compile(r"[A-Z_][A-Z0-9_]*=")


def parse_setting(text: str) -> tuple[str, tuple[str, ...], dict[str, str]]:
    """`NAME=SPEC` → (name, server arguments, environment)."""
    name, sep, spec = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"--setting {text!r}: expected NAME=SPEC with NAME of letters, digits, '.', '_' or '-'")
    try:
        words = shlex.split(spec)
    except ValueError as exc:
        raise ValueError(f"--setting {name}: {exc}") from None
    env = dict(w.split("=", 1) for w in words if ENV_WORD.match(w))
    return name, tuple(w for w in words if not ENV_WORD.match(w)), env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=SPEC",
                        help="a server setting: KEY=VALUE environment words and server arguments; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--k", type=int, default=1, help="completions per prompt (the server's n), as the self_samples stage asks")
    parser.add_argument("--port", type=int, default=8831)
    args = parser.parse_args()
    for name in ("rounds", "prompts", "tokens", "k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if len(args.setting) < 2:
        parser.error("give at least two --setting NAME=SPEC (the first is the baseline)")
    try:
        settings = [parse_setting(text) for text in args.setting]
    except ValueError as exc:
        parser.error(str(exc))
    names = [name for name, _, _ in settings]
    if len(set(names)) != len(names):
        parser.error(f"--setting names must differ: {names}")

    from sampling import benchmark_prompts, completion_tokens, reset_prefix_cache, start_vllm, stop_vllm
    from transformers import AutoTokenizer

    from harness.models.smollm2 import ensure_smollm2_checkpoint
    from harness.server_sampling import ServerSettings, sample_from_server, vllm_python

    python = vllm_python(ROOT)
    if python is None:
        parser.error("no .venv-vllm and no D2O_BENCH_VLLM_PYTHON (docs/SAMPLING_SERVER.md)")
    home = Path(os.environ.get("D2O_BENCH_HOME") or Path.home() / ".cache" / "d2o-bench")
    checkpoint = ensure_smollm2_checkpoint(home)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    prompts = benchmark_prompts(tokenizer, args.prompts)
    client = ServerSettings(base_url=f"http://127.0.0.1:{args.port}/v1", concurrency=args.prompts)

    def one_pass(seed: int) -> float:
        reset_prefix_cache(args.port)
        started = time.perf_counter()
        groups = sample_from_server(prompts, settings=client, model="policy", k=args.k, temperature=1.0, top_p=1.0,
                                    top_k=0, max_new_tokens=args.tokens, seed=seed)
        return completion_tokens(tokenizer, groups) / (time.perf_counter() - started)

    order = [*settings, (f"{names[0]} (again)", *settings[0][1:])]
    rates: dict[str, list[float]] = {}
    for name, server_args, env in order:
        log_path = Path("/tmp") / f"bench-vllm-settings-{args.port}.log"
        started = time.monotonic()
        server = start_vllm(python, checkpoint, args.port, log_path, preload=[], extra_args=server_args, extra_env=env)
        try:
            up = time.monotonic() - started
            one_pass(0)  # warm-up: the first requests compile shapes
            rates[name] = [one_pass(round_ + 1) for round_ in range(args.rounds)]
        finally:
            stop_vllm(server)
        values = rates[name]
        print(f"{name:24s} up in {up:4.0f}s  {statistics.median(values):7.1f} tokens/s "
              f"[{min(values):.1f}, {max(values):.1f}]  args {' '.join(server_args) or '-'}  "
              f"env {' '.join(f'{k}={v}' for k, v in env.items()) or '-'}", flush=True)

    first, last = (statistics.median(rates[n]) for n in (names[0], order[-1][0]))
    print(f"\nprompts: {args.prompts} × k {args.k}  max new tokens: {args.tokens}  rounds: {args.rounds}  "
          f"baseline {names[0]}: {first:.1f} then {last:.1f} tokens/s")
    for name in names[1:]:
        median = statistics.median(rates[name])
        print(f"{name:24s} / {names[0]}: {median / first:.3f} (first run), {median / last:.3f} (last run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
