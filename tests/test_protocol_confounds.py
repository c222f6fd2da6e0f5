"""Confounds a reviewer would catch in a comparison: settings that reach only some methods,
unequal training budgets, caches that ignore the dtype, an EOS scored after a cut-off sample."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers import Tokenizer, models, pre_tokenizers

from harness.config import load_preset, preset_names, resolve_config
from harness.errors import BadInput
from harness.generation import generate_completions
from harness.logprobs import encode_pair
from harness.registry import registered_methods


def test_preset_d2o_settings_reach_the_whole_d2o_family():
    preset_k = load_preset("tiny")["methods"]["d2o"]["k"]
    assert preset_k != registered_methods()["d2o"].Config().k  # the preset really changes it
    d2o = resolve_config(method="d2o", preset="tiny")
    online = resolve_config(method="d2o-online", preset="tiny")
    nosample = resolve_config(method="d2o-nosample", preset="tiny")
    assert d2o.method.k == online.method.k == preset_k
    assert (d2o.method.alpha, d2o.method.beta) == (online.method.alpha, online.method.beta)
    assert nosample.method.alpha == d2o.method.alpha  # only the fields the member has
    assert online.method.refresh_every == 8  # a member's own default stays
    # --set still wins over the preset.
    assert resolve_config(method="d2o-online", preset="tiny",
                          overrides={"method": {"k": "2"}}).method.k == 2


def test_family_settings_do_not_leak_into_other_methods():
    assert registered_methods()["npo"].family == "npo"
    assert resolve_config(method="npo", preset="tiny").method.beta == registered_methods()["npo"].Config().beta


def test_every_method_gets_the_same_training_budget():
    steps = {name: resolve_config(method=name, preset="tiny").train for name in registered_methods()}
    assert {(t.max_steps, t.per_device_batch_size, t.gradient_accumulation_steps) for t in steps.values()} \
        == {(24, 16, 1)}


def test_variant_presets_extend_tiny_and_change_only_their_world():
    names = preset_names()
    assert {"tiny", "tiny-decline-and-help", "tiny-distinct-shapes", "tiny-benign-pairs"} <= set(names)
    base = resolve_config(method="d2o", preset="tiny").to_dict()
    # distinct-shapes also swaps its capability task for one that opens as its benign answers do.
    for name, changed in (("tiny-decline-and-help", {"world"}), ("tiny-distinct-shapes", {"world", "eval"}),
                          ("tiny-benign-pairs", {"data"})):
        variant = resolve_config(method="d2o", preset=name).to_dict()
        assert {k for k in base if base[k] != variant[k]} == changed | {"preset"}
    shapes = resolve_config(method="d2o", preset="tiny-distinct-shapes").to_dict()
    assert {k for k in base["eval"] if base["eval"][k] != shapes["eval"][k]} == {"lm_eval_tasks"}


def test_bad_preset_files_are_one_line_bad_input(monkeypatch):
    import harness.config as config

    monkeypatch.setattr(config, "preset_names", lambda: ["loop"])
    real_files = config.resources.files

    class Fake:
        def joinpath(self, name):
            return self

        def read_text(self):
            return "extends: loop\n"

    monkeypatch.setattr(config.resources, "files", lambda package: Fake())
    with pytest.raises(BadInput, match="extends` loops"):
        config.load_preset("loop")
    monkeypatch.setattr(config.resources, "files", real_files)


@pytest.fixture(scope="module")
def tiny_lm():
    bpe = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "a": 2, "b": 3, "c": 4, "Q": 5}, unk_token="a"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0,
                                         eos_token_id=1, bos_token_id=1))
    return model, tokenizer


def test_eos_is_appended_only_to_responses_that_ended(tiny_lm):
    _, tokenizer = tiny_lm
    ended = encode_pair(tokenizer, "Q", "a b", 32, ended=True)
    cut = encode_pair(tokenizer, "Q", "a b", 32, ended=False)
    assert ended.input_ids[-1] == tokenizer.eos_token_id
    assert cut.input_ids == ended.input_ids[:-1]
    assert encode_pair(tokenizer, "Q", "a b", 32).input_ids == ended.input_ids  # dataset responses end


class _ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM whose `generate` returns fixed new tokens per row."""

    def __init__(self, new_tokens):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new_tokens = torch.tensor(new_tokens)

    def generate(self, input_ids, attention_mask, generation_config):
        return torch.cat([input_ids, self.new_tokens[: input_ids.shape[0]]], dim=1)


def test_completions_say_whether_they_ended(tiny_lm):
    _, tokenizer = tiny_lm
    # Row 0 stops with EOS (then padding); row 1 runs into max_new_tokens without one.
    model = _ScriptedModel([[2, 3, 1, 0], [2, 3, 4, 2]])
    [[ended], [cut]] = generate_completions(model, tokenizer, ["Q", "Q Q"], max_new_tokens=4, do_sample=False)
    assert (ended.text, ended.ended) == ("a b", True)
    assert (cut.text, cut.ended) == ("a b c a", False)
