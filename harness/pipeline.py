"""The benchmark run as a pipeline of named, cached stages.

    data → self_samples → reference_logps → train → generate → score → leaderboard

Each stage reads what earlier stages wrote to the run directory, writes its own artifacts and a
COMPLETE marker (harness/rundir.py). Work that is shared across runs (the built tiny world,
self-samples, reference log-probs, the base policy's evaluation) is cached under
`$D2O_BENCH_HOME/cache/<kind>/<key>.json`, keyed by content hashes, so a sweep pays for it once.
The pipeline asks the method which roles and references it needs; it never tests its name.
"""

from __future__ import annotations

import copy
import errno
import dataclasses
import hashlib
import json
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch

from harness import distributed, lora, tracking
from harness.config import RunConfig
from harness.data import pairs as pair_data
from harness.data.adapters import adapter_for, needs_chosen, with_chosen
from harness.errors import BadInput, D2OBenchError, RunFailure
from harness.generation import generate_completions, generate_responses
from harness.logprobs import EncodedPair, encode_pair, score_pairs
from harness.hashing import sha256_json
from harness.models.loading import load_policy, load_score_model, load_tokenizer, model_identity
from harness.prompting import format_prompt
from harness.registry import Method, get_method
from harness.faults import kill_point
from harness.rundir import RunDir, RunLayout, acquire_run_lock, write_json_atomic
from harness.scoring.score_models import score_responses
from harness.server_sampling import ServerSettings, sample_from_server, server_identity
from harness.instruments.checks import mark_scores, with_verdict
from harness.instruments.guards import base_scores_tag as guards_tag
from harness.instruments.refusal import RULES_VERSION as REFUSAL_RULES_VERSION
from harness.suites import Assets, get_suite
from harness.suites import resolve_assets as suite_assets

log = logging.getLogger("d2o_bench")

STAGES = ["data", "self_samples", "reference_logps", "train", "generate", "score", "leaderboard"]
# Stages every rank runs under a multi-process launcher; the others run on rank 0 alone.
COLLECTIVE_STAGES = {"train"}
# Version of the self-sample cache entries: {"texts": {prompt: [...]}, "ended": {prompt: [...]}}.
SAMPLES_FORMAT = 2
# Version of the base-score cache entries (see stage_score); 3: harmful_unsafe_rate joined the
# cost model's metrics.
SCORES_FORMAT = 3


def bench_home() -> Path:
    return Path(os.environ.get("D2O_BENCH_HOME") or Path.home() / ".cache" / "d2o-bench")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class JsonCache:
    """Content-addressed JSON blobs shared by all runs (self-samples, log-probs, base evals).

    An entry is `{"sha256": ..., "value": ...}`, the hash over the value's canonical JSON: an
    entry that no longer parses or no longer matches its hash (a truncated or edited file) is
    ignored with a warning and recomputed, never used. Entries written before the hash was
    recorded (a bare value) are read as they are."""

    def __init__(self, home: Path, kind: str):
        self.root = home / "cache" / kind

    @staticmethod
    def _digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: str):
        path = self.root / f"{key}.json"
        try:
            stored = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("ignoring unreadable cache entry %s; recomputing it", path)
            return None
        if isinstance(stored, dict) and set(stored) == {"sha256", "value"}:
            if stored["sha256"] != self._digest(stored["value"]):
                log.warning("ignoring cache entry %s: its content does not match its sha256; recomputing it", path)
                return None
            return stored["value"]
        return stored

    def put(self, key: str, value) -> None:
        write_json_atomic(self.root / f"{key}.json", {"sha256": self._digest(value), "value": value})


def resolve_assets(cfg: RunConfig, home: Path) -> Assets:
    """The run's models and data, as its suite resolves them (after checking their domain)."""
    return suite_assets(cfg, home)


