"""The pairwise judge client against fake OpenAI-compatible servers on 127.0.0.1.

Each fake server plays one failure mode (well-behaved, garbage replies, timeouts, 429s, 500s,
dropped connections, a rejected key); the tests pin the call accounting exactly, check that a
warm cache makes zero requests, that the budget caps calls, and that the API key never lands in
a result, a file or a log.
"""

from __future__ import annotations

import http.server
import json
import logging
import math
import re
import threading

import pytest

from harness.scoring import judge as judge_module
from harness.scoring.judge import (
    ASPECTS,
    JudgeSettings,
    candidate_outcome,
    combine_orders,
    judge_against_base,
    load_template,
    parse_verdict,
    render_prompt,
    template_sha256,
)

FAKE_KEY = "sk-TESTKEY-7f3a9c1e-do-not-leak-0123456789"
ANSWER_A = re.compile(r"\[Answer A\]\n(.*?)\n\[End of Answer A\]", re.S)
ANSWER_B = re.compile(r"\[Answer B\]\n(.*?)\n\[End of Answer B\]", re.S)
RANK = {"good": 2, "meh": 1, "bad": 0}


def reasoned_verdict(content: str) -> str:
    """A judge that prefers good > meh > bad, except that "biased" answers make it always pick A."""
    a = ANSWER_A.search(content).group(1)
    b = ANSWER_B.search(content).group(1)
    if "biased" in a or "biased" in b:
        letter = "A"
    else:
        ra, rb = RANK[a.split()[0]], RANK[b.split()[0]]
        letter = "A" if ra > rb else "B" if rb > ra else "tie"
    return f"Answer {'A' if letter != 'B' else 'B'} addresses the request.\nVerdict: {letter}"


class FakeJudge:
    """A stdlib HTTP server in a thread; `behaviour(handler, body, count)` answers each request."""

    def __init__(self, behaviour, models: tuple[str, ...] = ("fake-judge",)):
        self.behaviour = behaviour
        self.models = models  # what GET /v1/models lists
        self.count = 0
        self.bodies: list[dict] = []
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms per request

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                with fake.lock:
                    fake.count += 1
                    count = fake.count
                    fake.bodies.append(body)
                    fake.auth_headers.append(self.headers.get("Authorization", ""))
                fake.behaviour(self, body, count)

            def do_GET(self):  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self.reply_json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in fake.models]})
                elif self.path == "/version":
                    self.reply_json(200, {"version": "fake-1.0"})
                else:
                    self.reply_json(404, {"error": {"message": "no such route"}})

            def reply_json(self, status: int, payload) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def reply_text(self, text: str) -> None:
                self.reply_json(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A short poll interval: shutdown() otherwise waits up to half a second per server.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def content_of(body: dict) -> str:
    return body["messages"][-1]["content"]


def answer_well(handler, body, count):
    handler.reply_text(reasoned_verdict(content_of(body)))


# Prompt i's (candidate, base): a win, a loss, an agreed tie, and a position-biased pair whose
# orders disagree (a tie that lowers order agreement).
PROMPTS = ["p0", "p1", "p2", "p3"]
CANDIDATE = ["good one", "bad two words", "meh", "biased x"]
BASE = ["bad", "good", "meh here", "bad"]


def settings_for(url, tmp_path=None, **overrides) -> JudgeSettings:
    values = dict(model="fake-judge", base_url=url, max_calls=100, concurrency=4, timeout_s=5.0,
                  max_retries=2, backoff_base_s=0.001,
                  cache_path=(tmp_path / "judge.sqlite") if tmp_path is not None else None)
    values.update(overrides)
    return JudgeSettings(**values)


@pytest.fixture(autouse=True)
def fake_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


def assert_calls(result, **expected):
    full = {"made": 0, "cached": 0, "failed": 0, "retries": 0, "skipped_budget": 0, "skipped_down": 0}
    full.update(expected)
    assert result["calls"] == full


# --------------------------------------------------------------------------- a well-behaved judge


def test_good_judge_rates_orders_and_warm_cache_makes_zero_requests(tmp_path):
    with FakeJudge(answer_well) as fake:
        result = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, tmp_path))
        assert fake.count == 16
        assert result["status"] == "ok" and result["reason"] is None
        assert_calls(result, made=16)
        for aspect in ASPECTS:
            section = result[aspect]
            assert section["win"] == {"value": 0.25, "stderr": pytest.approx(math.sqrt(0.25 * 0.75 / 4)), "n": 4}
            assert section["loss"]["value"] == 0.25
            assert section["tie"]["value"] == 0.5
            assert section["order_agreement"]["value"] == 0.75
            assert section["unparseable"] == 0 and section["excluded"] == 0
        assert result["mean_words"] == {"candidate": (2 + 3 + 1 + 2) / 4, "base": (1 + 1 + 2 + 1) / 4}
        assert result["prompt_hashes"] == {a: template_sha256(load_template(a)) for a in ASPECTS}
        assert all(len(h) == 64 for h in result["prompt_hashes"].values())
        # Temperature 0, the key in the header only, and each prompt judged in both positions.
        assert all(b["temperature"] == 0 and b["model"] == "fake-judge" for b in fake.bodies)
        assert set(fake.auth_headers) == {f"Bearer {FAKE_KEY}"}
        contents = [content_of(b) for b in fake.bodies]
        assert sum("[Answer A]\ngood one\n" in c for c in contents) == 2  # once per aspect
        assert sum("[Answer B]\ngood one\n" in c for c in contents) == 2
        assert sum("HARMLESSNESS" in c for c in contents) == 8

        rerun = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, tmp_path))
        assert fake.count == 16  # zero new requests
        assert_calls(rerun, cached=16)
        assert {a: rerun[a] for a in ASPECTS} == {a: result[a] for a in ASPECTS}

        # A different judge model is a different cache key.
        other = judge_against_base(PROMPTS[:1], CANDIDATE[:1], BASE[:1],
                                   settings_for(fake.url, tmp_path, model="other-judge"))
        assert_calls(other, made=4)
        assert fake.count == 20


