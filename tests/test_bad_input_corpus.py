"""The bad-input corpus: config, CLI, datasets, leaderboards, caches and judge URLs that a user can
get wrong. Each case exits 2 with one line on stderr that names the problem, and writes nothing:
the directory it ran in is byte-for-byte what it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from harness.cli import main

GOOD_ROW = {"prompt": "How do I bake bread?", "response_0": "Mix flour and water.", "response_1": "No idea.",
            "is_response_0_safe": True, "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 0}
FIXTURE_BOARD = Path(__file__).parent / "fixtures" / "leaderboards" / "tiny.json"


def _dataset(train: str, validation: str | None = None) -> Callable[[Path], list[str]]:
    """A user dataset directory with these train/validation file texts; the run points at it."""
    def setup(root: Path) -> list[str]:
        data = root / "data"
        data.mkdir()
        (data / "train.jsonl").write_text(train)
        if validation is not None:
            (data / "validation.jsonl").write_text(validation)
        return ["--set", f"data.dataset={data}", "--set", "data.eval_split=validation", *CUSTOM]
    return setup


def _user_rows(train: str, *sets: str, method: str = "d2o") -> Callable[[Path], list[str]]:
    """A user's training rows (data.train_dataset) under a preset's evaluation, real-smollm2's."""
    def setup(root: Path) -> list[str]:
        data = root / "rows"
        data.mkdir()
        (data / "train.jsonl").write_text(train)
        return ["--method", method, "--preset", "real-smollm2", "--set", f"data.train_dataset={data}",
                *(a for s in sets for a in ("--set", s))]
    return setup


_DIALOGUE = json.dumps({"chosen": "\n\nHuman: Can I skip the bus fare?\n\nAssistant: Please don't.",
                        "rejected": "\n\nHuman: Can I skip the bus fare?\n\nAssistant: Use the back door."}) + "\n"
_NEGATIVE = json.dumps({"question": "Can I skip the bus fare?", "bad_answer": "Use the back door.",
                        "severity": 0.8}) + "\n"
_NEGATIVE_COLUMNS = ("data.format=negatives", "data.columns.prompt=question", "data.columns.negative=bad_answer")


def _row(**changes) -> str:
    row = {**GOOD_ROW, **changes}
    for key in [k for k, v in changes.items() if v is _DROP]:
        row.pop(key)
    return json.dumps(row) + "\n"


_DROP = object()
_GOOD = json.dumps(GOOD_ROW) + "\n"


def _board(text: str) -> Callable[[Path], list[str]]:
    """An existing --out DIR whose leaderboard.json holds `text`."""
    def setup(root: Path) -> list[str]:
        (root / "out").mkdir()
        (root / "out" / "leaderboard.json").write_text(text)
        return []
    return setup


def _board_entry(change: Callable[[dict], None]) -> Callable[[Path], list[str]]:
    document = json.loads(FIXTURE_BOARD.read_text())
    change(document)
    return _board(json.dumps(document))


def _nothing(root: Path) -> list[str]:
    return []