@dataclass
class RunContext:
    cfg: RunConfig
    method: Method
    run_dir: RunDir
    home: Path
    assets: Assets
    out_dir: Path
    started_at: str = field(default_factory=_now)
    progress: Callable[[str], None] = lambda message: None
    # How this run's configuration was chosen (a tuning study's record), carried into its entry.
    selection: Optional[dict] = None

    def prompt_text(self, prompt: str, tokenizer) -> str:
        return format_prompt(prompt, self.cfg.model.prompt_format, tokenizer)

    def load_policy(self, spec: str, *, quantized: bool = False):
        """`quantized`: QLoRA's 4-bit base (train.lora.quantize_4bit) instead of `model.dtype`."""
        quantization = None
        if quantized:
            from harness.lora import quantization_config
            from harness.models.loading import DTYPES

            quantization = quantization_config(DTYPES[self.cfg.model.dtype])
        return load_policy(spec, dtype=self.cfg.model.dtype, gguf_file=self.cfg.model.gguf_file,
                           quantization_config=quantization)

    def quantized_reference(self, spec: str) -> bool:
        """Under QLoRA the policy trains on a 4-bit base; a reference that is that base is
        scored in 4-bit too, so the adapters start from a zero implicit reward."""
        return self.cfg.train.lora.quantize_4bit and spec == self.assets.policy


def _sample_count(ctx: RunContext) -> int:
    return int(getattr(ctx.cfg.method, "k", ctx.cfg.sampling.num_samples))


# ----------------------------------------------------------------------------------------------
# Stages


