"""Batched, KV-cached generation with transformers' `generate` (left padding, seeded)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig


@dataclass(frozen=True)
class Completion:
    text: str
    # True when the model emitted EOS; False when generation stopped at max_new_tokens.
    ended: bool


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
) -> list[list[Completion]]:
    """`num_return_sequences` completions per prompt, decoded without the prompt, each saying
    whether it ended (EOS) or was cut at `max_new_tokens`.

    Prompts are processed in length-sorted batches (less padding); the seed is set once, so the
    same inputs and settings give the same samples on the same device.
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
    outputs: list[list[Completion]] = [[] for _ in prompt_texts]
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
                chunk = order[start : start + batch_size]
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
