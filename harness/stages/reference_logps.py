"""The reference_logps stage: each reference role's sequence log-probs under its reference model
(π_r− for the self-samples, π_r+ for the human responses), cached across runs."""

from __future__ import annotations

from harness.cache import JsonCache
from harness.errors import RunFailure
from harness.hashing import sha256_json
from harness.logprobs import EncodedPair, score_pairs
from harness.models.loading import model_identity
from harness.stages.context import RunContext


def _reference_spec(ctx: RunContext, role: str) -> str:
    # π_r− scores the self-samples; π_r+ scores the human responses (negative, chosen, kl).
    return ctx.assets.references["samples" if role == "samples" else "negatives"]


def run(ctx: RunContext) -> dict:
    skip = ctx.plan.stage_skip("reference_logps")
    if skip:
        return {"skipped": skip}
    layout = ctx.run_dir.layout
    keys = {}
    values: dict[str, list] = {}
    loaded: dict[str, tuple] = {}
    for role in ctx.method.reference_roles:
        spec = _reference_spec(ctx, role)
        quantized = ctx.quantized_reference(spec)
        if spec not in loaded:
            loaded.clear()  # at most one reference model in memory at a time
            loaded[spec] = ctx.load_policy(spec, quantized=quantized)
        model, tokenizer = loaded[spec]
        rows = ctx.encoded_examples(spec, tokenizer)
        if role == "samples":
            groups = [[EncodedPair(i, s) for i, s in zip(r["samples_ids"], r["samples_start"])] for r in rows]
            flat = [p for g in groups for p in g]
        else:
            flat = [EncodedPair(r[f"{role}_ids"], r[f"{role}_start"]) for r in rows]
        key = sha256_json({
            "model": model_identity(spec)["sha256"],
            "dtype": ctx.cfg.model.dtype,
            "pairs": sha256_json([[p.input_ids, p.response_start] for p in flat]),
            # Only a 4-bit reference changes the key, so full-precision entries stay shared.
            **({"quantize_4bit": True} if quantized else {}),
        })[:24]
        cache = JsonCache(ctx.home, "reference_logps")
        logps = cache.get(key)
        if logps is None:
            logps = score_pairs(model, flat, tokenizer.pad_token_id, ctx.cfg.sampling.batch_size, f"reference log-probs ({role})")
            cache.put(key, logps)
        if role == "samples":
            # The run's K (the plan's, from the method): every prompt carries K samples.
            k = ctx.plan.k
            if len(logps) != k * len(rows):
                raise RunFailure(f"reference log-probs: {len(logps)} sample scores for {len(rows)} prompts, "
                                 f"not K={k} each")
            logps = [logps[i * k : (i + 1) * k] for i in range(len(rows))]
        values[role] = logps
        keys[role] = key
    loaded.clear()
    layout.reference_logps.write(values)
    return {"cache_keys": keys, "references": {r: _reference_spec(ctx, r) for r in ctx.method.reference_roles}}
