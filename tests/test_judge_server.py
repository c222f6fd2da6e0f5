"""`serve-judge`: a tiny random Llama behind the chat-completions API, called with the openai client."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("torch")
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from harness.errors import BadInput  # noqa: E402
from harness.scoring.judge import JudgeSettings, judge_against_base  # noqa: E402
from harness.scoring.judge_server import make_server, render_messages, serve_judge_main  # noqa: E402

CORPUS = ["user: which answer is safer", "assistant: Verdict: A", "Verdict: B", "Verdict: tie",
          "system: you are a judge", "the quick brown fox jumps over the lazy dog"] * 4
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_tiny_model(directory, *, chat_template: bool, always_eos: bool = False):
    """A 1-layer random Llama. `always_eos`: zero output weights make every logit equal, and greedy
    decoding then picks token 0, which is </s>, so each completion stops at once (fast)."""
    word_level = Tokenizer(models.WordLevel(unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["</s>", "<unk>", "<pad>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="</s>")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None)
    model = LlamaForCausalLM(config)
    if always_eos:
        import torch

        assert tokenizer.eos_token_id == 0
        with torch.no_grad():
            model.lm_head.weight.zero_()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return (AutoModelForCausalLM.from_pretrained(directory, local_files_only=True),
            AutoTokenizer.from_pretrained(directory, local_files_only=True))


@pytest.fixture
def served(tmp_path, request):
    import torch

    torch.manual_seed(0)
    chat_template, always_eos = request.param
    model, tokenizer = build_tiny_model(tmp_path / "judge-model", chat_template=chat_template, always_eos=always_eos)
    server = make_server(model, tokenizer, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", tokenizer
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("served", [(True, False), (False, False)], ids=["chat-template", "plain"], indirect=True)
def test_openai_client_gets_a_well_formed_greedy_completion(served):
    import openai

    url, tokenizer = served
    client = openai.OpenAI(base_url=url, api_key="anything", max_retries=0, timeout=30)
    messages = [{"role": "system", "content": "you are a judge"},
                {"role": "user", "content": "which answer is safer"}]
    first = client.chat.completions.create(model="tiny-judge", messages=messages, temperature=0, max_tokens=5)
    again = client.chat.completions.create(model="tiny-judge", messages=messages, temperature=0, max_tokens=5)
    assert first.object == "chat.completion" and first.id.startswith("chatcmpl-")
    assert first.model == "tiny-judge"
    choice = first.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 <= first.usage.completion_tokens <= 5
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    expected_prompt = render_messages(tokenizer, messages)
    assert first.usage.prompt_tokens == len(tokenizer(expected_prompt, add_special_tokens=False)["input_ids"])
    assert again.choices[0].message.content == choice.message.content  # greedy is deterministic

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-judge", messages=[], max_tokens=5)
    client.close()


def test_rendering_uses_the_chat_template_only_when_there_is_one(tmp_path):
    _, with_template = build_tiny_model(tmp_path / "a", chat_template=True)
    _, plain = build_tiny_model(tmp_path / "b", chat_template=False)
    messages = [{"role": "user", "content": "hi"}]
    assert render_messages(with_template, messages) == "<|user|>hi</s><|assistant|>"
    assert render_messages(plain, messages) == "user: hi\nassistant:"


@pytest.mark.parametrize("served", [(False, True)], ids=["always-eos"], indirect=True)
def test_judge_client_runs_end_to_end_against_the_local_server(served, monkeypatch, tmp_path):
    import openai

    url, _ = served
    client = openai.OpenAI(base_url=url, api_key="anything", max_retries=0, timeout=30)
    stopped = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].message.content == ""
    assert stopped.usage.completion_tokens == 0
    client.close()

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server gets the placeholder key
    result = judge_against_base(["q"], ["answer one"], ["answer two"],
                                JudgeSettings(model="tiny", base_url=url, timeout_s=30, max_retries=0,
                                              cache_path=tmp_path / "c.sqlite"))
    # Every call reaches the server and succeeds; an empty reply is an unparseable verdict.
    assert result["calls"]["made"] == 4 and result["calls"]["failed"] == 0
    assert result["harmlessness"]["unparseable"] == 2 and result["helpfulness"]["unparseable"] == 2
    assert result["status"] == "failed" and "no parseable verdict" in result["reason"]


def test_non_loopback_hosts_are_refused(tmp_path):
    with pytest.raises(BadInput, match="127.0.0.1 or localhost only"):
        make_server(object(), object(), "0.0.0.0", 0)
    with pytest.raises(BadInput, match="127.0.0.1 or localhost only"):
        serve_judge_main(["--model", str(tmp_path), "--host", "192.168.1.5"])
    with pytest.raises(BadInput, match="not a local model directory"):
        serve_judge_main(["--model", str(tmp_path / "missing")])
    with pytest.raises(BadInput, match="required"):
        serve_judge_main([])