def stage_data(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    layout = ctx.run_dir.layout
    train_src, eval_src = ctx.assets.train_data, ctx.assets.eval_data
    train_name = f"{train_src.spec}[{cfg.data.train_split}]"
    eval_name = f"{eval_src.spec}[{cfg.data.eval_split}]"
    train_rows = pair_data.load_rows(train_src.spec, cfg.data.train_split, local_dir=train_src.local_dir)
    eval_rows = pair_data.load_rows(eval_src.spec, cfg.data.eval_split, local_dir=eval_src.local_dir)
    if cfg.data.held_out_share is not None:  # a split rule over a dataset without splits
        train_rows = pair_data.held_out_split(train_rows, cfg.data, "train")
        eval_rows = pair_data.held_out_split(eval_rows, cfg.data, "eval")

    train_adapter = adapter_for(_layout(cfg.data, train_src), train_src.format)
    examples = train_adapter.examples(train_rows, train_name, all_pairs=ctx.method.pair_selection == "all_pairs")
    examples, chosen = with_chosen(examples, needs_chosen(ctx.method),
                                   cfg.data.chosen_when_missing, ctx.method.name)
    if cfg.data.max_train_examples is not None:
        examples = examples[: cfg.data.max_train_examples]
    prompts = adapter_for(_layout(cfg.data, eval_src), eval_src.format).prompts(
        eval_rows, eval_name, cfg.data.max_eval_prompts, cfg.data.group_column)
    if ctx.method.trains and not examples:
        raise BadInput(f"dataset {train_src.spec}: no training pairs left after filtering")
    layout.train_examples.write(examples)
    layout.eval_prompts.write(prompts)
    dataset = {
        "id": cfg.data.dataset,
        "suite": cfg.suite,
        "fingerprint": pair_data.fingerprint(train_rows + eval_rows),
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
    } | get_suite(cfg.suite).dataset_record(ctx.assets)
    if train_src.user_rows:
        # Which rows the policy trained on, and their human judgements for checking the cost model
        # on them at the score stage (harness/instruments/user_labels.py).
        from harness.instruments.user_labels import capped

        dataset["train_source"] = {
            "spec": str(Path(train_src.spec).expanduser().resolve()) if Path(train_src.spec).expanduser().exists()
            else train_src.spec,
            "format": train_src.format, "split": cfg.data.train_split,
            "fingerprint": pair_data.fingerprint(train_rows), "rows": len(train_rows)}
        layout.train_labels.write(capped(train_adapter.labels(train_rows, train_name)))
    return {
        "dataset": dataset,
        "train_examples": len(examples),
        "chosen": chosen,
        "eval_prompts": len(prompts),
        "base_model": model_identity(ctx.assets.policy),
    }


def _layout(data_cfg, source):
    """The data settings a source is read with: a user's column mapping applies to the user's
    rows only; a suite's own files keep the layout's column names."""
    if source.user_rows:
        return data_cfg
    from harness.config import ColumnsConfig

    return dataclasses.replace(data_cfg, columns=ColumnsConfig())


def stage_self_samples(ctx: RunContext) -> dict:
    if not ctx.method.trains or not ctx.method.draws_self_samples():
        return {"skipped": "the method uses no self-samples"}
    cfg = ctx.cfg
    layout = ctx.run_dir.layout
    examples = layout.train_examples.read()
    prompts = sorted({e["prompt"] for e in examples})
    spec = ctx.assets.references["samples"]
    k = _sample_count(ctx)
    anchors = ctx.method.anchor_settings()
    sampling = {
        "temperature": cfg.sampling.temperature,
        "top_p": cfg.sampling.top_p,
        "top_k": cfg.sampling.top_k,
        "max_new_tokens": cfg.sampling.max_new_tokens,
        "k": k,
        "prompt_format": cfg.model.prompt_format,
    }
    identity = {
        "model": model_identity(spec)["sha256"],
        "dtype": cfg.model.dtype,
        "prompts": sha256_json(prompts),
        "sampling": sampling,
        "seed": ctx.cfg.seed,
        "format": SAMPLES_FORMAT,
    }
    if anchors.steered:
        # Unsteered anchors keep the keys they always had; steered ones name the procedure and
        # the filter's instrument (a retrained cost model is another filter).
        identity["anchors"] = anchors.record() | {"instrument": _anchor_filter_identity(ctx, anchors)}
    server = None
    if cfg.sampling.backend == "openai":
        # The server's name for its model and its version join the key; its dtype is its own.
        server = server_identity(ServerSettings.of(cfg.sampling))
        identity.update(backend="openai", server={"model": server["model"], "version": server["server_version"]})
        del identity["dtype"]
    key = sha256_json(identity)[:24]
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
    if ctx.method.chosen_source == "safe_self_samples":
        summary.update(_select_safe_self_samples(ctx, samples))
    layout.samples.write(samples)
    return summary


def _anchor_filter_identity(ctx: RunContext, anchors) -> Optional[str]:
    if anchors.anchor_filter == "cost-model":
        if ctx.assets.cost is None:
            raise BadInput(f"method.anchor_filter=cost-model: suite {ctx.cfg.suite} has no cost model "
                           "(model.cost_model)")
        return model_identity(ctx.assets.cost)["sha256"]
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
    _anchor_filter_identity(ctx, anchors)  # refuses a suite without a cost model
    model, tokenizer = load_score_model(ctx.assets.cost, dtype=ctx.cfg.model.dtype)

    def passes(prompts: list[str], responses: list[str]) -> list[bool]:
        costs = score_responses(model, tokenizer, prompts, responses, template=ctx.cfg.eval.scorer_template,
                                batch_size=ctx.cfg.eval.scorer_batch_size, desc="cost of anchors")
        return [cost <= 0 for cost in costs]

    return passes


def _select_safe_self_samples(ctx: RunContext, samples: dict) -> dict:
    """Self-Align SFT's data: for each prompt, the lowest-cost self-sample if the cost model
    calls it safe (cost ≤ 0); prompts with no safe sample are dropped."""
    if ctx.assets.cost is None:
        raise BadInput(f"method {ctx.method.name} keeps the self-samples a cost model calls safe; "
                       f"suite {ctx.cfg.suite} has none configured (model.cost_model)")
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


def _encode_examples(ctx: RunContext, tokenizer) -> list[dict]:
    """Training rows: token ids for every role the method needs (no reference values yet)."""
    cfg = ctx.cfg
    examples = ctx.run_dir.layout.train_examples.read()
    samples = None
    if ctx.method.draws_self_samples():
        samples = ctx.run_dir.layout.samples.read()
    if ctx.method.chosen_source == "safe_self_samples":
        safe = ctx.run_dir.layout.safe_chosen.read()
        examples = [dict(e, chosen=safe[e["prompt"]]["text"], chosen_ended=safe[e["prompt"]]["ended"])
                    for e in examples if e["prompt"] in safe]
        if not examples:
            raise RunFailure("the cost model marks none of the base policy's self-samples safe")
    if "samples" in ctx.method.roles:
        # An anchor filter leaves out prompts none of whose samples passed (self_samples' summary).
        examples = [e for e in examples if e["prompt"] in samples["texts"]]
        if not examples:
            raise RunFailure("the anchor filter kept no self-sample for any training prompt")
    max_length = cfg.train.max_length
    rows = []
    for index, example in enumerate(examples):
        text = ctx.prompt_text(example["prompt"], tokenizer)
        row = {"prompt_index": index, "prompt": example["prompt"]}
        for role in ctx.method.roles:
            if role == "samples":
                encoded = [encode_pair(tokenizer, text, s, max_length, ended=e)
                           for s, e in zip(samples["texts"][example["prompt"]], samples["ended"][example["prompt"]])]
                row["samples_ids"] = [e.input_ids for e in encoded]
                row["samples_start"] = [e.response_start for e in encoded]
                continue
            if role == "kl":
                # KTO's KL reference point: this prompt paired with another example's response.
                source, field_name = examples[(index + 1) % len(examples)], "chosen"
            else:
                source, field_name = example, role
            # Dataset responses are complete; a self-sample chosen by Self-Align SFT may be cut.
            encoded = encode_pair(tokenizer, text, source[field_name], max_length,
                                  ended=source.get(f"{field_name}_ended", True))
            row[f"{role}_ids"], row[f"{role}_start"] = encoded.input_ids, encoded.response_start
        rows.append(row)
    return rows


def _reference_spec(ctx: RunContext, role: str) -> str:
    # π_r− scores the self-samples; π_r+ scores the human responses (negative, chosen, kl).
    return ctx.assets.references["samples" if role == "samples" else "negatives"]


def stage_reference_logps(ctx: RunContext) -> dict:
    if not ctx.method.trains or not ctx.method.reference_roles:
        return {"skipped": "the method uses no reference model"}
    layout = ctx.run_dir.layout
    _, tokenizer = None, None
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
        rows = _encode_examples(ctx, tokenizer)
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
            k = len(rows[0]["samples_ids"])
            logps = [logps[i * k : (i + 1) * k] for i in range(len(rows))]
        values[role] = logps
        keys[role] = key
    loaded.clear()
    layout.reference_logps.write(values)
    return {"cache_keys": keys, "references": {r: _reference_spec(ctx, r) for r in ctx.method.reference_roles}}


def stage_train(ctx: RunContext) -> dict:
    if not ctx.method.trains:
        return {"skipped": "the method does not train"}
    from datasets import Dataset

    from harness.training import train_method

    layout = ctx.run_dir.layout
    use_lora = lora.enabled(ctx.cfg.train)
    model, tokenizer = ctx.load_policy(ctx.assets.policy, quantized=use_lora and ctx.cfg.train.lora.quantize_4bit)
    if use_lora:
        model = lora.wrap(model, ctx.cfg.train.lora, gradient_checkpointing=ctx.cfg.train.gradient_checkpointing)
    rows = _encode_examples(ctx, tokenizer)
    if ctx.method.reference_roles:
        reference = layout.reference_logps.read()
        for role, values in reference.items():
            for row, value in zip(rows, values):
                row[f"ref_{role}"] = value
    refresher = _online_refresher(ctx, tokenizer, rows)
    torch.manual_seed(ctx.cfg.seed)
    result = train_method(
        method=ctx.method, model=model, tokenizer=tokenizer, dataset=Dataset.from_list(rows),
        # Kept until the stage is marked complete: a run killed even after training resumes.
        train_cfg=ctx.cfg.train, output_dir=ctx.run_dir.checkpoint_dir("train"), seed=ctx.cfg.seed,
        sample_refresher=refresher, run_root=ctx.run_dir.root, run_name=ctx.run_dir.run_id,
    )
    trainer = result.pop("trainer")
    # Collective under ZeRO-3; only rank 0 writes. With LoRA the Trainer saves the adapter alone,
    # merged into the base as the policy below.
    adapter = layout.stage_dir("train") / "adapter"
    trainer.save_model(str(adapter if use_lora else layout.policy))
    summary = {k: v for k, v in result.items() if k != "diagnostics"} | {"examples": len(rows)}
    if ctx.run_dir.writer:
        if use_lora:
            lora.save_merged(adapter, ctx.assets.policy, layout.policy, dtype=ctx.cfg.model.dtype,
                             gguf_file=ctx.cfg.model.gguf_file, training_args=trainer.args)
            summary["lora"] = lora.record(ctx.cfg.train.lora, adapter, trainer.model)
        tokenizer.save_pretrained(layout.policy)
        layout.trajectory.write(result["diagnostics"])
    if refresher is not None:
        summary["sample_refreshes"] = refresher.refreshes
    return summary


def _online_refresher(ctx: RunContext, tokenizer, rows: list[dict]):
    refresh_every = int(getattr(ctx.cfg.method, "refresh_every", 0) or 0)
    if refresh_every <= 0 or "samples" not in ctx.method.roles:
        return None
    from harness.online import OnlineSampleRefresher

    if ctx.cfg.train.deepspeed and "zero3" in ctx.cfg.train.deepspeed:
        raise BadInput("online self-sample refresh cannot snapshot a ZeRO-3 partitioned policy; use zero0-2")
    from harness.anchors import sampling_prompt_text

    anchors = ctx.method.anchor_settings()  # the method refuses a filter with online refreshes
    spec = ctx.assets.references["samples"]
    if lora.enabled(ctx.cfg.train) and spec == ctx.assets.policy:
        # π_r− is the frozen base under the adapters: the policy with them disabled (None).
        reference_model = None
    else:
        reference_model, _ = ctx.load_policy(spec)
    return OnlineSampleRefresher(
        reference_model=reference_model,
        tokenizer=tokenizer,
        prompt_texts=[ctx.prompt_text(r["prompt"], tokenizer) for r in rows],
        sampling_texts=[sampling_prompt_text(r["prompt"], anchors, ctx.cfg.model.prompt_format, tokenizer)
                        for r in rows],
        k=_sample_count(ctx),
        sampling=ctx.cfg.sampling,
        refresh_every=refresh_every,
        max_length=ctx.cfg.train.max_length,
        seed=ctx.cfg.seed,
    )


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
        # Instruments differ between suites: their base scores are never shared.
        **({"suite": cfg.suite, "refusal_rules": REFUSAL_RULES_VERSION} if cfg.suite != "tiny-world" else {}),
    })[:24]


