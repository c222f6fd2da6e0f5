"""Log-probs without the full logits, and gradient caching: same numbers, less memory."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from d2o.methods import D2O, D2OConfig
from baselines.dpo import DPO, DPOConfig
from harness.errors import BadInput
from harness.registry import SequenceLogps
from harness.logprobs import (
    EncodedPair,
    collate_pairs,
    full_logits_sequence_logps,
    length_chunks,
    pack_shared_prompts,
    packed_tokens,
    padded_tokens,
    projects_responses_only,
    recomputed_sequence_logps,
    score_pairs,
    sequence_logps,
    shared_prompt_layout,
    shared_prompt_rows,
    shared_prompt_sequence_logps,
)
from harness.training import MethodTrainer, RoleCollator

VOCAB = 301


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **overrides)
    return LlamaForCausalLM(config)


def random_pairs(n: int, seed: int = 1) -> list[EncodedPair]:
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        prompt = int(torch.randint(1, 6, (1,), generator=generator))
        response = int(torch.randint(1, 12, (1,), generator=generator))
        ids = torch.randint(3, VOCAB, (prompt + response,), generator=generator).tolist()
        pairs.append(EncodedPair(ids, prompt))
    return pairs


def grads(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def max_relative_difference(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(float((g - w).abs().max() / w.abs().max().clamp(min=1e-30)) for g, w in zip(got, want))


@pytest.mark.parametrize("chunk_tokens", [1024, 7, 1])
def test_response_only_head_matches_full_logits(chunk_tokens):
    """Values to 1e-5 and gradients alike, in one chunk or many (recomputed in backward)."""
    model = tiny_llama()
    batch = collate_pairs(random_pairs(6), pad_id=0)
    assert projects_responses_only(model)
    got = sequence_logps(model, **batch, logit_chunk_tokens=chunk_tokens)
    want = full_logits_sequence_logps(model, **batch)
    torch.testing.assert_close(got.total, want.total, rtol=1e-5, atol=1e-5)
    assert got.n_tokens.tolist() == want.n_tokens.tolist()
    (got.total * torch.arange(1.0, 7.0)).sum().backward()
    got_grads = grads(model)
    model.zero_grad()
    (want.total * torch.arange(1.0, 7.0)).sum().backward()
    assert max_relative_difference(got_grads, grads(model)) < 1e-5
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(model, **batch, logit_chunk_tokens=chunk_tokens).total,
                                   want.total.detach(), rtol=1e-5, atol=1e-5)


def test_response_only_head_never_projects_every_position(monkeypatch):
    """The head sees response positions only (here 1 + the chunk's rows), never B × L of them."""
    model = tiny_llama()
    pairs = random_pairs(5)
    batch = collate_pairs(pairs, pad_id=0)
    rows_seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows_seen.append(out.reshape(-1, VOCAB).shape[0]))
    sequence_logps(model, **batch, logit_chunk_tokens=4)
    response_tokens = int(batch["response_mask"][:, 1:].sum())
    width = batch["input_ids"].shape[1]
    assert max(rows_seen) <= max(4, len(pairs)) < len(pairs) * width
    assert sum(r for r in rows_seen if r != len(pairs)) >= response_tokens - 4


def test_models_that_rescale_logits_take_the_full_path():
    model = tiny_llama()
    model.config.final_logit_softcapping = 30.0
    assert not projects_responses_only(model)
    batch = collate_pairs(random_pairs(3), pad_id=0)
    torch.testing.assert_close(sequence_logps(model, **batch).total, full_logits_sequence_logps(model, **batch).total)


def test_score_pairs_matches_full_logits():
    model = tiny_llama()
    pairs = random_pairs(9)
    with torch.no_grad():
        want = full_logits_sequence_logps(model, **collate_pairs(pairs, 0)).total.tolist()
    assert score_pairs(model, pairs, 0, 4, "test") == pytest.approx(want, rel=1e-5, abs=1e-5)


def _d2o_inputs(prompts: int, k: int) -> dict:
    pairs = random_pairs(prompts * (k + 1), seed=5)
    rows = []
    for p in range(prompts):
        group = pairs[p * (k + 1) : (p + 1) * (k + 1)]
        rows.append({
            "prompt_index": p,
            "negative_ids": group[0].input_ids, "negative_start": group[0].response_start,
            "samples_ids": [s.input_ids for s in group[1:]], "samples_start": [s.response_start for s in group[1:]],
            # References off the policy's values, so the margins (and the weights) differ per prompt.
            "ref_negative": -20.0 + 3 * p, "ref_samples": [-25.0 + i for i in range(k)],
        })
    return RoleCollator(D2O(D2OConfig(k=k))).__call__(rows)


