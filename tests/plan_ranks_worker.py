"""One rank of tests/test_plan_ranks.py: a rank that must receive its run plan, not resolve it.

On every rank but 0 it first replaces everything that resolves a run (resolve_plan, the suite
lookup, asset resolution, the suite's check, preflight) with a function that records the call in
`$PLAN_RANKS_RECORD/violations.rank<N>` and raises, so a non-zero rank that resolved anything itself
fails the run and says where. Every rank records the plan it ended up with
(`plan.rank<N>.json`: run id, config hash, K, stages) and what it trained
(`trained.rank<N>.json`) for the test to compare.

    python tests/plan_ranks_worker.py cli ARGS...          # `d2o-bench ARGS` (under a launcher)
    python tests/plan_ranks_worker.py share [--set K=V]...  # shared_plan alone, for the tiny preset
    python tests/plan_ranks_worker.py solo                  # rank 0 trains with a Trainer, alone

`share` mode exits 0 with the plan recorded, or 2/1 with the error's one line recorded in
`error.rank<N>`; with PLAN_RANKS_FAIL_RANK0 set, rank 0's resolution raises BadInput; with
PLAN_RANKS_SLOW_RANK0=S, it first sleeps S seconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if os.environ.get("DS_ACCELERATOR") == "cpu":
    # As in tests/deepspeed_worker.py: CPU ranks, whatever GPU the machine has.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

RANK = int(os.environ.get("RANK", "0"))
RECORD = Path(os.environ["PLAN_RANKS_RECORD"])


def _forbidden(what: str):
    def refuse(*args, **kwargs):
        with open(RECORD / f"violations.rank{RANK}", "a") as handle:
            handle.write(what + "\n")
        raise AssertionError(f"rank {RANK} called {what} itself instead of receiving rank 0's plan")

    return refuse


def guard_non_zero_rank() -> None:
    if RANK == 0:
        return
    import harness.pipeline
    import harness.plan
    import harness.preflight
    import harness.suites

    for module, name in ((harness.plan, "resolve_plan"), (harness.plan, "get_suite"), (harness.suites, "get_suite"),
                         (harness.plan, "resolve_assets"), (harness.suites, "resolve_assets"),
                         (harness.pipeline, "resolve_assets"), (harness.preflight, "preflight")):
        setattr(module, name, _forbidden(f"{module.__name__}.{name}"))
    unchecked = harness.plan.RunPlan.check

    def check(plan):
        if not plan._checked:
            _forbidden("RunPlan.check (the suite's check)")()
        unchecked(plan)

    harness.plan.RunPlan.check = check


def record_plans() -> None:
    """Every rank writes down the plan shared_plan gave it."""
    import harness.plan

    share = harness.plan.shared_plan

    def recorded(cfg, resolve):
        plan = share(cfg, resolve)
        (RECORD / f"plan.rank{RANK}.json").write_text(json.dumps(
            {"run_id": plan.run_id, "config_hash": plan.cfg.hash(), "k": plan.k, "stages": plan.stages,
             "checked": plan._checked, "suite": type(plan.suite).__name__}))
        return plan

    harness.plan.shared_plan = recorded


def record_training() -> None:
    """Every rank writes down what it trained: the rows, K, the world it trained in, its losses."""
    import harness.training

    train = harness.training.train_method

    def recorded(**kwargs):
        import torch

        result = train(**kwargs)
        (RECORD / f"trained.rank{RANK}.json").write_text(json.dumps(
            {"rows": len(kwargs["dataset"]), "samples_per_prompt": kwargs["samples_per_prompt"],
             "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
             "loss_curve": result["loss_curve"]}))
        return result

    harness.training.train_method = recorded


def share(argv: list[str]) -> int:
    from harness.config import parse_set_options, resolve_config
    from harness.errors import BadInput, D2OBenchError
    from harness.plan import resolve_plan, shared_plan

    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = resolve_config(method="d2o", preset="tiny", seed=None, overrides=parse_set_options(sets))

    def resolve():
        if os.environ.get("PLAN_RANKS_SLOW_RANK0"):
            import time

            time.sleep(float(os.environ["PLAN_RANKS_SLOW_RANK0"]))
        if os.environ.get("PLAN_RANKS_FAIL_RANK0"):
            raise BadInput("rank 0 refuses this configuration")
        return resolve_plan(cfg)

    try:
        shared_plan(cfg, resolve)
    except D2OBenchError as exc:
        (RECORD / f"error.rank{RANK}").write_text(str(exc))
        return exc.exit_code
    from harness.distributed import leave_process_group

    leave_process_group(completed=True)
    return 0


def solo() -> int:
    """Rank 0 trains a small model with the tiny world's Trainer inside `from_main_process` (as it
    builds the world under a launcher) while rank 1 waits; both then meet in the launch's group."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness import distributed
    from harness.models.tiny_build import _LossFnTrainer, _training_args

    def train() -> dict:
        import tempfile

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2))
        rows = [{"input_ids": [(i + j) % 32 for j in range(8)]} for i in range(8)]

        def collate(batch):
            return {"input_ids": torch.tensor([r["input_ids"] for r in batch])}

        def loss_fn(model, batch):
            return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

        from datasets import Dataset

        with tempfile.TemporaryDirectory() as scratch:
            args = _training_args(scratch, epochs=2, lr=1e-2, batch_size=4, seed=0)
            trainer = _LossFnTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                     data_collator=collate, loss_fn=loss_fn)
            trainer.train()
            seen = {"world_size": args.world_size, "parallel_mode": str(args.parallel_mode),
                    "steps": trainer.state.global_step,
                    "launch_variables": sorted(v for v in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if v in os.environ)}
        return seen

    seen = distributed.from_main_process(train)
    # The launch's own group is intact: every rank still meets in it.
    box = [RANK]
    torch.distributed.all_reduce(torch.ones(1))
    torch.distributed.broadcast_object_list(box, src=0)
    (RECORD / f"solo.rank{RANK}.json").write_text(json.dumps(
        {"trained": seen, "group_size": torch.distributed.get_world_size(), "from_rank": box[0],
         "rank_after": os.environ.get("RANK"), "world_size_after": os.environ.get("WORLD_SIZE")}))
    distributed.leave_process_group(completed=True)
    return 0


def main() -> int:
    # DeepSpeed's launcher puts `--local_rank=N` first: the CLI takes it wherever it stands.
    args = sys.argv[1:]
    position = next(i for i, a in enumerate(args) if not a.startswith("--local"))
    mode, argv = args[position], args[:position] + args[position + 1:]
    RECORD.mkdir(parents=True, exist_ok=True)
    guard_non_zero_rank()
    record_plans()
    record_training()
    if mode == "share":
        return share(argv)
    if mode == "solo":
        return solo()
    from harness.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
