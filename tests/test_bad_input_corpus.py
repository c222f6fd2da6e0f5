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
# A published board, with per-task data (per_cluster) in every metric.
PUBLISHED_BOARD = Path(__file__).parent.parent / "leaderboards" / "tiny" / "leaderboard.json"


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


def _board_entry(change: Callable[[dict], None], source: Path = FIXTURE_BOARD) -> Callable[[Path], list[str]]:
    document = json.loads(source.read_text())
    change(document)
    return _board(json.dumps(document))


def _board_text(change: Callable[[str], str]) -> Callable[[Path], list[str]]:
    """A board written as text (what json.dumps cannot write: 1e400)."""
    return _board(change(FIXTURE_BOARD.read_text()))


def _overflow(text: str) -> str:
    # The fixture's first metric value, written as a number no float holds.
    return text.replace('"value": 0.1,', '"value": 1e400,', 1)


def _duplicate_run(document: dict) -> None:
    """The first entry again under a new run_id: one run that publish would pool as two seeds."""
    twin = json.loads(json.dumps(document["entries"][0]))
    twin["run_id"] += "-again"
    document["entries"].append(twin)


def _rebuilt_world(document: dict) -> None:
    """Only the first entry, as another seed on a world of the same settings rebuilt with other
    weights (another machine): publishing it beside the fixture would pool two base policies."""
    rebuilt = json.loads(json.dumps(document["entries"][0]))
    rebuilt["run_id"] += "-rebuilt"
    rebuilt["seed"] = 9
    rebuilt["provenance"]["base_model"]["sha256"] = "2" * 64
    document["entries"] = [rebuilt]


def _summary_disagrees(document: dict) -> None:
    """A metric whose value (and interval, shifted with it) is not what its per_cluster data give."""
    record = document["entries"][0]["metrics"]["cost"]
    for field in ("value", "ci_low", "ci_high"):
        record[field] += 0.5


def _nothing(root: Path) -> list[str]:
    return []


def _dataset_bytes(train: bytes) -> Callable[[Path], list[str]]:
    """A user dataset whose train file holds these bytes (not necessarily UTF-8)."""
    def setup(root: Path) -> list[str]:
        extra = _dataset(_GOOD, _GOOD)(root)
        (root / "data" / "train.jsonl").write_bytes(train)
        return extra
    return setup


def _file_at_run_directory(root: Path) -> list[str]:
    """A file where the default run's directory goes, under an existing --out."""
    from harness.config import resolve_config
    from harness.pipeline import run_id_for

    (root / "out").mkdir()
    (root / "out" / run_id_for(resolve_config(method="d2o", preset="tiny"))).write_text("mine")
    return []