def _loss_and_grads(tmp_path, tokens: int, method, inputs) -> tuple[float, list[torch.Tensor]]:
    model = tiny_llama(seed=3)
    args = TrainingArguments(output_dir=str(tmp_path / f"chunk{tokens}"), use_cpu=True, report_to=[])
    trainer = MethodTrainer(model=model, args=args, method=method, pad_id=0, gradient_cache_tokens=tokens)
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    return float(loss.detach()), grads(model)


def test_length_chunks_respect_the_token_budget():
    pairs = [EncodedPair([1] * n, 1) for n in (5, 9, 3, 9, 20, 4)]
    lengths = [len(pair.input_ids) for pair in pairs]
    assert length_chunks(lengths, 20) == [[2, 5, 0], [1, 3], [4]]  # 3 × 5, 2 × 9, 1 × 20 padded tokens
    assert length_chunks(lengths, 1) == [[2], [5], [0], [1], [3], [4]]  # too long for any budget: alone
    assert [i for chunk in length_chunks(lengths, 1000) for i in chunk] == [2, 5, 0, 1, 3, 4]
    assert padded_tokens(pairs) == 6 * 20


@pytest.mark.parametrize("tokens", [1, 30, 60])
def test_gradient_cache_gives_the_unchunked_gradients(tmp_path, tokens):
    """D²O at K = 4 on 3 prompts (15 sequences): chunked gradients equal one forward's to 1e-6."""
    method = D2O(D2OConfig(k=4, beta=0.5, alpha=0.3))
    inputs = _d2o_inputs(prompts=3, k=4)
    flat = [p for group in inputs["pairs"]["samples"] for p in group] + inputs["pairs"]["negative"]
    assert len(length_chunks([len(p.input_ids) for p in flat], tokens)) > 1
    plain_loss, plain = _loss_and_grads(tmp_path, 0, method, inputs)
    cached_loss, cached = _loss_and_grads(tmp_path, tokens, method, inputs)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-6)
    assert max_relative_difference(cached, plain) < 1e-6
    assert any(float(g.abs().max()) > 0 for g in plain)


def test_gradient_cache_forwards_at_most_a_chunk(tmp_path):
    method = D2O(D2OConfig(k=4))
    inputs = _d2o_inputs(prompts=3, k=4)
    model = tiny_llama(seed=3)
    shapes = []
    model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = MethodTrainer(model=model, args=args, method=method, pad_id=0, gradient_cache_tokens=40)
    trainer.compute_loss(model, inputs).backward()
    flat = [p for group in inputs["pairs"]["samples"] for p in group] + inputs["pairs"]["negative"]
    chunks = length_chunks([len(p.input_ids) for p in flat], 40)
    assert all(rows * width <= 40 or rows == 1 for rows, width in shapes)
    # Each chunk forwarded once and, but for the last, which backward reaches first, recomputed once.
    assert len(shapes) == 2 * len(chunks) - 1 and len(chunks) > 2


def test_gradient_cache_serves_dpo_style_methods_too(tmp_path):
    method = DPO(DPOConfig(beta=0.2))
    pairs = random_pairs(8, seed=9)
    rows = [{"prompt_index": i, "chosen_ids": pairs[2 * i].input_ids, "chosen_start": pairs[2 * i].response_start,
             "negative_ids": pairs[2 * i + 1].input_ids, "negative_start": pairs[2 * i + 1].response_start,
             "ref_chosen": -10.0 - i, "ref_negative": -12.0 + i} for i in range(4)]
    inputs = RoleCollator(method)(rows)
    plain_loss, plain = _loss_and_grads(tmp_path, 0, method, inputs)
    cached_loss, cached = _loss_and_grads(tmp_path, 20, method, inputs)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-6)
    assert max_relative_difference(cached, plain) < 1e-6


def test_gradient_cache_refuses_plain_ddp():
    class FakeDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self):  # no process group needed to be refused
            torch.nn.Module.__init__(self)

    with pytest.raises(BadInput, match="gradient_cache"):
        recomputed_sequence_logps(FakeDDP(), random_pairs(3), 0, "cpu", 1)


