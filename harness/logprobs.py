"""Tokenising (prompt, response) pairs and computing sequence log-probs of responses.

A sequence log-prob log π(y|x) is the sum of the response tokens' log-probabilities given the
prompt and the earlier response tokens; prompt and padding positions are masked out. Every
method's loss and every cached reference value goes through `sequence_logps`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

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


def _final_hidden_states(model, input_ids, attention_mask, position_ids=None, *,
                         through_forward: Optional[bool] = None) -> torch.Tensor:
    positions = {} if position_ids is None else {"position_ids": position_ids}
    if through_forward if through_forward is not None else torch.is_grad_enabled():
        # Training goes through the model's own forward, so a DeepSpeed engine, a DDP wrapper or
        # Accelerate's autocast patch sees the call; one logit row per sequence is all that
        # forward projects. Backward keeps every layer's states anyway, so asking for them costs
        # nothing (the last one is after the final norm, the head's input).
        output = model(input_ids=input_ids, attention_mask=attention_mask, **positions,
                       output_hidden_states=True, logits_to_keep=1)
        return output.hidden_states[-1]
    # Without gradients (reference and scoring passes on a bare model), the decoder alone: only
    # its last states are held. (A training chunk's gradient-free first pass is the exception:
    # its values must come from the same forward, autocast included, as its recomputation.)
    return unwrap(model).get_decoder()(input_ids=input_ids, attention_mask=attention_mask, **positions).last_hidden_state


def _summed_logps(model, states: torch.Tensor, targets: torch.Tensor, owners: torch.Tensor, n_sequences: int,
                  logit_chunk_tokens: int) -> SequenceLogps:
    """Per-sequence sums of log p(target | state) for [T, H] states predicting [T] targets, where
    owners[t] is the sequence target t belongs to; the LM head sees logit_chunk_tokens rows at a time."""
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
    total = per_token.new_zeros(n_sequences).index_add(0, owners, per_token)
    n_tokens = torch.zeros(n_sequences, dtype=torch.float32, device=owners.device).index_add(
        0, owners, torch.ones_like(owners, dtype=torch.float32))
    return SequenceLogps(total=total, n_tokens=n_tokens)


def sequence_logps(model, input_ids, attention_mask, response_mask, *,
                   logit_chunk_tokens: int = LOGIT_CHUNK_TOKENS,
                   through_forward: Optional[bool] = None) -> SequenceLogps:
    """Summed response log-probs per sequence.

    The LM head runs only on the positions that predict a response token, LOGIT_CHUNK_TOKENS of
    them at a time, so no [sequences × length × vocabulary] tensor exists; with gradients and
    more than one chunk, each chunk's logits are recomputed in backward instead of kept (one
    more head matmul over the response tokens, against the full path's head over every prompt
    and padding position).

    `through_forward`: whether the model's own forward runs (True) or its decoder alone (False);
    None: the forward when gradients are on.
    """
    if not projects_responses_only(model):
        return full_logits_sequence_logps(model, input_ids, attention_mask, response_mask)
    predicts_response = response_mask[:, 1:]
    hidden = _final_hidden_states(model, input_ids, attention_mask, through_forward=through_forward)
    states = hidden[:, :-1][predicts_response]
    targets = input_ids[:, 1:][predicts_response]
    owners = predicts_response.nonzero()[:, 0]
    return _summed_logps(model, states, targets, owners, input_ids.shape[0], logit_chunk_tokens)


def full_logits_sequence_logps(model, input_ids, attention_mask, response_mask) -> SequenceLogps:
    """The same sums from the model's full [B, L, V] logits: the path for models whose head
    cannot be run apart (see `projects_responses_only`), and the reference the tests hold the
    response-only path to."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    per_token = token_logps(logits, input_ids)
    mask = response_mask[:, 1:].to(per_token.dtype)
    return SequenceLogps(total=(per_token * mask).sum(-1), n_tokens=mask.sum(-1))


def _chunk_logps(model, input_ids, attention_mask, response_mask):
    logps = sequence_logps(model, input_ids, attention_mask, response_mask, through_forward=True)
    return logps.total, logps.n_tokens


def _packed_chunk_logps(model, batch: "SharedPromptBatch"):
    logps = shared_prompt_sequence_logps(model, batch, through_forward=True)
    return logps.total, logps.n_tokens


