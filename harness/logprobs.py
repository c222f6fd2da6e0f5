"""Tokenising (prompt, response) pairs and computing sequence log-probs of responses.

A sequence log-prob log π(y|x) is the sum of the response tokens' log-probabilities given the
prompt and the earlier response tokens; prompt and padding positions are masked out. Every
method's loss and every cached reference value goes through `sequence_logps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from harness.errors import BadInput
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


# Response positions the LM head projects at once. 1,024 rows of a 49k vocabulary are 200 MB of
# fp32 logits (128 MB at Llama-2's 32k): the largest buffer the log-probs ever hold, whatever
# the batch, K or sequence length.
LOGIT_CHUNK_TOKENS = 1024


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a DeepSpeed engine or DDP wrapper (itself when bare)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def projects_responses_only(model: torch.nn.Module) -> bool:
    """Whether the log-probs can run the LM head on response positions alone: the model must
    expose its head and decoder, and must not transform the logits after the head (Gemma-2's
    soft-capping, Cohere's logit scale); such models take the full-logits path."""
    inner = unwrap(model)
    head = getattr(inner, "get_output_embeddings", lambda: None)()
    decoder = getattr(inner, "get_decoder", lambda: None)()
    config = getattr(inner, "config", None)
    transforms_logits = any(
        getattr(config, name, None) not in (None, 1, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
    )
    return isinstance(head, torch.nn.Linear) and decoder is not None and not transforms_logits


def _head_logps(head: torch.nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # cross_entropy's fused log-softmax and pick: 4-6% faster DPO steps than gather minus
    # logsumexp, and fewer [tokens × vocabulary] temporaries (benchmarks/RESULTS.md).
    return -F.cross_entropy(head(states).float(), targets, reduction="none")


def _final_hidden_states(model, input_ids, attention_mask) -> torch.Tensor:
    if torch.is_grad_enabled():
        # Training goes through the model's own forward, so a DeepSpeed engine, a DDP wrapper or
        # Accelerate's autocast patch sees the call; one logit row per sequence is all that
        # forward projects. Backward keeps every layer's states anyway, so asking for them costs
        # nothing (the last one is after the final norm, the head's input).
        output = model(input_ids=input_ids, attention_mask=attention_mask,
                       output_hidden_states=True, logits_to_keep=1)
        return output.hidden_states[-1]
    # Without gradients (reference and scoring passes on a bare model), the decoder alone: only
    # its last states are held.
    return unwrap(model).get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def sequence_logps(model, input_ids, attention_mask, response_mask, *,
                   logit_chunk_tokens: int = LOGIT_CHUNK_TOKENS) -> SequenceLogps:
    """Summed response log-probs per sequence.

    The LM head runs only on the positions that predict a response token, LOGIT_CHUNK_TOKENS of
    them at a time, so no [sequences × length × vocabulary] tensor exists; with gradients and
    more than one chunk, each chunk's logits are recomputed in backward instead of kept (one
    more head matmul over the response tokens, against the full path's head over every prompt
    and padding position).
    """
    if not projects_responses_only(model):
        return full_logits_sequence_logps(model, input_ids, attention_mask, response_mask)
    predicts_response = response_mask[:, 1:]
    hidden = _final_hidden_states(model, input_ids, attention_mask)
    states = hidden[:, :-1][predicts_response]
    targets = input_ids[:, 1:][predicts_response]
    head = unwrap(model).get_output_embeddings()
    # A single chunk's logits may stay for backward: nothing larger would exist either way.
    recompute = states.requires_grad and states.shape[0] > logit_chunk_tokens
    pieces = []
    for start in range(0, states.shape[0], logit_chunk_tokens):
        chunk = (head, states[start : start + logit_chunk_tokens], targets[start : start + logit_chunk_tokens])
        if recompute:
            pieces.append(checkpoint(_head_logps, *chunk, use_reentrant=False))
        else:
            pieces.append(_head_logps(*chunk))
    per_token = torch.cat(pieces) if pieces else states.new_zeros(0, dtype=torch.float32)
    rows = predicts_response.nonzero()[:, 0]
    total = per_token.new_zeros(input_ids.shape[0]).index_add(0, rows, per_token)
    return SequenceLogps(total=total, n_tokens=predicts_response.sum(-1).to(torch.float32))


def full_logits_sequence_logps(model, input_ids, attention_mask, response_mask) -> SequenceLogps:
    """The same sums from the model's full [B, L, V] logits: the path for models whose head
    cannot be run apart (see `projects_responses_only`), and the reference the tests hold the
    response-only path to."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    per_token = token_logps(logits, input_ids)
    mask = response_mask[:, 1:].to(per_token.dtype)
    return SequenceLogps(total=(per_token * mask).sum(-1), n_tokens=mask.sum(-1))


def _chunk_logps(model, input_ids, attention_mask, response_mask):
    logps = sequence_logps(model, input_ids, attention_mask, response_mask)
    return logps.total, logps.n_tokens


def padded_tokens(pairs: list[EncodedPair]) -> int:
    """Tokens a forward over `pairs` processes, padding included."""
    return len(pairs) * max((len(p.input_ids) for p in pairs), default=0)


def length_chunks(pairs: list[EncodedPair], tokens_per_chunk: int) -> list[list[int]]:
    """Indices of `pairs` in length order, cut into chunks of at most `tokens_per_chunk` padded
    tokens (a sequence longer than that is a chunk of its own)."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].input_ids))
    chunks: list[list[int]] = []
    for index in order:
        # In length order the newcomer is the chunk's longest, so it sets the padded width.
        if chunks and (len(chunks[-1]) + 1) * len(pairs[index].input_ids) <= tokens_per_chunk:
            chunks[-1].append(index)
        else:
            chunks.append([index])
    return chunks


def recomputed_sequence_logps(model, pairs: list[EncodedPair], pad_id: int, device,
                              tokens_per_chunk: int) -> SequenceLogps:
    """`sequence_logps` of many sequences with gradient caching's memory.

    Every method's loss sees a sequence only through its summed log-prob, so its gradient is
    Σ_s (∂loss/∂logp_s) · ∇logp_s: fixed weights from a forward without kept activations, then
    each chunk's forward again with its backward. The chunks here run under activation
    checkpointing, which does exactly that inside the single backward the Trainer (and
    DeepSpeed) already calls: the first pass keeps only each chunk's inputs; backward, after the
    loss has given the weights, recomputes one chunk, backpropagates it and frees it before the
    next (the last chunk, which backward reaches first, keeps its activations instead). Peak
    activation memory is one chunk's, whatever K is. Chunks are filled in length order, so they
    also pad less than the whole batch would.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        # DDP synchronises gradients from hooks its own forward arms once per backward; a chunk
        # recomputed inside backward would run that forward again.
        raise BadInput("train.gradient_cache needs DeepSpeed (train.deepspeed) on more than one rank; "
                       "set train.gradient_cache=false to train with plain DDP")
    # The engine's forward arms DeepSpeed's backward hooks once per step; chunks call the model
    # inside it, whose ZeRO parameter hooks are per module and still gather and reduce.
    inner = unwrap(model)
    chunks = length_chunks(pairs, tokens_per_chunk)
    totals, counts = [], []
    for number, chunk in enumerate(chunks):
        batch = collate_pairs([pairs[i] for i in chunk], pad_id)
        inputs = [batch[k].to(device) for k in ("input_ids", "attention_mask", "response_mask")]
        if number == len(chunks) - 1:
            # Backward starts with the last chunk, so its activations are used before any other
            # chunk is recomputed: keeping them costs no more than one chunk and saves its rerun.
            total, n_tokens = _chunk_logps(inner, *inputs)
        else:
            total, n_tokens = checkpoint(_chunk_logps, inner, *inputs, use_reentrant=False)
        totals.append(total)
        counts.append(n_tokens)
    positions = torch.tensor([i for chunk in chunks for i in chunk], device=device)
    total, n_tokens = torch.cat(totals), torch.cat(counts)
    return SequenceLogps(total=total.new_empty(len(pairs)).index_copy(0, positions, total),
                         n_tokens=n_tokens.new_empty(len(pairs)).index_copy(0, positions, n_tokens))


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
