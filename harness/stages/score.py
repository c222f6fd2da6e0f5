"""The score stage: every instrument of the suite on the trained and the base policy's responses,
each instrument's check against human labels, the judge and lm-eval capability."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from harness import tracking
from harness.cache import JsonCache
from harness.instruments.checks import mark_scores, with_verdict
from harness.instruments.guards import base_scores_tag as guards_tag
from harness.models.loading import load_policy
from harness.stages.context import RunContext

if TYPE_CHECKING:
    from harness.config import RunConfig

# Version of the base-score cache entries (see run); 3: harmful_unsafe_rate joined the cost
# model's metrics.
SCORES_FORMAT = 3


def _score_block(prompts: list[dict], responses: list[str], instruments: list, ctx: RunContext) -> tuple[dict, list[dict]]:
    """Metrics and per-response records for one policy's answers, from every instrument of the suite.

    Every metric's interval resamples the prompts' groups (`data.group_column`), so prompts of
    one task count as one unit of evidence, not as independent draws.
    """
    per_response = [{"prompt": p["prompt"], "kind": p["kind"], "group": p.get("group", p["prompt"]), "response": r}
                    for p, r in zip(prompts, responses)]
    metrics: dict[str, dict] = {}
    for instrument in instruments:
        metrics.update(instrument.measure(per_response, ctx))
    return metrics, per_response


def _capability(ctx: RunContext, model_path: str) -> Optional[dict]:
    if not ctx.cfg.eval.lm_eval_tasks:
        return None
    from harness.scoring.capability import run_capability

    model, tokenizer = load_policy(model_path, dtype=ctx.cfg.model.dtype)
    return run_capability(model, tokenizer, ctx.cfg.eval.lm_eval_tasks, limit=ctx.cfg.eval.lm_eval_limit,
                          batch_size=ctx.cfg.eval.batch_size, include_paths=ctx.assets.capability_paths,
                          device=str(next(model.parameters()).device))


def _judge(ctx: RunContext, prompts: list[str], policy: list[str], base: list[str]) -> Optional[dict]:
    e = ctx.cfg.eval
    if not e.judge_model:
        return None
    from harness.scoring.judge import JudgeSettings, judge_against_base

    settings = JudgeSettings(
        model=e.judge_model, base_url=e.judge_base_url, api_key_env=e.judge_api_key_env,
        max_calls=e.judge_max_calls, concurrency=e.judge_concurrency,
        cache_path=ctx.home / "cache" / "judge.sqlite", max_tokens=e.judge_max_tokens,
    )
    return judge_against_base(prompts, policy, base, settings)


def base_scores_key(cfg: "RunConfig", base_eval_key: str) -> str:
    """The base policy's scores' key in the shared cache (`base_scores`), from its answers' key
    (harness/stages/generate.py's `base_eval_key`): what the stage looks them up by, and what
    `--dry-run` reports (harness/stages/caches.py)."""
    # v2: per-response groups come from the prompts' group column (before, every prompt was its
    # own group); base scores cached under the old key are not reused.
    return base_eval_key + f"-v{SCORES_FORMAT}" + guards_tag(cfg)


def run(ctx: RunContext) -> dict:
    layout = ctx.run_dir.layout
    rows = layout.responses.read()
    prompts = [{"prompt": r["prompt"], "kind": r["kind"], "group": r.get("group", r["prompt"])} for r in rows]
    base_cache = JsonCache(ctx.home, "base_scores")
    base_key = base_scores_key(ctx.cfg, ctx.run_dir.summary("generate")["base_cache_key"])
    base_result = base_cache.get(base_key)
    suite = ctx.plan.suite
    instruments = suite.instruments(ctx.cfg, ctx.assets, ctx.home)
    try:
        if base_result is None:
            metrics, per_response = _score_block(prompts, [r["base_response"] for r in rows], instruments, ctx)
            base_result = {"metrics": metrics, "per_response": per_response,
                           "capability": _capability(ctx, ctx.assets.policy)}
            base_cache.put(base_key, base_result)
        if ctx.method.trains:
            metrics, per_response = _score_block(prompts, [r["response"] for r in rows], instruments, ctx)
            capability = _capability(ctx, str(layout.policy))
            judge = _judge(ctx, [r["prompt"] for r in rows], [r["response"] for r in rows],
                           [r["base_response"] for r in rows])
        else:
            metrics, per_response, capability, judge = (
                base_result["metrics"], base_result["per_response"], base_result["capability"], None,
            )
    finally:
        for instrument in instruments:
            instrument.close()
    # Each instrument's agreement with human labels travels with every number it produced.
    checks = {i.name: i.validation for i in instruments if i.validation is not None}
    checks.update(suite.validation_extra(ctx.cfg, ctx.assets, ctx.home) if judge is not None else {})
    # Each check gets its declared threshold and verdict; what a failed instrument produced stays
    # in the entry, marked, and is left out of tables, plots and selection (instruments/checks.py).
    if ctx.assets.cost and layout.train_labels.exists():
        # The cost model on the user's own judgements, beside its check on the suite's labels.
        from harness.instruments.user_labels import check_cost_model

        source = ctx.run_dir.summary("data")["dataset"]["train_source"]
        record = check_cost_model(ctx.assets.cost, layout.train_labels.read(), source, ctx.cfg, ctx.home)
        checks["score-models"] = {**checks.get("score-models", {}), "user_rows": record}
    checks = {name: with_verdict(name, record) for name, record in checks.items()}
    instrument_section = ({"suite": ctx.cfg.suite, "validation": checks}
                          if suite.reports_instrument_checks or "score-models" in checks else None)
    layout.per_response.write(per_response)
    layout.base_per_response.write(base_result["per_response"])
    metrics, sections = mark_scores(metrics, {"judge": judge, "capability": capability,
                                              **({"instruments": instrument_section} if instrument_section else {})},
                                    checks)
    base_metrics, base_sections = mark_scores(base_result["metrics"], {
        "judge": None, "capability": base_result["capability"],
        **({"instruments": instrument_section} if instrument_section else {})}, checks)
    result = {"metrics": metrics, "base_metrics": base_metrics, "sections": sections, "base_sections": base_sections}
    layout.metrics.write(result)
    names = tracking.trackers(ctx.cfg.train)
    if names and ctx.method.trains:
        # The numbers the run is judged by join the training logs in the same trackers.
        train = ctx.run_dir.summary("train")
        tracking.log_scores(ctx.run_dir.root, names, result, step=int(train.get("steps") or 0),
                            runs=train.get("tracker_runs"), run_name=ctx.run_dir.run_id)
    return {"metrics": metrics, "base_metrics": base_metrics}
