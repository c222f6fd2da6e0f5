"""Scoring responses with Safe-RLHF-style reward and cost models.

The scorer reads `template.format(input=prompt) + " " + response` tokenised with ITS OWN
tokenizer (the policy's may differ), in length-sorted batches; the score is taken at the last
non-padding token (harness/models/score_model.py).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from harness.prompting import scorer_text


@torch.no_grad()
def score_responses(
    model, tokenizer, prompts: list[str], responses: list[str], *, template: str, batch_size: int, desc: str,
    max_length: int = 1024,
) -> list[float]:
    texts = [scorer_text(p, r, template) for p, r in zip(prompts, responses)]
    device = next(model.parameters()).device
    model.eval()
    scores = [0.0] * len(texts)
    batches = padded_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length)
    for chunk, ids, mask in tqdm(batches, total=-(-len(texts) // batch_size), desc=desc, unit="batch"):
        values = model(ids.to(device), mask.to(device)).float().tolist()
        for index, value in zip(chunk, values):
            scores[index] = value
    return scores


def padded_batches(tokenizer, texts: list[str], *, batch_size: int, max_length: int):
    """(indices, input_ids, attention_mask) per batch, texts sorted by length so batches pad
    little; right padding, so a row's last real token is at mask.sum() - 1."""
    encoded = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            ids[row, : len(encoded[index])] = torch.tensor(encoded[index])
            mask[row, : len(encoded[index])] = 1
        yield chunk, ids, mask
