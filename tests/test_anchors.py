"""How D²O's anchors are drawn (harness/anchors.py): an instruction that reaches sampling and never
scoring, filters that keep only what their instrument passes, online refreshes, the per-step
diagnostics, and one-line refusals of bad settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import pipeline
from harness.stages import self_samples as self_samples_stage
from harness.anchors import AnchorSettings, fill_to_k, sampling_prompt_text
from harness.cli import main
from conftest import REDUCED_WORLD

SMALL = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=2", "train.per_device_batch_size=4",
         "sampling.max_new_tokens=16", "eval.max_new_tokens=8", "eval.lm_eval_tasks=[]", "method.k=2"]


def _args(sets):
    return [a for s in sets for a in ("--set", s)]


class _ChatTokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"


def test_the_instruction_goes_before_the_prompt_or_into_a_system_turn():
    plain = AnchorSettings(anchor_instruction="Be harmless:")
    assert sampling_prompt_text("make tea", plain, "plain") == "User: Be harmless: make tea\nAssistant:"
    assert sampling_prompt_text("make tea", AnchorSettings(), "plain") == "User: make tea\nAssistant:"
    system = AnchorSettings(anchor_instruction="Be harmless.", anchor_instruction_as="system")
    assert sampling_prompt_text("make tea", system, "chat", _ChatTokenizer()) == \
        "system:Be harmless.|user:make tea|assistant:"


def test_kept_anchors_are_cycled_to_k_and_none_kept_stays_none():
    assert fill_to_k(["a", "b"], 5) == ["a", "b", "a", "b", "a"]
    assert fill_to_k(["a", "b", "c"], 2) == ["a", "b"]
    assert fill_to_k([], 3) == []


@pytest.mark.parametrize("setting, message", [
    ("method.anchor_filter=judge", "anchor_filter"),
    ("method.anchor_max_rounds=0", "anchor_max_rounds must be >= 1"),
    ("method.anchor_instruction_as=system", "needs model.prompt_format=chat"),
    ("train.term_gradient_every=-1", "term_gradient_every must be >= 0"),
])
def test_bad_anchor_settings_are_one_line_and_write_nothing(tmp_path, capsys, setting, message):
    out = tmp_path / "out"
    extra = ["method.anchor_instruction=Be kind:"] if "instruction_as" in setting else []
    code = main(["--method", "d2o-guided", "--out", str(out), *_args([setting, *extra])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_filter_with_online_refreshes_or_without_a_cost_model_is_refused(tmp_path, capsys):
    data = tmp_path / "rows"
    data.mkdir()
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text(json.dumps({"prompt": f"{split} prompt", "negative": "harm"}) + "\n")
    custom = ["suite=custom", f"data.dataset={data}", "data.format=negatives", "data.group_column=none",
              "model.cost_model=none", "model.reward_model=none"]
    for sets, message in ((["method.refresh_every=2"], "online refreshes draw their anchors unfiltered"),
                          (custom, "needs a cost model")):
        code = main(["--method", "d2o-guided", "--out", str(tmp_path / "out"), *_args(sets)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err, err
        assert not (tmp_path / "out").exists()


def _run_until(method: str, sets: list[str], out: Path, stage: str) -> None:
    from harness.config import parse_set_options, resolve_config
    from harness.plan import resolve_plan

    cfg = resolve_config(method=method, preset="tiny", overrides=parse_set_options(sets))
    pipeline.run_pipeline(resolve_plan(cfg), out, stop_after=stage, progress=lambda message: None)


def _record_sampling(monkeypatch, module=self_samples_stage) -> list[str]:
    """The prompt texts every self-sample generation `module` asks for was asked for."""
    seen: list[str] = []
    original = module.generate_completions

    def recording(model, tokenizer, texts, **kwargs):
        seen.extend(texts)
        return original(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(module, "generate_completions", recording)
    return seen


@pytest.mark.slow
def test_guided_anchors_are_sampled_with_the_instruction_scored_without_it_and_filtered(
        bench_home, tmp_path, monkeypatch):
    from harness.config import parse_set_options, resolve_config
    from harness.logprobs import encode_pair
    from harness.models.loading import load_score_model, load_tokenizer
    from harness.scoring.score_models import score_responses

    seen = _record_sampling(monkeypatch)
    out = tmp_path / "out"
    sets = [*SMALL, "method.anchor_instruction=Reply in a helpful and harmless way:", "method.anchor_max_rounds=3",
            "train.term_gradient_every=1"]
    assert main(["--method", "d2o-guided", "--out", str(out), *_args(sets)]) == 0
    run = next(p for p in out.iterdir() if p.name.startswith("d2o-guided"))
    examples = [json.loads(line) for line in (run / "data" / "train_examples.jsonl").read_text().splitlines()]
    prompts = {e["prompt"] for e in examples}
    # Sampling saw every training prompt with the instruction, and only with it.
    sampled = [t for t in seen if "Reply in a helpful and harmless way:" in t]
    assert sampled and len(sampled) == len(seen)
    assert {p for p in prompts if any(p in t for t in sampled)} == prompts

    summary = json.loads((run / "self_samples" / "COMPLETE").read_text())
    result = summary["anchors"]["filter_result"]
    assert result["instrument"] == "cost-model" and result["drawn"] >= 2 * len(prompts)
    assert result["kept_fraction"] == pytest.approx(result["passed"] / result["drawn"])
    assert result["prompts_with_k"] + result["prompts_refilled"] + result["prompts_dropped"] == len(prompts)
    samples = json.loads((run / "self_samples" / "samples.json").read_text())
    assert len(samples["texts"]) == len(prompts) - result["prompts_dropped"]

    # Every kept anchor is one the cost model, rescored independently here, calls safe.
    cfg = resolve_config(method="d2o-guided", preset="tiny", overrides=parse_set_options(sets))
    assets = pipeline.resolve_assets(cfg, bench_home)
    model, tokenizer = load_score_model(assets.cost)
    flat = [(p, t) for p, texts in samples["texts"].items() for t in texts]
    if flat:
        costs = score_responses(model, tokenizer, [p for p, _ in flat], [t for _, t in flat],
                                template=cfg.eval.scorer_template, batch_size=16, desc="check")
        assert max(costs) <= 0

    # The anchors' log-probs are taken under the original prompt: the cached reference values equal
    # the tokens of "User: {prompt}\nAssistant:" + anchor, without the instruction.
    policy_tokenizer = load_tokenizer(assets.policy)
    prompt = sorted(samples["texts"])[0]
    text = f"User: {prompt}\nAssistant:"
    encoded = encode_pair(policy_tokenizer, text, samples["texts"][prompt][0], 128,
                          ended=samples["ended"][prompt][0])
    assert "harmless way" not in policy_tokenizer.decode(encoded.input_ids[: encoded.response_start])

    # The per-step diagnostics: σ(−u) and each term's gradient share, in the trajectory and the entry.
    trajectory = [json.loads(line) for line in (run / "train" / "trajectory.jsonl").read_text().splitlines()]
    assert trajectory and all("diag/sigmoid_neg_margin" in row for row in trajectory)
    shares = [row["diag/grad_share_anchor"] + row["diag/grad_share_negative"] for row in trajectory]
    assert all(abs(s - 1) < 1e-4 for s in shares)
    assert all(row["diag/grad_norm_negative"] > 0 for row in trajectory)
    entry = next(e for e in json.loads((out / "leaderboard.json").read_text())["entries"] if e["method"] == "d2o-guided")
    assert entry["provenance"]["train"]["diagnostics"] == trajectory
    assert entry["provenance"]["anchors"]["filter_result"] == result
    assert entry["hyperparameters"]["anchor_filter"] == "cost-model"


@pytest.mark.slow
def test_a_refusal_rules_filter_keeps_only_refusals(bench_home, tmp_path):
    from harness.instruments.refusal import is_refusal

    out = tmp_path / "out"
    sets = [*SMALL, "method.anchor_filter=refusal-rules", "method.anchor_max_rounds=2"]
    _run_until("d2o-guided", sets, out, "self_samples")
    run = next(p for p in out.iterdir() if p.name.startswith("d2o-guided"))
    samples = json.loads((run / "self_samples" / "samples.json").read_text())
    assert all(is_refusal(t) for texts in samples["texts"].values() for t in texts)
    summary = json.loads((run / "self_samples" / "COMPLETE").read_text())
    assert summary["anchors"]["filter_result"]["instrument"] == "refusal-rules"


@pytest.mark.slow
def test_online_refreshes_sample_with_the_instruction(bench_home, tmp_path, monkeypatch):
    import harness.online as online

    seen = _record_sampling(monkeypatch, online)
    out = tmp_path / "out"
    sets = [*SMALL, "method.refresh_every=1", "method.anchor_instruction=Be harmless:"]
    _run_until("d2o-online", sets, out, "train")
    assert seen and all("Be harmless:" in t for t in seen)


def test_the_published_loss_plot_draws_the_diagnostics_under_the_loss(tmp_path):
    from matplotlib.image import imread

    from harness.publish import plot_loss_curves

    def rows(diagnostics):
        train = {"loss_curve": [[1, 0.69], [2, 0.6]], "diagnostics": diagnostics}
        return [{"label": "d2o-guided", "preset": "real-smollm2",
                 "runs": [{"status": "complete", "provenance": {"train": train}}]}]

    with_diagnostics = [{"step": 1, "diag/sigmoid_neg_margin": 0.5, "diag/grad_share_anchor": 0.7},
                        {"step": 2, "diag/sigmoid_neg_margin": 0.45}]
    assert plot_loss_curves(rows(with_diagnostics), tmp_path / "diag.png")
    assert plot_loss_curves(rows([]), tmp_path / "plain.png")
    # One panel per recorded diagnostic under the loss: two more panels, a taller figure.
    assert imread(tmp_path / "diag.png").shape[0] > 1.8 * imread(tmp_path / "plain.png").shape[0]
