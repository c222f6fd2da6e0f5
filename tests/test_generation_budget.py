"""Self-sampling `generate` calls cut to a memory budget (harness/generation.py): the plan alone,
the estimate against a known config, and generation under a budget that never cuts giving the
samples drawn without one. Also d2o-online's refresher, which draws beside the training step:
its budget, and its frozen models parked on disk between draws."""

from __future__ import annotations

import copy
import random
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness.config import RunConfig, resolve_config
from harness.errors import BadInput
from harness.generation import (
    GenerationFootprint,
    budget_binds,
    generate_completions,
    model_footprint,
    plan_calls,
)

# One byte per token of cache and nothing else: costs are easy to read off.
UNIT = GenerationFootprint(kv_per_token=1, activations_per_token=0, scores_per_token_pair=0, sampling_per_step=0)


def _cost(lengths, call, k, new_tokens, footprint=UNIT):
    return len(call) * k * footprint.per_sequence(max(lengths[i] for i in call), new_tokens)


def test_without_a_budget_calls_are_runs_of_batch_size():
    lengths = [5] * 7
    expected = [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_calls(lengths, batch_size=3, sequences_per_prompt=4, new_tokens=2, footprint=UNIT,
                      budget_bytes=None) == expected
    assert plan_calls(lengths, batch_size=3, sequences_per_prompt=4, new_tokens=2, footprint=None,
                      budget_bytes=100) == expected
    assert plan_calls([], batch_size=3, sequences_per_prompt=4, new_tokens=2, footprint=UNIT, budget_bytes=1) == []


def test_a_budget_that_holds_every_run_changes_nothing():
    lengths = [3, 4, 4, 9, 10, 12, 30]
    plain = plan_calls(lengths, batch_size=4, sequences_per_prompt=2, new_tokens=5, footprint=UNIT, budget_bytes=None)
    # The heaviest run: 3 prompts padded to 30 + 5 tokens, 2 sequences each.
    assert plan_calls(lengths, batch_size=4, sequences_per_prompt=2, new_tokens=5, footprint=UNIT,
                      budget_bytes=3 * 2 * 35) == plain


def test_runs_over_the_budget_are_cut_into_calls_that_fit():
    # Length-sorted prompts, as generate_completions orders them.
    lengths = [2, 2, 3, 3, 4, 8, 8, 20]
    calls = plan_calls(lengths, batch_size=4, sequences_per_prompt=3, new_tokens=2, footprint=UNIT, budget_bytes=40)
    # Run [0..3]: a third prompt pads the call to 3 + 2 tokens, 3 × 3 × 5 = 45 > 40, so [0, 1]
    # and [2, 3]; run [4..7]: any two of them are 2 × 3 × 10 or more > 40, so one a call, and
    # the 20-token prompt alone (66 bytes) still gets one.
    assert calls == [[0, 1], [2, 3], [4], [5], [6], [7]]
    assert [i for call in calls for i in call] == list(range(len(lengths)))
    for call in calls:
        assert len(call) == 1 or _cost(lengths, call, 3, 2) <= 40


def test_calls_never_cross_a_run_and_always_fit_randomised():
    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 60) for _ in range(rng.randint(1, 40)))
        batch, k, new = rng.randint(1, 9), rng.randint(1, 12), rng.randint(1, 16)
        budget = rng.randint(1, 4000)
        calls = plan_calls(lengths, batch_size=batch, sequences_per_prompt=k, new_tokens=new, footprint=UNIT,
                           budget_bytes=budget)
        assert [i for call in calls for i in call] == list(range(len(lengths)))
        runs = plan_calls(lengths, batch_size=batch, sequences_per_prompt=k, new_tokens=new, footprint=UNIT,
                          budget_bytes=None)
        run_of = {i: n for n, run in enumerate(runs) for i in run}
        for call in calls:
            assert len({run_of[i] for i in call}) == 1
            assert len(call) == 1 or _cost(lengths, call, k, new) <= budget
        if not budget_binds(lengths, batch_size=batch, sequences_per_prompt=k, new_tokens=new, footprint=UNIT,
                            budget_bytes=budget):
            # Not binding for the whole set: no subset's plan (a filtered round's) is cut either.
            assert calls == runs
            subset = sorted(rng.sample(lengths, rng.randint(1, len(lengths))))
            assert plan_calls(subset, batch_size=batch, sequences_per_prompt=k, new_tokens=new, footprint=UNIT,
                              budget_bytes=budget) == plan_calls(subset, batch_size=batch, sequences_per_prompt=k,
                                                                 new_tokens=new, footprint=UNIT, budget_bytes=None)