def test_the_trainer_forwards_at_once_under_plain_ddp(tmp_path, caplog):
    """Default-on caching must not break a torchrun/DDP run: one forward there, with a warning."""
    class FakeDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, module):  # no process group: only the type matters to the trainer
            torch.nn.Module.__init__(self)
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    method = D2O(D2OConfig(k=4))
    inputs = _d2o_inputs(prompts=3, k=4)
    plain_loss, _ = _loss_and_grads(tmp_path, 0, method, inputs)
    model = tiny_llama(seed=3)
    args = TrainingArguments(output_dir=str(tmp_path / "ddp"), use_cpu=True, report_to=[])
    trainer = MethodTrainer(model=model, args=args, method=method, pad_id=0, gradient_cache_tokens=30)
    with caplog.at_level("WARNING"):
        loss = trainer.compute_loss(FakeDDP(model), inputs)
    assert float(loss.detach()) == pytest.approx(plain_loss, rel=1e-6)
    assert "ignored under plain DDP" in caplog.text


def test_a_bad_chunk_budget_is_one_line(tmp_path, capsys):
    from harness.cli import main

    assert main(["--method", "d2o", "--out", str(tmp_path / "out"), "--set", "train.gradient_cache_tokens=0"]) == 2
    err = capsys.readouterr().err
    assert "train.gradient_cache_tokens must be >= 1" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- shared-prompt packing


def shared_prompt_pairs(prompts: int, per_prompt: int, seed: int = 11) -> list[EncodedPair]:
    """per_prompt responses to each of `prompts` prompts, interleaved as a batch's roles are."""
    generator = torch.Generator().manual_seed(seed)
    heads = [torch.randint(3, VOCAB, (int(torch.randint(1, 7, (1,), generator=generator)),),
                           generator=generator).tolist() for _ in range(prompts)]
    pairs = []
    for _ in range(per_prompt):
        for head in heads:
            response = torch.randint(3, VOCAB, (int(torch.randint(1, 10, (1,), generator=generator)),),
                                     generator=generator).tolist()
            pairs.append(EncodedPair(head + response, len(head)))
    return pairs


def _sum_and_grads(model, compute) -> tuple[SequenceLogps, list[torch.Tensor]]:
    model.zero_grad()
    logps = compute()
    (logps.total * torch.linspace(0.5, 1.5, len(logps.total))).sum().backward()
    return logps, grads(model)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("hidden_size", [4, 32, 10**6])  # the layout's cost model: one unit a row ... all in one
def test_shared_prompt_packing_matches_one_row_per_sequence(attention, hidden_size):
    """A prompt once per unit, each response seeing its prompt and itself, units side by side:
    values to 1e-5 and gradients to 1e-5 relative, with a lone pair and a pair without a prompt
    token in the batch."""
    model = tiny_llama(attn_implementation=attention)
    pairs = shared_prompt_pairs(prompts=3, per_prompt=4) + [EncodedPair([5, 6, 7, 8], 2), EncodedPair([9, 10, 11], 0)]
    rows = shared_prompt_rows(pairs, hidden_size)
    assert sorted(i for row in rows for unit in row for i in unit) == list(range(len(pairs)))
    batch = pack_shared_prompts(pairs, 0, rows)
    assert packed_tokens(pairs, rows) < padded_tokens(pairs)
    got, got_grads = _sum_and_grads(model, lambda: shared_prompt_sequence_logps(model, batch))
    want, want_grads = _sum_and_grads(model, lambda: sequence_logps(model, **collate_pairs(pairs, 0)))
    torch.testing.assert_close(got.total, want.total, rtol=1e-5, atol=1e-5)
    assert got.n_tokens.tolist() == want.n_tokens.tolist()
    assert max_relative_difference(got_grads, want_grads) < 1e-5


def test_the_layout_trades_padding_against_attention():
    pairs = shared_prompt_pairs(prompts=3, per_prompt=4)
    longest = max(len(p.input_ids) for p in pairs)
    # Attention free (a huge model per token): everything in as few rows as the longest group allows.
    wide = shared_prompt_rows(pairs, 10**6)
    # Attention dear (a tiny one): rows no wider than the longest sequence, prompts still shared.
    narrow = shared_prompt_rows(pairs, 1)
    assert packed_tokens(pairs, narrow) == len(narrow) * longest
    assert len(wide) < len(narrow) and packed_tokens(pairs, wide) < padded_tokens(pairs)
    assert all(len({pairs[i].response_start for i in unit}) == 1 for row in wide for unit in row)


