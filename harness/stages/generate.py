"""The generate stage: the evaluation prompts' responses of the trained policy and of the base
policy (the base's cached across runs), from `model.generate` in this process or, with
`eval.backend: openai`, from OpenAI-compatible servers (docs/SAMPLING_SERVER.md).

A server's weights cannot be read through its API, so the trained policy is trusted only under
the name `policy-<sha16>`, its checkpoint's own content hash: a server that serves anything else
(the base model, an older checkpoint) is refused with the checkpoint to serve and the name to
serve it as."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.cache import JsonCache
from harness.config import EvalConfig, RunConfig
from harness.generation import generate_responses
from harness.hashing import sha256_json
from harness.errors import RunFailure
from harness.models.loading import load_policy, load_tokenizer, model_identity
from harness.server_sampling import ServerSettings, sample_from_server, served_models, server_identity
from harness.stages.context import RunContext

if TYPE_CHECKING:
    from harness.plan import RunPlan
    from harness.suites import Assets


def _generation_settings(cfg: RunConfig) -> dict:
    e = cfg.eval
    return {
        "max_new_tokens": e.max_new_tokens, "do_sample": e.do_sample, "temperature": e.temperature,
        "top_p": e.top_p, "seed": e.sampling_seed, "prompt_format": cfg.model.prompt_format,
    }


def local_answers(e: EvalConfig, model, tokenizer, texts: list[str], desc: str) -> list[str]:
    """One answer per rendered prompt from `model.generate` (benchmarks/generation.py times this)."""
    outputs = generate_responses(
        model, tokenizer, texts, max_new_tokens=e.max_new_tokens, do_sample=e.do_sample,
        temperature=e.temperature, top_p=e.top_p, batch_size=e.batch_size, seed=e.sampling_seed, desc=desc,
    )
    return [group[0] for group in outputs]


def served_answers(e: EvalConfig, settings: ServerSettings, texts: list[str], progress=None) -> list[str]:
    """One answer per rendered prompt from the server's `settings.model` (benchmarks/generation.py
    times this beside `local_answers`)."""
    # Greedy unless eval.do_sample: temperature 0 is the OpenAI API's (and vLLM's) greedy decoding.
    groups = sample_from_server(
        texts, settings=settings, model=settings.model, k=1,
        temperature=e.temperature if e.do_sample else 0.0, top_p=e.top_p if e.do_sample else 1.0, top_k=0,
        max_new_tokens=e.max_new_tokens, seed=e.sampling_seed, progress=progress,
    )
    return [group[0].text for group in groups]


def _generate(ctx: RunContext, model, tokenizer, prompts: list[str], desc: str) -> list[str]:
    return local_answers(ctx.cfg.eval, model, tokenizer, [ctx.prompt_text(p, tokenizer) for p in prompts], desc)


def _settings(ctx: RunContext, url: str, model) -> ServerSettings:
    # The key and concurrency are the self-samples' (one set of servers, one key).
    return ServerSettings(base_url=url, model=model, api_key_env=ctx.cfg.sampling.api_key_env,
                          concurrency=ctx.cfg.sampling.concurrency)


def base_server(ctx: RunContext) -> ServerSettings:
    """The base policy's server: eval.base_url / eval.base_server_model, else the self-samples'."""
    e, s = ctx.cfg.eval, ctx.cfg.sampling
    return _settings(ctx, e.base_url or s.base_url, e.base_server_model or s.server_model)


def served_policy_name(checkpoint_sha256: str) -> str:
    """The only name under which a server's answers count as the trained policy's."""
    return f"policy-{checkpoint_sha256[:16]}"


def _served(ctx: RunContext, settings: ServerSettings, tokenizer, prompts: list[str], who: str) -> list[str]:
    texts = [ctx.prompt_text(p, tokenizer) for p in prompts]
    ctx.progress(f"generate ({who}): {len(texts)} evaluation answers from {settings.model} at {settings.base_url}")
    return served_answers(ctx.cfg.eval, settings, texts, progress=ctx.progress)


def base_eval_key(plan: "RunPlan", assets: "Assets", prompts: list[dict], server: dict | None = None, *,
                  remember: bool = True) -> str:
    """The base policy's evaluation answers' key in the shared cache (`base_generations`; the
    score stage keys the base's scores from it): what the stage looks them up by, and what
    `--dry-run` reports (harness/stages/caches.py). `prompts`: the data stage's evaluation prompts."""
    cfg = plan.cfg
    identity = {
        "policy": model_identity(assets.policy, remember=remember)["sha256"],
        "dtype": cfg.model.dtype,
        "prompts": sha256_json(prompts),
        "generation": _generation_settings(cfg),
        "scorers": [model_identity(spec, remember=remember)["sha256"] if spec else None
                    for spec in (assets.reward, assets.cost)],
        "template": cfg.eval.scorer_template,
        "lm_eval": [cfg.eval.lm_eval_tasks, cfg.eval.lm_eval_limit],
        "dataset": cfg.data.dataset,
        # Instruments differ between suites: their base scores are never shared (Suite.base_score_identity).
        **plan.suite.base_score_identity(),
    }
    if server is not None:
        # The server's name for its model and its version key the answers; its dtype is its own.
        identity.update(backend="openai", server={"model": server["model"], "version": server["server_version"]})
        del identity["dtype"]
    return sha256_json(identity)[:24]


def run(ctx: RunContext) -> dict:
    layout = ctx.run_dir.layout
    prompts = layout.eval_prompts.read()
    texts = [p["prompt"] for p in prompts]
    served = ctx.cfg.eval.backend == "openai"
    servers: dict = {}
    policy_settings = None
    if served:
        base_settings = base_server(ctx)
        servers["base"] = server_identity(base_settings)
        base_settings = _settings(ctx, base_settings.base_url, servers["base"]["model"])
        if ctx.method.trains:
            # Checked before any answer is drawn: a run never spends the base's answers and then
            # finds the trained policy unserved.
            policy_settings, servers["policy"] = _policy_server(ctx, base_settings)
    base_cache = JsonCache(ctx.home, "base_generations")
    base_key = base_eval_key(ctx.plan, ctx.assets, prompts, servers.get("base"))
    base = base_cache.get(base_key)
    if base is None:
        if served:
            base = _served(ctx, base_settings, load_tokenizer(ctx.assets.policy, gguf_file=ctx.cfg.model.gguf_file),
                           texts, "base")
        else:
            model, tokenizer = ctx.load_policy(ctx.assets.policy)
            base = _generate(ctx, model, tokenizer, texts, "generate (base)")
            del model
        base_cache.put(base_key, base)
    if ctx.method.trains and served:
        policy = _served(ctx, policy_settings, load_tokenizer(str(layout.policy)), texts, ctx.method.name)
    elif ctx.method.trains:
        model, tokenizer = load_policy(str(layout.policy), dtype=ctx.cfg.model.dtype)
        policy = _generate(ctx, model, tokenizer, texts, f"generate ({ctx.method.name})")
        del model
    else:
        policy = base
    layout.responses.write([
        dict(p, response=r, base_response=b) for p, r, b in zip(prompts, policy, base)
    ])
    summary = {"settings": _generation_settings(ctx.cfg), "n": len(prompts), "base_cache_key": base_key}
    if served:
        summary.update(backend="openai", server=servers)
    return summary


def _policy_server(ctx: RunContext, base_settings: ServerSettings) -> tuple[ServerSettings, dict]:
    """The server of the trained checkpoint, found under its content-hash name, or a one-line
    RunFailure naming the checkpoint to serve (the run resumes at this stage once it is served)."""
    checkpoint = ctx.run_dir.layout.policy
    name = served_policy_name(model_identity(str(checkpoint))["sha256"])
    url = ctx.cfg.eval.policy_url or base_settings.base_url
    settings = _settings(ctx, url, None)
    models = served_models(settings)
    if name not in models:
        raise RunFailure(
            f"eval.backend=openai: the trained policy is not served at {settings.base_url} (it serves: "
            f"{', '.join(models) or 'nothing'}); serve {checkpoint} with --served-model-name {name} "
            f"(docs/SAMPLING_SERVER.md) and rerun the same command: the run resumes at generate")
    identity = server_identity(_settings(ctx, url, name))
    return _settings(ctx, url, name), identity

