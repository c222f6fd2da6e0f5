"""`eval.backend: openai`: the generate stage's answers from OpenAI-compatible servers, against the
stdlib stand-in of tests/test_judge.py. The trained policy counts as served only under its
checkpoint's content-hash name; anything else is refused with the checkpoint to serve."""

from __future__ import annotations

import json
import re

import pytest

from harness.cli import main
from conftest import REDUCED_WORLD
from test_judge import FakeJudge

SMALL_RUN = [
    *REDUCED_WORLD,
    "data.max_train_examples=16",
    "train.epochs=1",
    "train.per_device_batch_size=8",
    "eval.max_new_tokens=24",
]


def answers(handler, body, count):
    """One completion naming the model that wrote it and the prompt's last characters."""
    handler.reply_json(200, {
        "id": "cmpl-fake", "object": "text_completion", "created": 0, "model": body["model"],
        "choices": [{"index": i, "text": f" served by {body['model']} ", "logprobs": None, "finish_reason": "stop"}
                    for i in range(body["n"])],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })


def run(tmp_path, url, *sets):
    return main(["--method", "dpo", "--out", str(tmp_path / "out"), "--set", "eval.backend=openai",
                 "--set", f"eval.base_url={url}", "--set", "eval.base_server_model=base-policy", *(a for s in (*SMALL_RUN, *sets) for a in ("--set", s))])


@pytest.mark.parametrize("sets, message", [
    (["eval.backend=vllm"], "eval.backend must be one of transformers, openai, got 'vllm'"),
    (["eval.backend=openai"], "eval.backend=openai needs eval.base_url (or sampling.base_url)"),
    (["eval.backend=openai", "eval.base_url=ftp://x"], "needs eval.base_url (or sampling.base_url), an http(s) URL"),
    (["eval.backend=openai", "eval.base_url=http://127.0.0.1:1/v1", "eval.policy_url=nope"],
     "eval.policy_url must be an http(s) URL with a host"),
    (["eval.backend=openai", "eval.base_url=http://u:secret@127.0.0.1:1/v1"], "carries a user name or password"),
])
def test_bad_eval_backend_settings_are_one_line(sets, message, tmp_path, capsys):
    code = main(["--method", "dpo", "--out", str(tmp_path / "out"), *(a for s in sets for a in ("--set", s))])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "secret" not in err
    assert not (tmp_path / "out").exists()


def test_the_base_server_is_checked_before_anything_is_written(tmp_path, capsys):
    from harness.distributed import free_loopback_port

    url = f"http://127.0.0.1:{free_loopback_port()}/v1"
    code = main(["--method", "dpo", "--out", str(tmp_path / "out"), "--set", "eval.backend=openai",
                 "--set", f"eval.base_url={url}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{url}: connection error" in err and "eval.backend=openai" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_the_default_backend_leaves_the_config_hash_alone():
    from harness.config import parse_set_options, resolve_config

    plain = resolve_config(method="dpo")
    same = resolve_config(method="dpo", overrides=parse_set_options(["eval.backend=transformers",
                                                                     "eval.policy_url=http://h/v1"]))
    served = resolve_config(method="dpo", overrides=parse_set_options(["eval.backend=openai",
                                                                       "eval.base_url=http://h/v1"]))
    assert plain.hash() == same.hash() != served.hash()


@pytest.mark.slow
def test_served_answers_need_the_trained_checkpoint_served_under_its_hash(bench_home, tmp_path, capsys):
    with FakeJudge(answers, models=("base-policy",)) as server:
        # Only the base is served: the run stops at generate, naming the checkpoint and the name.
        assert run(tmp_path, server.url) == 1
        err = capsys.readouterr().err
        refusal = re.search(r"serve (\S+) with --served-model-name (policy-[0-9a-f]{16})", err)
        assert refusal, err
        assert "the run resumes at generate" in err
        checkpoint, name = refusal.groups()
        assert not (tmp_path / "out" / "leaderboard.json").exists()
        # A server that serves the base under the trained policy's name would need that exact
        # hash; once the checkpoint is served under it, the same command resumes and finishes.
        server.models = ("base-policy", name)
        assert run(tmp_path, server.url) == 0
        bodies = list(server.bodies)
    responses = next((tmp_path / "out").rglob("generate/responses.jsonl"))
    rows = [json.loads(line) for line in responses.read_text().splitlines()]
    assert rows and all(r["response"] == f"served by {name}" for r in rows)
    assert all(r["base_response"] == "served by base-policy" for r in rows)
    # Greedy, one answer per prompt, the evaluation's length.
    assert {(b["temperature"], b["n"], b["max_tokens"]) for b in bodies} == {(0.0, 1, 24)}
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    trained = next(e for e in board["entries"] if e["method"] == "dpo")
    served = trained["provenance"]["generation"]
    assert served["backend"] == "openai"
    assert served["server"]["policy"]["model"] == name and served["server"]["base"]["model"] == "base-policy"
    assert served["server"]["policy"]["server_version"] == "fake-1.0"
    assert trained["provenance"]["config"]["eval"]["backend"] == "openai"