def test_budget_binds_reads_the_heaviest_possible_call():
    kwargs = dict(batch_size=4, sequences_per_prompt=2, new_tokens=5, footprint=UNIT)
    # 4 prompts as long as the longest (10 + 5 tokens) × 2 sequences = 120 bytes.
    assert not budget_binds([1, 10], budget_bytes=10_000, **kwargs)
    # Only two prompts exist, so a call holds at most two: 2 × 2 × 15 = 60.
    assert not budget_binds([1, 10], budget_bytes=60, **kwargs)
    assert budget_binds([1, 10], budget_bytes=59, **kwargs)
    assert not budget_binds([1, 10], budget_bytes=0, **kwargs) and not budget_binds([], budget_bytes=1, **kwargs)


def test_footprint_of_smollm2_135m():
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64)
    footprint = GenerationFootprint.of(config, 4)
    # Keys and values, 30 layers × 3 KV heads × 64 dims, fp32.
    assert footprint.kv_per_token == 2 * 30 * 3 * 64 * 4 == 46_080
    assert footprint.sampling_per_step == 4 * 49152 * 4
    # A long prompt peaks in its prefill, a short one at its last decoding step.
    long_prompt = footprint.per_sequence(205, 48)
    assert long_prompt > 253 * footprint.kv_per_token + footprint.sampling_per_step
    assert footprint.per_sequence(4, 48) == 52 * footprint.kv_per_token + footprint.sampling_per_step
    # real-smollm2's heaviest self-samples call (20 prompts of up to 205 tokens × K = 11) is
    # several GB; the default budget cuts it.
    assert 20 * 11 * long_prompt > 2 * 2**30
    assert RunConfig().sampling.memory_budget_mb * 2**20 < 20 * 11 * long_prompt


def test_a_negative_budget_is_refused():
    with pytest.raises(BadInput, match="sampling.memory_budget_mb must be >= 0"):
        resolve_config(method="sft", preset="tiny", overrides={"sampling": {"memory_budget_mb": -1}})


@pytest.fixture(scope="module")
def tiny_lm():
    words = " ".join(f"w{i}" for i in range(40))
    word_level = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.train_from_iterator([words], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token="[EOS]", pad_token="[PAD]",
                                        unk_token="[UNK]")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


PROMPTS = ["w1 w2", "w3", "w4 w5 w6 w7 w8 w9", "w10 w11 w12", "w13", "w14 w15 w16 w17"]


def _sample(model, tokenizer, budget, calls=None):
    if calls is not None:
        original = model.generate

        def counting(**kwargs):
            calls.append(kwargs["input_ids"].shape[0])
            return original(**kwargs)

        model.generate = counting
    try:
        return generate_completions(model, tokenizer, PROMPTS, max_new_tokens=6, do_sample=True,
                                    num_return_sequences=3, batch_size=4, seed=7, memory_budget_bytes=budget)
    finally:
        if calls is not None:
            del model.generate


def test_a_budget_that_cuts_nothing_draws_the_same_samples(tiny_lm):
    model, tokenizer = tiny_lm
    plain_calls, roomy_calls = [], []
    plain = _sample(model, tokenizer, None, plain_calls)
    roomy = _sample(model, tokenizer, 1 << 40, roomy_calls)
    assert roomy == plain and roomy_calls == plain_calls == [4, 2]  # prompts a call, before K's expansion


def test_a_tight_budget_cuts_calls_and_keeps_every_prompt_in_place(tiny_lm):
    model, tokenizer = tiny_lm
    footprint = model_footprint(model)
    # Room for two prompts' K = 3 sequences of the longest prompt (6 tokens), not four.
    budget = 2 * 3 * footprint.per_sequence(6, 6)
    calls = []
    out = _sample(model, tokenizer, budget, calls)
    assert len(calls) > 2 and sum(calls) == len(PROMPTS)
    assert len(out) == len(PROMPTS) and all(len(group) == 3 for group in out)
    # The same cut twice draws the same samples (the seed is set once, before the first call).
    assert _sample(model, tokenizer, budget) == out