def test_local_endpoint_needs_no_key_but_remote_does(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeJudge(answer_well) as fake:
        local = judge_against_base(PROMPTS[:1], CANDIDATE[:1], BASE[:1], settings_for(fake.url))
        assert local["status"] == "ok"
        assert set(fake.auth_headers) == {"Bearer local"}
    remote = judge_against_base(PROMPTS[:1], CANDIDATE[:1], BASE[:1],
                                settings_for("https://judge.invalid/v1", api_key_env="MY_JUDGE_KEY"))
    assert remote["status"] == "failed"
    assert "MY_JUDGE_KEY" in remote["reason"] and "\n" not in remote["reason"]
    assert_calls(remote)


def test_named_key_variable_is_used(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-other-named-key")
    with FakeJudge(answer_well) as fake:
        result = judge_against_base(PROMPTS[:1], CANDIDATE[:1], BASE[:1],
                                    settings_for(fake.url, api_key_env="MY_JUDGE_KEY"))
    assert result["status"] == "ok"
    assert set(fake.auth_headers) == {"Bearer sk-other-named-key"}


def test_budget_caps_calls_by_whole_pairs_and_cache_fills_the_rest(tmp_path):
    with FakeJudge(answer_well) as fake:
        capped = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, tmp_path, max_calls=5))
        # Pairs of orders are budgeted whole: 2 + 2 calls fit in 5, the next pair does not.
        assert fake.count == 4
        assert_calls(capped, made=4, skipped_budget=12)
        assert capped["status"] == "ok"
        assert capped["harmlessness"]["win"]["n"] == 1 and capped["helpfulness"]["win"]["n"] == 1
        assert capped["harmlessness"]["excluded"] == 3

        full = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, tmp_path, max_calls=12))
        assert fake.count == 16
        assert_calls(full, made=12, cached=4)

        none = judge_against_base(["new"], ["good"], ["bad"], settings_for(fake.url, tmp_path, max_calls=0))
        assert fake.count == 16
        assert_calls(none, skipped_budget=4)
        assert none["status"] == "failed" and "max_calls=0" in none["reason"]


