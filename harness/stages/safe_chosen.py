"""Self-Align SFT's training data, chosen among the self-samples: for each prompt the lowest-cost
self-sample the cost model calls safe (part of the self_samples stage, which calls it)."""

from __future__ import annotations

from harness.errors import BadInput
from harness.models.loading import load_score_model
from harness.scoring.score_models import score_responses
from harness.stages.context import RunContext


def run(ctx: RunContext) -> dict:
    """Self-Align SFT's data: for each prompt, the lowest-cost self-sample if the cost model
    calls it safe (cost ≤ 0); prompts with no safe sample are dropped."""
    if ctx.assets.cost is None:
        raise BadInput(f"method {ctx.method.name} keeps the self-samples a cost model calls safe; "
                       f"suite {ctx.cfg.suite} has none configured (model.cost_model)")
    samples = ctx.run_dir.layout.samples.read()
    model, tokenizer = load_score_model(ctx.assets.cost, dtype=ctx.cfg.model.dtype)
    texts, ended = samples["texts"], samples["ended"]
    prompts = list(texts)
    flat_prompts = [p for p in prompts for _ in texts[p]]
    flat_responses = [(r, e) for p in prompts for r, e in zip(texts[p], ended[p])]
    costs = score_responses(
        model, tokenizer, flat_prompts, [r for r, _ in flat_responses], template=ctx.cfg.eval.scorer_template,
        batch_size=ctx.cfg.eval.scorer_batch_size, desc="cost of self-samples",
    )
    best: dict[str, tuple[float, tuple[str, bool]]] = {}
    for prompt, response, cost in zip(flat_prompts, flat_responses, costs):
        if cost <= 0 and (prompt not in best or cost < best[prompt][0]):
            best[prompt] = (cost, response)
    ctx.run_dir.layout.safe_chosen.write(
        {p: {"text": r, "ended": e} for p, (_, (r, e)) in best.items()})
    return {"safe_chosen_prompts": len(best)}