def test_self_samples_key_names_the_budget_only_where_it_binds(tmp_path, tiny_lm, monkeypatch):
    from harness.anchors import AnchorSettings
    from harness.stages import self_samples

    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    prompts = ["w1 w2", "w3 w4 w5"]

    def binds(budget_mb, batch_size=32):
        cfg = RunConfig()
        cfg.model.prompt_format = "plain"
        cfg.sampling.memory_budget_mb = budget_mb
        cfg.sampling.batch_size = batch_size
        return self_samples._budget_binds(cfg, prompts, 11, AnchorSettings(),
                                          str(tmp_path / "policy"))

    assert not binds(1024)  # a tiny model's calls are far below the default budget
    assert not binds(0)
    # A model whose every token's cache is a MiB: one prompt's 11 sequences exceed 1 MB.
    monkeypatch.setattr(self_samples, "footprint_of", lambda config, element_bytes: GenerationFootprint(
        kv_per_token=2**20, activations_per_token=0, scores_per_token_pair=0, sampling_per_step=0))
    assert binds(1) and binds(1, batch_size=1) and not binds(0)


def test_online_refreshes_are_held_to_the_same_budget(tiny_lm, monkeypatch):
    """d2o-online's refreshes draw beside the training step's state; they were not budgeted."""
    import harness.generation as generation
    from harness.online import OnlineSampleRefresher

    model, tokenizer = tiny_lm
    plans = []
    real_plan = generation.plan_calls

    def recording(*args, **kwargs):
        plans.append((kwargs["budget_bytes"], real_plan(*args, **kwargs)))
        return plans[-1][1]

    monkeypatch.setattr(generation, "plan_calls", recording)

    def refresh(budget_mb):
        cfg = RunConfig()
        cfg.sampling.batch_size = 12  # 12 // K = 4 prompts a call before any budget
        cfg.sampling.memory_budget_mb = budget_mb
        refresher = OnlineSampleRefresher(reference_model=model, tokenizer=tokenizer, prompt_texts=PROMPTS, k=3,
                                          sampling=cfg.sampling, refresh_every=1, max_length=32, seed=5)
        pairs, reference = refresher(model, list(range(len(PROMPTS))), step=0)
        assert reference.shape == (len(PROMPTS), 3)
        return [[pair.input_ids for pair in group] for group in pairs], plans[-1]

    unbudgeted, (budget, calls) = refresh(0)
    assert budget is None and [len(c) for c in calls] == [4, 2]
    # The default budget is far above a tiny model's calls: nothing is cut, the same draws.
    default, (budget, calls) = refresh(1024)
    assert budget == 1024 * 2**20 and [len(c) for c in calls] == [4, 2] and default == unbudgeted
    # A model whose every token's cache is a MiB: a 1 MB budget leaves one prompt a call.
    monkeypatch.setattr(generation, "model_footprint", lambda model: GenerationFootprint(
        kv_per_token=2**20, activations_per_token=0, scores_per_token_pair=0, sampling_per_step=0))
    cut, (budget, calls) = refresh(1)
    assert budget == 2**20 and [len(c) for c in calls] == [1] * len(PROMPTS) and len(cut) == len(PROMPTS)


def test_a_refresh_never_holds_two_snapshots(tiny_lm, monkeypatch):
    """Each refresh copies the policy; the stale copy is dropped before the new one is made, so a
    refresh holds one snapshot's weights, not two."""
    import harness.online as online
    from harness.online import OnlineSampleRefresher

    model, tokenizer = tiny_lm
    refresher = OnlineSampleRefresher(reference_model=model, tokenizer=tokenizer, prompt_texts=PROMPTS, k=2,
                                      sampling=RunConfig().sampling, refresh_every=2, max_length=32, seed=5)
    held_at_copy = []
    real_deepcopy = copy.deepcopy

    def deepcopy(value, *args, **kwargs):
        if value is model:  # the policy's snapshot (generate deep-copies its configs too)
            held_at_copy.append(refresher.snapshot)
        return real_deepcopy(value, *args, **kwargs)

    monkeypatch.setattr(online.copy, "deepcopy", deepcopy)
    for step in range(5):
        refresher(model, [0, 1], step=step)
    assert refresher.refreshes == 3 and len(held_at_copy) == 3  # steps 0, 2 and 4
    assert held_at_copy == [None, None, None]


