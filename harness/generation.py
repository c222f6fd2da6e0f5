"""Batched, KV-cached generation with transformers' `generate` (left padding, seeded), each call
cut to a memory budget when one is given (`plan_calls`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig


@dataclass(frozen=True)
class Completion:
    text: str
    # True when the model emitted EOS; False when generation stopped at max_new_tokens.
    ended: bool


@dataclass(frozen=True)
class GenerationFootprint:
    """What one sequence of a `generate` call holds, in bytes, estimated from the model's config.

    K samples of a prompt are K sequences: transformers expands the prompt K times before the
    prefill, so every sample carries its own KV cache. The estimate is for decoder-only
    transformers with a dense MLP (Llama and its kin); benchmarks/RESULTS.md ("Where a real run's
    memory goes") holds it against measured peaks.
    """

    kv_per_token: int  # keys and values over every layer
    activations_per_token: int  # one layer's prefill temporaries (MLP and attention projections)
    scores_per_token_pair: int  # one layer's attention scores and their softmax, per (query, key)
    sampling_per_step: int  # the step's logits and the sampler's copies of them (warped, sorted)

    @classmethod
    def of(cls, config, element_bytes: int) -> "GenerationFootprint":
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        hidden = config.hidden_size
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
        return cls(
            kv_per_token=2 * config.num_hidden_layers * kv_heads * head_dim * element_bytes,
            # Gate, up, their product and the residual stream's copies are alive at once.
            activations_per_token=(4 * intermediate + 4 * hidden) * element_bytes,
            scores_per_token_pair=2 * heads * element_bytes,
            # Logits are float32 whatever the weights; temperature/top-p/top-k warp and sort copies.
            sampling_per_step=4 * config.vocab_size * 4,
        )

    def per_sequence(self, prompt_tokens: int, new_tokens: int) -> int:
        """The larger of the two moments a sequence peaks at: the prefill's last layer (the
        prompt's cache plus one layer's temporaries, quadratic in the prompt through the
        attention scores) and the last decoding step (the whole cache)."""
        prefill = (prompt_tokens * (self.kv_per_token + self.activations_per_token)
                   + prompt_tokens * prompt_tokens * self.scores_per_token_pair)
        decode = (prompt_tokens + new_tokens) * self.kv_per_token
        return max(prefill, decode) + self.sampling_per_step


def plan_calls(prompt_tokens: Sequence[int], *, batch_size: int, sequences_per_prompt: int, new_tokens: int,
               footprint: Optional[GenerationFootprint], budget_bytes: Optional[int]) -> list[list[int]]:
    """The prompts (indices into `prompt_tokens`, which is in generation order) of each
    `generate` call.

    Without a budget (or footprint): consecutive runs of `batch_size` prompts, as generation
    always ran. With one, each such run that would hold more than `budget_bytes` (every prompt
    left-padded to the run's longest, times `sequences_per_prompt`) is cut greedily into
    consecutive calls that fit, a call holding at least one prompt. Pure, so it is tested alone;
    the calls it returns are what sets the random draws (the seed is set once, before the first).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    runs = [list(range(start, min(start + batch_size, len(prompt_tokens))))
            for start in range(0, len(prompt_tokens), batch_size)]
    if footprint is None or not budget_bytes:
        return runs
    calls: list[list[int]] = []
    for run in runs:
        call: list[int] = []
        longest = 0
        for index in run:
            wider = max(longest, prompt_tokens[index])
            cost = (len(call) + 1) * sequences_per_prompt * footprint.per_sequence(wider, new_tokens)
            if call and cost > budget_bytes:
                calls.append(call)
                call, wider = [], prompt_tokens[index]
            call.append(index)
            longest = wider
        calls.append(call)
    return calls


def budget_binds(prompt_tokens: Sequence[int], *, batch_size: int, sequences_per_prompt: int, new_tokens: int,
                 footprint: Optional[GenerationFootprint], budget_bytes: Optional[int]) -> bool:
    """Whether the budget could cut a call of any subset of these prompts (a filtered anchor
    round draws a subset): true when `batch_size` prompts as long as the longest would exceed
    it. False means every plan equals the unbudgeted one, so the samples are those drawn before
    budgets existed."""
    if footprint is None or not budget_bytes or not prompt_tokens:
        return False
    n = min(batch_size, len(prompt_tokens))
    return n * sequences_per_prompt * footprint.per_sequence(max(prompt_tokens), new_tokens) > budget_bytes


def generate_responses(model, tokenizer, prompt_texts: list[str], **kwargs) -> list[list[str]]:
    """Like `generate_completions`, the texts only."""
    return [[c.text for c in group] for group in generate_completions(model, tokenizer, prompt_texts, **kwargs)]


def generate_completions(
    model,
    tokenizer,
    prompt_texts: list[str],
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_return_sequences: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    desc: str = "generate",
    memory_budget_bytes: Optional[int] = None,
) -> list[list[Completion]]:
    """`num_return_sequences` completions per prompt, decoded without the prompt, each saying
    whether it ended (EOS) or was cut at `max_new_tokens`.

    Prompts are processed in length-sorted batches (less padding) of `batch_size`, each cut
    into calls under `memory_budget_bytes` when given (`plan_calls`); the seed is set once, so
    the same inputs and settings give the same samples on the same device.
    """
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=(top_k or None) if do_sample else None,
        num_return_sequences=num_return_sequences,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    order = sorted(range(len(prompt_texts)), key=lambda i: len(prompt_texts[i]))
    calls = plan_calls(
        prompt_token_counts(tokenizer, [prompt_texts[i] for i in order]) if memory_budget_bytes else [0] * len(order),
        batch_size=batch_size, sequences_per_prompt=num_return_sequences, new_tokens=max_new_tokens,
        footprint=model_footprint(model) if memory_budget_bytes else None, budget_bytes=memory_budget_bytes,
    )
    outputs: list[list[Completion]] = [[] for _ in prompt_texts]
    try:
        with torch.no_grad():
            for call in tqdm(calls, desc=desc, unit="batch"):
                chunk = [order[position] for position in call]
                enc = tokenizer(
                    [prompt_texts[i] for i in chunk], return_tensors="pt", padding=True
                ).to(device)
                generated = model.generate(**enc, generation_config=generation_config)
                new_tokens = generated[:, enc["input_ids"].shape[1] :]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                ended = (new_tokens == tokenizer.eos_token_id).any(dim=-1).tolist()
                for j, index in enumerate(chunk):
                    rows = range(j * num_return_sequences, (j + 1) * num_return_sequences)
                    outputs[index] = [Completion(texts[r].strip(), bool(ended[r])) for r in rows]
    finally:
        model.train(was_training)
    return outputs


def prompt_token_counts(tokenizer, prompt_texts: Sequence[str]) -> list[int]:
    """Each prompt's length in tokens as `generate_completions` encodes it."""
    return [len(ids) for ids in tokenizer(list(prompt_texts))["input_ids"]]


def model_footprint(model) -> Optional[GenerationFootprint]:
    """The footprint of a loaded model; None when its config lacks what the estimate needs."""
    return footprint_of(model.config, next(model.parameters()).element_size())


def footprint_of(config, element_bytes: int) -> Optional[GenerationFootprint]:
    try:
        return GenerationFootprint.of(config, element_bytes)
    except (AttributeError, TypeError):
        return None
