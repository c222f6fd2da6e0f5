"""The embedded tiny world as a suite: its data, its oracle and its scorers come from one generator.

Its instruments know only the world's words: the suite refuses any other dataset, and the tiny
world's scorers are refused by every other suite (docs/ARCHITECTURE.md, "A run's stages in detail").
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import BadInput
from harness.instruments import ScoreModels, TinyWorldOracle
from harness.suites import Assets, DataSource, Suite, references_for, resolve_policy

TINY = "tiny-world"


class TinyWorldSuite(Suite):
    name = TINY

    def check(self, cfg) -> None:
        # With data.train_dataset, data.format names the layout of the user's training rows; the
        # world's own rows (still its evaluation) are PKU-SafeRLHF-shaped whatever it says.
        layout = "pku-saferlhf" if cfg.data.train_dataset is not None else cfg.data.format
        if cfg.data.dataset != TINY or layout != "pku-saferlhf":
            raise BadInput(f"suite tiny-world measures with the tiny world's oracle and scorers, which know only "
                           f"its words; data.dataset={cfg.data.dataset} (format {cfg.data.format}) is outside their "
                           f"domain: use --set suite=custom (refusal rules, your own score models) or real-safety")
        for field in ("reward_model", "cost_model"):
            if getattr(cfg.model, field) != TINY:
                raise BadInput(f"suite tiny-world scores with the world's own models; model.{field}="
                               f"{getattr(cfg.model, field)} was not built for it (use suite custom)")

    def resolve(self, cfg, home: Path) -> Assets:
        from harness.models.tiny_build import ensure_tiny_world

        tiny = ensure_tiny_world(home, cfg.world)
        policy = resolve_policy(cfg.model.policy, home, tiny)
        data = DataSource(TINY, "pku-saferlhf", Path(tiny["data"]))
        return Assets(policy=policy, references=references_for(cfg, policy), train_data=data, eval_data=data,
                      cost=str(tiny["cost"]), reward=str(tiny["reward"]))

    def instruments(self, cfg, assets, home):
        return [ScoreModels(cost=assets.cost, reward=assets.reward), TinyWorldOracle()]

    def metric_directions(self, cfg):
        return {**ScoreModels.metrics, **TinyWorldOracle.metrics}