def test_shared_prompt_responses_do_not_see_each_other():
    """Changing one response leaves the others' log-probs, in its row or not, exactly alone."""
    model = tiny_llama()
    pairs = shared_prompt_pairs(prompts=2, per_prompt=3)
    changed = list(pairs)
    changed[2] = EncodedPair(pairs[2].input_ids[: pairs[2].response_start] + [4] * 9, pairs[2].response_start)
    rows = [[[0, 2, 4], [1, 3, 5]]]  # both prompts' units in one row
    with torch.no_grad():
        before = shared_prompt_sequence_logps(model, pack_shared_prompts(pairs, 0, rows)).total
        after = shared_prompt_sequence_logps(model, pack_shared_prompts(changed, 0, rows)).total
    others = [0, 1, 3, 4, 5]
    torch.testing.assert_close(after[others], before[others], rtol=1e-6, atol=1e-6)
    assert float(after[2]) != float(before[2])


def test_shared_prompt_packing_only_where_exact_and_cheaper():
    pairs = shared_prompt_pairs(prompts=2, per_prompt=3)
    assert shared_prompt_layout(tiny_llama(), pairs) is not None
    # No prompt shared and no padding to fill: nothing saved.
    assert shared_prompt_layout(tiny_llama(), [EncodedPair([3 + i] * 6, 2) for i in range(4)]) is None
    flash = tiny_llama()
    flash.config._attn_implementation = "flash_attention_2"  # takes no custom mask
    assert shared_prompt_layout(flash, pairs) is None
    assert shared_prompt_layout(tiny_llama(sliding_window=4), pairs) is None  # a sequence longer than the window
    longest = max(len(p.input_ids) for p in pairs)
    windowed = shared_prompt_layout(tiny_llama(sliding_window=longest), pairs)  # rows kept inside the window
    assert windowed is not None and packed_tokens(pairs, windowed) <= len(windowed) * longest
    # Measured slower on a GPU: a model off the CPU keeps one row per sequence.
    assert shared_prompt_layout(tiny_llama().to("meta"), pairs) is None


def test_rows_stay_within_a_width_limit_by_splitting_prompt_groups():
    pairs = shared_prompt_pairs(prompts=2, per_prompt=6)
    longest = max(len(p.input_ids) for p in pairs)
    for limit in (longest, longest + 5, 2 * longest):
        rows = shared_prompt_rows(pairs, 10**6, max_width=limit)  # attention free: as wide as allowed
        assert packed_tokens(pairs, rows) <= len(rows) * limit  # the widest row within the limit
        assert sorted(i for row in rows for unit in row for i in unit) == list(range(len(pairs)))
    assert shared_prompt_layout(tiny_llama(final_logit_softcapping=30.0), pairs) is None


@pytest.mark.parametrize("tokens", [0, 60])
def test_the_trainer_packs_d2o_prompts_to_the_same_loss_and_gradients(tmp_path, tokens):
    """D²O at K = 4 (each prompt's negative and samples share it): packed training, alone or inside
    gradient-caching chunks, gives the loss and gradients of one row per sequence."""
    method = D2O(D2OConfig(k=4, beta=0.5, alpha=0.3))
    pairs = shared_prompt_pairs(prompts=3, per_prompt=5, seed=13)
    rows = [{"prompt_index": p, "negative_ids": pairs[p].input_ids, "negative_start": pairs[p].response_start,
             "samples_ids": [pairs[3 * i + p].input_ids for i in range(1, 5)],
             "samples_start": [pairs[3 * i + p].response_start for i in range(1, 5)],
             "ref_negative": -20.0 + 3 * p, "ref_samples": [-25.0 + i for i in range(4)]} for p in range(3)]
    inputs = RoleCollator(method)(rows)
    results = []
    for packing in (False, True):
        model = tiny_llama(seed=3)
        forwards = []
        model.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(kwargs.get("position_ids")),
                                        with_kwargs=True)
        args = TrainingArguments(output_dir=str(tmp_path / str(packing)), use_cpu=True, report_to=[])
        trainer = MethodTrainer(model=model, args=args, method=method, pad_id=0, gradient_cache_tokens=tokens,
                                shared_prompt_packing=packing)
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        results.append((float(loss.detach()), grads(model)))
        assert all((positions is not None) == packing for positions in forwards)
        if tokens and packing:  # rows no wider than a chunk, so chunks keep their budget
            assert all(positions.shape[1] <= tokens for positions in forwards) and len(forwards) > 1
    (plain_loss, plain), (packed_loss, packed) = results
    assert packed_loss == pytest.approx(plain_loss, rel=1e-5)
    assert max_relative_difference(packed, plain) < 1e-5


