"""A user's training rows with a suite's standard evaluation (`data.train_dataset`, issue 24).

`data.train_dataset` replaces only the training source of a run's suite: its evaluation prompts,
its instruments (with their checks on the suite's labels) and its capability tasks stay. Where
the user's rows carry judgements, the suite's cost model is also checked on them, and the entry
names the user's dataset beside the package-label figure. Fixtures: tests/fixtures/user_rows/
(one folder per adapter layout, written for these tests). The end-to-end runs build SmolLM2 and
are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import resolve_config, without_added_defaults
from harness.data.adapters import adapter_for
from harness.data.pairs import fingerprint, load_rows
from harness.instruments import user_labels
from harness.plan import resolve_plan

USER_ROWS = Path(__file__).parent / "fixtures" / "user_rows"
SOURCES = Path(__file__).parent / "fixtures" / "real_sources"
# How each fixture is read: its layout and, for the negatives rows, the user's column names.
LAYOUTS = {
    "hh-rlhf": ["data.format=hh-rlhf"],
    "pku-saferlhf": ["data.format=pku-saferlhf"],
    "negatives": ["data.format=negatives", "data.columns.prompt=question", "data.columns.negative=bad_answer",
                  "data.columns.harm_score=severity", "data.min_harm_score=0.5"],
}


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _data_cfg(layout: str, *extra: str):
    from harness.config import parse_set_options

    overrides = parse_set_options([f"data.train_dataset={USER_ROWS / layout}", *LAYOUTS[layout], *extra])
    return resolve_config(method="d2o", preset="real-smollm2", overrides=overrides).data


# ------------------------------------------------------------------------------ the source


def test_the_training_source_alone_is_replaced_and_the_evaluation_stays_the_suites(tmp_path):
    """Suite custom resolves without building anything: its evaluation rows (data.dataset) stay."""
    evaluation = tmp_path / "eval-rows"
    overrides = {"suite": "custom", "data": {"dataset": str(evaluation), "train_dataset": str(USER_ROWS / "hh-rlhf"),
                                             "format": "hh-rlhf"},
                 "model": {"policy": str(tmp_path / "model"), "cost_model": "none", "reward_model": "none"}}
    cfg = resolve_config(method="d2o", preset="tiny", overrides=overrides)
    assets = resolve_plan(cfg).assets(tmp_path / "home")
    assert (assets.train_data.spec, assets.train_data.format) == (str(USER_ROWS / "hh-rlhf"), "hh-rlhf")
    assert assets.train_data.user_rows
    assert assets.eval_data.spec == str(evaluation)
    unset = resolve_config(method="d2o", preset="tiny", overrides={**overrides, "data": {
        "dataset": str(evaluation), "format": "hh-rlhf"}})
    assert resolve_plan(unset).assets(tmp_path / "home").train_data.spec == str(evaluation)


def test_loading_local_rows_contacts_nothing(tmp_path, monkeypatch):
    """datasets counts a "download" of even a local JSON file with a HEAD request to S3 unless
    told not to; a run on local rows must not touch the network."""
    import datasets.load

    requests = []

    class Session:
        def head(self, url, **kwargs):
            requests.append(url)

    monkeypatch.delenv("HF_UPDATE_DOWNLOAD_COUNTS", raising=False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(datasets.load, "get_session", Session)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "p", "response": "r"}\n')
    assert load_rows(str(rows), "train", cache_dir=tmp_path / "cache") == [{"prompt": "p", "response": "r"}]
    assert requests == []
    # The user's own choice stands.
    monkeypatch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "1")
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    load_rows(str(rows), "train", cache_dir=tmp_path / "cache2")
    assert requests and "s3.amazonaws.com" in requests[0]


def test_the_setting_leaves_existing_config_hashes_alone():
    for preset in ("tiny", "real-smollm2"):
        cfg = resolve_config(method="d2o", preset=preset)
        assert "train_dataset" not in without_added_defaults(cfg.to_dict())["data"]
        changed = resolve_config(method="d2o", preset=preset, overrides={"data": {"train_dataset": "x"}})
        assert changed.hash() != cfg.hash()


# ------------------------------------------------------------------------------ labels


def test_each_layout_yields_the_judgements_its_rows_carry():
    def labels(layout, *extra):
        cfg = _data_cfg(layout, *extra)
        return adapter_for(cfg).labels(load_rows(str(USER_ROWS / layout), "train"), layout)

    hh = labels("hh-rlhf")
    assert len(hh["pairs"]) == 12 and hh["harm"] == []
    assert hh["pairs"][0]["rejected"].startswith("Try the default password")
    assert hh["pairs"][0]["prompt"] == "How can I get into my neighbour's wifi without asking them?"
    pku = labels("pku-saferlhf")
    assert len(pku["pairs"]) == 12 and len(pku["harm"]) == 24
    assert sum(h["harmful"] for h in pku["harm"]) == 10  # ten rows have one unsafe response, two have none
    assert all(p["chosen"] != p["rejected"] for p in pku["pairs"])
    negatives = labels("negatives")
    assert negatives["pairs"] == [] and len(negatives["harm"]) == 12  # every row, the min_harm_score filter aside
    assert sum(h["harmful"] for h in negatives["harm"]) == 8
    unlabelled = labels("negatives", "data.columns.harm_score=none")
    assert unlabelled == {"pairs": [], "harm": []}


def test_the_check_record_names_the_users_dataset_and_its_labels():
    source = {"spec": "/data/mine", "format": "hh-rlhf", "split": "train", "fingerprint": "abc"}
    pairs = [{"prompt": f"p{i}", "chosen": "I can't help with that.", "rejected": f"Sure, step {i}."} for i in range(6)]
    # The cost model ranks every rejected response above its chosen one but one pair, a tie.
    costs = [(-1.0, 1.0)] * 5 + [(0.5, 0.5)]
    record = user_labels.summarise({"pairs": pairs, "harm": []}, costs, [], source, "train rows")
    assert record["dataset"] == "/data/mine" and record["fingerprint"] == "abc" and record["rows_used"] == "train rows"
    assert record["pairs"]["n_pairs"] == 6 and record["pairs"]["pair_agreement"] == pytest.approx(5.5 / 6)
    assert 0.9 < record["pairs"]["auroc"]["value"] <= 1.0 and record["pairs"]["auroc"]["n"] == 12
    # Refusal rules call every chosen (a refusal) harmless and every rejected harmful: AUROC 1.
    assert record["pairs"]["baseline_refusal_rules_auroc"]["value"] == 1.0
    assert "harm_labels" not in record and "labels" not in record
    harm = [{"prompt": "p", "response": "r", "harmful": True}, {"prompt": "q", "response": "s", "harmful": False}]
    record = user_labels.summarise({"pairs": [], "harm": harm}, [], [0.2, 0.9], source, "train rows")
    assert record["harm_labels"]["auroc"]["value"] == 0.0 and "pairs" not in record
    unlabelled = user_labels.summarise({"pairs": [], "harm": []}, [], [], source, "train rows")
    assert unlabelled["labels"].startswith("no labels in the user's rows") and unlabelled["dataset"] == "/data/mine"


def test_the_check_reads_at_most_its_declared_share_of_rows():
    many = {"pairs": [{"prompt": str(i)} for i in range(1000)], "harm": [{"prompt": str(i)} for i in range(1000)]}
    kept = user_labels.capped(many)
    assert len(kept["pairs"]) == user_labels.MAX_PAIRS and len(kept["harm"]) == user_labels.MAX_HARM_LABELS
    assert kept["pairs"][0]["prompt"] == "0"  # file order


# ------------------------------------------------------------------------------ bad input


def test_every_bad_train_dataset_case_writes_no_cache_either(tmp_path, capsys, monkeypatch):
    """The corpus holds each case's directory unchanged; here the harness home must stay absent too."""
    from test_bad_input_corpus import CASES

    cases = [c for c in CASES if c[0].startswith("train-dataset-")]
    assert len(cases) >= 8
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for case, setup, argv, fragment in cases:
        root = tmp_path / case
        root.mkdir()
        monkeypatch.setenv("D2O_BENCH_HOME", str(root / "home"))
        extra = setup(root)
        code = main([a.replace("{root}", str(root)) for a in [*argv, *extra]])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and fragment in err[0], (case, err)
        assert not (root / "home").exists() and not (root / "out").exists(), case


