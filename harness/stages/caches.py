"""The shared caches a run will use, as `--dry-run` reports them: each one's key, and whether it
is already under `$D2O_BENCH_HOME/cache` (reused) or will be computed.

The keys come from the stages' own key functions (`self_samples.cache_key`,
`reference_logps.cache_key`, `generate.base_eval_key`, `score.base_scores_key`), fed what the
stages would feed them: the training examples and evaluation prompts from the run directory when
its data stage is complete, else read from the sources as the data stage reads them
(`data.select`); the self-samples from their cache; token ids from the reference's tokenizer
alone. Nothing heavy runs: no model is loaded, nothing is sampled or scored, nothing is
written (weight digests are read or computed, never memoised). A key that needs what only the
run can make (a model or dataset not on this machine yet, self-samples not drawn yet, a server's
identity) is reported as such, with what it waits for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from harness.cache import JsonCache
from harness.models.loading import load_tokenizer
from harness.rundir import RunLayout
from harness.stages import data, generate, reference_logps, score, self_samples
from harness.stages.context import encode_examples, select_examples

if TYPE_CHECKING:
    from harness.plan import RunPlan


@dataclass
class PlannedCache:
    """One shared cache entry a run reads or writes: `kind` is its folder under cache/."""

    kind: str
    role: str = ""  # a reference role (reference_logps has one entry per role)
    key: Optional[str] = None  # None: not known before the run, or no such cache (see note)
    cached: bool = False
    note: str = ""

    @property
    def name(self) -> str:
        # The folder under cache/ it lives in (never a stage's bare name: the stage lines above
        # are read by that first word).
        return f"cache/{self.kind}" + (f" ({self.role})" if self.role else "")

    def line(self) -> str:
        if self.key is None:
            return f"  {self.name:<34}{self.note}"
        state = "cached: reused" if self.cached else "not cached: computed by this run"
        return f"  {self.name:<34}key {self.key}  {state}"


def planned_caches(plan: "RunPlan", out_dir: Path, home: Path) -> list[PlannedCache]:
    cfg, method = plan.cfg, plan.method
    layout = RunLayout.of(out_dir, plan.run_id)
    kinds: list[tuple[str, str]] = []  # (kind, role) of every cache this run uses
    found: list[PlannedCache] = []
    for stage, kind in (("self_samples", "self_samples"), ("reference_logps", "reference_logps")):
        skip = plan.stage_skip(stage)
        if skip:
            found.append(PlannedCache(kind, note=f"none: {skip}"))
        elif kind == "reference_logps":
            kinds += [(kind, role) for role in method.reference_roles]
        else:
            kinds.append((kind, ""))
    kinds += [("base_generations", ""), ("base_scores", "")]

    def unknown(note: str, which=None) -> None:
        for kind, role in which or kinds:
            found.append(PlannedCache(kind, role, note=note))

    absent = [asset.role for asset in plan.planned_assets(home) if not asset.present]
    if absent:
        unknown(f"key not known yet: needs {', '.join(absent)}, which the run builds or fetches")
        return _ordered(found, kinds)
    # Every model and data source is on this machine: resolving them builds and fetches nothing.
    assets = plan.assets(home)
    if layout.complete_marker("data").exists():
        examples, prompts = layout.train_examples.read(), layout.eval_prompts.read()
    else:
        selected = data.select(plan, assets)
        examples, prompts = selected.examples, selected.prompts

    samples = None
    if ("self_samples", "") in kinds:
        if cfg.sampling.backend == "openai":
            unknown("key not known yet: it holds the sampling server's model and version, asked when the run "
                    "starts", [("self_samples", "")])
        else:
            key = self_samples.cache_key(plan, assets, self_samples.training_prompts(examples), remember=False)
            samples = JsonCache(home, "self_samples").get(key)
            found.append(PlannedCache("self_samples", key=key, cached=samples is not None))

    roles = [(kind, role) for kind, role in kinds if kind == "reference_logps"]
    if roles:
        safe_needed = method.chosen_source == "safe_self_samples"
        if method.draws_self_samples() and samples is None:
            unknown("key not known yet: it follows from the self-samples, which this run draws", roles)
        elif safe_needed and not layout.safe_chosen.exists():
            unknown("key not known yet: it follows from the cost model's choice among the self-samples "
                    "(the self_samples stage)", roles)
        else:
            chosen = select_examples(method, examples, samples, layout.safe_chosen.read() if safe_needed else None)
            encoded: dict[str, list[dict]] = {}
            for _, role in roles:
                spec = reference_logps.reference_spec(assets, role)
                if spec not in encoded:
                    tokenizer = load_tokenizer(spec, gguf_file=cfg.model.gguf_file)
                    encoded[spec] = encode_examples(plan, chosen, samples, tokenizer)
                key = reference_logps.cache_key(cfg, spec, reference_logps.role_pairs(encoded[spec], role),
                                                reference_logps.quantized_reference(cfg, assets, spec), remember=False)
                found.append(PlannedCache("reference_logps", role, key,
                                          JsonCache(home, "reference_logps").get(key) is not None))

    if cfg.eval.backend == "openai":
        unknown("key not known yet: it holds the base server's model and version, asked when the run starts",
                [("base_generations", ""), ("base_scores", "")])
    else:
        base_key = generate.base_eval_key(plan, assets, prompts, remember=False)
        scores_key = score.base_scores_key(cfg, base_key)
        found.append(PlannedCache("base_generations", key=base_key,
                                  cached=JsonCache(home, "base_generations").get(base_key) is not None))
        found.append(PlannedCache("base_scores", key=scores_key,
                                  cached=JsonCache(home, "base_scores").get(scores_key) is not None))
    return _ordered(found, kinds)


def _ordered(found: list[PlannedCache], kinds: list[tuple[str, str]]) -> list[PlannedCache]:
    """In the order the stages use them: self-samples, reference log-probs, the base's answers
    and scores (the caches a method does without first)."""
    order = ["self_samples", "reference_logps", "base_generations", "base_scores"]
    return sorted(found, key=lambda c: (order.index(c.kind),
                                        kinds.index((c.kind, c.role)) if (c.kind, c.role) in kinds else -1))


def cache_lines(plan: "RunPlan", out_dir: Path, home: Path) -> list[str]:
    """What `--dry-run` prints about the shared caches (harness/plan.py's describe_plan)."""
    return [f"shared caches: (under {home / 'cache'}; keys as the stages compute them)",
            *(entry.line() for entry in planned_caches(plan, out_dir, home))]
