"""Tokenising (prompt, response) pairs and computing sequence log-probs of responses.

A sequence log-prob log π(y|x) is the sum of the response tokens' log-probabilities given the
prompt and the earlier response tokens; prompt and padding positions are masked out. Every
method's loss and every cached reference value goes through `sequence_logps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from harness.registry import SequenceLogps


@dataclass
class EncodedPair:
    input_ids: list[int]
    response_start: int  # index of the first response token in input_ids


def encode_pair(tokenizer, prompt_text: str, response: str, max_length: int, *, ended: bool = True) -> EncodedPair:
    """Token ids of prompt + response (+ EOS when the response ended); the prompt keeps its end
    if it must be cut.

    A sample cut at max_new_tokens did not end: scoring an EOS after it would train and score a
    stop the model never made.
    """
    prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(" " + response.strip(), add_special_tokens=False)["input_ids"]
    if ended and tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    max_prompt = max(1, max_length // 2)
    if len(prompt_ids) > max_prompt and len(prompt_ids) + len(response_ids) > max_length:
        prompt_ids = prompt_ids[-max_prompt:]
    response_ids = response_ids[: max(1, max_length - len(prompt_ids))]
    return EncodedPair(prompt_ids + response_ids, len(prompt_ids))


def collate_pairs(pairs: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and response_mask for a list of pairs."""
    width = max(len(p.input_ids) for p in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    response_mask = torch.zeros((len(pairs), width), dtype=torch.bool)
    for row, pair in enumerate(pairs):
        n = len(pair.input_ids)
        input_ids[row, :n] = torch.tensor(pair.input_ids)
        attention_mask[row, :n] = 1
        response_mask[row, pair.response_start : n] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t ≥ 1, shape [B, L-1], computed in float32."""
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:].unsqueeze(-1)
    # logsumexp over the vocabulary instead of a full log_softmax keeps memory at one [B, L]
    # buffer beyond the logits, which matters for 32k+ vocabularies.
    picked = logits.gather(-1, targets).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(model, input_ids, attention_mask, response_mask) -> SequenceLogps:
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    per_token = token_logps(logits, input_ids)
    mask = response_mask[:, 1:].to(per_token.dtype)
    return SequenceLogps(total=(per_token * mask).sum(-1), n_tokens=mask.sum(-1))


@torch.no_grad()
def score_pairs(model, pairs: list[EncodedPair], pad_id: int, batch_size: int, desc: str) -> list[float]:
    """Summed response log-probs of many pairs under `model` (length-sorted batches)."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].input_ids))
    results = [0.0] * len(pairs)
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs([pairs[i] for i in chunk], pad_id).items()}
        logps = sequence_logps(model, **batch).total.tolist()
        for index, value in zip(chunk, logps):
            results[index] = value
    return results