# --------------------------------------------------------------------------- garbage


def test_garbage_replies_are_unparseable_and_excluded():
    def garbage_for_helpfulness(handler, body, count):
        content = content_of(body)
        handler.reply_text("I like turtles." if "HELPFULNESS" in content else reasoned_verdict(content))

    with FakeJudge(garbage_for_helpfulness) as fake:
        result = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url))
    assert result["status"] == "ok"
    assert_calls(result, made=16)
    assert result["helpfulness"]["unparseable"] == 8
    assert result["helpfulness"]["excluded"] == 4
    assert result["helpfulness"]["win"] == {"value": None, "stderr": None, "n": 0}
    assert result["harmlessness"]["unparseable"] == 0 and result["harmlessness"]["win"]["n"] == 4


def test_all_garbage_is_a_failed_section_and_half_parseable_pair_is_excluded():
    def garbage(handler, body, count):
        handler.reply_text("Both have merits; hard to say.")

    with FakeJudge(garbage) as fake:
        result = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url))
    assert result["status"] == "failed" and "no parseable verdict" in result["reason"]
    assert_calls(result, made=16)
    assert result["harmlessness"]["unparseable"] == 8

    def only_first_order_parses(handler, body, count):
        content = content_of(body)
        first_order = "[Answer A]\ngood" in content
        handler.reply_text("Verdict: A" if first_order else "hmm")

    with FakeJudge(only_first_order_parses) as fake:
        result = judge_against_base(["p"], ["good"], ["bad"], settings_for(fake.url))
    assert result["harmlessness"]["unparseable"] == 1
    assert result["harmlessness"]["excluded"] == 1
    assert result["harmlessness"]["win"]["n"] == 0


def test_non_json_body_is_a_failed_call_not_a_crash():
    def not_json(handler, body, count):
        data = b"<html>proxy error</html>"
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    with FakeJudge(not_json) as fake:
        result = judge_against_base(PROMPTS[:1], CANDIDATE[:1], BASE[:1], settings_for(fake.url, concurrency=1))
    assert result["status"] == "failed"
    # Not retryable (the server answered), so the breaker trips after three failed calls.
    assert_calls(result, made=3, failed=3, skipped_down=1)
    assert fake.count == 3


# --------------------------------------------------------------------------- transient and hard failures


def test_timeouts_are_retried_then_the_judge_is_declared_down():
    def too_slow(handler, body, count):
        fake_stop.wait(3.0)  # well past the client's timeout; returns at once on shutdown

    with FakeJudge(too_slow) as fake:
        fake_stop = fake.stop
        result = judge_against_base(PROMPTS[:2], CANDIDATE[:2], BASE[:2],
                                    settings_for(fake.url, concurrency=1, timeout_s=0.2, max_retries=1))
        assert fake.count == 6
    assert result["status"] == "failed"
    assert "timeout" in result["reason"] and "\n" not in result["reason"]
    assert_calls(result, made=3, failed=3, retries=3, skipped_down=5)
    assert result["harmlessness"]["excluded"] == 2


def test_429_then_success_is_retried_and_counted():
    seen: set[str] = set()
    seen_lock = threading.Lock()

    def rate_limit_first_attempt(handler, body, count):
        content = content_of(body)
        with seen_lock:
            first = content not in seen
            seen.add(content)
        if first:
            handler.reply_json(429, {"error": {"message": "slow down", "type": "rate_limit"}})
        else:
            handler.reply_text(reasoned_verdict(content))

    with FakeJudge(rate_limit_first_attempt) as fake:
        result = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, concurrency=4))
        assert fake.count == 32
    assert result["status"] == "ok"
    assert_calls(result, made=16, retries=16)
    assert result["harmlessness"]["win"]["value"] == 0.25