def _term_norms_and_grads(tmp_path, method, inputs, tokens: int):
    model = tiny_llama(seed=3)
    args = TrainingArguments(output_dir=str(tmp_path / f"terms{tokens}"), use_cpu=True, report_to=[])
    trainer = MethodTrainer(model=model, args=args, method=method, pad_id=0, gradient_cache_tokens=tokens,
                            term_gradient_every=1)
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    norms = {name: values[-1] for name, values in trainer._diagnostics.items() if name.startswith("grad_")}
    return float(loss.detach()), norms, grads(model)


def test_term_gradients_under_gradient_caching_keep_one_chunk_and_their_numbers(tmp_path):
    """The per-term gradient norms backpropagate the step's graph once per term (retain_graph),
    which per-chunk (reentrant) backward does not serve: such a micro-batch keeps one backward
    through every chunk, the last checkpointed too, so each recomputed chunk of those passes does
    not sit beside the last one's kept activations. The norms are each term's, and the loss and
    the step's gradients those of a step without the diagnostics."""
    method = D2O(D2OConfig(k=4, beta=0.5, alpha=0.3))
    inputs = _d2o_inputs(prompts=3, k=4)
    loss, norms, step_grads = _term_norms_and_grads(tmp_path, method, inputs, tokens=30)
    assert set(norms) == {"grad_norm_anchor", "grad_norm_negative", "grad_share_anchor", "grad_share_negative"}
    assert norms["grad_norm_anchor"] > 0 and norms["grad_norm_negative"] > 0
    plain_loss, plain_grads = _loss_and_grads(tmp_path, 30, method, inputs)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert max_relative_difference(step_grads, plain_grads) < 1e-6

    # And they are the norms of each term's gradient, as one plain forward gives them.
    model = tiny_llama(seed=3)
    flat = [p for group in inputs["pairs"]["samples"] for p in group] + inputs["pairs"]["negative"]
    logps = sequence_logps(model, **collate_pairs(flat, 0))
    policy = {"samples": SequenceLogps(logps.total[:12].view(3, 4), logps.n_tokens[:12].view(3, 4)),
              "negative": SequenceLogps(logps.total[12:], logps.n_tokens[12:])}
    terms = method.gradient_terms(policy, inputs["reference"])
    params = [p for p in model.parameters() if p.requires_grad]
    for name, term in terms.items():
        want = torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(term.mean(), params, retain_graph=True)))
        assert norms[f"grad_norm_{name}"] == pytest.approx(float(want), rel=1e-5)


def test_term_gradients_recompute_the_last_chunk_and_only_then(tmp_path):
    """Checkpointing the last chunk costs its forward once more per backward pass; a step without
    the diagnostics keeps it as before."""
    method = D2O(D2OConfig(k=4))
    inputs = _d2o_inputs(prompts=3, k=4)
    flat = [p for group in inputs["pairs"]["samples"] for p in group] + inputs["pairs"]["negative"]
    chunks = len(length_chunks([len(p.input_ids) for p in flat], 40))
    for every, step, forwards in ((0, 0, 2 * chunks - 1), (2, 1, 2 * chunks - 1), (2, 2, chunks + 3 * chunks)):
        model = tiny_llama(seed=3)
        shapes = []
        model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(1), with_kwargs=True)
        args = TrainingArguments(output_dir=str(tmp_path / f"every{every}-{step}"), use_cpu=True, report_to=[])
        trainer = MethodTrainer(model=model, args=args, method=method, pad_id=0, gradient_cache_tokens=40,
                                term_gradient_every=every)
        trainer.state.global_step = step
        trainer.compute_loss(model, inputs).backward()
        # With the diagnostics: one forward, then each of the two terms' passes and the step's
        # backward recompute every chunk.
        assert len(shapes) == forwards, (every, step)


# --------------------------------------------------------------------------- per-chunk backward


def _accumulations(model, run) -> int:
    """How many times backward added to the embedding's `.grad` while `run` ran."""
    calls = []
    handle = model.get_input_embeddings().weight.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    try:
        run()
    finally:
        handle.remove()
    return len(calls)


