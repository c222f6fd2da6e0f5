"""The self_samples stage: K responses per training prompt from π_r− (or an OpenAI-compatible
server), drawn as the method's anchor settings say (harness/anchors.py), shared across runs
through a content-addressed cache. Self-Align SFT's choice among them is `safe_chosen`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from harness.cache import JsonCache
from harness.errors import BadInput
from harness.generation import budget_binds, footprint_of, generate_completions, prompt_token_counts
from harness.hashing import sha256_json
from harness.instruments.refusal import RULES_VERSION as REFUSAL_RULES_VERSION
from harness.models.loading import DTYPES, load_config, load_score_model, load_tokenizer, model_identity
from harness.scoring.score_models import score_responses
from harness.server_sampling import ServerSettings, sample_from_server, server_identity
from harness.stages import safe_chosen
from harness.stages.context import RunContext

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.plan import RunPlan
    from harness.suites import Assets

# Version of the self-sample cache entries: {"texts": {prompt: [...]}, "ended": {prompt: [...]}}.
SAMPLES_FORMAT = 2


def sampling_settings(plan: "RunPlan") -> dict:
    """How the self-samples are drawn, as their cache key and the stage's summary record it."""
    cfg = plan.cfg
    return {
        "temperature": cfg.sampling.temperature,
        "top_p": cfg.sampling.top_p,
        "top_k": cfg.sampling.top_k,
        "max_new_tokens": cfg.sampling.max_new_tokens,
        "k": plan.k,
        "prompt_format": cfg.model.prompt_format,
    }


def cache_key(plan: "RunPlan", assets: "Assets", prompts: list[str], server: Optional[dict] = None, *,
              remember: bool = True) -> str:
    """The self-samples' key in the shared cache: what the stage looks them up by, and what
    `--dry-run` reports (harness/stages/caches.py). `prompts`: the training prompts, sorted;
    `server`: the sampling server's identity (sampling.backend=openai); `remember=False` (a dry
    run) leaves no memo of a model's weight digest beside it."""
    cfg = plan.cfg
    anchors = plan.method.anchor_settings()
    identity = {
        "model": model_identity(assets.references["samples"], remember=remember)["sha256"],
        "dtype": cfg.model.dtype,
        "prompts": sha256_json(prompts),
        "sampling": sampling_settings(plan),
        "seed": cfg.seed,
        "format": SAMPLES_FORMAT,
    }
    if anchors.steered:
        # Unsteered anchors keep the keys they always had; steered ones name the procedure and
        # the filter's instrument (a retrained cost model is another filter).
        identity["anchors"] = anchors.record() | {
            "instrument": _anchor_filter_identity(cfg, assets, anchors, remember=remember)}
    if server is None and cfg.sampling.backend == "transformers" and _budget_binds(
            cfg, prompts, plan.k, anchors, assets.references["samples"]):
        # Calls cut to the budget draw other samples than calls of `batch_size` prompts (the seed
        # is set once, before the first call); where it cuts none the key is what it always was.
        identity["memory_budget_mb"] = cfg.sampling.memory_budget_mb
    if server is not None:
        # The server's name for its model and its version join the key; its dtype is its own.
        identity.update(backend="openai", server={"model": server["model"], "version": server["server_version"]})
        del identity["dtype"]
    return sha256_json(identity)[:24]


def training_prompts(examples: list[dict]) -> list[str]:
    """The prompts self-samples are drawn for: each training example's, once, sorted."""
    return sorted({e["prompt"] for e in examples})


def run(ctx: RunContext) -> dict:
    skip = ctx.plan.stage_skip("self_samples")
    if skip:
        return {"skipped": skip}
    cfg = ctx.cfg
    layout = ctx.run_dir.layout
    prompts = training_prompts(layout.train_examples.read())
    spec = ctx.assets.references["samples"]
    k = ctx.plan.k
    anchors = ctx.method.anchor_settings()
    sampling = sampling_settings(ctx.plan)
    server = None
    if cfg.sampling.backend == "openai":
        server = server_identity(ServerSettings.of(cfg.sampling))
    key = cache_key(ctx.plan, ctx.assets, prompts, server)
    cache = JsonCache(ctx.home, "self_samples")
    samples = cache.get(key)
    if samples is None:
        ctx.progress(f"sampling K={k} self-samples for {len(prompts)} prompts"
                     + (f" from {server['model']} at {server['base_url']}" if server else "")
                     + (f" (anchors: {anchors.record()})" if anchors.steered else ""))
        samples = _draw_anchors(ctx, prompts, k, anchors, spec, server)
        cache.put(key, samples)
    summary = {"cache_key": key, "k": k, "prompts": len(prompts), "sampling": sampling,
               "backend": cfg.sampling.backend}
    if anchors.steered:
        summary["anchors"] = anchors.record() | {"filter_result": samples.get("filter")}
    if server is not None:
        summary["server"] = server
    layout.samples.write(samples)
    if ctx.method.chosen_source == "safe_self_samples":
        summary.update(safe_chosen.run(ctx))
    return summary


def _budget_binds(cfg: "RunConfig", prompts: list[str], k: int, anchors, spec: str) -> bool:
    """Whether `sampling.memory_budget_mb` could cut a `generate` call of these prompts' draws."""
    from harness.anchors import sampling_prompt_text

    if not cfg.sampling.memory_budget_mb or not prompts:
        return False
    tokenizer = load_tokenizer(spec, gguf_file=cfg.model.gguf_file)
    texts = [sampling_prompt_text(p, anchors, cfg.model.prompt_format, tokenizer) for p in prompts]
    footprint = footprint_of(load_config(spec, gguf_file=cfg.model.gguf_file), DTYPES[cfg.model.dtype].itemsize)
    return budget_binds(prompt_token_counts(tokenizer, texts), batch_size=cfg.sampling.batch_size,
                        sequences_per_prompt=k, new_tokens=cfg.sampling.max_new_tokens, footprint=footprint,
                        budget_bytes=cfg.sampling.memory_budget_bytes)


