"""The training loop's glibc setting for LoRA (harness/allocator.py): freed activation-sized buffers
go back to the kernel instead of staying resident in the heap. Without it a LoRA step on SmolLM2
held 1.5 GB resident beyond its tensors (benchmarks/RESULTS.md, "Where LoRA's peak memory goes")."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import allocator

ROOT = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only")

# Buffers of a 512-token chunk's layer outputs (2 MiB each), freed while a small tensor allocated
# after them stays: glibc's heap cannot give the hole below it back, so it stays resident.
_PROBE = textwrap.dedent("""
    import sys
    import torch
    from harness import allocator

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    # A mapped buffer freed first raises glibc's dynamic threshold to its size (up to 32 MiB),
    # as a training step's first buffers do, so 2 MiB buffers come from the heap after it.
    big = torch.ones(16 << 18); del big
    if sys.argv[1] == "fixed":
        assert allocator.fix_mmap_threshold()
    before = rss_mb()
    buffers = [torch.ones(1 << 19) for _ in range(100)]  # 100 x 2 MiB, touched
    pin = torch.ones(256)
    del buffers
    print(rss_mb() - before)
""")


def _retained_mb(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


@glibc_only
def test_freed_activation_buffers_leave_the_process_once_the_threshold_is_fixed():
    # The control shows what the setting prevents: 200 MB freed, still resident. It is tried up
    # to three times: an allocation landing above the buffers is what keeps them resident, and
    # once, on the loaded 2-core machine, only 40 MB stayed (20 buffers) where 60 runs in a row
    # kept 200; the fixed threshold's bound below is asserted on its one run.
    assert any(_retained_mb("dynamic") > 150 for _ in range(3))
    assert _retained_mb("fixed") < 20


@glibc_only
@pytest.mark.parametrize("use_lora", [False, True])
def test_the_training_loop_fixes_the_threshold_for_lora_on_the_cpu(tmp_path, monkeypatch, use_lora):
    """train_method sets it for LoRA (a LoRA run without it would hold the freed buffers again),
    and not for full training, whose steps it slowed 1.40 × for 0.92 × the memory."""
    import torch

    calls = []
    monkeypatch.setattr(allocator, "fix_mmap_threshold", lambda *a: calls.append(a) or True)
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.config import parse_set_options, resolve_config
    from harness.registry import get_method
    from harness.training import train_method

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0))
    cfg = resolve_config(method="sft", preset="tiny", overrides=parse_set_options(
        ["train.max_steps=1", "train.per_device_batch_size=2"] + (["train.lora.rank=2"] if use_lora else [])))
    method = get_method("sft")(cfg.method)
    if use_lora:
        pytest.importorskip("peft")
        from harness import lora

        model = lora.wrap(model, cfg.train.lora, gradient_checkpointing=False)
    rows = [{"prompt_index": i, "chosen_ids": [3, 4, 5, 6 + i], "chosen_start": 2} for i in range(2)]

    class Tokenizer:
        pad_token_id = 0

    train_method(method=method, model=model, tokenizer=Tokenizer(), dataset=Dataset.from_list(rows),
                 train_cfg=cfg.train, output_dir=tmp_path / "checkpoints", seed=0)
    assert calls == ([()] if use_lora and not torch.cuda.is_available() else [])