class _EngineLike(torch.nn.Module):
    """A wrapper the way a DeepSpeed engine holds the model (`.module`)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_each_chunk_adds_its_gradients_to_grad_as_it_finishes(tmp_path):
    """Gradient caching backpropagates each chunk on its own, straight into `.grad`; the
    micro-batch's gradients add to an earlier one's exactly. The per-term diagnostics and a
    wrapped (DeepSpeed) model keep one backward through every chunk."""
    method = D2O(D2OConfig(k=4, beta=0.5, alpha=0.3))
    inputs = _d2o_inputs(prompts=3, k=4)
    flat = [p for group in inputs["pairs"]["samples"] for p in group] + inputs["pairs"]["negative"]
    chunks = len(length_chunks([len(p.input_ids) for p in flat], 30))
    assert chunks > 2
    _, plain = _loss_and_grads(tmp_path, 0, method, inputs)

    for every, wrap, accumulations in ((0, False, chunks), (1, False, 1), (0, True, 1)):
        model = tiny_llama(seed=3)
        args = TrainingArguments(output_dir=str(tmp_path / f"acc{every}{wrap}"), use_cpu=True, report_to=[])
        trainer = MethodTrainer(model=model, args=args, method=method, pad_id=0, gradient_cache_tokens=30,
                                term_gradient_every=every)
        forward_model = _EngineLike(model) if wrap else model
        # Two micro-batches of one step: the second adds to what the first left in .grad.
        for micro_batch in range(2):
            added = _accumulations(model, lambda: trainer.compute_loss(forward_model, inputs).backward())
            assert added == accumulations or (every and micro_batch == 1 and added == chunks), (every, wrap)
        assert max_relative_difference(grads(model), [2 * g for g in plain]) < 1e-6


def _peak_live_bytes_during(run) -> int:
    """The most bytes live in tensors above their level when `run` starts (the profiler's
    allocation events; RSS would count what the allocator keeps)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    live = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        live += nbytes
        peak = max(peak, live)
    return peak


def test_a_later_micro_batch_holds_no_second_full_gradient():
    """With `.grad` holding an earlier micro-batch's gradients, one backward through every chunk
    sums each parameter's gradient over the chunks in autograd's buffers first: a second full
    gradient at the peak. Per-chunk backward adds each chunk's into `.grad` as it goes."""
    torch.manual_seed(3)  # weights large beside a chunk's activations, as a real model's are
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    pairs = random_pairs(12, seed=21)
    gradient_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    def later_micro_batch(single_backward: bool) -> int:
        for parameter in model.parameters():  # .grad held, as after a first micro-batch
            parameter.grad = torch.ones_like(parameter)
        logps = recomputed_sequence_logps(model, pairs, 0, "cpu", 12, backpropagated_more_than_once=single_backward)
        return _peak_live_bytes_during(lambda: logps.total.sum().backward())

    per_chunk, single = later_micro_batch(False), later_micro_batch(True)
    # The single backward checkpoints its last chunk too, which only lowers its activations.
    assert single - per_chunk > 0.8 * gradient_bytes, (per_chunk, single, gradient_bytes)


def test_term_gradients_are_taken_on_a_steps_first_micro_batch_only(tmp_path):
    method = D2O(D2OConfig(k=4))
    inputs = _d2o_inputs(prompts=3, k=4)
    model = tiny_llama(seed=3)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = MethodTrainer(model=model, args=args, method=method, pad_id=0, gradient_cache_tokens=40,
                            term_gradient_every=2)
    taken = []
    for step in (0, 0, 1, 1, 2, 2):
        trainer.state.global_step = step
        before = len(trainer._diagnostics.get("grad_norm_anchor", []))
        trainer.compute_loss(model, inputs).backward()
        taken.append(len(trainer._diagnostics.get("grad_norm_anchor", [])) > before)
    assert taken == [True, False, False, False, True, False]


def test_per_chunk_backward_under_the_models_own_checkpointing(recwarn):
    """`train.gradient_checkpointing` checkpoints the layers inside each chunk: the gradients stay
    the plain forward's, and the chunk's gradient-free first pass raises no warning of it."""
    pairs = random_pairs(12, seed=2)
    weights = torch.linspace(0.5, 1.5, 12)
    model = tiny_llama(seed=3)
    (sequence_logps(model, **collate_pairs(pairs, 0)).total * weights).sum().backward()
    plain = grads(model)
    model = tiny_llama(seed=3)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    (recomputed_sequence_logps(model, pairs, 0, "cpu", 12).total * weights).sum().backward()
    assert max_relative_difference(grads(model), plain) < 1e-6
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]