def _tied_lm():
    torch.manual_seed(1)
    return LlamaForCausalLM(LlamaConfig(vocab_size=43, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        tie_word_embeddings=True)).eval()


def test_a_parked_model_holds_no_weights_between_uses_and_the_same_ones_in_use(tmp_path):
    from harness.online import ParkedModel

    model = _tied_lm()
    ids = torch.tensor([[3, 5, 7, 11, 13]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    parked = ParkedModel(model, tmp_path / "model.pt")
    assert all(p.numel() == 0 for p in parked.model.parameters())
    assert parked.model.lm_head.weight is parked.model.model.embed_tokens.weight  # still tied
    with parked.loaded() as frozen, torch.no_grad():
        assert torch.equal(frozen(input_ids=ids).logits, want)
        assert sum(p.numel() for p in frozen.parameters()) == sum(p.numel() for p in model.parameters())
    assert all(p.numel() == 0 for p in parked.model.parameters())
    # The original is untouched and keeps training: a later store is what the copy then holds.
    with torch.no_grad():
        model.model.norm.weight.mul_(2)
        want = model(input_ids=ids).logits
    parked.store(model)
    with parked.loaded() as frozen, torch.no_grad():
        assert torch.equal(frozen(input_ids=ids).logits, want)
    # Quantized weights carry state beside their data (and a GPU's would travel each draw): kept.
    assert ParkedModel.parkable(model)
    quantized = torch.nn.Module()
    quantized.weight = torch.nn.Parameter(torch.zeros(4, dtype=torch.int8), requires_grad=False)
    assert not ParkedModel.parkable(quantized)


def _refresh_run(model, tokenizer, park_dir, steps, *, resume_at=None):
    """Draws of a refresher over `steps` (each prompt pair a micro-batch), the policy nudged after
    every step as training would; with `resume_at`, a new refresher restored from the state a
    checkpoint after that step holds takes over."""
    from harness.online import OnlineSampleRefresher

    policy = copy.deepcopy(model)

    def refresher():
        return OnlineSampleRefresher(reference_model=copy.deepcopy(model), tokenizer=tokenizer, prompt_texts=PROMPTS,
                                     k=2, sampling=RunConfig().sampling, refresh_every=2, max_length=32, seed=5,
                                     park_dir=park_dir)

    current, draws = refresher(), []
    for step in range(steps):
        if step == resume_at:
            state = current.state_dict(step)
            current = refresher()
            current.load_state_dict(state)
        for prompts in ([0, 1], [2, 3]):
            pairs, reference = current(policy, prompts, step)
            draws.append(([[p.input_ids for p in group] for group in pairs], reference))
        with torch.no_grad():
            for parameter in policy.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
    return draws, current


def test_parked_refreshes_draw_and_score_as_resident_ones_and_resume(tiny_lm, tmp_path):
    """Parking is memory, not maths: the same samples and reference log-probs, step by step and
    across a resume from a checkpoint's refresher state; between draws the refresher's frozen
    models hold no weights."""
    model, tokenizer = tiny_lm
    torch.manual_seed(0)
    resident, _ = _refresh_run(model, tokenizer, None, 5)
    torch.manual_seed(0)
    parked, refresher = _refresh_run(model, tokenizer, tmp_path, 5)
    torch.manual_seed(0)
    (tmp_path / "resumed").mkdir()
    resumed, _ = _refresh_run(model, tokenizer, tmp_path / "resumed", 5, resume_at=3)
    assert len(resident) == 10
    for (ids, ref), (parked_ids, parked_ref), (resumed_ids, resumed_ref) in zip(resident, parked, resumed):
        assert ids == parked_ids == resumed_ids
        assert torch.equal(ref, parked_ref) and torch.equal(ref, resumed_ref)
    assert refresher.refreshes == 3
    for frozen in (refresher.snapshot, refresher.reference):
        assert all(p.numel() == 0 for p in frozen.model.parameters())
    assert sorted(path.name for path in tmp_path.glob("*.pt")) == ["reference-rank0.pt", "snapshot-rank0.pt"]
    refresher.close()
    assert not tmp_path.exists()
