"""One rank of the DeepSpeed agreement test (tests/test_deepspeed_ranks.py); also runs alone.

Trains a seeded, randomly initialised tiny LlamaForCausalLM with a registered method through
`harness.training.train_method` (the pipeline's Trainer loop) on synthetic token data, and writes
rank 0's per-step loss curve plus every rank's per-step example indices as JSON:

    deepspeed --num_nodes 1 --num_accelerators 2 tests/deepspeed_worker.py --out r2.json \
        --per-device-batch 2 --deepspeed zero2

DeepSpeed's launcher appends `--local_rank=N`; it is accepted and ignored (the launcher also sets
LOCAL_RANK/RANK/WORLD_SIZE, which is what transformers reads). Without a launcher it trains on one
process, with or without DeepSpeed (a one-process DeepSpeed run sets up its own process group).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if os.environ.get("DS_ACCELERATOR") == "cpu":
    # DeepSpeed's launcher exports CUDA_VISIBLE_DEVICES=0..N-1 even for CPU "accelerators"; hide
    # any real GPU so that torch, transformers and DeepSpeed all agree on CPU + gloo.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402

VOCAB = 97
PAD = 0
EOS = 1


def synthetic_rows(n: int, k: int, seed: int) -> list[dict]:
    """Rows shaped like harness/stages/context.py's encoded_examples for the roles negative and samples:
    a prompt of 4-9 tokens followed by a response of 2-7 tokens and EOS, lengths varying so that
    batches need padding."""
    rng = random.Random(seed)

    def pair() -> tuple[list[int], int]:
        prompt = [rng.randrange(2, VOCAB) for _ in range(rng.randint(4, 9))]
        response = [rng.randrange(2, VOCAB) for _ in range(rng.randint(2, 7))] + [EOS]
        return prompt + response, len(prompt)

    rows = []
    for index in range(n):
        negative_ids, negative_start = pair()
        samples = [pair() for _ in range(k)]
        rows.append({
            "prompt_index": index,
            "prompt": f"synthetic prompt {index}",
            "negative_ids": negative_ids,
            "negative_start": negative_start,
            "samples_ids": [ids for ids, _ in samples],
            "samples_start": [start for _, start in samples],
        })
    return rows


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        pad_token_id=PAD, bos_token_id=EOS, eos_token_id=EOS, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    return model


def add_reference_logps(rows: list[dict], method, model) -> None:
    """`ref_<role>` columns as the reference_logps stage computes them: summed response log-probs
    under the reference policy (here the initial policy, as when π_ref is the base model)."""
    from harness.logprobs import EncodedPair, score_pairs

    model.eval()
    for role in method.reference_roles:
        if role == "samples":
            k = len(rows[0]["samples_ids"])
            flat = [EncodedPair(i, s) for r in rows for i, s in zip(r["samples_ids"], r["samples_start"])]
            values = score_pairs(model, flat, PAD, 64, f"reference ({role})")
            for n, row in enumerate(rows):
                row["ref_samples"] = values[n * k : (n + 1) * k]
        else:
            flat = [EncodedPair(r[f"{role}_ids"], r[f"{role}_start"]) for r in rows]
            for row, value in zip(rows, score_pairs(model, flat, PAD, 64, f"reference ({role})")):
                row[f"ref_{role}"] = value
    model.train()


def _full_parameters(model, zero_stage) -> dict:
    """Every parameter's values; under ZeRO-3 gathered first (outside a forward pass each
    parameter is an empty placeholder there, even on one rank)."""
    params = list(model.named_parameters())
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            return {name: p.detach().float().flatten().tolist() for name, p in params}
    return {name: p.detach().float().flatten().tolist() for name, p in params}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="JSON file for the loss curve and batches")
    parser.add_argument("--method", default="d2o")
    parser.add_argument("--k", type=int, default=2, help="self-samples per prompt (d2o)")
    parser.add_argument("--per-device-batch", type=int, required=True)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--deepspeed", default=None, help="a harness ZeRO preset or a JSON path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-steps", type=int, default=0, help="checkpoint interval (train.save_steps)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="where checkpoints live across invocations (default: a scratch directory)")
    parser.add_argument("--gradient-cache-tokens", type=int, default=0,
                        help="train.gradient_cache with chunks of this many padded tokens (0: off)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from datasets import Dataset

    import harness.training as training
    from harness.distributed import leave_process_group
    from harness.config import TrainConfig
    from harness.registry import get_method

    method_cls = get_method(args.method)
    config_fields = {"k": args.k} if "k" in method_cls.Config.__dataclass_fields__ else {}
    method = method_cls(method_cls.Config(**config_fields))
    if set(method.roles) - {"negative", "samples"}:
        raise SystemExit(f"the worker builds only negative/samples roles; {args.method} needs {method.roles}")

    rows = synthetic_rows(args.examples, args.k, seed=1000 + args.seed)
    model = tiny_llama(args.seed)
    add_reference_logps(rows, method, model)

    # Which examples each rank trains on, in order: the collator is the one place that sees them.
    # (With dataloader_num_workers=0 batches are collated in the order they are consumed;
    # accelerate fetches one batch ahead, so the list can run one batch past the last step.)
    seen: list[list[int]] = []

    class RecordingCollator(training.RoleCollator):
        def __call__(self, rows_in):
            seen.append([int(r["prompt_index"]) for r in rows_in])
            return super().__call__(rows_in)

    training.RoleCollator = RecordingCollator

    train_cfg = TrainConfig(
        learning_rate=args.lr, max_steps=args.steps, per_device_batch_size=args.per_device_batch,
        gradient_accumulation_steps=args.grad_accum, lr_scheduler="constant", warmup_ratio=0.0,
        max_grad_norm=1.0, deepspeed=args.deepspeed, logging_steps=1, save_steps=args.save_steps,
        gradient_cache=args.gradient_cache_tokens > 0, gradient_cache_tokens=max(1, args.gradient_cache_tokens),
    )
    with tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(args.seed)  # as the train stage does before train_method
        result = training.train_method(
            method=method, model=model, tokenizer=SimpleNamespace(pad_token_id=PAD),
            dataset=Dataset.from_list(rows), train_cfg=train_cfg,
            output_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else Path(scratch) / "trainer",
            seed=args.seed,
        )
    trainer = result.pop("trainer")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    engine = getattr(trainer, "model_wrapped", None)
    zero_stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None
    record = {
        "rank": rank,
        "world_size": world,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "device": str(trainer.args.device),
        "deepspeed_engine": type(engine).__name__,
        "zero_stage": zero_stage,
        "loss_curve": result["loss_curve"],
        "grad_norm_curve": result["grad_norm_curve"],
        "batches": seen,
        "resumed_from_step": result["resumed_from_step"],
        "first_step_trained": result["first_step_trained"],
        "final_parameters": _full_parameters(getattr(trainer.model, "module", trainer.model), zero_stage),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out if world == 1 else out.with_name(f"{out.stem}.rank{rank}{out.suffix}")
    path.write_text(json.dumps(record))
    leave_process_group(completed=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
