"""Leaderboard files: schema errors name the place and the problem, old files migrate, writers never lose entries."""

from __future__ import annotations

import copy
import re
import json
import multiprocessing
from pathlib import Path

import pytest

from harness import leaderboard
from harness.errors import BadInput
from harness.leaderboard import (
    HIGHER_IS_BETTER,
    SCHEMA_VERSION,
    append_entries,
    read_leaderboard,
    validate_entry,
)

FIXTURES = Path(__file__).parent / "fixtures" / "leaderboards"


def fixture(name: str = "tiny.json") -> dict:
    return json.loads((FIXTURES / name).read_text())


def entry_for(run_id: str, seed: int = 0) -> dict:
    entry = copy.deepcopy(fixture()["entries"][0])
    entry["run_id"] = run_id
    entry["seed"] = seed
    # Each made-up run its own configuration: the same config hash and seed under two run_ids
    # is one run entered twice, which a leaderboard refuses.
    entry["provenance"]["config_hash"] = f"cfg-{run_id}"
    return entry


def write(tmp_path: Path, document, name: str = "leaderboard.json") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def mutated(change) -> dict:
    document = fixture()
    change(document)
    return document


MALFORMED = {
    "negative n": (
        lambda d: d["entries"][3]["metrics"]["cost"].__setitem__("n", -1),
        "leaderboard.json: entries[3].metrics.cost.n: -1 is less than the minimum of 0"),
    "wrong type": (
        lambda d: d["entries"][1].__setitem__("seed", "zero"),
        'leaderboard.json: entries[1].seed: expected integer, got string "zero"'),
    "missing key": (
        lambda d: d["entries"][1].pop("run_id"),
        "leaderboard.json: entries[1]: 'run_id' is a required property"),
    "entries not a list": (
        lambda d: d.__setitem__("entries", {"a": 1}),
        'leaderboard.json: entries: expected array, got object {"a": 1}'),
    "unknown status": (
        lambda d: d["entries"][2].__setitem__("status", "done"),
        'leaderboard.json: entries[2].status: "done" is not one of "complete", "failed"'),
    "metric missing value": (
        lambda d: d["entries"][2]["metrics"]["cost"].pop("value"),
        "leaderboard.json: entries[2].metrics.cost: 'value' is a required property"),
    "duplicate run_id": (
        lambda d: d["entries"][2].__setitem__("run_id", "d2o-tiny-s0-aaaa0000"),
        "leaderboard.json: entries[2].run_id: duplicate run_id 'd2o-tiny-s0-aaaa0000' (first at entries[0])"),
    "bad schema_version": (
        lambda d: d.__setitem__("schema_version", "1.0"),
        'leaderboard.json: schema_version: "1.0" is not a semantic version MAJOR.MINOR.PATCH'),
    "newer major version": (
        lambda d: d.__setitem__("schema_version", "2.0.0"),
        "leaderboard.json: schema_version: 2.0.0 is newer than this d2o-bench reads (1.x); upgrade d2o-bench"),
    "unknown old version": (
        lambda d: d.__setitem__("schema_version", "0.2.0"),
        "leaderboard.json: schema_version: 0.2.0 is not a version this d2o-bench reads (known: 0.1.0, 1.x)"),
    "missing schema_version": (
        lambda d: d.pop("schema_version"),
        "leaderboard.json: 'schema_version' is a required property"),
    "bad timestamp": (
        lambda d: d["entries"][0]["provenance"].__setitem__("started_at", "yesterday"),
        'leaderboard.json: entries[0].provenance.started_at: "yesterday" is not a valid ISO-8601 timestamp'),
    "curve point too short": (
        lambda d: d["entries"][0]["provenance"]["train"]["loss_curve"].append([5]),
        "leaderboard.json: entries[0].provenance.train.loss_curve[4]: [5] is too short"),
    "environment field missing": (
        lambda d: d["entries"][5]["provenance"]["environment"].pop("cuda"),
        "leaderboard.json: entries[5].provenance.environment: 'cuda' is a required property"),
    "negative stderr": (
        lambda d: d["entries"][0]["metrics"]["reward"].__setitem__("stderr", -0.1),
        "leaderboard.json: entries[0].metrics.reward.stderr: -0.1 is less than the minimum of 0"),
    "direction not boolean": (
        lambda d: d["entries"][0]["metrics"]["reward"].__setitem__("higher_is_better", "yes"),
        'leaderboard.json: entries[0].metrics.reward.higher_is_better: expected boolean, got string "yes"'),
    "instrument verdict not boolean": (
        lambda d: d["entries"][0]["sections"].__setitem__(
            "instruments", {"suite": "real-safety", "validation": {"judge": {"passed": "no"}}}),
        'leaderboard.json: entries[0].sections.instruments.validation.judge.passed: expected boolean, got string "no"'),
    "metric mark not boolean": (
        lambda d: d["entries"][0]["metrics"]["reward"].__setitem__("instrument_passed", 0),
        "leaderboard.json: entries[0].metrics.reward.instrument_passed: expected boolean, got integer 0"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_is_refused_with_a_one_line_message_naming_the_problem(tmp_path, case):
    change, expected = MALFORMED[case]
    path = write(tmp_path, mutated(change))
    with pytest.raises(BadInput) as raised:
        read_leaderboard(path)
    assert str(raised.value) == expected.replace("leaderboard.json", str(path))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("text, expected", [
    ('{"schema_version": "1.0.0", "entries": [', "not JSON: Expecting value at line 1 column 41"),
    ("", "not JSON: the file is empty"),
    ('{"schema_version": "1.0.0", "entries": [], "x": NaN}', "not JSON: NaN is not valid JSON (record null instead)"),
    ("[1, 2]", "expected an object with schema_version and entries, got array"),
])
def test_unparseable_file_is_refused_in_one_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(BadInput, match="^" + re.escape(f"{path}: {expected}") + "$"):
        read_leaderboard(path)


def test_missing_file_is_an_error_unless_missing_ok(tmp_path):
    with pytest.raises(BadInput, match="no such leaderboard file"):
        read_leaderboard(tmp_path / "absent.json")
    assert read_leaderboard(tmp_path / "absent.json", missing_ok=True) == {"schema_version": SCHEMA_VERSION,
                                                                             "entries": []}


def test_valid_fixture_reads_unchanged():
    document = read_leaderboard(FIXTURES / "tiny.json")
    assert document == fixture()
    assert [e["status"] for e in document["entries"]].count("failed") == 1


def test_a_newer_minor_version_is_read_and_keeps_its_extra_fields(tmp_path):
    document = fixture()
    document["schema_version"] = "1.3.0"
    document["entries"][0]["new_optional_field"] = {"anything": 1}
    path = write(tmp_path, document)
    assert read_leaderboard(path)["entries"][0]["new_optional_field"] == {"anything": 1}
    append_entries(path, [entry_for("extra-run")])
    rewritten = json.loads(path.read_text())
    assert rewritten["schema_version"] == "1.3.0"
    assert rewritten["entries"][0]["new_optional_field"] == {"anything": 1}


def test_legacy_0_1_0_file_is_migrated_on_read():
    legacy = fixture("legacy-0.1.0.json")
    document = read_leaderboard(FIXTURES / "legacy-0.1.0.json")
    assert document["schema_version"] == "1.0.0"
    (entry,) = document["entries"]
    assert entry["status"] == "complete"
    assert entry["sections"] == {"judge": None, "capability": None}
    assert entry["metrics"]["harmful_rate"] == {**legacy["entries"][0]["metrics"]["harmful_rate"],
                                                "higher_is_better": False}
    assert entry["metrics"]["reward"]["higher_is_better"] is True
    assert entry["provenance"] == legacy["entries"][0]["provenance"]
    validate_entry(entry)  # the migrated entry is a valid current entry


def test_migration_table_covers_every_legacy_schema():
    assert set(leaderboard.MIGRATIONS) == set(leaderboard.LEGACY_SCHEMA_FILES)
    assert leaderboard.MIGRATIONS["0.1.0"][0] == "1.0.0"


def test_legacy_metric_of_unknown_direction_is_refused_not_guessed(tmp_path):
    legacy = fixture("legacy-0.1.0.json")
    legacy["entries"][0]["metrics"]["perplexity"] = {"value": 3.0, "stderr": 0.1, "n": 10}
    path = write(tmp_path, legacy)
    with pytest.raises(BadInput, match=r"entries\[0\]\.metrics\.perplexity: cannot migrate 0\.1\.0 metric"):
        read_leaderboard(path)


def test_legacy_file_is_validated_against_its_own_schema(tmp_path):
    legacy = fixture("legacy-0.1.0.json")
    legacy["entries"][0]["metrics"]["reward"]["n"] = "many"
    path = write(tmp_path, legacy)
    with pytest.raises(BadInput, match=r'entries\[0\]\.metrics\.reward\.n: expected integer, got string "many"$'):
        read_leaderboard(path)


def test_appending_to_a_legacy_file_rewrites_it_as_current(tmp_path):
    path = write(tmp_path, fixture("legacy-0.1.0.json"))
    append_entries(path, [entry_for("new-run")])
    rewritten = json.loads(path.read_text())
    assert rewritten["schema_version"] == SCHEMA_VERSION
    assert [e["run_id"] for e in rewritten["entries"]] == ["d2o-tiny-s0-legacy00", "new-run"]


def test_higher_is_better_for_standard_metrics():
    assert HIGHER_IS_BETTER == {"harmful_rate": False, "helpful_rate": True, "cost": False, "safe_rate": True,
                                "reward": True, "refusal_with_steps_rate": False, "harmful_compliance_rate": False,
                                "over_refusal_rate": False, "benign_answer_rate": True,
                                "harmful_unsafe_rate": False}


def test_validate_entry_names_the_entry_and_the_field():
    entry = entry_for("some-run")
    entry["metrics"]["cost"]["n"] = -3
    with pytest.raises(BadInput, match=r"^leaderboard entry 'some-run': metrics\.cost\.n: -3 is less than the minimum of 0$"):
        validate_entry(entry)
    entry = entry_for("nan-run")
    entry["provenance"]["train"]["loss_curve"][1][1] = float("nan")
    with pytest.raises(BadInput, match=r"provenance\.train\.loss_curve\[1\]\[1\]: NaN/Infinity cannot be stored"):
        validate_entry(entry)


def test_append_creates_replaces_by_run_id_and_keeps_order(tmp_path):
    path = tmp_path / "sub" / "leaderboard.json"
    append_entries(path, [entry_for("a"), entry_for("b")])
    rerun = entry_for("a")
    rerun["metrics"]["reward"]["value"] = 0.99
    append_entries(path, [rerun, entry_for("c")])
    document = read_leaderboard(path)
    assert [e["run_id"] for e in document["entries"]] == ["a", "b", "c"]
    assert document["entries"][0]["metrics"]["reward"]["value"] == 0.99
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_runs_on_one_world_built_twice_with_different_weights_are_refused(tmp_path):
    path = write(tmp_path, fixture())
    before = path.read_bytes()
    rebuilt = copy.deepcopy(fixture()["entries"][2])
    rebuilt["run_id"], rebuilt["seed"] = "rebuilt-elsewhere", 7
    assert rebuilt["provenance"]["base_model"]["sha256"] and rebuilt["provenance"]["config"]
    rebuilt["provenance"]["base_model"]["sha256"] = "f" * 64
    with pytest.raises(BadInput, match=r"entries\[7\] \(run_id 'rebuilt-elsewhere'\) has base policy sha256 "
                                       r"ffffffffffff… but entries\[\d\] .* built twice"):
        append_entries(path, [rebuilt])
    assert path.read_bytes() == before
    document = fixture()
    document["entries"].append(rebuilt)
    with pytest.raises(BadInput, match="built twice with different weights"):
        read_leaderboard(write(tmp_path, document, "mixed.json"))
    # Other world settings are another world: its own base policy is no conflict.
    rebuilt["provenance"]["config"]["world"] = {"seed": 0, "base_compliance": 0.5}
    append_entries(path, [rebuilt])
    assert len(read_leaderboard(path)["entries"]) == 8


def test_failed_validation_leaves_existing_file_byte_identical(tmp_path):
    path = write(tmp_path, fixture())
    before = path.read_bytes()
    bad = entry_for("bad-run")
    bad["status"] = "finished"
    with pytest.raises(BadInput, match=r"^leaderboard entry 'bad-run': status:"):
        append_entries(path, [entry_for("good-run"), bad])
    assert path.read_bytes() == before
    with pytest.raises(BadInput, match="appears twice"):
        append_entries(path, [entry_for("dup"), entry_for("dup")])
    assert path.read_bytes() == before


def test_the_same_run_under_a_new_run_id_is_refused_on_append_and_on_read(tmp_path):
    path = write(tmp_path, fixture())
    before = path.read_bytes()
    twin = copy.deepcopy(fixture()["entries"][2])
    twin["run_id"] = "renamed-run"
    with pytest.raises(BadInput, match=r"entries\[7\] \(run_id 'renamed-run'\) is the same run as entries\[2\]"):
        append_entries(path, [twin])
    assert path.read_bytes() == before
    document = fixture()
    document["entries"].insert(0, twin)
    with pytest.raises(BadInput, match=r"entries\[3\] .* is the same run as entries\[0\] \(run_id 'renamed-run'\)"):
        read_leaderboard(write(tmp_path, document, "twice.json"))
    # Another seed, or other hyperparameters, is another run.
    other = copy.deepcopy(twin)
    other["seed"] = 7
    append_entries(path, [other])
    assert len(read_leaderboard(path)["entries"]) == 8


def test_a_linked_board_is_updated_where_it_lives_not_forked(tmp_path):
    (tmp_path / "shared").mkdir()
    real = write(tmp_path / "shared", fixture())
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "leaderboard.json"
    link.symlink_to(real)
    append_entries(link, [entry_for("through-the-link")])
    assert link.is_symlink() and link.resolve() == real.resolve()  # still the link, not a copy
    assert "through-the-link" in [e["run_id"] for e in read_leaderboard(real)["entries"]]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "leaderboard.json"]  # no lock or temp here


def test_the_next_writer_removes_temp_files_of_killed_writes(tmp_path):
    path = write(tmp_path, fixture())
    # What a writer killed between writing and renaming leaves (SIGTERM and SIGKILL run no cleanup).
    stale = [tmp_path / ".leaderboard.json.k1ll3d.tmp", tmp_path / ".leaderboard.json.t3rm.tmp"]
    for file in stale:
        file.write_text('{"half": ')
    unrelated = tmp_path / ".other.json.abc.tmp"
    unrelated.write_text("not ours")
    append_entries(path, [entry_for("after-the-kill")])
    assert not any(file.exists() for file in stale) and unrelated.exists()
    assert "after-the-kill" in [e["run_id"] for e in read_leaderboard(path)["entries"]]


def test_a_bad_existing_file_is_never_overwritten(tmp_path):
    broken = mutated(lambda d: d["entries"][0].__setitem__("seed", -1))
    path = write(tmp_path, broken)
    before = path.read_bytes()
    with pytest.raises(BadInput, match=r"entries\[0\]\.seed: -1 is less than the minimum of 0"):
        append_entries(path, [entry_for("good-run")])
    assert path.read_bytes() == before
    path.write_text("{not json")
    with pytest.raises(BadInput, match="not JSON"):
        append_entries(path, [entry_for("good-run")])
    assert path.read_text() == "{not json"


def _append_many(path: str, worker: int, count: int) -> None:
    for index in range(count):
        append_entries(path, [entry_for(f"w{worker}-r{index}", seed=index)])


def test_concurrent_appenders_lose_nothing(tmp_path):
    path = tmp_path / "leaderboard.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w, 25)) for w in range(8)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [p.exitcode for p in workers] == [0] * 8
    document = read_leaderboard(path)  # validates every entry
    run_ids = [e["run_id"] for e in document["entries"]]
    assert len(run_ids) == 200
    assert set(run_ids) == {f"w{w}-r{i}" for w in range(8) for i in range(25)}


# --------------------------------------------------------------------------- 1.1.0: intervals and clusters


def _entry_with_intervals(run_id: str = "ci-run") -> dict:
    from harness.scoring.metrics import mean_metric, rate_metric

    entry = entry_for(run_id)
    tasks = [i // 4 for i in range(16)]
    entry["metrics"]["harmful_rate"] = rate_metric([i % 5 == 0 for i in range(16)], False, tasks, n_resamples=199)
    entry["metrics"]["cost"] = mean_metric([0.1 * i for i in range(16)], False, tasks, n_resamples=199)
    return entry


def test_a_1_0_0_file_without_the_new_metric_fields_still_validates(tmp_path):
    document = fixture()
    assert document["schema_version"] == "1.0.0"
    assert not any("ci_low" in r or "per_cluster" in r for e in document["entries"] for r in e["metrics"].values())
    assert read_leaderboard(write(tmp_path, document)) == document
    assert SCHEMA_VERSION == "1.1.0"


def test_metric_records_with_intervals_and_clusters_validate_and_round_trip(tmp_path):
    entry = _entry_with_intervals()
    validate_entry(entry)
    path = tmp_path / "leaderboard.json"
    append_entries(path, [entry])
    document = read_leaderboard(path)
    assert document["schema_version"] == "1.1.0"
    record = document["entries"][0]["metrics"]["harmful_rate"]
    assert record["per_cluster"] == {"0": [1, 4], "1": [1, 4], "2": [1, 4], "3": [1, 4]}
    assert record["ci_low"] <= record["value"] <= record["ci_high"] and record["kind"] == "rate"


def test_capability_records_get_the_same_interval_checks():
    entry = _entry_with_intervals("bad-capability")
    record = json.loads(json.dumps(entry["metrics"]["harmful_rate"]))
    entry["sections"]["capability"] = {"lm_eval_version": "0.4.13", "tasks": {"knowledge": {"metrics": {"acc": record}}}}
    validate_entry(entry)
    record.update(value=0.9)
    with pytest.raises(BadInput) as raised:
        validate_entry(entry)
    assert "sections.capability.tasks.knowledge.metrics.acc.value: value 0.9 is above ci_high" in str(raised.value)


@pytest.mark.parametrize("change, expected", [
    (lambda r: r.update(ci_low=0.5, ci_high=0.4), "metrics.harmful_rate.ci_low: ci_low 0.5 > ci_high 0.4"),
    (lambda r: r.update(value=0.9), "metrics.harmful_rate.value: value 0.9 is above ci_high"),
    (lambda r: r["per_cluster"].update({"0": [5, 4]}), "a rate's cluster sum must lie in [0, count]"),
    (lambda r: r["per_cluster"].update({"9": [0, 3]}), "cluster counts add up to 19, not n = 16"),
    (lambda r: r.update(ci_level=95), "metrics.harmful_rate.ci_level: 95 is greater than or equal to the maximum of 1"),
    (lambda r: r.update(kind="ratio"), 'metrics.harmful_rate.kind: "ratio" is not one of "rate", "mean"'),
    (lambda r: r["per_cluster"].update({"0": [1]}), 'metrics.harmful_rate.per_cluster["0"]: [1] is too short'),
])
def test_inconsistent_interval_records_are_refused_in_one_line(tmp_path, change, expected):
    entry = _entry_with_intervals("bad-ci")
    change(entry["metrics"]["harmful_rate"])
    with pytest.raises(BadInput) as raised:
        validate_entry(entry)
    assert expected in str(raised.value) and "\n" not in str(raised.value)
    assert str(raised.value).startswith("leaderboard entry 'bad-ci': ")
    document = fixture()
    document["entries"][0] = entry
    path = write(tmp_path, document)
    with pytest.raises(BadInput) as raised:
        read_leaderboard(path)
    assert str(raised.value).startswith(f"{path}: entries[0].") and expected in str(raised.value)
    assert "\n" not in str(raised.value)
