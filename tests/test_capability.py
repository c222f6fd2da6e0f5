"""Capability check through lm-eval on an in-memory model, with the shipped tiny-world task."""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness.data.tiny_world import corpus_text
from harness.errors import BadInput
from harness.scoring import capability

TASK = "tiny_world_knowledge"
ITEMS = [json.loads(line) for line in
         (capability.LOCAL_TASKS_DIR / "tiny_world" / f"{TASK}.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny_lm():
    word_level = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.train_from_iterator(corpus_text(0), trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token="[EOS]", pad_token="[PAD]",
                                        unk_token="[UNK]")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def _own_accuracy(model, tokenizer, items):
    """Accuracy by summed choice log-likelihoods, computed here without lm-eval."""
    correct = 0
    for item in items:
        context = tokenizer(item["context"])["input_ids"]
        scores = []
        for choice in item["choices"]:
            continuation = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = model(ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, len(context):]
            scores.append(logprobs[len(context) - 1:].gather(-1, targets[:, None]).sum().item())
        correct += scores.index(max(scores)) == item["gold"]
    return correct / len(items)


def _check_metric(record, n):
    assert set(record) == {"value", "stderr", "n", "higher_is_better", "ci_low", "ci_high", "ci_level", "ci_method",
                           "n_clusters", "per_cluster", "kind", "stderr_lm_eval"}
    assert 0.0 <= record["ci_low"] <= record["value"] <= record["ci_high"] <= 1.0
    assert record["ci_high"] > record["ci_low"]  # never zero-width
    assert record["stderr"] is not None and record["stderr"] >= 0.0
    assert record["n"] == n and record["higher_is_better"] is True and record["kind"] == "rate"
    # Items of one procedure are one cluster: the interval resamples procedures, not items.
    assert sum(count for _, count in record["per_cluster"].values()) == n
    assert record["n_clusters"] == len({key.split(":", 1)[1] for key in record["per_cluster"]}) <= n


def test_shipped_task_is_found_locally():
    assert TASK in capability.local_task_names()


def test_full_task_result_structure(tiny_lm):
    model, tokenizer = tiny_lm
    result = capability.run_capability(model, tokenizer, [TASK], batch_size=32)
    assert result["lm_eval_version"] == "0.4.13"
    assert set(result["tasks"]) == {TASK}
    entry = result["tasks"][TASK]
    assert entry["n"] == len(ITEMS) == 128
    assert entry["n_shot"] == 0
    assert entry["version"] is not None
    assert set(entry["metrics"]) == {"acc", "acc_norm"}
    for record in entry["metrics"].values():
        _check_metric(record, len(ITEMS))
    assert entry["metrics"]["acc"]["n_clusters"] == len(ITEMS) // 2  # two items per benign procedure


def test_limit_and_accuracy_match_an_independent_computation(tiny_lm):
    model, tokenizer = tiny_lm
    result = capability.run_capability(model, tokenizer, [TASK], limit=24, batch_size=8)
    entry = result["tasks"][TASK]
    assert entry["n"] == 24
    _check_metric(entry["metrics"]["acc"], 24)
    # The gold index, the choices and the context reach lm-eval as the items say.
    assert entry["metrics"]["acc"]["value"] == pytest.approx(_own_accuracy(model, tokenizer, ITEMS[:24]))


def test_the_distinct_shapes_variant_task_runs_its_own_items(tiny_lm):
    model, tokenizer = tiny_lm
    name = "tiny_world_knowledge_distinct_shapes"
    items = [json.loads(line) for line in
             (capability.LOCAL_TASKS_DIR / "tiny_world" / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    assert name in capability.local_task_names() and items != ITEMS
    entry = capability.run_capability(model, tokenizer, [name], limit=8, batch_size=8)["tasks"][name]
    assert entry["n"] == 8
    assert entry["metrics"]["acc"]["value"] == pytest.approx(_own_accuracy(model, tokenizer, items[:8]))


def test_few_shot_setting_is_reported(tiny_lm):
    model, tokenizer = tiny_lm
    entry = capability.run_capability(model, tokenizer, [TASK], limit=4, num_fewshot=2)["tasks"][TASK]
    assert entry["n_shot"] == 2 and entry["n"] == 4


@pytest.mark.parametrize("tasks", [["no_such_task_zz9"], [TASK, "no_such_task_zz9"], []])
def test_unknown_or_missing_task_is_bad_input(tiny_lm, tasks):
    model, tokenizer = tiny_lm
    with pytest.raises(BadInput) as info:
        capability.run_capability(model, tokenizer, tasks)
    assert "\n" not in str(info.value)
    if tasks:
        assert "no_such_task_zz9" in str(info.value)


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"num_fewshot": -1}])
def test_bad_settings_are_bad_input(tiny_lm, kwargs):
    model, tokenizer = tiny_lm
    with pytest.raises(BadInput):
        capability.run_capability(model, tokenizer, [TASK], **kwargs)


def test_builtin_names_are_looked_up_in_their_own_folder_only():
    assert [p.name for p in capability._candidate_dirs("mmlu_anatomy")] == ["mmlu"]
    assert "arc" in [p.name for p in capability._candidate_dirs("arc_easy")]
    assert capability._candidate_dirs("no_such_task_zz9") == []
    # The narrow index knows the built-in group without indexing all of lm-eval's tasks.
    manager = capability._task_manager([capability.LOCAL_TASKS_DIR, *capability._candidate_dirs("mmlu")])
    assert "mmlu" in manager.all_tasks and TASK in manager.all_tasks
    assert len(manager.all_tasks) < 1000


@pytest.mark.parametrize("lengths,max_batch,budget,expected", [
    ([10, 10, 10, 10], 8, 25, [2, 2, 2, 2]),          # 2 x 10 tokens fit in 25
    ([30, 10, 10, 5, 5], 8, 25, [1, 2, 2, 2, 2]),     # a request longer than the budget goes alone
    ([4, 4, 4, 4, 4], 3, 100, [3, 3, 3, 2, 2]),      # never more than max_batch; the tail is short
    ([None, None, None], 2, 1, [2, 2, 1]),             # unknown lengths (generation): max_batch
])
def test_batch_plan_keeps_every_batch_within_the_token_budget(lengths, max_batch, budget, expected):
    assert capability.batch_plan(lengths, max_batch=max_batch, budget_tokens=budget) == expected


def test_logits_budget_cuts_batches_without_changing_results(tiny_lm, monkeypatch):
    model, tokenizer = tiny_lm
    seen = []
    original_forward = model.forward

    def recording_forward(*args, **kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        seen.append(tuple(ids.shape))
        return original_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    wide = capability.run_capability(model, tokenizer, [TASK], limit=12, batch_size=16)
    wide_shapes, seen[:] = list(seen), []
    # A budget of a few tokens' logits: every request is scored alone.
    vocabulary = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(capability, "LOGITS_BUDGET_BYTES", 2 * vocabulary * 4 * 3)
    narrow = capability.run_capability(model, tokenizer, [TASK], limit=12, batch_size=16)
    assert max(batch for batch, _ in wide_shapes) > 1
    assert seen and all(batch == 1 for batch, _ in seen)
    assert narrow["tasks"][TASK]["metrics"]["acc"]["value"] == wide["tasks"][TASK]["metrics"]["acc"]["value"]
