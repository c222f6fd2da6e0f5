"""The sampling benchmarks' workload: distinct prompts, and a prefix cache emptied between passes.

Both guard the vLLM figures against a server serving prompts from its cache: repeated prompts
within a pass, or the same prompts again in the next pass, would make any setting that caches
shorter blocks look faster than it is for the harness, which samples each training prompt once.
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


def test_reset_prefix_cache_posts_to_the_dev_endpoint_and_fails_loudly_otherwise():
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append(self.path)
            self.send_response(200 if self.path == "/reset_prefix_cache" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sampling.reset_prefix_cache(server.server_address[1])
        assert seen == ["/reset_prefix_cache"]
    finally:
        server.shutdown()
    # Nothing listening: the benchmark stops rather than timing a pass over a warm cache.
    with pytest.raises(OSError):
        sampling.reset_prefix_cache(server.server_address[1])