def stage_generate(ctx: RunContext) -> dict:
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


def stage_score(ctx: RunContext) -> dict:
    layout = ctx.run_dir.layout
    rows = layout.responses.read()
    prompts = [{"prompt": r["prompt"], "kind": r["kind"], "group": r.get("group", r["prompt"])} for r in rows]
    base_cache = JsonCache(ctx.home, "base_scores")
    # v2: per-response groups come from the prompts' group column (before, every prompt was its
    # own group); base scores cached under the old key are not reused.
    base_key = ctx.run_dir.summary("generate")["base_cache_key"] + f"-v{SCORES_FORMAT}" + guards_tag(ctx.cfg)
    base_result = base_cache.get(base_key)
    suite = get_suite(ctx.cfg.suite)
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
                          if ctx.cfg.suite != "tiny-world" or "score-models" in checks else None)
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


def stage_leaderboard(ctx: RunContext) -> dict:
    from harness.entries import build_entries
    from harness.leaderboard import append_entries

    entries = build_entries(ctx)
    path = ctx.out_dir / "leaderboard.json"
    append_entries(path, entries)
    return {"leaderboard": str(path), "run_ids": [e["run_id"] for e in entries]}


STAGE_FUNCTIONS: dict[str, Callable[[RunContext], dict]] = {
    "data": stage_data,
    "self_samples": stage_self_samples,
    "reference_logps": stage_reference_logps,
    "train": stage_train,
    "generate": stage_generate,
    "score": stage_score,
    "leaderboard": stage_leaderboard,
}


