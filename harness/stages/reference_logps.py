"""The reference_logps stage: each reference role's sequence log-probs under its reference model
(π_r− for the self-samples, π_r+ for the human responses), cached across runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.cache import JsonCache
from harness.errors import RunFailure
from harness.hashing import sha256_json
from harness.logprobs import EncodedPair, score_pairs
from harness.models.loading import model_identity
from harness.stages.context import RunContext

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.suites import Assets


def reference_spec(assets: "Assets", role: str) -> str:
    # π_r− scores the self-samples; π_r+ scores the human responses (negative, chosen, kl).
    return assets.references["samples" if role == "samples" else "negatives"]


def quantized_reference(cfg: "RunConfig", assets: "Assets", spec: str) -> bool:
    """Under QLoRA the policy trains on a 4-bit base; a reference that is that base is scored in
    4-bit too, so the adapters start from a zero implicit reward."""
    return cfg.train.lora.quantize_4bit and spec == assets.policy


def role_pairs(rows: list[dict], role: str) -> list[EncodedPair]:
    """The sequences one reference role scores, in order: every prompt's K samples, or one
    response per prompt."""
    if role == "samples":
        return [EncodedPair(i, s) for r in rows for i, s in zip(r["samples_ids"], r["samples_start"])]
    return [EncodedPair(r[f"{role}_ids"], r[f"{role}_start"]) for r in rows]


def cache_key(cfg: "RunConfig", spec: str, pairs: list[EncodedPair], quantized: bool, *, remember: bool = True) -> str:
    """One role's reference log-probs' key in the shared cache: what the stage looks them up by,
    and what `--dry-run` reports (harness/stages/caches.py)."""
    return sha256_json({
        "model": model_identity(spec, remember=remember)["sha256"],
        "dtype": cfg.model.dtype,
        "pairs": sha256_json([[p.input_ids, p.response_start] for p in pairs]),
        # Only a 4-bit reference changes the key, so full-precision entries stay shared.
        **({"quantize_4bit": True} if quantized else {}),
    })[:24]


def run(ctx: RunContext) -> dict:
    skip = ctx.plan.stage_skip("reference_logps")
    if skip:
        return {"skipped": skip}
    layout = ctx.run_dir.layout
    keys = {}
    values: dict[str, list] = {}
    loaded: dict[str, tuple] = {}
    for role in ctx.method.reference_roles:
        spec = reference_spec(ctx.assets, role)
        quantized = quantized_reference(ctx.cfg, ctx.assets, spec)
        if spec not in loaded:
            loaded.clear()  # at most one reference model in memory at a time
            loaded[spec] = ctx.load_policy(spec, quantized=quantized)
        model, tokenizer = loaded[spec]
        rows = ctx.encoded_examples(spec, tokenizer)
        flat = role_pairs(rows, role)
        key = cache_key(ctx.cfg, spec, flat, quantized)
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
    return {"cache_keys": keys, "references": {r: reference_spec(ctx.assets, r) for r in ctx.method.reference_roles}}