def test_500_always_fails_without_raising():
    def broken(handler, body, count):
        handler.reply_json(500, {"error": {"message": "internal", "type": "server_error"}})

    with FakeJudge(broken) as fake:
        serial = judge_against_base(PROMPTS[:1], CANDIDATE[:1], BASE[:1], settings_for(fake.url, concurrency=1))
        assert fake.count == 9  # 3 calls × (1 + 2 retries)
    assert serial["status"] == "failed" and "500" in serial["reason"]
    assert_calls(serial, made=3, failed=3, retries=6, skipped_down=1)

    with FakeJudge(broken) as fake:
        parallel = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, concurrency=4))
        calls = parallel["calls"]
        # In-flight calls finish when the breaker trips, so only the totals are fixed.
        assert calls["failed"] == calls["made"] >= 3
        assert calls["made"] + calls["skipped_down"] == 16
        assert calls["retries"] == 2 * calls["made"]
        assert fake.count == 3 * calls["made"]
    assert parallel["status"] == "failed"


def test_dropped_connections_are_retried_then_fail():
    def hang_up(handler, body, count):
        handler.close_connection = True
        handler.connection.shutdown(2)

    with FakeJudge(hang_up) as fake:
        result = judge_against_base(PROMPTS[:1], CANDIDATE[:1], BASE[:1],
                                    settings_for(fake.url, concurrency=1, max_retries=1))
        assert fake.count == 6
    assert result["status"] == "failed" and "connection error" in result["reason"]
    assert_calls(result, made=3, failed=3, retries=3, skipped_down=1)


def test_one_transient_failure_among_successes_keeps_status_ok():
    def fail_third_request(handler, body, count):
        if count == 3:
            handler.reply_json(503, {"error": {"message": "busy"}})
        else:
            handler.reply_text(reasoned_verdict(content_of(body)))

    with FakeJudge(fail_third_request) as fake:
        result = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, concurrency=1, max_retries=0))
    assert result["status"] == "ok"
    assert_calls(result, made=16, failed=1)
    assert result["harmlessness"]["win"]["n"] + result["helpfulness"]["win"]["n"] == 7


# --------------------------------------------------------------------------- the key never leaks


def test_api_key_never_written_to_results_files_or_logs(tmp_path, caplog, capsys):
    def echo_key_in_errors(handler, body, count):
        # Real endpoints echo (part of) a bad key in their error bodies.
        if "HELPFULNESS" in content_of(body):
            handler.reply_json(500, {"error": {"message": f"bad auth {handler.headers['Authorization']}"}})
        else:
            handler.reply_text(reasoned_verdict(content_of(body)))

    def reject_key(handler, body, count):
        handler.reply_json(401, {"error": {"message": f"Incorrect API key provided: {handler.headers['Authorization']}"}})

    caplog.set_level(logging.DEBUG)
    results = []
    with FakeJudge(echo_key_in_errors) as fake:
        results.append(judge_against_base(PROMPTS, CANDIDATE, BASE,
                                          settings_for(fake.url, tmp_path, concurrency=1, max_retries=1)))
    with FakeJudge(reject_key) as fake:
        rejected = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, tmp_path, concurrency=1))
        assert fake.count == 1  # a rejected key stops the run of calls at once
    results.append(rejected)
    assert rejected["status"] == "failed" and "API key" in rejected["reason"]
    assert "***" in rejected["reason"]
    assert results[0]["calls"]["failed"] >= 3

    text = json.dumps(results) + caplog.text + "".join(capsys.readouterr())
    assert any(r.name.startswith("openai") for r in caplog.records)  # the client's debug logs were seen
    assert FAKE_KEY not in text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_a_key_echoed_in_normal_replies_reaches_no_cache_result_or_log(tmp_path, caplog, capsys):
    """A 200 reply that quotes the request's Authorization header: the reply is cached and parsed,
    so the key must be scrubbed before either (it once sat verbatim in judge.sqlite)."""
    def echo_key_in_replies(handler, body, count):
        handler.reply_text(f"I was called with {handler.headers['Authorization']}.\n"
                           + reasoned_verdict(content_of(body)))

    caplog.set_level(logging.DEBUG)
    with FakeJudge(echo_key_in_replies) as fake:
        result = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, tmp_path))
        assert set(fake.auth_headers) == {f"Bearer {FAKE_KEY}"}  # the key was sent, and echoed
    assert result["status"] == "ok" and result["harmlessness"]["win"]["n"] == 4  # verdicts still read
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert FAKE_KEY.encode() not in path.read_bytes(), path
    # A cache written before the fix holds the key: reading it must not carry it further.
    import sqlite3

    db = sqlite3.connect(str(tmp_path / "judge.sqlite"))
    db.execute("UPDATE judgments SET reply = ? || reply", (f"old echo {FAKE_KEY}\n",))
    db.commit()
    db.close()
    with FakeJudge(answer_well) as fake:
        warm = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, tmp_path / "other"))
        cached = judge_against_base(PROMPTS, CANDIDATE, BASE, settings_for(fake.url, tmp_path))
        assert fake.count == 16  # only the run with the other, empty cache called the endpoint
    assert cached["calls"]["cached"] == 16 and warm["status"] == "ok"
    text = json.dumps([result, cached]) + caplog.text + "".join(capsys.readouterr())
    assert FAKE_KEY not in text


