"""`sampling.backend: openai`: the requests the harness sends, what it makes of the replies, and
its refusals, against a stdlib fake of the OpenAI completions API (the real vLLM server is in
tests/test_vllm_server.py)."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.errors import BadInput, RunFailure
from harness.server_sampling import ServerSettings, prompt_seed, sample_from_server, server_identity
from test_judge import FakeJudge

K = 3


def completions(handler, body, count):
    """K choices whose text names the prompt, the seed and the index; odd ones cut at max tokens."""
    handler.reply_json(200, {
        "id": "cmpl-fake", "object": "text_completion", "created": 0, "model": body["model"],
        "choices": [{"index": i, "text": f" {body['prompt']}|{body['seed']}|{i} ", "logprobs": None,
                     "finish_reason": "length" if i % 2 else "stop"} for i in reversed(range(body["n"]))],
        "usage": {"prompt_tokens": 1, "completion_tokens": body["n"], "total_tokens": body["n"] + 1},
    })


def sample(url, prompts, **overrides):
    kwargs = dict(settings=ServerSettings(base_url=url, max_retries=2), model="fake-judge", k=K, temperature=0.7,
                  top_p=0.9, top_k=0, max_new_tokens=12, seed=5)
    kwargs.update(overrides)
    return sample_from_server(prompts, **kwargs)


def test_k_samples_per_prompt_with_the_runs_settings():
    with FakeJudge(completions) as server:
        groups = sample(server.url, ["p0", "p1"], top_k=20)
        bodies = sorted(server.bodies, key=lambda b: b["prompt"])
    assert [[c.text for c in g] for g in groups] == [
        [f"p{p}|{prompt_seed(5, f'p{p}')}|{i}" for i in range(K)] for p in range(2)]
    assert [c.ended for c in groups[0]] == [True, False, True]  # "length": cut, its EOS never scored
    for body, prompt in zip(bodies, ["p0", "p1"]):
        assert body["prompt"] == prompt and body["n"] == K and body["max_tokens"] == 12
        assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["top_k"] == 20
        assert body["seed"] == prompt_seed(5, prompt) != prompt_seed(6, prompt)


def test_a_server_error_is_retried_and_a_bad_request_is_one_line():
    def flaky(handler, body, count):
        if count == 1:
            handler.reply_json(503, {"error": {"message": "warming up"}})
        else:
            completions(handler, body, count)

    with FakeJudge(flaky) as server:
        assert len(sample(server.url, ["p0"])[0]) == K
    with FakeJudge(lambda h, b, c: h.reply_json(400, {"error": {"message": "n too large"}})) as server:
        with pytest.raises(RunFailure, match=r"HTTP 400.*n too large") as failure:
            sample(server.url, ["p0"])
    assert "\n" not in str(failure.value)


def test_a_reply_with_too_few_choices_is_refused():
    def short(handler, body, count):
        completions(handler, {**body, "n": body["n"] - 1}, count)

    with FakeJudge(short) as server, pytest.raises(RunFailure, match="asked for 3 completions of a prompt, got 2"):
        sample(server.url, ["p0"])


def test_server_identity_names_the_model_and_the_version():
    with FakeJudge(completions, models=("a", "b")) as server:
        assert server_identity(ServerSettings(base_url=server.url, model="b")) == {
            "base_url": server.url, "model": "b", "server_version": "fake-1.0"}
        with pytest.raises(BadInput, match="serves 2 models"):
            server_identity(ServerSettings(base_url=server.url))
        with pytest.raises(BadInput, match="does not serve 'c'"):
            server_identity(ServerSettings(base_url=server.url, model="c"))


def test_the_api_key_reaches_the_server_and_no_message(monkeypatch):
    monkeypatch.setenv("SAMPLER_KEY", "sk-sampler-secret-123")
    with FakeJudge(lambda h, b, c: h.reply_json(401, {"error": {"message": "bad key sk-sampler-secret-123"}})) as server:
        url = server.url.replace("127.0.0.1", "localhost")
        with pytest.raises(RunFailure) as failure:
            sample(url, ["p0"], settings=ServerSettings(base_url=url, api_key_env="SAMPLER_KEY", max_retries=0))
        assert server.auth_headers == ["Bearer sk-sampler-secret-123"]
    assert "sk-sampler-secret-123" not in str(failure.value) and "***" in str(failure.value)


def test_a_remote_server_without_a_key_is_refused(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(BadInput, match="NO_SUCH_KEY"):
        sample("https://sampler.example/v1", ["p0"], settings=ServerSettings(base_url="https://sampler.example/v1",
                                                                            api_key_env="NO_SUCH_KEY"))


@pytest.mark.parametrize("sets, message", [
    (["sampling.backend=vllm"], "sampling.backend must be one of transformers, openai"),
    (["sampling.backend=openai"], "sampling.backend=openai needs sampling.base_url"),
    (["sampling.backend=openai", "sampling.base_url=ftp://x"], "needs sampling.base_url, an http(s) URL"),
    (["sampling.concurrency=0"], "sampling.concurrency must be >= 1"),
])
def test_bad_sampling_settings_are_one_line(sets, message, tmp_path, capsys):
    code = main(["--method", "d2o", "--out", str(tmp_path / "out"), *(a for s in sets for a in ("--set", s))])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_run_refuses_a_server_that_is_not_there_before_writing(tmp_path, capsys):
    """The preflight lists the server's models before anything runs: nothing listens on the port."""
    from harness.distributed import free_loopback_port

    url = f"http://127.0.0.1:{free_loopback_port()}/v1"
    code = main(["--method", "d2o", "--out", str(tmp_path / "out"), "--set", "sampling.backend=openai",
                 "--set", f"sampling.base_url={url}"])
    err = capsys.readouterr().err
    assert code == 2 and f"sampling server {url}: connection error" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    # A method without self-samples does not need the server.
    assert main(["--method", "dpo", "--out", str(tmp_path / "out"), "--dry-run", "--set", "sampling.backend=openai",
                 "--set", f"sampling.base_url={url}"]) == 0


def test_launch_vllm_appends_extra_arguments_and_environment(tmp_path, monkeypatch):
    """What benchmarks/vllm_settings.py varies reaches the server's command line and environment,
    after the recipe's own (so a repeated flag overrides), without touching the recipe."""
    import json
    import sys

    from harness.server_sampling import launch_vllm

    record = tmp_path / "launched.json"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                           f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n")
    fake_python.chmod(0o755)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    server = launch_vllm(fake_python, tmp_path / "model", served_name="policy", port=8999, log_path=tmp_path / "log",
                         extra_args=("--dtype", "bfloat16", "--async-scheduling"),
                         extra_env={"VLLM_CPU_ATTN_SPLIT_KV": "0", "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert server.wait(timeout=60) == 0, (tmp_path / "log").read_text()
    launched = json.loads(record.read_text())
    argv = launched["argv"]
    assert argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[-3:] == ["--dtype", "bfloat16", "--async-scheduling"]
    assert argv[argv.index("--dtype") + 1] == "float32"  # the recipe's, before the override
    assert argv[argv.index("--max-num-batched-tokens") + 1] == "32768"
    assert argv[argv.index("--block-size") + 1] == "32"
    env = launched["env"]
    assert env["VLLM_CPU_ATTN_SPLIT_KV"] == "0" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_CPU_OMP_THREADS_BIND"].startswith("0-")