def _write(name: str, text: str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
        return []
    return setup


def _link(name: str, points_to: str, *, make_dir: str | None = None) -> Callable[[Path], list[str]]:
    """`name` (under the case's directory) as a symbolic link to `points_to` (relative to the
    link), with the folder `make_dir` made first: a loop, a link to a folder, a link into nowhere.
    Before issue 27 a run read a looped board as missing, said OK and lost itself at the
    leaderboard stage; publish died on it with a raw OSError after writing its plots."""
    def setup(root: Path) -> list[str]:
        if make_dir is not None:
            (root / make_dir).mkdir(parents=True, exist_ok=True)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(points_to)
        return []
    return setup


def _first_metric(document: dict) -> dict:
    return next(iter(document["entries"][0]["metrics"].values()))


# A credential planted in inputs: no error line may repeat it.
SECRET = "sekrit-7f3a9c1e"
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
    # Each of these used to be found only after stages had run (most as a raw exception), leaving
    # a run directory behind; --dry-run called some of them OK.
    ("seed-negative", _nothing, [*RUN, "--seed", "-1"], "seed must be in 0..4294967295"),
    ("seed-too-large", _nothing, [*RUN, "--seed", str(2**32)], "seed must be in 0..4294967295"),
    ("world-seed-too-large", _nothing, [*RUN, "--set", f"world.seed={2**40}"], "world.seed must be in"),
    ("learning-rate-huge", _nothing, [*RUN, "--set", "train.learning_rate=1e30"], "train.learning_rate must be in (0, 1]"),
    ("learning-rate-huge-dry-run", _nothing, [*RUN, "--dry-run", "--set", "train.learning_rate=1e30"],
     "train.learning_rate must be in (0, 1]"),
    ("unknown-scheduler", _nothing, [*RUN, "--set", "train.lr_scheduler=sawtooth"], "train.lr_scheduler 'sawtooth'"),
    ("unknown-lm-eval-task", _nothing, [*RUN, "--set", "eval.lm_eval_tasks=[tiny_world_knowledge,no_such_task_xyz]"],
     "eval.lm_eval_tasks: unknown lm-eval task(s) no_such_task_xyz"),
    ("unknown-lm-eval-task-dry-run", _nothing, [*RUN, "--dry-run", "--set", "eval.lm_eval_tasks=[no_such_task_xyz]"],
     "unknown lm-eval task(s) no_such_task_xyz"),
    ("zero-eval-batch", _nothing, [*RUN, "--set", "eval.batch_size=0"], "eval.batch_size must be >= 1"),
    ("zero-max-length", _nothing, [*RUN, "--set", "train.max_length=0"], "train.max_length must be >= 2"),
    ("zero-sampling-batch", _nothing, [*RUN, "--set", "sampling.batch_size=0"], "sampling.batch_size must be >= 1"),
    ("zero-eval-prompts", _nothing, [*RUN, "--set", "data.max_eval_prompts=0"], "data.max_eval_prompts must be >= 1"),
    ("lora-negative-rank", _nothing, [*RUN, "--set", "train.lora.rank=-1"], "train.lora.rank"),
    ("lora-zero-alpha", _nothing, [*RUN, "--set", "train.lora.rank=4", "--set", "train.lora.alpha=0"],
     "train.lora.alpha"),
    ("lora-dropout-one", _nothing, [*RUN, "--set", "train.lora.rank=4", "--set", "train.lora.dropout=1"],
     "train.lora.dropout"),
    ("lora-no-targets", _nothing, [*RUN, "--set", "train.lora.rank=4", "--set", "train.lora.target_modules=[]"],
     "train.lora.target_modules"),
    ("lora-target-names-no-module", _nothing,
     [*RUN, "--set", "train.lora.rank=4", "--set", "train.lora.target_modules=[q_proj,qkv_proj]"],
     "qkv_proj names no module"),
    ("qlora-without-lora", _nothing, [*RUN, "--set", "train.lora.quantize_4bit=true"], "train.lora.rank > 0"),
    ("report-to-unknown-tracker", _nothing, [*RUN, "--set", "train.report_to=[slack]"], "train.report_to"),
    ("report-to-none-beside-a-tracker", _nothing, [*RUN, "--set", "train.report_to=[none,tensorboard]"],
     "train.report_to"),
    # --- judge URLs
    ("judge-url-no-scheme", _nothing, [*RUN, "--judge-model", "j", "--judge-base-url", "localhost:8000/v1"],
     "eval.judge_base_url must be an http(s) URL"),
    ("judge-url-ftp", _nothing, [*RUN, "--judge-model", "j", "--judge-base-url", "ftp://127.0.0.1/v1"],
     "eval.judge_base_url must be an http(s) URL"),
    ("judge-url-no-host", _nothing, [*RUN, "--judge-model", "j", "--judge-base-url", "http:///v1"],
     "eval.judge_base_url must be an http(s) URL"),
    # A credential in a URL would be recorded with the URL (run.json, entries, log lines); the
    # refusal itself must not print it either (the test below checks no line holds SECRET).
    ("judge-url-credentials", _nothing,
     [*RUN, "--judge-model", "j", "--judge-base-url", f"http://user:{SECRET}@127.0.0.1:9/v1"],
     "eval.judge_base_url http://***@127.0.0.1:9/v1 carries a user name or password"),
    ("sampling-url-credentials", _nothing,
     [*RUN, "--set", "sampling.backend=openai", "--set", f"sampling.base_url=http://{SECRET}@127.0.0.1:9/v1"],
     "sampling.base_url http://***@127.0.0.1:9/v1 carries a user name or password"),
    # --- datasets
    ("dataset-missing", _nothing, [*RUN, "--set", "data.dataset={root}/nothing-here"], "nothing-here"),
    ("dataset-bad-json", _dataset(_GOOD + "{oops\n", _GOOD), RUN, "train.jsonl:2: not valid JSON"),
    ("dataset-row-not-object", _dataset(_GOOD + "42\n", _GOOD), RUN, "train.jsonl:2: a row must be a JSON object"),
    ("dataset-empty-split", _dataset("", _GOOD), RUN, "split 'train' is empty"),
    ("dataset-missing-split", _dataset(_GOOD), RUN, "validation"),
    ("dataset-invalid-utf8", _dataset_bytes(_GOOD.encode() + b'{"prompt": "\xff\xfe"}\n'), RUN,
     "train.jsonl:2: not UTF-8 text (byte 0xff at column 13)"),
    ("dataset-missing-field", _dataset(_row(prompt=_DROP), _GOOD), RUN, "missing field 'prompt'"),
    ("dataset-wrong-type", _dataset(_row(is_response_1_safe="no"), _GOOD), RUN, "'is_response_1_safe' must be bool"),
    ("dataset-id-out-of-range", _dataset(_row(better_response_id=5), _GOOD), RUN, "'better_response_id' must be 0 or 1"),
    ("dataset-empty-response", _dataset(_row(response_1=" "), _GOOD), RUN, "'response_1' is empty"),
    ("dataset-bad-eval-row", _dataset(_GOOD, _row(safer_response_id=-1)), RUN, "[validation] row 0"),
    # Every row's responses are safe, so data.only_unsafe_negatives leaves no negative to train on.
    ("dataset-filter-removes-every-row", _dataset(_GOOD * 3, _GOOD), [*RUN, "--set", "data.group_column=none"],
     "no training pairs left after the data filters (data.only_unsafe_negatives=True"),
    ("dataset-filter-removes-every-row-dry-run", _dataset(_GOOD * 3, _GOOD),
     [*RUN, "--dry-run", "--set", "data.group_column=none"],
     "no training pairs left after the data filters"),
    ("dataset-bad-row-dry-run", _dataset(_GOOD + "{oops\n", _GOOD), [*RUN, "--dry-run"],
     "train.jsonl:2: not valid JSON"),
    ("dataset-harm-filter-removes-every-row",
     _dataset('{"prompt": "p", "negative": "n", "harm_score": 0.2}\n', '{"prompt": "q", "negative": "m"}\n'),
     [*RUN, "--set", "data.format=negatives", "--set", "data.min_harm_score=0.5", "--set", "data.group_column=none"],
     "no training pairs left after the data filters"),
    # One file has no splits: it would be the training and the evaluation data at once.
    ("dataset-single-file", _write("rows.jsonl", _GOOD * 3),
     [*RUN, "--set", "data.dataset={root}/rows.jsonl", *CUSTOM], "is a single file, so it has no held-out split"),
    ("dataset-single-file-dry-run", _write("rows.jsonl", _GOOD * 3),
     [*RUN, "--dry-run", "--set", "data.dataset={root}/rows.jsonl", *CUSTOM], "data.eval_dataset=FILE"),
    ("dataset-eval-is-train", _write("rows.jsonl", _GOOD * 3),
     [*RUN, "--set", "data.dataset={root}/rows.jsonl", "--set", "data.eval_dataset={root}/rows.jsonl", *CUSTOM],
     "data.eval_dataset {root}/rows.jsonl is data.dataset itself"),
    ("dataset-eval-missing", _write("rows.jsonl", _GOOD * 3),
     [*RUN, "--set", "data.dataset={root}/rows.jsonl", "--set", "data.eval_dataset={root}/none.jsonl", *CUSTOM],
     "data.eval_dataset {root}/none.jsonl: no such file or directory"),
    ("dataset-eval-bad-row", lambda root: _write("rows.jsonl", _GOOD)(root) + _write("held.jsonl", "[1]\n")(root),
     [*RUN, "--set", "data.dataset={root}/rows.jsonl", "--set", "data.eval_dataset={root}/held.jsonl", *CUSTOM],
     "held.jsonl:1: a row must be a JSON object"),
    ("held-out-share-too-small", _write("rows.jsonl", _row(is_response_1_safe=False)),
     [*RUN, "--set", "data.dataset={root}/rows.jsonl", "--set", "data.held_out_share=0.01",
      "--set", "data.group_column=none", *CUSTOM], "data.held_out_share=0.01 leaves no evaluation rows out of 1"),
    ("held-out-share-out-of-range", _nothing, [*RUN, "--set", "data.held_out_share=1.5", *CUSTOM],
     "data.held_out_share must be in (0, 1)"),
    ("held-out-share-and-eval-dataset", _nothing,
     [*RUN, "--set", "data.held_out_share=0.2", "--set", "data.eval_dataset=x.jsonl", *CUSTOM],
     "data.held_out_share and data.eval_dataset both name the evaluation data"),
    ("held-out-share-on-a-folder", _dataset(_GOOD, _GOOD), [*RUN, "--set", "data.held_out_share=0.2"],
     "data.held_out_share splits a dataset without splits"),
    ("eval-dataset-outside-custom", _nothing, [*RUN, "--set", "data.eval_dataset=x.jsonl"],
     "data.eval_dataset applies to suite custom only"),
    # --- leaderboards (an existing --out DIR/leaderboard.json, and publish/compare inputs)
    ("board-not-json", _board("{truncated"), RUN, "leaderboard.json"),
    ("board-not-object", _board("[]"), RUN, "leaderboard.json"),
    ("board-future-major", _board_entry(lambda d: d.update(schema_version="9.0.0")), RUN, "9.0.0"),
    ("board-entry-missing-run-id", _board_entry(lambda d: d["entries"][0].pop("run_id")), RUN, "run_id"),
    ("board-interval-inverted", _board_entry(lambda d: _first_metric(d).update(value=2.0, ci_low=0.1, ci_high=0.2)),
     RUN, "leaderboard.json"),
    ("board-nan", _board('{"schema_version": "1.1.0", "entries": NaN}'), RUN, "leaderboard.json"),
    ("board-overflow", _board_text(_overflow), RUN, "a number too large for a float"),
    ("publish-overflow", _board_text(_overflow), ["publish", "{root}/out/leaderboard.json", "--to", "{root}/site"],
     "a number too large for a float"),
    ("compare-overflow", _board_text(_overflow), ["compare", str(FIXTURE_BOARD), "{root}/out/leaderboard.json"],
     "a number too large for a float"),
    ("board-deeply-nested", _board("[" * 100_000 + "]" * 100_000), RUN, "nested too deeply"),
    ("board-duplicate-run", _board_entry(_duplicate_run), RUN, "is the same run as entries[0]"),
    ("publish-duplicate-run", _board_entry(_duplicate_run),
     ["publish", "{root}/out/leaderboard.json", "--to", "{root}/site"], "is the same run as entries[0]"),
    ("compare-duplicate-run", _board_entry(_duplicate_run),
     ["compare", str(FIXTURE_BOARD), "{root}/out/leaderboard.json"], "is the same run as entries[0]"),
    ("publish-world-built-twice", _board_entry(_rebuilt_world),
     ["publish", str(FIXTURE_BOARD), "{root}/out/leaderboard.json", "--to", "{root}/site"],
     "built twice with different weights"),
    ("publish-summary-disagrees", _board_entry(_summary_disagrees, PUBLISHED_BOARD),
     ["publish", "{root}/out/leaderboard.json", "--to", "{root}/site"], "disagrees with its per-task data"),
    ("compare-summary-disagrees", _board_entry(_summary_disagrees, PUBLISHED_BOARD),
     ["compare", str(PUBLISHED_BOARD), "{root}/out/leaderboard.json"], "disagrees with its per-task data"),
    ("publish-missing-file", _nothing, ["publish", "{root}/none.json", "--to", "{root}/site"], "none.json"),
    ("publish-invalid-file", _write("bad.json", "{}"), ["publish", "{root}/bad.json", "--to", "{root}/site"],
     "bad.json"),
    ("compare-invalid-candidate", _write("bad.json", "not json"), ["compare", str(FIXTURE_BOARD), "{root}/bad.json"],
     "bad.json"),
    # --- output and caches
    ("out-path-too-long", _nothing, ["--out", "{root}/" + "a" * 5000], "unusable path (File name too long)"),
    ("run-directory-is-a-file", _file_at_run_directory, RUN, "a file is where this run's directory goes"),
    ("compare-json-is-a-folder", _nothing, ["compare", str(FIXTURE_BOARD), str(FIXTURE_BOARD), "--json", "{root}"],
     "--json {root}: is a directory"),
    ("out-is-a-file", _write("out", "x"), ["--out", "{root}/out/sub"], "is not a directory"),
    ("board-is-a-directory", lambda root: (root / "out" / "leaderboard.json").mkdir(parents=True) or [], RUN,
     "leaderboard.json: not a file"),
    # --- written files that are symbolic links no write can go through (issue 27); a link to a
    # file is written where it points (tests/test_write_faults.py)
    ("board-link-loop", _link("out/leaderboard.json", "leaderboard.json"), RUN, "leaderboard.json: a symbolic link loop"),
    ("board-link-to-a-folder", _link("out/leaderboard.json", "../boards", make_dir="boards"), RUN,
     "leaderboard.json: a symbolic link to the directory"),
    ("board-link-into-nowhere", _link("out/leaderboard.json", "../gone/leaderboard.json"), RUN,
     "whose folder does not exist"),
    ("board-link-loop-dry-run", _link("out/leaderboard.json", "leaderboard.json"), [*RUN, "--dry-run"],
     "leaderboard.json: a symbolic link loop"),
    ("publish-output-link-loop", _link("site/index.html", "index.html"),
     ["publish", str(FIXTURE_BOARD), "--to", "{root}/site"], "index.html: a symbolic link loop"),
    ("publish-output-link-to-a-folder", _link("site/leaderboard.md", "../pages", make_dir="pages"),
     ["publish", str(FIXTURE_BOARD), "--to", "{root}/site"], "leaderboard.md: a symbolic link to the directory"),
    ("compare-json-link-loop", _link("verdict.json", "verdict.json"),
     ["compare", str(FIXTURE_BOARD), str(FIXTURE_BOARD), "--json", "{root}/verdict.json"], "a symbolic link loop"),
    ("compare-json-link-into-nowhere", _link("verdict.json", "gone/verdict.json"),
     ["compare", str(FIXTURE_BOARD), str(FIXTURE_BOARD), "--json", "{root}/verdict.json"],
     "whose folder does not exist"),
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
    # --- Hub revisions and dataset folders (harness/hub_pins.py)
    ("policy-revision-on-embedded-model", _nothing, [*RUN, "--set", "model.policy_revision=abc123"],
     "model.policy=tiny-world is not a Hub id"),
    ("reward-revision-not-a-revision", _nothing, [*RUN, "--preset", "paper", "--set", "model.reward_model_revision=a b"],
     "'a b' is not a revision"),
    ("cost-revision-on-embedded-model", _nothing, [*RUN, "--set", "model.cost_model_revision=main"],
     "model.cost_model=tiny-world is not a Hub id"),
    ("one-repository-two-revisions", _nothing,
     [*RUN, "--preset", "paper", "--set", "model.cost_model=PKU-Alignment/beaver-7b-v1.0-reward",
      "--set", "model.cost_model_revision=main"], "pinned at two revisions"),
    ("data-revision-on-embedded-dataset", _nothing, [*RUN, "--set", "data.revision=main"],
     "data.dataset=tiny-world is not a Hub id"),
    ("data-revision-with-dots", _nothing, [*RUN, "--preset", "paper", "--set", "data.revision=v0..main"],
     "is not a revision"),
    ("data-dir-escapes-the-repository", _nothing, [*RUN, "--preset", "paper", "--set", "data.data_dir=../x"],
     "must be a relative folder"),
    ("data-dir-absolute", _nothing, [*RUN, "--preset", "paper", "--set", "data.data_dir=/etc"],
     "must be a relative folder"),
    ("data-dir-on-a-local-dataset", _dataset(_GOOD, _GOOD), [*RUN, "--set", "data.data_dir=sub"],
     "data.data_dir selects a folder of a Hub dataset"),
]


