"""The generate stage: the evaluation prompts' responses of the trained policy and of the base
policy (the base's cached across runs)."""

from __future__ import annotations

from harness.cache import JsonCache
from harness.config import RunConfig
from harness.generation import generate_responses
from harness.hashing import sha256_json
from harness.models.loading import load_policy, model_identity
from harness.stages.context import RunContext


def _generation_settings(cfg: RunConfig) -> dict:
    e = cfg.eval
    return {
        "max_new_tokens": e.max_new_tokens, "do_sample": e.do_sample, "temperature": e.temperature,
        "top_p": e.top_p, "seed": e.sampling_seed, "prompt_format": cfg.model.prompt_format,
    }


def _generate(ctx: RunContext, model, tokenizer, prompts: list[str], desc: str) -> list[str]:
    e = ctx.cfg.eval
    texts = [ctx.prompt_text(p, tokenizer) for p in prompts]
    outputs = generate_responses(
        model, tokenizer, texts, max_new_tokens=e.max_new_tokens, do_sample=e.do_sample,
        temperature=e.temperature, top_p=e.top_p, batch_size=e.batch_size, seed=e.sampling_seed, desc=desc,
    )
    return [group[0] for group in outputs]


def _base_eval_key(ctx: RunContext, prompts: list[dict]) -> str:
    cfg = ctx.cfg
    return sha256_json({
        "policy": model_identity(ctx.assets.policy)["sha256"],
        "dtype": cfg.model.dtype,
        "prompts": sha256_json(prompts),
        "generation": _generation_settings(cfg),
        "scorers": [model_identity(spec)["sha256"] if spec else None for spec in (ctx.assets.reward, ctx.assets.cost)],
        "template": cfg.eval.scorer_template,
        "lm_eval": [cfg.eval.lm_eval_tasks, cfg.eval.lm_eval_limit],
        "dataset": cfg.data.dataset,
        # Instruments differ between suites: their base scores are never shared (Suite.base_score_identity).
        **ctx.plan.suite.base_score_identity(),
    })[:24]


def run(ctx: RunContext) -> dict:
    layout = ctx.run_dir.layout
    prompts = layout.eval_prompts.read()
    texts = [p["prompt"] for p in prompts]
    base_cache = JsonCache(ctx.home, "base_generations")
    base_key = _base_eval_key(ctx, prompts)
    base = base_cache.get(base_key)
    if base is None:
        model, tokenizer = ctx.load_policy(ctx.assets.policy)
        base = _generate(ctx, model, tokenizer, texts, "generate (base)")
        base_cache.put(base_key, base)
        del model
    if ctx.method.trains:
        model, tokenizer = load_policy(str(layout.policy), dtype=ctx.cfg.model.dtype)
        policy = _generate(ctx, model, tokenizer, texts, f"generate ({ctx.method.name})")
        del model
    else:
        policy = base
    layout.responses.write([
        dict(p, response=r, base_response=b) for p, r, b in zip(prompts, policy, base)
    ])
    return {"settings": _generation_settings(ctx.cfg), "n": len(prompts), "base_cache_key": base_key}