def padded_tokens(pairs: list[EncodedPair]) -> int:
    """Tokens a forward over `pairs` processes, padding included."""
    return len(pairs) * max((len(p.input_ids) for p in pairs), default=0)


def length_chunks(lengths: list[int], tokens_per_chunk: int) -> list[list[int]]:
    """Indices of rows of these lengths in length order, cut into chunks of at most
    `tokens_per_chunk` padded tokens (a row longer than that is a chunk of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    for index in order:
        # In length order the newcomer is the chunk's longest, so it sets the padded width.
        if chunks and (len(chunks[-1]) + 1) * lengths[index] <= tokens_per_chunk:
            chunks[-1].append(index)
        else:
            chunks.append([index])
    return chunks


# Attention implementations that take an arbitrary [rows, 1, query, key] mask as given (transformers
# returns a 4D mask as is); FlashAttention and flex attention do not, so those models never pack.
_PACKABLE_ATTENTION = ("sdpa", "eager")


@dataclass
class SharedPromptBatch:
    """Sequences packed by shared prompt: a *unit* is a prompt once followed by some of its
    responses, each response attending to the prompt and to itself only, at the positions it
    would have directly after the prompt; a row holds one or more units side by side, none
    seeing another. The same log-probs as one row per sequence, without computing a shared
    prompt once per response (a DPO pair's prompt twice, a D²O prompt K + 1 times) and with less
    padding."""

    input_ids: torch.Tensor  # [rows, width], pad_id after each row's end
    position_ids: torch.Tensor  # [rows, width]
    allowed: torch.Tensor  # [rows, 1, width, width] bool: may query q attend to key k
    predictors: torch.Tensor  # [T] index into rows × width: the position whose state predicts target t
    targets: torch.Tensor  # [T] the response tokens scored
    owners: torch.Tensor  # [T] which of the packed sequences target t belongs to
    n_sequences: int

    def to(self, device) -> "SharedPromptBatch":
        moved = {name: getattr(self, name).to(device)
                 for name in ("input_ids", "position_ids", "allowed", "predictors", "targets", "owners")}
        return SharedPromptBatch(**moved, n_sequences=self.n_sequences)


def prompt_groups(pairs: list[EncodedPair]) -> list[list[int]]:
    """Indices of `pairs` grouped by identical prompt tokens, in order of first appearance. A pair
    without a prompt token stays alone (its first response token has no position to predict it)."""
    groups: dict[object, list[int]] = {}
    for index, pair in enumerate(pairs):
        key = tuple(pair.input_ids[: pair.response_start]) if pair.response_start >= 1 else ("alone", index)
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def _unit_length(pairs: list[EncodedPair], unit: list[int]) -> int:
    return pairs[unit[0]].response_start + sum(len(pairs[i].input_ids) - pairs[i].response_start for i in unit)


def _rows_of_width(pairs: list[EncodedPair], width: int) -> list[list[list[int]]]:
    """Rows (lists of units, a unit a list of pair indices) at most `width` tokens long: each
    prompt's responses cut into as few units as fit, then the units first-fit in decreasing length."""
    units = []
    for group in prompt_groups(pairs):
        unit: list[int] = []
        for index in group:
            if unit and _unit_length(pairs, unit + [index]) > width:
                units.append(unit)
                unit = []
            unit.append(index)
        units.append(unit)
    rows: list[list[list[int]]] = []
    free: list[int] = []
    for unit in sorted(units, key=lambda u: -_unit_length(pairs, u)):
        length = _unit_length(pairs, unit)
        row = next((r for r, space in enumerate(free) if space >= length), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(unit)
        free[row] -= length
    return rows


def _layout_cost(rows: int, width: int, hidden_size: int) -> float:
    # Linear layers cost ~24·hidden² FLOPs per token and layer (12·hidden² parameters); attention
    # 4·hidden·width more for each token of a row `width` wide, mask or no mask.
    return rows * width * (1 + width / (6 * hidden_size))


def shared_prompt_rows(pairs: list[EncodedPair], hidden_size: int,
                       max_width: Optional[int] = None) -> list[list[list[int]]]:
    """The cheapest packed layout of `pairs` (by `_layout_cost`) over row widths from the longest
    sequence up to the longest whole prompt group, or up to `max_width` (a prompt's responses are
    then split over several units, each with the prompt)."""
    narrowest = max(len(pair.input_ids) for pair in pairs)  # every sequence must fit in a row
    widths = {narrowest} | {w for w in (_unit_length(pairs, g) for g in prompt_groups(pairs))
                            if w > narrowest and (max_width is None or w <= max_width)}
    if max_width is not None and max_width > narrowest:
        widths.add(max_width)
    layouts = [_rows_of_width(pairs, width) for width in sorted(widths)]
    return min(layouts, key=lambda rows: _layout_cost(len(rows), _row_width(pairs, rows), hidden_size))


def _row_width(pairs: list[EncodedPair], rows: list[list[list[int]]]) -> int:
    return max(sum(_unit_length(pairs, unit) for unit in row) for row in rows)


def shared_prompt_layout(model, pairs: list[EncodedPair],
                         max_width: Optional[int] = None) -> Optional[list[list[list[int]]]]:
    """The rows, none wider than `max_width` unless a sequence is, to pack `pairs` in
    (`shared_prompt_rows`) when packing is exact for this model and cheaper than one row per
    sequence; None otherwise."""
    config = getattr(unwrap(model), "config", None)
    if (not projects_responses_only(model) or getattr(config, "_attn_implementation", None) not in _PACKABLE_ATTENTION
            or not getattr(config, "hidden_size", None) or not _on_cpu(model)):
        return None
    longest = max(len(pair.input_ids) for pair in pairs)
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if window:
        # The packed mask replaces the model's own: rows may not outgrow the window, and a
        # sequence longer than it needs the model's windowed mask.
        if longest > window:
            return None
        max_width = min(max_width or window, window)
    rows = shared_prompt_rows(pairs, config.hidden_size, max_width)
    cost = _layout_cost(len(rows), _row_width(pairs, rows), config.hidden_size)
    return rows if cost < _layout_cost(len(pairs), longest, config.hidden_size) else None


def _on_cpu(model) -> bool:
    # The cost model above is the CPU's, where compute follows tokens. On an H100 (bf16, SmolLM2,
    # benchmarks/RESULTS.md) the packed DPO step took 2.7x the one-row step: a step there is
    # bound by kernel launches and host work (the layout and mask are built on the host), not
    # by tokens, and a custom mask keeps SDPA off FlashAttention. Until a GPU measurement says
    # otherwise, a model on an accelerator gets one row per sequence.
    parameter = next(unwrap(model).parameters(), None)
    return parameter is None or parameter.device.type == "cpu"


def packed_tokens(pairs: list[EncodedPair], rows: list[list[list[int]]]) -> int:
    """Tokens a forward over `pairs` laid out in `rows` processes, padding included."""
    return len(rows) * _row_width(pairs, rows)


def unpadded_tokens(pairs: list[EncodedPair], rows: Optional[list[list[list[int]]]] = None) -> int:
    """Tokens a forward over `pairs` computes that are not padding: every pair's, or, laid out in
    packed `rows`, each unit's prompt once and its responses."""
    if rows is None:
        return sum(len(pair.input_ids) for pair in pairs)
    return sum(_unit_length(pairs, unit) for row in rows for unit in row)


def pack_shared_prompts(pairs: list[EncodedPair], pad_id: int, rows: list[list[list[int]]]) -> SharedPromptBatch:
    """The batch of `pairs` laid out in `rows` (from `shared_prompt_rows`)."""
    width = _row_width(pairs, rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    unit_of = torch.full((len(rows), width), -1, dtype=torch.long)  # -1 padding, else the unit's number in its row
    part_of = torch.zeros((len(rows), width), dtype=torch.long)  # 0 a prompt, n a unit's n-th response
    predictors, targets, owners = [], [], []
    for row, units in enumerate(rows):
        start = 0
        for number, unit in enumerate(units):
            prompt_length = pairs[unit[0]].response_start
            end = start + prompt_length
            input_ids[row, start:end] = torch.tensor(pairs[unit[0]].input_ids[:prompt_length], dtype=torch.long)
            position_ids[row, start:end] = torch.arange(prompt_length)
            unit_of[row, start:end] = number
            prompt_end, start = end, end
            for part, index in enumerate(unit, start=1):
                response = pairs[index].input_ids[prompt_length:]
                end = start + len(response)
                input_ids[row, start:end] = torch.tensor(response, dtype=torch.long)
                position_ids[row, start:end] = torch.arange(prompt_length, prompt_length + len(response))
                unit_of[row, start:end] = number
                part_of[row, start:end] = part
                # Token j of the response is predicted by the state before it: the prompt's last
                # position (shared by the unit's responses) for j = 0, the response's own j - 1 after;
                # a lone pair without a prompt has nothing to predict its first token.
                for j in range(0 if prompt_length else 1, len(response)):
                    predictors.append(row * width + (start + j - 1 if j else prompt_end - 1))
                    targets.append(response[j])
                    owners.append(index)
                start = end
    query_unit, key_unit = unit_of.unsqueeze(2), unit_of.unsqueeze(1)
    query_part, key_part = part_of.unsqueeze(2), part_of.unsqueeze(1)
    position = torch.arange(width)
    causal = position.view(1, 1, width) <= position.view(1, width, 1)
    allowed = causal & (query_unit >= 0) & (key_unit == query_unit) & ((key_part == 0) | (key_part == query_part))
    # A padding query attends to itself only: no softmax row is empty (a NaN even unused
    # poisons backward).
    allowed |= torch.eye(width, dtype=torch.bool) & (query_unit < 0)
    return SharedPromptBatch(input_ids=input_ids, position_ids=position_ids, allowed=allowed.unsqueeze(1),
                             predictors=torch.tensor(predictors, dtype=torch.long),
                             targets=torch.tensor(targets, dtype=torch.long),
                             owners=torch.tensor(owners, dtype=torch.long), n_sequences=len(pairs))


def shared_prompt_sequence_logps(model, batch: SharedPromptBatch, *,
                                 logit_chunk_tokens: int = LOGIT_CHUNK_TOKENS,
                                 through_forward: Optional[bool] = None) -> SequenceLogps:
    """`sequence_logps` of the packed sequences, in the order of the pairs they were packed from."""
    inner = unwrap(model)
    if inner.config._attn_implementation == "eager":
        # Eager attention adds its mask to the scores: 0 where allowed, the dtype's minimum elsewhere.
        dtype = next(inner.parameters()).dtype
        mask = torch.zeros(batch.allowed.shape, dtype=dtype, device=batch.allowed.device)
        mask = mask.masked_fill(~batch.allowed, torch.finfo(dtype).min)
    else:
        mask = batch.allowed
    hidden = _final_hidden_states(model, batch.input_ids, mask, batch.position_ids, through_forward=through_forward)
    states = hidden.reshape(-1, hidden.shape[-1])[batch.predictors]
    return _summed_logps(model, states, batch.targets, batch.owners, batch.n_sequences, logit_chunk_tokens)


def recomputed_sequence_logps(model, pairs: list[EncodedPair], pad_id: int, device,
                              tokens_per_chunk: int, *, rows: Optional[list[list[list[int]]]] = None,
                              backpropagated_more_than_once: bool = False) -> SequenceLogps:
    """`sequence_logps` of many sequences with gradient caching's memory.

    Every method's loss sees a sequence only through its summed log-prob, so its gradient is
    Σ_s (∂loss/∂logp_s) · ∇logp_s: fixed weights from a forward without kept activations, then
    each chunk's forward again with its backward. The chunks here run under activation
    checkpointing, which does exactly that inside the single backward the Trainer (and
    DeepSpeed) already calls: the first pass keeps only each chunk's inputs; backward, after the
    loss has given the weights, recomputes one chunk, backpropagates it and frees it before the
    next (the last chunk, which backward reaches first, keeps its activations instead). Peak
    activation memory is one chunk's, whatever K is. Chunks are filled in length order, so they
    also pad less than the whole batch would; given a packed layout (`shared_prompt_layout`),
    its rows fill the chunks instead.

    Each checkpointed chunk runs its own backward (reentrant checkpointing: the recomputation
    and its backward happen inside the chunk's node of the outer backward), so every chunk adds
    its gradients to `.grad` parameter by parameter as it finishes. One backward through every
    chunk instead would have autograd sum each parameter's gradient over the chunks in a buffer
    of its own, all the model's buffers alive until the last chunk is done: beside a `.grad`
    that already holds an earlier micro-batch's gradients, a second full gradient (0.54 GB at
    SmolLM2-135M's fp32 weights).

    Two cases keep the single backward (non-reentrant checkpointing), at that cost:
    - `backpropagated_more_than_once`: a graph backpropagated more than once (the per-term
      gradient norms, `autograd.grad` with `retain_graph=True`), which reentrant checkpointing
      does not serve. The last chunk is checkpointed too: its activations would otherwise stay
      through every pass while each other chunk is recomputed beside them, two chunks'
      activations at once where one backward holds one.
    - a model inside a DeepSpeed engine, whose gradient hooks expect each parameter's gradient
      once per backward (ZeRO-2 reduces it from that hook).
    The gradients are the same either way.
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        # DDP synchronises gradients from hooks its own forward arms once per backward; a chunk
        # recomputed inside backward would run that forward again.
        raise BadInput("train.gradient_cache needs DeepSpeed (train.deepspeed) on more than one rank; "
                       "set train.gradient_cache=false to train with plain DDP")
    # The engine's forward arms DeepSpeed's backward hooks once per step; chunks call the model
    # inside it, whose ZeRO parameter hooks are per module and still gather and reduce.
    inner = unwrap(model)
    if rows is not None:
        # Rows of the packed layout, as many to a chunk as its budget holds (every row is as wide).
        per_chunk = max(1, tokens_per_chunk // _row_width(pairs, rows))
        chunks = [rows[start : start + per_chunk] for start in range(0, len(rows), per_chunk)]
    else:
        chunks = length_chunks([len(pair.input_ids) for pair in pairs], tokens_per_chunk)
    per_chunk_backward = not backpropagated_more_than_once and model is inner
    # Reentrant checkpointing connects a chunk to the outer graph only through its tensor inputs
    # that require grad, and the token ids do not: this empty leaf gives every chunk's node an
    # edge, so backward reaches it (its own gradient stays None).
    edge = torch.empty(0, requires_grad=True) if per_chunk_backward else None
    totals, counts = [], []
    for number, chunk in enumerate(chunks):
        if rows is not None:
            # Each chunk's sums cover every pair (zero for those in other chunks), so they add up.
            forward, inputs = _packed_chunk_logps, [pack_shared_prompts(pairs, pad_id, chunk).to(device)]
        else:
            batch = collate_pairs([pairs[i] for i in chunk], pad_id)
            forward, inputs = _chunk_logps, [batch[k].to(device) for k in ("input_ids", "attention_mask", "response_mask")]
        if number == len(chunks) - 1 and not backpropagated_more_than_once:
            # Backward starts with the last chunk, so its activations are used before any other
            # chunk is recomputed: keeping them costs no more than one chunk and saves its rerun.
            total, n_tokens = forward(inner, *inputs)
        elif per_chunk_backward:
            total, n_tokens = checkpoint(_forward_past_edge, forward, edge, inner, *inputs, use_reentrant=True)
        else:
            total, n_tokens = checkpoint(forward, inner, *inputs, use_reentrant=False)
        totals.append(total)
        counts.append(n_tokens)
    if rows is not None:
        return SequenceLogps(total=torch.stack(totals).sum(0), n_tokens=torch.stack(counts).sum(0))
    positions = torch.tensor([i for chunk in chunks for i in chunk], device=device)
    total, n_tokens = torch.cat(totals), torch.cat(counts)
    return SequenceLogps(total=total.new_empty(len(pairs)).index_copy(0, positions, total),
                         n_tokens=n_tokens.new_empty(len(pairs)).index_copy(0, positions, n_tokens))


def _forward_past_edge(forward, _edge, *inputs):
    if torch.is_grad_enabled():
        return forward(*inputs)
    # The chunk's first pass runs without gradients, where a model's own (reentrant) activation
    # checkpointing (`train.gradient_checkpointing`) warns that its layers' inputs need none;
    # the recomputation in backward, with gradients, is the pass they serve.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="None of the inputs have requires_grad=True")
        return forward(*inputs)


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