def _anchor_filter_identity(cfg: "RunConfig", assets: "Assets", anchors, *, remember: bool = True) -> Optional[str]:
    if anchors.anchor_filter == "cost-model":
        if assets.cost is None:
            raise BadInput(f"method.anchor_filter=cost-model: suite {cfg.suite} has no cost model "
                           "(model.cost_model)")
        return model_identity(assets.cost, remember=remember)["sha256"]
    if anchors.anchor_filter == "refusal-rules":
        return f"refusal-rules-v{REFUSAL_RULES_VERSION}"
    return None


def _draw_anchors(ctx: RunContext, prompts: list[str], k: int, anchors, spec: str, server) -> dict:
    """K self-samples per prompt, drawn as the method's anchor settings say (harness/anchors.py).

    Unfiltered: one round of K per prompt. Filtered: rounds of K for the prompts still short of
    K passing samples, up to anchor_max_rounds; each prompt's passing samples are then cycled to K
    and prompts with none are left out (recorded under "filter")."""
    from harness.anchors import fill_to_k, sampling_prompt_text

    cfg = ctx.cfg
    if server is None:
        model, tokenizer = ctx.load_policy(spec)
    else:
        model, tokenizer = None, load_tokenizer(spec, gguf_file=cfg.model.gguf_file)
    sampling_texts = {p: sampling_prompt_text(p, anchors, cfg.model.prompt_format, tokenizer) for p in prompts}

    def draw(batch: list[str], seed: int) -> list:
        texts = [sampling_texts[p] for p in batch]
        if server is None:
            return generate_completions(
                model, tokenizer, texts,
                max_new_tokens=cfg.sampling.max_new_tokens, do_sample=True,
                temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, top_k=cfg.sampling.top_k,
                num_return_sequences=k, batch_size=cfg.sampling.batch_size, seed=seed, desc="self-samples",
                memory_budget_bytes=cfg.sampling.memory_budget_bytes,
            )
        return sample_from_server(
            texts, settings=ServerSettings.of(cfg.sampling), model=server["model"], k=k,
            temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, top_k=cfg.sampling.top_k,
            max_new_tokens=cfg.sampling.max_new_tokens, seed=seed, progress=ctx.progress,
        )

    if anchors.anchor_filter == "none":
        generated = draw(prompts, cfg.seed)
        return {"texts": {p: [c.text for c in group] for p, group in zip(prompts, generated)},
                "ended": {p: [c.ended for c in group] for p, group in zip(prompts, generated)}}
    passes = _anchor_filter(ctx, anchors)
    kept: dict[str, list] = {p: [] for p in prompts}
    drawn = 0
    pending, rounds = list(prompts), 0
    while pending and rounds < anchors.anchor_max_rounds:
        # Round r is seeded seed + r: a round only redraws the prompts still short of K.
        generated = draw(pending, cfg.seed + rounds)
        flat = [(p, c) for p, group in zip(pending, generated) for c in group]
        verdicts = passes([p for p, _ in flat], [c.text for _, c in flat])
        for (prompt, completion), ok in zip(flat, verdicts):
            if ok:
                kept[prompt].append(completion)
        drawn += len(flat)
        rounds += 1
        pending = [p for p in pending if len(kept[p]) < k]
    del model
    passed = sum(len(v) for v in kept.values())
    anchors_of = {p: fill_to_k(v[:k], k) for p, v in kept.items() if v}
    record = {
        "instrument": anchors.anchor_filter, "rounds": rounds, "drawn": drawn, "passed": passed,
        "kept_fraction": passed / drawn if drawn else 0.0,
        "prompts": len(prompts),
        "prompts_with_k": sum(1 for v in kept.values() if len(v) >= k),
        "prompts_refilled": sum(1 for v in kept.values() if 0 < len(v) < k),
        "prompts_dropped": sum(1 for v in kept.values() if not v),
    }
    ctx.progress(f"anchor filter {anchors.anchor_filter}: {passed}/{drawn} samples passed in {rounds} round(s); "
                 f"{record['prompts_with_k']} prompts with K, {record['prompts_refilled']} refilled by cycling, "
                 f"{record['prompts_dropped']} dropped")
    return {"texts": {p: [c.text for c in group] for p, group in anchors_of.items()},
            "ended": {p: [c.ended for c in group] for p, group in anchors_of.items()},
            "filter": record}


def _anchor_filter(ctx: RunContext, anchors) -> Callable[[list[str], list[str]], list[bool]]:
    """prompts, responses → whether each response passes the named instrument (scored under the
    original prompt, never the instruction)."""
    if anchors.anchor_filter == "refusal-rules":
        from harness.instruments.refusal import is_refusal

        return lambda prompts, responses: [is_refusal(r) for r in responses]
    _anchor_filter_identity(ctx.cfg, ctx.assets, anchors)  # refuses a suite without a cost model
    model, tokenizer = load_score_model(ctx.assets.cost, dtype=ctx.cfg.model.dtype)

    def passes(prompts: list[str], responses: list[str]) -> list[bool]:
        costs = score_responses(model, tokenizer, prompts, responses, template=ctx.cfg.eval.scorer_template,
                                batch_size=ctx.cfg.eval.scorer_batch_size, desc="cost of anchors")
        return [cost <= 0 for cost in costs]

    return passes
