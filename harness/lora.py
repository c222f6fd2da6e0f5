"""LoRA (and QLoRA) through peft, for every method (`train.lora`).

The policy's weights stay frozen and low-rank adapters on the chosen modules train instead. The
reference log-probs are those of the same base weights (computed before training and cached, as
for full training), so no second model is loaded; d2o-online's refresher scores its samples with
the policy's adapters disabled. After training the adapter is saved in the run directory
(`train/adapter/`) and merged into a copy of the base saved as `train/policy`, so generation,
scoring and capability tasks use the adapted model through the ordinary loading path.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import torch

from harness.errors import BadInput

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def enabled(train_cfg) -> bool:
    return train_cfg.lora.rank > 0


def peft_config(lora_cfg):
    from peft import LoraConfig, TaskType

    targets = lora_cfg.target_modules
    return LoraConfig(
        r=lora_cfg.rank,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        # peft takes "all-linear" as a string only; a list is matched name by name.
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )


def quantization_config(dtype):
    """QLoRA's 4-bit NF4 base, computing in the run's dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def four_bit_unsupported() -> str | None:
    """Why the installed bitsandbytes cannot train through a 4-bit NF4 layer on this machine's
    device (None: it can). A forward and backward through one small layer, the same kernels
    QLoRA's frozen base uses, so a build without them is refused before any stage runs."""
    import torch

    import bitsandbytes as bnb
    from harness.distributed import local_device

    device = local_device()
    try:
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4").to(device)
        inputs = torch.ones(2, 64, device=device, requires_grad=True)
        layer(inputs).sum().backward()
        if inputs.grad is None or not torch.isfinite(inputs.grad).all():
            raise RuntimeError("no finite gradient through the 4-bit layer")
    except Exception as error:  # noqa: BLE001 - any failure means the kernels are not usable here
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return (f"bitsandbytes {bnb.__version__} cannot run a 4-bit layer on {device} "
                f"({first_line[:160]}); use a CUDA GPU or a bitsandbytes with kernels for it")
    return None


def unmatched_targets(model, targets: list[str]) -> list[str]:
    """The targets that name no module of `model` (peft's rule: equal to, or the end of, a dotted
    module path)."""
    if targets == ["all-linear"]:
        return []
    names = [name for name, _ in model.named_modules()]
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


def wrap(model, lora_cfg, *, gradient_checkpointing: bool):
    """The policy with trainable adapters; every base weight frozen."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    missing = unmatched_targets(model, lora_cfg.target_modules)
    if missing:
        raise BadInput(f"train.lora.target_modules: {', '.join(missing)} names no module of the policy")
    if lora_cfg.quantize_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        # With frozen embeddings no input to the checkpointed layers would require grad, and
        # reentrant checkpointing would then drop the adapters' gradients.
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config(lora_cfg))


@contextlib.contextmanager
def adapters_disabled(model):
    """The base policy (π_r when the reference is the base) inside a LoRA-wrapped model, in eval
    mode; the model's mode is restored after."""
    from harness.logprobs import unwrap

    inner = unwrap(model)
    training = inner.training
    inner.eval()
    try:
        with inner.disable_adapter():
            yield inner
    finally:
        inner.train(training)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _outside_zero3(training_args):
    """While a ZeRO-3 Trainer's arguments are alive, transformers partitions every model it
    loads (an empty shard on each rank); the merge needs whole weights, so it loads without."""
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    config = getattr(training_args, "hf_deepspeed_config", None)
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            set_hf_deepspeed_config(config)


def save_merged(adapter_dir: Path, base_spec: str, out_dir: Path, *, dtype: str, gguf_file=None,
                training_args=None) -> None:
    """Load the base policy afresh (full precision even after QLoRA), apply the saved adapter,
    merge it into the weights and save an ordinary checkpoint: what later stages load. Reloading
    from the saved adapter also means the policy scored is exactly the adapter recorded."""
    from peft import PeftModel

    from harness.models.loading import load_policy

    with _outside_zero3(training_args):
        base, _ = load_policy(base_spec, dtype=dtype, gguf_file=gguf_file, device=torch.device("cpu"))
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))


def record(lora_cfg, adapter_dir: Path, model) -> dict:
    """The adapter's settings, size and sha256 for the run's entry."""
    from harness.logprobs import unwrap

    # Under ZeRO-3 a parameter holds only its shard; ds_numel is its whole size.
    sizes = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in unwrap(model).parameters()]
    trainable = sum(n for n, grad in sizes if grad)
    total = sum(n for n, _ in sizes)
    return {
        "rank": lora_cfg.rank,
        "alpha": lora_cfg.alpha,
        "dropout": lora_cfg.dropout,
        "target_modules": list(lora_cfg.target_modules),
        "quantize_4bit": lora_cfg.quantize_4bit,
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "adapter_sha256": file_sha256(Path(adapter_dir) / ADAPTER_WEIGHTS),
    }
