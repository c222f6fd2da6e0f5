"""The sampling benchmarks' workload: distinct prompts, and a prefix cache emptied between passes.

Both guard the vLLM figures against a server serving prompts from its cache: repeated prompts
within a pass, or the same prompts again in the next pass, would make any setting that caches
shorter blocks look faster than it is for the harness, which samples each training prompt once.
Also the server's lifetime: one left running would hold the cores the next measurement uses.
"""

from __future__ import annotations

import http.server
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import sampling  # noqa: E402


class ChatTemplateTokenizer:
    chat_template = "system turn, then the user's"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<system>helpful</system><user>{messages[0]['content']}</user><assistant>"


def test_benchmark_prompts_are_distinct_chat_formatted_and_red_team_first():
    prompts = sampling.benchmark_prompts(ChatTemplateTokenizer(), 64)
    assert len(prompts) == 64
    assert len(set(prompts)) == 64
    assert all(p.startswith("<system>helpful</system><user>") and p.endswith("<assistant>") for p in prompts)
    # pyrit's labelled objectives lead, as the harness's real-safety training prompts are those.
    from harness.suites import real_data
    objectives = real_data.read_harm_labels(sampling.FIXTURE_SOURCES / "pyrit")
    assert prompts[0] == f"<system>helpful</system><user>{objectives[0]['objective'][:300]}</user><assistant>"


def test_benchmark_prompts_refuse_more_than_the_fixture_holds():
    with pytest.raises(SystemExit, match="distinct prompts"):
        sampling.benchmark_prompts(ChatTemplateTokenizer(), 10_000)


def serve(answer: int, seen: list) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1 answering every POST with `answer`, recording the paths."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(self.path)
            self.send_response(answer)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_reset_prefix_cache_posts_to_the_dev_endpoint():
    seen = []
    server = serve(200, seen)
    try:
        sampling.reset_prefix_cache(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["/reset_prefix_cache"]


def test_reset_prefix_cache_stops_the_benchmark_with_one_line_when_it_cannot():
    # A server without dev mode answers 404: the benchmark stops rather than time a warm cache.
    server = serve(404, [])
    port = server.server_address[1]
    try:
        with pytest.raises(SystemExit, match=r"reset_prefix_cache failed \(HTTP Error 404.*VLLM_SERVER_DEV_MODE=1"):
            sampling.reset_prefix_cache(port)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(SystemExit, match="reset_prefix_cache failed"):  # nothing listening any more
        sampling.reset_prefix_cache(port)


def test_cpu_model_names_the_host_for_the_figures(tmp_path):
    # The figures' summary line carries it: hosts differ between sessions, and so does the
    # dtype that samples fastest on them.
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: avx512_bf16\n")
    assert sampling.cpu_model(cpuinfo) == "AMD EPYC 9R14"
    cpuinfo.write_text("processor\t: 0\n")
    assert sampling.cpu_model(cpuinfo) == "unknown CPU"
    assert sampling.cpu_model(tmp_path / "missing") == "unknown CPU"


def test_a_server_that_never_answers_is_stopped_not_leaked(monkeypatch, tmp_path):
    # A stand-in "server" that starts in its own session and never listens: past the deadline
    # start_vllm must stop it before giving up, or it would hold the cores the next run measures.
    import subprocess

    started = []

    def fake_launch(python, model, **kwargs):
        process = subprocess.Popen(["sleep", "300"], start_new_session=True)
        started.append(process)
        return process

    readings = [0.0]  # the start; every later reading is far past the 900 s deadline
    monkeypatch.setattr(sampling, "launch_vllm", fake_launch)
    monkeypatch.setattr(sampling.time, "monotonic", lambda: readings.pop() if readings else 10_000.0)
    monkeypatch.setattr(sampling.time, "sleep", lambda seconds: None)
    try:
        with pytest.raises(SystemExit, match="vLLM did not start"):
            sampling.start_vllm(Path("python"), tmp_path, port=1, log_path=tmp_path / "log", preload=[])
        assert started and started[0].poll() is not None, "the never-answering server is still running"
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
