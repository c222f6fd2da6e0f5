"""A user's own dataset (any adapter layout), measured only by instruments that apply to any data.

Those are the refusal rules, the judge, lm-eval tasks and whatever score models the user names
(`model.cost_model` / `model.reward_model`, or `none`). The tiny world's scorers are refused:
they know only the tiny world's words and would call every real answer safe.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import BadInput
from harness.instruments import RefusalRules, ScoreModels
from harness.suites import (Assets, DataSource, PlannedAsset, Suite, planned_data, planned_models, references_for,
                            resolve_policy)

NONE = ("none", "")


def _score_spec(value: str):
    return None if value.strip().lower() in NONE else value


def _check_held_out(data_cfg) -> None:
    """A single file has no splits: read at data.train_split and at data.eval_split it gives the
    same rows, so every evaluation prompt would have been trained on and nothing would say so."""
    train = Path(data_cfg.dataset).expanduser()
    if data_cfg.held_out_share is not None:
        if train.is_dir():
            raise BadInput(f"data.held_out_share splits a dataset without splits; data.dataset {data_cfg.dataset} is "
                           "a folder of split files: name its evaluation split with data.eval_split instead")
        return  # a split rule: held_out_split divides the rows
    if data_cfg.eval_dataset is None:
        if train.is_file():
            raise BadInput(f"data.dataset {data_cfg.dataset} is a single file, so it has no held-out split: it would "
                           "be both the training and the evaluation data; name the evaluation prompts with "
                           "--set data.eval_dataset=FILE, hold out a share of its prompts with "
                           "--set data.held_out_share=0.2, or give a folder with <split>.jsonl files")
        return
    evaluated = Path(data_cfg.eval_dataset).expanduser()
    if evaluated.exists() and train.exists() and evaluated.resolve() == train.resolve() and train.is_file():
        raise BadInput(f"data.eval_dataset {data_cfg.eval_dataset} is data.dataset itself: the evaluation prompts "
                       "must be held out from training")


class CustomSuite(Suite):
    name = "custom"
    reads_user_evaluation_data = True

    def check(self, cfg) -> None:
        if cfg.data.dataset == "tiny-world":
            raise BadInput("suite custom reads your dataset (data.dataset); the tiny world is suite tiny-world")
        _check_held_out(cfg.data)
        for field in ("reward_model", "cost_model"):
            if getattr(cfg.model, field) == "tiny-world":
                raise BadInput(f"model.{field}=tiny-world is the tiny world's instrument and knows only its words; "
                               f"it does not apply to {cfg.data.dataset}: name a model for this data or "
                               f"--set model.{field}=none")

    def resolve(self, cfg, home: Path) -> Assets:
        tiny = None
        if "tiny-world" in (cfg.model.policy, cfg.model.reference_for_samples, cfg.model.reference_for_negatives):
            from harness.models.tiny_build import ensure_tiny_world

            tiny = ensure_tiny_world(home, cfg.world)  # the world's policy as a starting model only
        policy = resolve_policy(cfg.model.policy, home, tiny)
        data = DataSource(cfg.data.dataset, cfg.data.format, user_rows=True)
        evaluated = DataSource(cfg.data.eval_dataset, cfg.data.format, user_rows=True) if cfg.data.eval_dataset else data
        return Assets(policy=policy, references=references_for(cfg, policy), train_data=data, eval_data=evaluated,
                      cost=_score_spec(cfg.model.cost_model), reward=_score_spec(cfg.model.reward_model))

    def planned_assets(self, cfg, home: Path) -> list[PlannedAsset]:
        parts = None
        if "tiny-world" in (cfg.model.policy, cfg.model.reference_for_samples, cfg.model.reference_for_negatives):
            from harness.models.tiny_build import tiny_world_parts

            parts = tiny_world_parts(home, cfg.world)
        found = planned_models(cfg, home, parts)
        found.append(planned_data("training data", DataSource(cfg.data.dataset, cfg.data.format)))
        if cfg.data.eval_dataset:
            found.append(planned_data("evaluation data", DataSource(cfg.data.eval_dataset, cfg.data.format)))
        return found

    def instruments(self, cfg, assets, home):
        found = [RefusalRules()]
        if assets.cost or assets.reward:
            found.insert(0, ScoreModels(cost=assets.cost, reward=assets.reward,
                                        validation={"note": "user-named score models: not validated by the harness"}))
        return found

    def metric_directions(self, cfg):
        return {**RefusalRules.metrics,
                **ScoreModels.directions(cost=bool(_score_spec(cfg.model.cost_model)),
                                         reward=bool(_score_spec(cfg.model.reward_model)))}
