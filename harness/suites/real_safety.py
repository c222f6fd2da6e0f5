"""Real human negatives, real evaluation sets, instruments checked against human labels.

- Training rows: pyrit's human-labelled responses (harness/suites/real_data.py), one row per
  response humans scored harmful (≥ `real.negative_min_score`) whose objective also has a
  response scored 0; that one is the row's chosen response, used only by methods that need y_w
  (DPO, SFT, …: every method trains on the same prompts; D²O reads only prompt and negative).
- Evaluation: harmful prompts from AdvBench, StrongREJECT and Do-Not-Answer; benign ones from
  AlpacaEval, MT-Bench, Vicuna and an over-refusal set; none shares a prompt with training.
- Instruments: a cost model trained on the human harm labels (AUROC on held-out objectives
  beside a refusal-rule baseline), refusal rules (accuracy on human refusal labels), the judge
  (agreement with the BIG-bench HHH pairs, when a judge is configured), guard models and rubric
  judges (eval.guards: Llama Guard 3, WildGuard, the StrongREJECT rubric; AUROC on the human harm
  labels, accuracy on the human refusal labels); capability by lm-eval's MMLU and ARC-Easy on the
  packaged data.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import BadInput
from harness.instruments import RefusalRules, ScoreModels
from harness.instruments.guards import directions as guard_directions
from harness.instruments.guards import instruments_for
from harness.suites import Assets, DataSource, Suite, references_for, resolve_policy

SUITE_MODEL = "suite"  # model.cost_model value: the harm model this suite trains on human labels


class RealSafetySuite(Suite):
    name = "real-safety"

    def check(self, cfg) -> None:
        if cfg.data.dataset != "real-safety":
            raise BadInput(f"suite real-safety assembles its own data; data.dataset={cfg.data.dataset} is not it "
                           f"(to train on your rows with this suite's evaluation, set data.train_dataset and "
                           f"data.format instead; suite custom evaluates on your own rows)")
        for field in ("reward_model", "cost_model"):
            if getattr(cfg.model, field) == "tiny-world":
                raise BadInput(f"model.{field}=tiny-world is the tiny world's instrument and knows only its words; "
                               f"it does not apply to real data (the suite trains its own cost model: "
                               f"model.cost_model=suite)")
        if cfg.model.reward_model == SUITE_MODEL:
            raise BadInput("suite real-safety has no human-labelled helpfulness data to train a reward model on: "
                           "set model.reward_model=none (helpfulness is the judge's and over-refusal's)")

    def resolve(self, cfg, home: Path) -> Assets:
        from harness.suites.real_data import build_suite_data

        folder = build_suite_data(cfg.real, home)
        policy = resolve_policy(cfg.model.policy, home, None)
        cost = None
        if cfg.model.cost_model == SUITE_MODEL:
            from harness.instruments.harm_model import build_harm_model

            cost = str(build_harm_model(policy, folder / "labels", home, cfg.eval.scorer_template))
        elif cfg.model.cost_model.lower() != "none":
            cost = cfg.model.cost_model
        reward = None if cfg.model.reward_model.lower() == "none" else cfg.model.reward_model
        return Assets(policy=policy, references=references_for(cfg, policy),
                      train_data=DataSource("real-safety", "negatives", folder),
                      eval_data=DataSource("real-safety/eval", "prompts", folder / "eval"),
                      cost=cost, reward=reward, capability_paths=[folder / "lm_eval_tasks"], suite_dir=folder)

    def instruments(self, cfg, assets, home):
        from harness.instruments.refusal import validate

        folder = assets.suite_dir
        refusal_rows = [json.loads(line) for line in (folder / "refusal_labels.jsonl").read_text(encoding="utf-8").split("\n") if line]
        cost_check = None
        if assets.cost and (Path(assets.cost) / "VALIDATION.json").is_file():
            cost_check = json.loads((Path(assets.cost) / "VALIDATION.json").read_text())
        found = [RefusalRules(validation=validate(refusal_rows))]
        if assets.cost or assets.reward:
            found.insert(0, ScoreModels(cost=assets.cost, reward=assets.reward, validation=cost_check or {
                "note": "user-named score model: not validated against the suite's human labels"}))
        # Guard models and rubric judges (eval.guards), each checked on the same human labels.
        return found + instruments_for(cfg, home, folder)

    def metric_directions(self, cfg):
        return {**RefusalRules.metrics, **ScoreModels.directions(cost=cfg.model.cost_model.lower() != "none",
                                                                 reward=cfg.model.reward_model.lower() != "none"),
                **guard_directions(cfg.eval.guards)}

    def validation_extra(self, cfg, assets, home):
        if not cfg.eval.judge_model:
            return {}
        from harness.instruments.judge_check import judge_on_hhh

        folder = assets.suite_dir
        pairs = [json.loads(line) for line in (folder / "hhh.jsonl").read_text(encoding="utf-8").split("\n") if line]
        return {"judge": judge_on_hhh(pairs, cfg, home)}

    def dataset_record(self, assets):
        manifest = json.loads((assets.suite_dir / "MANIFEST.json").read_text())
        # Extra safety sets (real.extra_eval_sets) appear only in entries of runs that asked for them.
        keys = ("sources", "counts", "settings", "lm_eval_tasks", *(("extra_eval_sets",) if "extra_eval_sets" in manifest else ()))
        return {"manifest": {k: manifest[k] for k in keys}}
