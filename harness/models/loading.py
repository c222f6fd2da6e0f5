"""Loading policies and score models from the tiny world, a local path, a hub id or a GGUF file.

The real-world path is the ordinary transformers loading code: `from_pretrained` on a Hugging
Face id or a local checkpoint (a GGUF file through `gguf_file=`). Nothing here downloads when the
id is a local path; hub ids download only outside tests and the default preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from harness.errors import BadInput, RunFailure
from harness.hashing import weights_sha256
from harness.models.score_model import LlamaForScore

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device() -> torch.device:
    # Under a launcher each rank owns the GPU its LOCAL_RANK names, not cuda:0.
    from harness.distributed import local_device

    return local_device()


def _load(loader, spec: str, **kwargs):
    try:
        return loader(spec, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"cannot load model {spec!r}: {first}") from None


def load_tokenizer(spec: str, *, gguf_file: Optional[str] = None):
    """A policy's tokenizer (pad token set)."""
    tokenizer = _load(AutoTokenizer.from_pretrained, spec, **({"gguf_file": gguf_file} if gguf_file else {}))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(spec: str, *, gguf_file: Optional[str] = None):
    """A policy's config alone (no weights): what its memory estimates read."""
    return _load(AutoConfig.from_pretrained, spec, **({"gguf_file": gguf_file} if gguf_file else {}))


def load_policy(spec: str, *, dtype: str = "float32", gguf_file: Optional[str] = None, device=None,
                quantization_config=None):
    """A causal LM and its tokenizer (pad token set, left padding for generation).

    `quantization_config` (QLoRA's 4-bit base) places the weights while loading them: a
    quantised model cannot be moved afterwards."""
    kwargs = {"dtype": DTYPES[dtype]}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if quantization_config is not None:
        kwargs.update(quantization_config=quantization_config, device_map={"": device or _device()})
    tokenizer = load_tokenizer(spec, gguf_file=gguf_file)
    model = _load(AutoModelForCausalLM.from_pretrained, spec, **kwargs)
    if quantization_config is None:
        model.to(device or _device())
    return model, tokenizer


def load_score_model(spec: str, *, dtype: str = "float32", device=None):
    tokenizer = _load(AutoTokenizer.from_pretrained, spec)
    model = _load(LlamaForScore.from_pretrained, spec, dtype=DTYPES[dtype])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    model.to(device or _device())
    model.eval()
    return model, tokenizer


def model_identity(spec: str, *, remember: bool = True) -> dict:
    """{"id", "sha256"} for provenance: the content hash of a local checkpoint's weights.
    `remember=False` (a dry run) leaves no memo of the digest beside the weights."""
    path = Path(spec)
    if path.is_dir():
        return {"id": spec, "sha256": weights_sha256(path, remember=remember)}
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(spec, local_files_only=True)
        return {"id": spec, "sha256": weights_sha256(local, remember=remember)}
    except Exception as exc:  # not cached locally: nothing to hash without a download
        raise RunFailure(f"model {spec!r} is not available locally to hash: {type(exc).__name__}") from None


def free(*objects) -> None:
    for obj in objects:
        del obj
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