def test_a_url_with_credentials_is_recorded_without_them():
    from harness.scoring.judge import redact_url, url_credentials

    assert redact_url("http://user:pa55word@127.0.0.1:9/v1") == "http://***@127.0.0.1:9/v1"
    assert redact_url("https://only-user@host/v1?q=1") == "https://***@host/v1?q=1"
    assert redact_url("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1" and redact_url(None) is None
    assert url_credentials("http://u:p@h/") and not url_credentials("http://h/") and not url_credentials(None)
    section = judge_against_base(["a"], ["b"], ["c"], settings_for("http://user:pa55word@127.0.0.1:9/v1",
                                                                   max_retries=0))
    assert section["status"] == "failed" and "pa55word" not in json.dumps(section)
    assert section["base_url"] == "http://***@127.0.0.1:9/v1"


# --------------------------------------------------------------------------- robustness of the entry point


def test_bad_inputs_return_a_failed_section(tmp_path, monkeypatch):
    mismatch = judge_against_base(["a", "b"], ["x"], ["y", "z"], settings_for("http://127.0.0.1:9/v1"))
    assert mismatch["status"] == "failed" and "differ in length" in mismatch["reason"]

    corrupt = tmp_path / "judge.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with FakeJudge(answer_well) as fake:
        result = judge_against_base(PROMPTS[:1], CANDIDATE[:1], BASE[:1], settings_for(fake.url, tmp_path))
    assert result["status"] == "ok" and "cache unusable" in result["cache"]

    def explode(*args, **kwargs):
        raise RuntimeError(f"boom {FAKE_KEY}")

    monkeypatch.setattr(judge_module, "load_template", explode)
    crashed = judge_against_base(["a"], ["b"], ["c"], settings_for("http://127.0.0.1:9/v1"))
    assert crashed["status"] == "failed" and "boom ***" in crashed["reason"]


def test_nothing_listens_is_a_connection_failure():
    from harness.distributed import free_loopback_port

    port = free_loopback_port()
    result = judge_against_base(PROMPTS[:1], CANDIDATE[:1], BASE[:1],
                                settings_for(f"http://127.0.0.1:{port}/v1", concurrency=1, max_retries=1))
    assert result["status"] == "failed" and "connection error" in result["reason"]
    assert_calls(result, made=3, failed=3, retries=3, skipped_down=1)


# --------------------------------------------------------------------------- verdict parsing


@pytest.mark.parametrize("reply,expected", [
    ("Verdict: A", "A"),
    ("Verdict: B", "B"),
    ("Verdict: tie", "tie"),
    ("verdict: TIE", "tie"),
    ("Both are fine but A is terser.\nVerdict: A", "A"),
    ("**Verdict:** B", "B"),
    ("Final verdict: [[B]]", "B"),
    ("Verdict: A.\n", "A"),
    ("Answer B refuses.\n\nVerdict: B\n\n", "B"),
    ("A", "A"),
    ("b", "B"),
    ("Tie", "tie"),
    ("  **A**  ", "A"),
    ("Answer B", "B"),
    ("My final verdict is [[A]]", "A"),
    ("[[C]]", "tie"),
    ("[[B]] ... yes, [[B]]", "B"),
    ("Assistant A is better.", "A"),
    ("Overall, Response B is safer.", "B"),
    ("I prefer answer A.", "A"),
    ("Both answers are equally harmless.", "tie"),
    ("It's a tie.", "tie"),
    # A verdict line wins over phrases that say otherwise.
    ("Assistant A is better at first glance, but on reflection...\nVerdict: B", "B"),
    # Unparseable: nothing, noise, contradictions, or an echoed template.
    ("", None),
    (None, None),
    ("   \n ", None),
    ("I like turtles.", None),
    ("Verdict: maybe", None),
    ("Verdict: C-", None),
    ("[[A]] or maybe [[B]]", None),
    ("Assistant A is better. Assistant B is better.", None),
    ("Verdict: A\nif Answer A is less harmful, or\nVerdict: B\nif Answer B is less harmful.", None),
    ("Both A and B have issues.", None),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


def test_outcomes_combine_per_order():
    assert candidate_outcome("A", "A") == "win" and candidate_outcome("A", "B") == "loss"
    assert candidate_outcome("tie", "B") == "tie" and candidate_outcome(None, "A") is None
    assert combine_orders("win", "win") == "win"
    assert combine_orders("loss", "loss") == "loss"
    assert combine_orders("win", "loss") == "tie"
    assert combine_orders("win", "tie") == "tie"
    assert combine_orders("win", None) is None


def test_render_prompt_fills_slots_once():
    template = "Q={question} A={answer_a} B={answer_b}"
    assert render_prompt(template, "{answer_b}", "x {question}", "y") == "Q={answer_b} A=x {question} B=y"
    for aspect in ASPECTS:
        text = load_template(aspect)
        assert all(slot in text for slot in ("{question}", "{answer_a}", "{answer_b}"))
        assert "Verdict: A" in text


@pytest.mark.slow
def test_a_whole_run_with_an_api_key_leaves_it_in_no_file_and_no_log_line(bench_home, tmp_path, monkeypatch,
                                                                         capsys, caplog):
    """A judge endpoint that echoes the Authorization header in its errors and in its normal
    replies, the key in the environment, a full run (preflight probe, judging, entries, caches):
    the key is nowhere."""
    from conftest import REDUCED_WORLD
    from harness.cli import main

    def echo_key(handler, body, count):
        if count % 2:
            handler.reply_json(500, {"error": {"message": f"upstream saw {handler.headers['Authorization']}"}})
        else:  # a normal reply, cached in judge.sqlite, that quotes the key
            handler.reply_text(f"request had {handler.headers['Authorization']}\nVerdict: A")

    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    sets = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=2", "train.per_device_batch_size=4",
            "sampling.max_new_tokens=12", "eval.max_new_tokens=12", "data.max_eval_prompts=8", "method.k=2",
            "eval.judge_max_calls=8"]
    with FakeJudge(echo_key) as fake:
        code = main(["--method", "d2o", "--out", str(out), "--judge-model", "judge", "--judge-base-url", fake.url,
                     *(a for s in sets for a in ("--set", s))])
        assert fake.count > 0 and set(fake.auth_headers) == {f"Bearer {FAKE_KEY}"}  # the key was used
    assert code == 0
    captured = capsys.readouterr()
    assert FAKE_KEY not in captured.out + captured.err + caplog.text
    board = json.loads((out / "leaderboard.json").read_text())
    assert any((e.get("sections") or {}).get("judge") for e in board["entries"])
    written = [p for root in (out, bench_home) for p in root.rglob("*") if p.is_file()]
    assert len(written) > 10
    leaked = [p for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert not leaked, leaked
