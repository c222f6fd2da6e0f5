"""The train stage: the method's objective on the tokenised examples and their reference
log-probs (harness/training.py), with LoRA and online self-sample refreshes where configured."""

from __future__ import annotations

import torch

from harness import lora
from harness.errors import BadInput
from harness.stages.context import RunContext


def run(ctx: RunContext) -> dict:
    skip = ctx.plan.stage_skip("train")
    if skip:
        return {"skipped": skip}
    from datasets import Dataset

    from harness.training import train_method

    layout = ctx.run_dir.layout
    use_lora = lora.enabled(ctx.cfg.train)
    model, tokenizer = ctx.load_policy(ctx.assets.policy, quantized=use_lora and ctx.cfg.train.lora.quantize_4bit)
    if use_lora:
        model = lora.wrap(model, ctx.cfg.train.lora, gradient_checkpointing=ctx.cfg.train.gradient_checkpointing)
    rows = ctx.encoded_examples(ctx.assets.policy, tokenizer)
    if ctx.method.reference_roles:
        reference = layout.reference_logps.read()
        for role, values in reference.items():
            for row, value in zip(rows, values):
                row[f"ref_{role}"] = value
    refresher = _online_refresher(ctx, tokenizer, rows)
    torch.manual_seed(ctx.cfg.seed)
    try:
        result = train_method(
            method=ctx.method, model=model, tokenizer=tokenizer, dataset=Dataset.from_list(rows),
            # Kept until the stage is marked complete: a run killed even after training resumes.
            train_cfg=ctx.cfg.train, output_dir=ctx.run_dir.checkpoint_dir("train"), seed=ctx.cfg.seed,
            sample_refresher=refresher, run_root=ctx.run_dir.root, run_name=ctx.run_dir.run_id,
            samples_per_prompt=ctx.plan.k if "samples" in ctx.method.roles else None,
        )
    finally:
        if refresher is not None:
            refresher.close()
    trainer = result.pop("trainer")
    # Collective under ZeRO-3; only rank 0 writes. With LoRA the Trainer saves the adapter alone,
    # merged into the base as the policy below.
    adapter = layout.adapter
    trainer.save_model(str(adapter if use_lora else layout.policy))
    summary = {k: v for k, v in result.items() if k != "diagnostics"} | {"examples": len(rows)}
    if ctx.run_dir.writer:
        if use_lora:
            lora.save_merged(adapter, ctx.assets.policy, layout.policy, dtype=ctx.cfg.model.dtype,
                             gguf_file=ctx.cfg.model.gguf_file, training_args=trainer.args)
            summary["lora"] = lora.record(ctx.cfg.train.lora, adapter, trainer.model)
        tokenizer.save_pretrained(layout.policy)
        layout.trajectory.write(result["diagnostics"])
    if refresher is not None:
        summary["sample_refreshes"] = refresher.refreshes
    return summary


def _online_refresher(ctx: RunContext, tokenizer, rows: list[dict]):
    refresh_every = ctx.plan.refresh_every
    if refresh_every <= 0 or "samples" not in ctx.method.roles:
        return None
    from harness.online import OnlineSampleRefresher

    if ctx.cfg.train.deepspeed and "zero3" in ctx.cfg.train.deepspeed:
        raise BadInput("online self-sample refresh cannot snapshot a ZeRO-3 partitioned policy; use zero0-2")
    from harness.anchors import sampling_prompt_text

    anchors = ctx.method.anchor_settings()  # the method refuses a filter with online refreshes
    spec = ctx.assets.references["samples"]
    if lora.enabled(ctx.cfg.train) and spec == ctx.assets.policy:
        # π_r− is the frozen base under the adapters: the policy with them disabled (None).
        reference_model = None
    else:
        reference_model, _ = ctx.load_policy(spec)
    # The frozen models wait on disk between draws (harness/online.py), beside the checkpoints;
    # scratch, not resume state (a checkpoint holds the refresher's), so removed after training.
    park_dir = ctx.run_dir.checkpoint_dir("train") / "online-models"
    park_dir.mkdir(parents=True, exist_ok=True)
    return OnlineSampleRefresher(
        reference_model=reference_model,
        park_dir=park_dir,
        tokenizer=tokenizer,
        prompt_texts=[ctx.prompt_text(r["prompt"], tokenizer) for r in rows],
        sampling_texts=[sampling_prompt_text(r["prompt"], anchors, ctx.cfg.model.prompt_format, tokenizer)
                        for r in rows],
        k=ctx.plan.k,
        sampling=ctx.cfg.sampling,
        refresh_every=refresh_every,
        max_length=ctx.cfg.train.max_length,
        seed=ctx.cfg.seed,
    )