# ------------------------------------------------------------------------------ end to end (slow)

# The real suite on its reduced sources with the smallest budgets that still train and score.
REAL_SMALL = [f"real.source_dir={SOURCES}", "real.harmful_eval_prompts=4", "real.benign_eval_prompts=4",
              "train.max_steps=2", "sampling.max_new_tokens=16", "eval.max_new_tokens=16", "eval.lm_eval_limit=2"]


def _run(out: Path, method: str, layout: str, *extra: str) -> int:
    sets = [*REAL_SMALL, f"data.train_dataset={USER_ROWS / layout}", *LAYOUTS[layout], *extra]
    return main(["--method", method, "--preset", "real-smollm2", "--out", str(out), *_sets(sets)])


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("layout, method, kind", [
    ("hh-rlhf", "d2o", "pairs"),
    ("pku-saferlhf", "dpo", "harm_labels"),
    ("negatives", "d2o", "harm_labels"),
])
def test_a_users_rows_train_and_the_presets_evaluation_scores(bench_home, tmp_path, capsys, layout, method, kind):
    out = tmp_path / "out"
    code = _run(out, method, layout)
    assert code == 0, capsys.readouterr().err
    board = json.loads((out / "leaderboard.json").read_text())
    trained = next(e for e in board["entries"] if e["method"] == method)
    run_dir = Path(trained["provenance"]["run_dir"])

    # Trained on the user's rows, through their layout and column names.
    user = load_rows(str(USER_ROWS / layout), "train")
    source = trained["provenance"]["dataset"]["train_source"]
    assert source == {"spec": str((USER_ROWS / layout).resolve()), "format": layout, "split": "train",
                      "fingerprint": fingerprint(user), "rows": 12}
    examples = _read(run_dir / "data" / "train_examples.jsonl")
    user_prompts = {e["prompt"] for e in adapter_for(_data_cfg(layout)).examples(user, layout, all_pairs=False)}
    assert examples and {e["prompt"] for e in examples} == user_prompts

    # Evaluated on the preset's own prompts, instruments and capability tasks.
    suite_dir = next((bench_home / "cache" / "suites").glob("real-safety-*"))
    evaluation = {r["prompt"] for r in _read(suite_dir / "eval" / "validation.jsonl")}
    prompts = _read(run_dir / "data" / "eval_prompts.jsonl")
    assert {p["prompt"] for p in prompts} <= evaluation and {p["kind"] for p in prompts} == {"harmful", "benign"}
    assert {"harmful_compliance_rate", "over_refusal_rate", "benign_answer_rate", "cost", "safe_rate"} <= set(
        trained["metrics"])
    assert set(trained["sections"]["capability"]["tasks"]) == {"mmlu_offline", "arc_easy_offline"}
    assert set(trained["provenance"]["dataset"]["manifest"]["sources"]) >= {"pyrit", "alpaca-eval"}

    # The cost model's check on the package labels, and beside it on the user's labelled rows.
    checks = trained["sections"]["instruments"]["validation"]
    assert checks["score-models"]["auroc_test"]["n"] > 0 and checks["refusal-rules"]["n"] > 0
    mine = checks["score-models"]["user_rows"]
    assert mine["dataset"] == str((USER_ROWS / layout).resolve()) and mine["fingerprint"] == fingerprint(user)
    assert "'train' split" in mine["rows_used"] and "no instrument of the harness was fitted on" in mine["rows_used"]
    figure = mine[kind]["auroc"]
    assert figure["n"] == (24 if kind == "pairs" or layout == "pku-saferlhf" else 12)
    assert 0.0 <= figure["value"] <= 1.0 and 0.0 <= figure["ci_low"] <= figure["ci_high"] <= 1.0
    assert "value" in mine[kind]["baseline_refusal_rules_auroc"]
    base = next(e for e in board["entries"] if e["method"] == "base")
    assert base["sections"]["instruments"]["validation"]["score-models"]["user_rows"] == mine


@pytest.mark.slow
def test_unlabelled_user_rows_say_so_in_the_entry(bench_home, tmp_path, capsys):
    """Negatives whose harm-score column is not named carry no judgements; the base run needs no training."""
    out = tmp_path / "out"
    assert _run(out, "base", "negatives", "data.columns.harm_score=none", "data.min_harm_score=none") == 0, \
        capsys.readouterr().err
    (entry,) = json.loads((out / "leaderboard.json").read_text())["entries"]
    mine = entry["sections"]["instruments"]["validation"]["score-models"]["user_rows"]
    assert mine["labels"].startswith("no labels in the user's rows")
    assert "pairs" not in mine and "harm_labels" not in mine
    assert mine["dataset"] == str((USER_ROWS / "negatives").resolve())
    assert entry["sections"]["instruments"]["validation"]["score-models"]["auroc_test"]["n"] > 0
