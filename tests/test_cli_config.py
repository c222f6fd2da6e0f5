"""CLI and config: bad input is one line on stderr with exit 2, and nothing runs or is written."""

import pytest

from harness.cli import main
from harness.config import coerce, parse_set_options, resolve_config
from harness.errors import BadInput


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--set", "train.no_such_field=1"], "unknown config field 'train.no_such_field'"),
        (["--set", "train.learning_rate=fast"], "train.learning_rate: expected a number"),
        (["--set", "train.epochs=nan"], "expected a finite number"),
        (["--set", "method.k=0"], "method.k must be >= 1"),
        (["--set", "method.k=2.5"], "method.k: expected an integer"),
        (["--set", "method.beta=0"], "method.beta must be > 0"),
        (["--set", "method.beta=-1"], "method.beta must be > 0"),
        (["--set", "method.alpha=-0.1"], "method.alpha must be >= 0"),
        (["--set", "model.prompt_format=weird"], "is not one of"),
        (["--set", "noequals"], "--set expects key=value"),
        (["--set", "train.bf16=maybe"], "expected true or false"),
        (["--seed", "x"], "invalid int value"),
        (["--bogus-flag"], "unrecognized arguments"),
        (["methods", "--extra"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, fragment):
    code, out, err = run_cli(capsys, *argv, *(["--out", str(tmp_path / "out")] if argv[0] != "methods" else []))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("d2o-bench: error:")
    assert fragment in lines[0]
    assert not (tmp_path / "out").exists()


def test_methods_lists_registered_methods(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    names = [line.split()[0] for line in out.strip().splitlines()]
    for expected in ("d2o", "d2o-online", "d2o-nosample"):
        assert expected in names
    assert all(len(line.split(None, 1)) == 2 for line in out.strip().splitlines())


def test_set_overrides_are_typed():
    cfg = resolve_config(method="d2o", preset="tiny", overrides=parse_set_options([
        "method.beta=0.5", "train.learning_rate=1e-4", "train.bf16=true", "eval.lm_eval_tasks=a,b",
        "data.max_train_examples=none", "seed=7",
    ]))
    assert cfg.method.beta == 0.5 and isinstance(cfg.method.k, int)
    assert cfg.train.learning_rate == 1e-4 and cfg.train.bf16 is True
    assert cfg.eval.lm_eval_tasks == ["a", "b"]
    assert cfg.data.max_train_examples is None
    assert cfg.seed == 7


def test_preset_supplies_method_defaults_and_paper_values():
    tiny = resolve_config(method="d2o", preset="tiny")
    paper = resolve_config(method="d2o", preset="paper")
    assert (paper.method.k, paper.method.alpha, paper.method.beta) == (11, 0.1, 0.1)
    assert paper.train.deepspeed == "zero3" and paper.train.bf16
    assert tiny.method.k >= 1
    assert tiny.hash() != paper.hash()


def test_config_hash_is_stable_and_sensitive():
    a = resolve_config(method="d2o", preset="tiny")
    b = resolve_config(method="d2o", preset="tiny")
    c = resolve_config(method="d2o", preset="tiny", overrides=parse_set_options(["method.beta=0.2"]))
    assert a.hash() == b.hash() != c.hash()


def test_coerce_rejects_bool_as_number():
    with pytest.raises(BadInput):
        coerce(True, int, "x")


def test_dry_run_paper_prints_plan(capsys):
    code, out, _ = run_cli(capsys, "--preset", "paper", "--dry-run")
    assert code == 0
    for fragment in ("PKU-Alignment/alpaca-7b-reproduced", "PKU-Alignment/PKU-SafeRLHF", "beaver-7b-v1.0-cost",
                     "mmlu", "zero3", "GPU memory", "data → self_samples → reference_logps"):
        assert fragment in out


@pytest.mark.parametrize("text,expected", [
    ("[]", []), ("mmlu", ["mmlu"]), ("[mmlu, arc_easy]", ["mmlu", "arc_easy"]), ("a,b", ["a", "b"]),
    ("['mmlu']", ["mmlu"]),
])
def test_list_fields_accept_flow_lists_from_set(text, expected):
    cfg = resolve_config(method="d2o", preset="tiny", overrides=parse_set_options([f"eval.lm_eval_tasks={text}"]))
    assert cfg.eval.lm_eval_tasks == expected


def test_published_config_hashes_survive_fields_added_since():
    """A field added with a default (suite, data.format, tune.capability_on_trials, …) must not
    change the hash, and so the run id, of a configuration published before it existed."""
    import json
    from pathlib import Path

    board = json.loads((Path(__file__).parents[1] / "leaderboards/tiny/leaderboard.json").read_text())
    entry = next(e for e in board["entries"] if e["method"] == "d2o")
    config = entry["provenance"]["config"]
    cfg = resolve_config(method="d2o", preset="tiny", seed=entry["seed"], overrides={
        "world": {"seed": config["world"]["seed"]}, "data": {"eval_split": config["data"]["eval_split"]},
        "train": {"learning_rate": config["train"]["learning_rate"]},
        "method": {k: str(v) for k, v in config["method"].items()}})
    assert cfg.hash() == entry["provenance"]["config_hash"]


def test_every_accepted_scheduler_is_one_transformers_trains_with():
    from transformers.trainer_utils import SchedulerType

    from harness.config import LR_SCHEDULERS

    known = {s.value for s in SchedulerType}
    assert set(LR_SCHEDULERS) <= known and "cosine" in LR_SCHEDULERS
    # These two step on a validation metric that the harness's Trainer never computes.
    assert not {"reduce_lr_on_plateau", "greedy"} & set(LR_SCHEDULERS)