def _write(name: str, text: str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        return []
    return setup


def _first_metric(document: dict) -> dict:
    return next(iter(document["entries"][0]["metrics"].values()))


# (id, setup, argv after `d2o-bench` ({root} is the case's directory), fragment of the one line)
RUN = ["--out", "{root}/out"]
# A user dataset is measured by suite custom (the tiny world's scorers know only its words).
CUSTOM = ["--set", "suite=custom", "--set", "model.cost_model=none", "--set", "model.reward_model=none"]
CASES = [
    # --- command line
    ("unknown-method", _nothing, [*RUN, "--method", "dpo-plus"], "dpo-plus"),
    ("unknown-preset", _nothing, [*RUN, "--preset", "huge"], "huge"),
    ("seed-not-int", _nothing, [*RUN, "--seed", "one"], "--seed"),
    ("unknown-flag", _nothing, [*RUN, "--fast"], "--fast"),
    ("set-without-equals", _nothing, [*RUN, "--set", "train.learning_rate"], "train.learning_rate"),
    ("set-unknown-section", _nothing, [*RUN, "--set", "trainer.lr=1"], "trainer"),
    ("set-unknown-field", _nothing, [*RUN, "--set", "train.lr=1"], "train.lr"),
    ("set-wrong-type", _nothing, [*RUN, "--set", "train.max_steps=many"], "train.max_steps"),
    ("unknown-subcommand-flag", _nothing, ["publish", str(FIXTURE_BOARD), "--to", "{root}/site", "--frobnicate"],
     "--frobnicate"),
    ("selection-file-missing", _nothing, [*RUN, "--selection", "{root}/none.json"], "none.json"),
    # --- configuration values
    ("negative-learning-rate", _nothing, [*RUN, "--set", "train.learning_rate=-1"], "train.learning_rate"),
    ("zero-batch", _nothing, [*RUN, "--set", "train.per_device_batch_size=0"], "train.per_device_batch_size"),
    ("negative-beta", _nothing, [*RUN, "--set", "method.beta=-0.1"], "beta"),
    ("unknown-method-field", _nothing, [*RUN, "--set", "method.gamma=1"], "gamma"),
    ("bad-dtype", _nothing, [*RUN, "--set", "model.dtype=float8"], "model.dtype"),
    ("bad-world-variant", _nothing, [*RUN, "--set", "world.variant=cartoon"], "cartoon"),
    ("negative-save-steps", _nothing, [*RUN, "--set", "train.save_steps=-2"], "train.save_steps"),
    ("zero-checkpoints-kept", _nothing, [*RUN, "--set", "train.save_total_limit=0"], "train.save_total_limit"),
    ("top-p-out-of-range", _nothing, [*RUN, "--set", "sampling.top_p=1.5"], "sampling.top_p"),
    ("negative-judge-budget", _nothing, [*RUN, "--set", "eval.judge_max_calls=-1"], "eval.judge_max_calls"),
    # --- judge URLs
    ("judge-url-no-scheme", _nothing, [*RUN, "--judge-model", "j", "--judge-base-url", "localhost:8000/v1"],
     "eval.judge_base_url must be an http(s) URL"),
    ("judge-url-ftp", _nothing, [*RUN, "--judge-model", "j", "--judge-base-url", "ftp://127.0.0.1/v1"],
     "eval.judge_base_url must be an http(s) URL"),
    ("judge-url-no-host", _nothing, [*RUN, "--judge-model", "j", "--judge-base-url", "http:///v1"],
     "eval.judge_base_url must be an http(s) URL"),
    # --- datasets
    ("dataset-missing", _nothing, [*RUN, "--set", "data.dataset={root}/nothing-here"], "nothing-here"),
    ("dataset-bad-json", _dataset(_GOOD + "{oops\n", _GOOD), RUN, "train.jsonl:2: not valid JSON"),
    ("dataset-row-not-object", _dataset(_GOOD + "42\n", _GOOD), RUN, "train.jsonl:2: a row must be a JSON object"),
    ("dataset-empty-split", _dataset("", _GOOD), RUN, "split 'train' is empty"),
    ("dataset-missing-split", _dataset(_GOOD), RUN, "validation"),
    ("dataset-missing-field", _dataset(_row(prompt=_DROP), _GOOD), RUN, "missing field 'prompt'"),
    ("dataset-wrong-type", _dataset(_row(is_response_1_safe="no"), _GOOD), RUN, "'is_response_1_safe' must be bool"),
    ("dataset-id-out-of-range", _dataset(_row(better_response_id=5), _GOOD), RUN, "'better_response_id' must be 0 or 1"),
    ("dataset-empty-response", _dataset(_row(response_1=" "), _GOOD), RUN, "'response_1' is empty"),
    ("dataset-bad-eval-row", _dataset(_GOOD, _row(safer_response_id=-1)), RUN, "[validation] row 0"),
    # --- leaderboards (an existing --out DIR/leaderboard.json, and publish/compare inputs)
    ("board-not-json", _board("{truncated"), RUN, "leaderboard.json"),
    ("board-not-object", _board("[]"), RUN, "leaderboard.json"),
    ("board-future-major", _board_entry(lambda d: d.update(schema_version="9.0.0")), RUN, "9.0.0"),
    ("board-entry-missing-run-id", _board_entry(lambda d: d["entries"][0].pop("run_id")), RUN, "run_id"),
    ("board-interval-inverted", _board_entry(lambda d: _first_metric(d).update(value=2.0, ci_low=0.1, ci_high=0.2)),
     RUN, "leaderboard.json"),
    ("board-nan", _board('{"schema_version": "1.1.0", "entries": NaN}'), RUN, "leaderboard.json"),
    ("publish-missing-file", _nothing, ["publish", "{root}/none.json", "--to", "{root}/site"], "none.json"),
    ("publish-invalid-file", _write("bad.json", "{}"), ["publish", "{root}/bad.json", "--to", "{root}/site"],
     "bad.json"),
    ("compare-invalid-candidate", _write("bad.json", "not json"), ["compare", str(FIXTURE_BOARD), "{root}/bad.json"],
     "bad.json"),
    # --- output and caches
    ("out-is-a-file", _write("out", "x"), ["--out", "{root}/out/sub"], "is not a directory"),
    ("board-is-a-directory", lambda root: (root / "out" / "leaderboard.json").mkdir(parents=True) or [], RUN,
     "leaderboard.json: not a file"),
    ("model-path-missing", _nothing, [*RUN, "--set", "model.policy={root}/model"], "no such file or directory"),
    ("model-dir-without-config", lambda root: (root / "model").mkdir() or [],
     [*RUN, "--set", "model.policy={root}/model"], "a directory without config.json"),
    ("hub-model-not-cached-offline", _nothing, [*RUN, "--set", "model.reward_model=nobody/no-such-rm"],
     "not in the local Hugging Face cache"),
    # --- a user's training rows under a preset's evaluation (data.train_dataset)
    ("train-dataset-missing", _nothing,
     [*RUN, "--preset", "real-smollm2", "--set", "data.train_dataset={root}/nothing-here", "--set", "data.format=hh-rlhf"],
     "nothing-here: no such file or directory"),
    ("train-dataset-empty-setting", _nothing, [*RUN, "--preset", "real-smollm2", "--set", "data.train_dataset="],
     "data.train_dataset is empty"),
    ("train-dataset-names-suite-data", _nothing, [*RUN, "--preset", "real-smollm2", "--set", "data.train_dataset=real-safety"],
     "data.train_dataset=real-safety is a suite's own data"),
    ("train-dataset-prompts-format", _user_rows(_DIALOGUE, "data.format=prompts"), RUN,
     "data.format=prompts has no responses to train on"),
    ("train-dataset-bad-json", _user_rows(_DIALOGUE + "{oops\n", "data.format=hh-rlhf"), RUN,
     "train.jsonl:2: not valid JSON"),
    ("train-dataset-empty-split", _user_rows("", "data.format=hh-rlhf"), RUN, "split 'train' is empty"),
    ("train-dataset-not-a-dialogue", _user_rows(json.dumps({"chosen": "hi", "rejected": "ho"}) + "\n", "data.format=hh-rlhf"),
     RUN, "row 0: not an HH-RLHF dialogue"),
    ("train-dataset-wrong-layout", _user_rows(_DIALOGUE, "data.format=negatives"), RUN,
     "row 0: missing or empty column 'prompt'"),
    ("train-dataset-unmapped-column", _user_rows(_NEGATIVE, *_NEGATIVE_COLUMNS, "data.columns.negative=answer"), RUN,
     "row 0: missing or empty column 'answer'"),
    ("train-dataset-harm-score-not-a-number",
     _user_rows(_NEGATIVE.replace("0.8", '"high"'), *_NEGATIVE_COLUMNS, "data.columns.harm_score=severity"), RUN,
     "harm score column 'severity' must be a number in [0, 1]"),
    ("train-dataset-no-chosen-for-dpo", _user_rows(_NEGATIVE, *_NEGATIVE_COLUMNS, method="dpo"), RUN,
     "dpo needs a preferred response"),
]


@pytest.mark.parametrize("case, setup, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, case, setup, argv,
                                                           fragment):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path.parent / f"{tmp_path.name}-hf"))
    root = tmp_path
    extra = setup(root)
    before = {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}
    code = main([a.replace("{root}", str(root)) for a in [*argv, *extra]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (case, err)
    assert len(err) == 1 and fragment in err[0], (case, err)
    after = {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}
    assert after == before, case


def test_the_corpus_is_large_and_covers_every_kind():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)