@pytest.mark.parametrize("case, setup, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, case, setup, argv,
                                                           fragment):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path.parent / f"{tmp_path.name}-hf"))
    monkeypatch.setenv("D2O_BENCH_HOME", str(tmp_path.parent / f"{tmp_path.name}-home"))
    root = tmp_path
    extra = setup(root)
    before = {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}
    code = main([a.replace("{root}", str(root)) for a in [*argv, *extra]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (case, err)
    fragment = fragment.replace("{root}", str(root))
    assert len(err) == 1 and fragment in err[0], (case, err)
    assert SECRET not in err[0], (case, err)
    after = {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}
    assert after == before, case
    # Nor in any cache (HF_HOME, $D2O_BENCH_HOME): rows read and refused once left an Arrow copy
    # under HF_HOME.
    for cache in (tmp_path.parent / f"{tmp_path.name}-hf", tmp_path.parent / f"{tmp_path.name}-home"):
        assert not [p for p in cache.rglob("*") if p.is_file()], (case, cache)


def test_the_corpus_is_large_and_covers_every_kind():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


def test_a_single_file_with_a_named_evaluation_source_is_accepted_and_evaluated_on_it(tmp_path, capsys, monkeypatch):
    """The way out of `dataset-single-file`: data.eval_dataset names held-out prompts, the dry run
    says OK, and the run's evaluation rows come from that file, its training rows from the other."""
    from harness.config import parse_set_options, resolve_config
    from harness.suites import get_suite

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "rows.jsonl").write_text(_row(is_response_1_safe=False) * 3)  # a negative to train on
    (tmp_path / "held.jsonl").write_text(_row(prompt="How do I plant a tree?"))
    sets = [f"data.dataset={tmp_path}/rows.jsonl", f"data.eval_dataset={tmp_path}/held.jsonl", "suite=custom",
            "model.cost_model=none", "model.reward_model=none", "data.group_column=none"]
    code = main(["--dry-run", "--out", str(tmp_path / "out"), *(a for s in sets for a in ("--set", s))])
    assert code == 0, capsys.readouterr().err
    cfg = resolve_config(method="d2o", preset="tiny", overrides=parse_set_options([*sets, "model.policy=some/model"]))
    assets = get_suite("custom").resolve(cfg, tmp_path / "home")
    assert assets.train_data.spec == f"{tmp_path}/rows.jsonl" and assets.eval_data.spec == f"{tmp_path}/held.jsonl"
    unset = resolve_config(method="d2o", preset="tiny")
    assert unset.hash() == resolve_config(method="d2o", preset="tiny",
                                          overrides=parse_set_options(["data.eval_dataset=none"])).hash()


def test_json_lines_split_only_at_newlines(tmp_path, capsys, monkeypatch):
    """U+2028, U+2029 and U+0085 may stand raw inside a JSON string; str.splitlines cut rows there
    and refused a valid file as invalid JSON."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    train = json.dumps({**GOOD_ROW, "is_response_1_safe": False, "prompt": "a\u2028b\u2029c\x85d"},
                       ensure_ascii=False) + "\n"
    extra = _dataset(train, train)(tmp_path)
    assert "\u2028" in (tmp_path / "data" / "train.jsonl").read_text(encoding="utf-8")
    code = main(["--dry-run", "--out", str(tmp_path / "out"), "--set", "data.group_column=none", *extra])
    assert code == 0, capsys.readouterr().err
    from harness.data.pairs import load_rows

    (row,) = load_rows(str(tmp_path / "data"), "train")
    assert row["prompt"] == "a\u2028b\u2029c\x85d"


def test_a_single_file_with_a_split_rule_is_divided_by_prompt_the_same_way_every_time(tmp_path, capsys, monkeypatch):
    """The other way out of `dataset-single-file`: data.held_out_share holds out a share of the
    prompts (every row of a prompt on one side), the dry run says OK."""
    from harness.config import parse_set_options, resolve_config
    from harness.data.pairs import held_out_split

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rows = [{**GOOD_ROW, "is_response_1_safe": False, "prompt": f"How do I do thing {i // 2}?"} for i in range(60)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [f"data.dataset={tmp_path}/rows.jsonl", "data.held_out_share=0.25", "data.group_column=none",
            "suite=custom", "model.cost_model=none", "model.reward_model=none"]
    code = main(["--dry-run", "--out", str(tmp_path / "out"), *(a for s in sets for a in ("--set", s))])
    assert code == 0, capsys.readouterr().err
    data_cfg = resolve_config(method="d2o", preset="tiny", overrides=parse_set_options(sets)).data
    train, held = held_out_split(rows, data_cfg, "train"), held_out_split(rows, data_cfg, "eval")
    assert len(train) + len(held) == len(rows) and 0 < len(held) < len(rows) / 2
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}  # no prompt on both sides
    assert held == held_out_split(list(rows), data_cfg, "eval")  # the same split every time