def _describe_os_error(stage: str, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"stage {stage} failed: disk full{where}; free space and rerun (finished stages and "
                "sealed checkpoints are kept, partial ones removed)")
    return f"stage {stage} failed: {type(exc).__name__}: {exc}"


def run_id_for(cfg: RunConfig) -> str:
    return f"{cfg.method_name}-{cfg.preset}-s{cfg.seed}-{cfg.hash()[:8]}"


def run_pipeline(cfg: RunConfig, out_dir: Path, *, progress: Callable[[str], None] = print,
                 stop_after: Optional[str] = None, selection: Optional[dict] = None) -> RunContext:
    """Run (or resume) the stages of one run, all of them or up to `stop_after` inclusive.

    `selection` (how the configuration was chosen: study, rule, selected trial) goes into the
    leaderboard entry as it is. Returns the context; the run directory says which stages are
    complete.
    """
    if stop_after is not None and stop_after not in STAGES:
        raise BadInput(f"unknown stage {stop_after!r} (stages: {', '.join(STAGES)})")
    home = bench_home()
    method = get_method(cfg.method_name)(cfg.method)
    run_id = run_id_for(cfg)
    distributed.init_if_launched()
    main_process = distributed.is_main_process()
    header = {"method": cfg.method_name, "preset": cfg.preset, "seed": cfg.seed,
              "config": cfg.to_dict(), "config_hash": cfg.hash()}
    torch.manual_seed(cfg.seed)
    lock = None
    completed = False
    try:
        # The ranks of one launch share the run; another invocation of it is refused.
        lock = acquire_run_lock(RunLayout.of(out_dir, run_id).root) if main_process else None
        # Rank 0 builds the world and opens the run directory before any other rank looks at them.
        if main_process:
            assets = resolve_assets(cfg, home)
            run_dir = RunDir(RunLayout.of(out_dir, run_id).root, run_id, STAGES, header)
        distributed.barrier()
        if not main_process:
            assets = resolve_assets(cfg, home)
            run_dir = RunDir(RunLayout.of(out_dir, run_id).root, run_id, STAGES, header, writer=False)
        ctx = RunContext(cfg=cfg, method=method, run_dir=run_dir, home=home, assets=assets,
                         out_dir=Path(out_dir), progress=progress if main_process else (lambda _: None),
                         selection=selection)
        for name in STAGES:
            if run_dir.is_complete(name):
                ctx.progress(f"[{run_id}] {name}: already complete, skipped")
            else:
                _run_stage(ctx, name, main_process)
            if name == stop_after:
                break
        completed = True
    finally:
        distributed.leave_process_group(completed=completed)
        if lock is not None:
            lock.release()
    return ctx


