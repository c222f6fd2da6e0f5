"""The data stage: the method's training pairs and the evaluation prompts (with their groups),
read through the suite's sources and the dataset adapters; the dataset's fingerprint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from harness.data import pairs as pair_data
from harness.data.adapters import adapter_for, needs_chosen, with_chosen
from harness.errors import BadInput
from harness.models.loading import model_identity
from harness.stages.context import RunContext

if TYPE_CHECKING:
    from harness.plan import RunPlan
    from harness.suites import Assets


@dataclasses.dataclass
class Selection:
    """What the data stage reads and keeps: the sources' rows, the method's training examples
    (and how their chosen responses were filled) and the evaluation prompts."""

    train_rows: list
    eval_rows: list
    train_adapter: object
    examples: list[dict]
    chosen: object
    prompts: list[dict]


def select(plan: "RunPlan", assets: "Assets") -> Selection:
    """The training examples and evaluation prompts of a run, read from its (resolved) sources
    and written by nothing: the data stage writes them, `--dry-run` keys the shared caches by them
    (harness/stages/caches.py)."""
    cfg, method = plan.cfg, plan.method
    train_src, eval_src = assets.train_data, assets.eval_data
    train_name = f"{train_src.spec}[{cfg.data.train_split}]"
    eval_name = f"{eval_src.spec}[{cfg.data.eval_split}]"
    train_rows = pair_data.load_rows(train_src.spec, cfg.data.train_split, local_dir=train_src.local_dir)
    eval_rows = pair_data.load_rows(eval_src.spec, cfg.data.eval_split, local_dir=eval_src.local_dir)
    if cfg.data.held_out_share is not None:  # a split rule over a dataset without splits
        train_rows = pair_data.held_out_split(train_rows, cfg.data, "train")
        eval_rows = pair_data.held_out_split(eval_rows, cfg.data, "eval")

    train_adapter = adapter_for(_layout(cfg.data, train_src), train_src.format)
    examples = train_adapter.examples(train_rows, train_name, all_pairs=method.pair_selection == "all_pairs")
    examples, chosen = with_chosen(examples, needs_chosen(method), cfg.data.chosen_when_missing, method.name)
    if cfg.data.max_train_examples is not None:
        examples = examples[: cfg.data.max_train_examples]
    prompts = adapter_for(_layout(cfg.data, eval_src), eval_src.format).prompts(
        eval_rows, eval_name, cfg.data.max_eval_prompts, cfg.data.group_column)
    if method.trains and not examples:
        raise BadInput(f"dataset {train_src.spec}: no training pairs left after filtering")
    return Selection(train_rows, eval_rows, train_adapter, examples, chosen, prompts)


def run(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    layout = ctx.run_dir.layout
    train_src = ctx.assets.train_data
    train_name = f"{train_src.spec}[{cfg.data.train_split}]"
    selected = select(ctx.plan, ctx.assets)
    train_rows, eval_rows, examples = selected.train_rows, selected.eval_rows, selected.examples
    layout.train_examples.write(examples)
    layout.eval_prompts.write(selected.prompts)
    dataset = {
        "id": cfg.data.dataset,
        "suite": cfg.suite,
        "fingerprint": pair_data.fingerprint(train_rows + eval_rows),
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
    } | ctx.plan.suite.dataset_record(ctx.assets)
    if train_src.user_rows:
        # Which rows the policy trained on, and their human judgements for checking the cost model
        # on them at the score stage (harness/instruments/user_labels.py).
        from harness.instruments.user_labels import capped

        dataset["train_source"] = {
            "spec": str(Path(train_src.spec).expanduser().resolve()) if Path(train_src.spec).expanduser().exists()
            else train_src.spec,
            "format": train_src.format, "split": cfg.data.train_split,
            "fingerprint": pair_data.fingerprint(train_rows), "rows": len(train_rows)}
        layout.train_labels.write(capped(selected.train_adapter.labels(train_rows, train_name)))
    return {
        "dataset": dataset,
        "train_examples": len(examples),
        "chosen": selected.chosen,
        "eval_prompts": len(selected.prompts),
        "base_model": model_identity(ctx.assets.policy),
    }


def _layout(data_cfg, source):
    """The data settings a source is read with: a user's column mapping applies to the user's
    rows only; a suite's own files keep the layout's column names."""
    if source.user_rows:
        return data_cfg
    from harness.config import ColumnsConfig

    return dataclasses.replace(data_cfg, columns=ColumnsConfig())