_PEAK_RESETTABLE = True


def _reset_peak_rss() -> None:
    """Start the process's peak-resident-memory counter afresh (Linux's clear_refs "5" resets the
    high-water mark that ru_maxrss reports), so each stage's summary holds its own peak."""
    global _PEAK_RESETTABLE
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        _PEAK_RESETTABLE = False


def _run_stage(ctx: RunContext, name: str, main_process: bool) -> None:
    """Run one stage: on every rank if it is collective, else on rank 0 while the others wait."""
    run_dir = ctx.run_dir
    ctx.progress(f"[{run_dir.run_id}] {name} ...")
    run_dir.reset_stage(name)
    distributed.barrier()
    started = time.perf_counter()
    _reset_peak_rss()
    try:
        run_dir.mark(name, "running")
    except OSError as exc:  # a full disk before the stage began: one line, nothing else changed
        raise RunFailure(_describe_os_error(name, exc)) from exc
    kill_point(f"stage:{name}:start")
    error = None
    if name in COLLECTIVE_STAGES or main_process:
        try:
            summary = STAGE_FUNCTIONS[name](ctx)
            kill_point(f"stage:{name}:end")
        except D2OBenchError as exc:
            error = exc
        except OSError as exc:
            error = RunFailure(_describe_os_error(name, exc))
            error.__cause__ = exc
        except Exception as exc:
            error = RunFailure(f"stage {name} failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        if error is not None:
            error = run_dir.record_failure(name, error)
    # Every rank learns whether rank 0's stage failed, so none waits forever on the next one.
    failure = distributed.main_process_outcome(None if error is None else str(error))
    if error is not None:
        raise error
    if failure is not None:
        raise RunFailure(f"rank 0 failed: {failure}")
    if main_process:
        summary["duration_s"] = time.perf_counter() - started
        summary["finished_at"] = _now()
        # This stage's own peak resident memory where the kernel lets the peak be reset (Linux),
        # else the process's peak so far (which never falls: a stage's own peak is then a step up).
        summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        summary["peak_rss_scope"] = "stage" if _PEAK_RESETTABLE else "process"
        try:
            run_dir.mark(name, "complete", summary)
        except OSError as exc:  # the COMPLETE marker or run.json on a full disk
            raise run_dir.record_failure(name, RunFailure(_describe_os_error(name, exc))) from exc
    distributed.barrier()
