"""Regression comparison: significant changes towards worse are flagged, noise and improvements are not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from harness.compare import DEFAULT_TOLERANCES, compare, compare_main, curve_deviation, z_statistic
from harness.errors import BadInput

FIXTURES = Path(__file__).parent / "fixtures" / "leaderboards"


def baseline() -> dict:
    return json.loads((FIXTURES / "tiny.json").read_text())


def entry(document: dict, run_id: str) -> dict:
    return next(e for e in document["entries"] if e["run_id"] == run_id)


def write(tmp_path: Path, name: str, document) -> str:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def test_unchanged_rerun_passes():
    result = compare(baseline(), baseline())
    assert result["verdict"] == "ok"
    assert result["regressions"] == []
    assert result["matched"] == 7
    rows = [r for r in result["metrics"] if "z" in r]
    assert rows and all(r["z"] == 0.0 and r["verdict"] == "within noise" for r in rows)
    assert result["trajectories"] and not any(t["breach"] for t in result["trajectories"])


def test_planted_regression_is_flagged_with_hand_computed_z():
    candidate = baseline()
    # harmful_rate is lower-is-better: 0.10 ± 0.030 → 0.25 ± 0.040 is worse.
    entry(candidate, "d2o-tiny-s0-aaaa0000")["metrics"]["harmful_rate"].update(value=0.25, stderr=0.040)
    result = compare(baseline(), candidate)
    assert result["verdict"] == "regression"
    (row,) = [r for r in result["metrics"] if r["verdict"] == "regression"]
    assert row["metric"] == "harmful_rate" and row["key"]["config_hash"] == "d2o0000000000000"
    expected_z = (0.25 - 0.10) / math.sqrt(0.030 ** 2 + 0.040 ** 2)  # = 0.15 / 0.05 = 3.0
    assert row["z"] == pytest.approx(3.0) and row["z"] == pytest.approx(expected_z)
    assert row["z_worse"] == pytest.approx(3.0)
    assert row["delta"] == pytest.approx(0.15)
    assert len(result["regressions"]) == 1 and "harmful_rate" in result["regressions"][0]


def test_higher_is_better_drop_is_a_regression_and_threshold_is_respected():
    candidate = baseline()
    # reward: 0.5 ± 0.10 → 0.2 ± 0.10: z = -0.3 / sqrt(0.02) = -2.1213; towards worse +2.1213.
    entry(candidate, "d2o-tiny-s0-aaaa0000")["metrics"]["reward"]["value"] = 0.2
    result = compare(baseline(), candidate)
    (row,) = [r for r in result["metrics"] if r["metric"] == "reward" and r["key"]["config_hash"] == "d2o0000000000000"]
    assert row["z"] == pytest.approx(-0.3 / math.sqrt(0.02))
    assert row["z_worse"] == pytest.approx(2.1213203)
    assert result["verdict"] == "regression"
    assert compare(baseline(), candidate, z_threshold=2.2)["verdict"] == "ok"


def test_improvement_is_ignored():
    candidate = baseline()
    metrics = entry(candidate, "dpo-tiny-s0-bbbb0000")["metrics"]
    metrics["harmful_rate"].update(value=0.01, stderr=0.001)  # far lower harm
    metrics["reward"].update(value=5.0)  # far higher reward
    result = compare(baseline(), candidate)
    assert result["verdict"] == "ok"
    verdicts = {r["metric"]: r["verdict"] for r in result["metrics"] if r["key"]["config_hash"] == "dpo0000000000000"}
    assert verdicts["harmful_rate"] == "improvement" and verdicts["reward"] == "improvement"


def test_small_change_within_noise_passes():
    candidate = baseline()
    entry(candidate, "d2o-tiny-s1-aaaa0001")["metrics"]["cost"]["value"] = -0.8 + 0.25  # z ≈ 0.71
    assert compare(baseline(), candidate)["verdict"] == "ok"


def test_failed_candidate_and_vanished_metric_are_regressions():
    candidate = baseline()
    entry(candidate, "dpo-tiny-s1-bbbb0001")["status"] = "failed"
    del entry(candidate, "base-tiny-s0-cccc0000")["metrics"]["reward"]
    result = compare(baseline(), candidate)
    assert result["verdict"] == "regression"
    text = " | ".join(result["regressions"])
    assert "every candidate run failed" in text and "metric reward is missing" in text


def test_key_without_config_hash_pools_seeds():
    # Matching by method,preset pools the three d2o seeds: mean 0.12, stderr sqrt(Σse²)/3.
    candidate = baseline()
    for run_id in ("d2o-tiny-s0-aaaa0000", "d2o-tiny-s1-aaaa0001", "d2o-tiny-s2-aaaa0002"):
        entry(candidate, run_id)["metrics"]["harmful_rate"]["value"] += 0.10
    result = compare(baseline(), candidate, key=("method", "preset"))
    (row,) = [r for r in result["metrics"] if r["key"] == {"method": "d2o", "preset": "tiny"}
              and r["metric"] == "harmful_rate"]
    pooled = math.sqrt(0.030 ** 2 + 0.035 ** 2 + 0.032 ** 2) / 3
    assert row["baseline"]["value"] == pytest.approx(0.12)
    assert row["baseline"]["stderr"] == pytest.approx(pooled)
    assert row["z"] == pytest.approx(0.10 / math.sqrt(2 * pooled ** 2))
    assert row["verdict"] == "regression"


def test_trajectory_breach_is_a_regression_even_when_metrics_hold():
    candidate = baseline()
    curve = entry(candidate, "d2o-tiny-s2-aaaa0002")["provenance"]["train"]["loss_curve"]
    curve[3][1] += 0.2  # one step off by 0.2 > 0.05; mean drift 0.05 > 0.01
    result = compare(baseline(), candidate)
    assert result["verdict"] == "regression"
    (row,) = [t for t in result["trajectories"] if t["breach"]]
    assert row["curve"] == "loss_curve" and row["seed"] == 2
    assert row["max_abs_deviation"] == pytest.approx(0.2)
    assert row["mean_drift"] == pytest.approx(0.05)
    assert all(r["verdict"] != "regression" for r in result["metrics"])
    loose = {"loss_curve": type(DEFAULT_TOLERANCES["loss_curve"])(max_abs_deviation=0.3, mean_drift=0.1)}
    assert compare(baseline(), candidate, tolerances=loose)["verdict"] == "ok"


def test_trajectory_with_different_steps_is_a_breach():
    candidate = baseline()
    entry(candidate, "dpo-tiny-s0-bbbb0000")["provenance"]["train"]["grad_norm_curve"].pop()
    result = compare(baseline(), candidate)
    (row,) = [t for t in result["trajectories"] if t["breach"]]
    assert row["curve"] == "grad_norm_curve" and "steps differ" in row["problems"][0]


def test_curve_deviation_by_hand():
    deviation = curve_deviation([[1, 1.0], [2, 2.0], [3, None]], [[1, 1.1], [2, 1.7], [3, 5.0]])
    assert deviation["steps_compared"] == 2
    assert deviation["max_abs_deviation"] == pytest.approx(0.3)
    assert deviation["mean_drift"] == pytest.approx(abs((0.1 - 0.3) / 2))


def test_z_statistic_edge_cases():
    assert z_statistic(1.0, 0.3, 1.5, 0.4) == pytest.approx(1.0)
    assert z_statistic(1.0, 0.0, 1.0, 0.0) == 0.0
    assert z_statistic(1.0, None, 2.0, 0.0) == math.inf


def test_nothing_matched_is_bad_input():
    candidate = baseline()
    for e in candidate["entries"]:
        e["preset"] = "smollm2"
    with pytest.raises(BadInput, match="no entry of candidate matches one of baseline on key method,preset,config_hash"):
        compare(baseline(), candidate)


def test_compare_main_exit_codes_and_json(tmp_path, capsys):
    base_path = write(tmp_path, "base.json", baseline())
    assert compare_main([base_path, base_path]) == 0
    assert "verdict: OK" in capsys.readouterr().out

    candidate = baseline()
    entry(candidate, "d2o-tiny-s0-aaaa0000")["metrics"]["harmful_rate"].update(value=0.25, stderr=0.040)
    cand_path = write(tmp_path, "cand.json", candidate)
    out = tmp_path / "verdict.json"
    assert compare_main([base_path, cand_path, "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "verdict: REGRESSION" in printed and "harmful_rate" in printed
    verdict = json.loads(out.read_text())
    assert verdict["verdict"] == "regression" and verdict["regressions"]
    # A looser threshold accepts the same change (z = 3.0).
    assert compare_main([base_path, cand_path, "--z", "3.5"]) == 0

    broken = write(tmp_path, "broken.json", "{not json")
    assert compare_main([base_path, broken]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "broken.json: not JSON" in error
    assert compare_main([base_path, str(tmp_path / "missing.json")]) == 2
    assert compare_main([base_path]) == 2  # usage error
    other = baseline()
    for e in other["entries"]:
        e["method"] = "other"
    assert compare_main([base_path, write(tmp_path, "other.json", other)]) == 2
    assert compare_main([base_path, base_path, "--key", "method,nonexistent"]) == 2
    assert "no key field 'nonexistent'" in capsys.readouterr().err


def test_compare_main_trajectory_tolerance_flags(tmp_path):
    candidate = baseline()
    entry(candidate, "d2o-tiny-s2-aaaa0002")["provenance"]["train"]["loss_curve"][3][1] += 0.2
    base_path, cand_path = write(tmp_path, "b.json", baseline()), write(tmp_path, "c.json", candidate)
    assert compare_main([base_path, cand_path]) == 1
    assert compare_main([base_path, cand_path, "--loss-max-abs", "0.3", "--loss-mean-drift", "0.1"]) == 0


# --------------------------------------------------------------------------- records with per_cluster (1.1.0)

from harness.scoring.metrics import mean_metric, rate_metric  # noqa: E402

TASKS = [i // 4 for i in range(64)]  # 16 tasks × 4 prompts


def _flags(rate: float, salt: int) -> list[bool]:
    # Deterministic per-prompt outcomes with exactly round(rate·64) positives spread over the tasks.
    import numpy as np

    k = round(rate * 64)
    order = np.random.default_rng(salt).permutation(64)
    flags = [False] * 64
    for index in order[:k]:
        flags[int(index)] = True
    return flags


def _values(mean: float, salt: int) -> list[float]:
    import numpy as np

    rng = np.random.default_rng(salt)
    task_effect = np.repeat(rng.normal(0, 0.3, 16), 4)
    return list(mean + task_effect + rng.normal(0, 0.5, 64))


def clustered(document: dict) -> dict:
    """The fixture with every metric re-recorded per prompt, as a 1.1.0 pipeline writes it."""
    document["schema_version"] = "1.1.0"
    for index, e in enumerate(document["entries"]):
        if e["status"] != "complete":
            continue
        salt = 1000 + e["seed"] * 7 + sum(map(ord, e["method"]))
        for name, record in list(e["metrics"].items()):
            if name.endswith("_rate"):
                e["metrics"][name] = rate_metric(_flags(record["value"], salt), record["higher_is_better"], TASKS,
                                                 n_resamples=199)
            else:
                e["metrics"][name] = mean_metric(_values(record["value"], salt), record["higher_is_better"], TASKS,
                                                 n_resamples=199)
    return document


def clustered_baseline() -> dict:
    return clustered(baseline())


def test_clustered_unchanged_rerun_uses_the_paired_bootstrap_and_passes():
    result = compare(clustered_baseline(), clustered_baseline(), n_resamples=999)
    assert result["verdict"] == "ok" and result["regressions"] == []
    rows = [r for r in result["metrics"] if r["metric"] != "status"]
    assert rows and all(r["test"] == "paired cluster bootstrap" and "z" not in r for r in rows)
    assert all(r["delta"] == 0.0 and r["delta_low"] <= 0.0 <= r["delta_high"] for r in rows)
    assert all(r["p_improvement"] == 0.5 for r in rows if r["metric"].endswith("_rate"))
    assert result["interval_level"] == pytest.approx(0.9545, abs=1e-4)


def test_clustered_regression_is_flagged_by_the_interval_with_probability_of_improvement():
    candidate = clustered_baseline()
    entry(candidate, "d2o-tiny-s0-aaaa0000")["metrics"]["harmful_rate"] = rate_metric(
        _flags(0.5, 1), False, TASKS, n_resamples=199)  # 6/64 → 32/64 harmful
    result = compare(clustered_baseline(), candidate, n_resamples=999)
    assert result["verdict"] == "regression"
    (row,) = [r for r in result["metrics"] if r["verdict"] == "regression"]
    assert row["metric"] == "harmful_rate" and row["key"]["config_hash"] == "d2o0000000000000"
    assert row["test"] == "paired cluster bootstrap"
    assert row["delta"] == pytest.approx(32 / 64 - 6 / 64)
    assert 0 < row["delta_low"] <= row["delta"] <= row["delta_high"]
    # Rates: P(candidate better) = ½(1 − Δ) for a lower-is-better 0/1 metric, per prompt.
    assert row["p_improvement"] == pytest.approx(0.5 * (1 - row["delta"]))
    assert row["p_improvement_high"] < 0.5
    assert "entirely worse" in result["regressions"][0] and "P(candidate better)" in result["regressions"][0]


def test_clustered_small_change_is_within_noise_and_improvement_is_not_a_regression():
    candidate = clustered_baseline()
    record = entry(clustered_baseline(), "dpo-tiny-s0-bbbb0000")["metrics"]["harmful_rate"]
    # One more harmful answer out of 64 is noise.
    harmful = sum(v[0] for v in record["per_cluster"].values())
    entry(candidate, "dpo-tiny-s0-bbbb0000")["metrics"]["harmful_rate"] = rate_metric(
        _flags((harmful + 1) / 64, 1), False, TASKS, n_resamples=199)
    entry(candidate, "dpo-tiny-s1-bbbb0001")["metrics"]["helpful_rate"] = rate_metric(
        [True] * 64, True, TASKS, n_resamples=199)  # far more helpful
    result = compare(clustered_baseline(), candidate, n_resamples=999)
    assert result["verdict"] == "ok", result["regressions"]
    verdicts = {(r["key"]["config_hash"], r["metric"]): r["verdict"] for r in result["metrics"]}
    assert verdicts[("dpo0000000000000", "harmful_rate")] == "within noise"
    assert verdicts[("dpo0000000000001", "helpful_rate")] == "improvement"


def test_seeds_that_share_prompts_are_pooled_not_treated_as_independent():
    # Three seeds with identical per-cluster results carry the information of one: pooling them
    # under key method,preset gives the same interval as comparing a single seed.
    def three_copies(document: dict, shift: float) -> dict:
        for e in document["entries"]:
            if e["method"] == "d2o":
                e["metrics"]["harmful_rate"] = rate_metric(_flags(0.10 + shift, 3), False, TASKS, n_resamples=199)
        return document

    base, cand = three_copies(clustered_baseline(), 0.0), three_copies(clustered_baseline(), 0.2)
    pooled = compare(base, cand, key=("method", "preset"), n_resamples=999)
    single = compare(base, cand, n_resamples=999)
    (row3,) = [r for r in pooled["metrics"] if r["key"] == {"method": "d2o", "preset": "tiny"}
               and r["metric"] == "harmful_rate"]
    (row1,) = [r for r in single["metrics"] if r["key"].get("config_hash") == "d2o0000000000000"
               and r["metric"] == "harmful_rate"]
    assert row3["baseline"]["n_runs"] == 3
    assert (row3["delta_low"], row3["delta_high"]) == pytest.approx((row1["delta_low"], row1["delta_high"]))


def test_legacy_records_fall_back_to_the_z_test_and_say_so():
    result = compare(baseline(), clustered_baseline(), n_resamples=999)  # baseline has no per_cluster
    rows = [r for r in result["metrics"] if "z" in r]
    assert rows and all(r["test"] == "legacy z-test (no per_cluster data)" for r in rows)
    no_shared = clustered_baseline()
    for e in no_shared["entries"]:
        for record in e["metrics"].values() if e["status"] == "complete" else ():
            record["per_cluster"] = {f"other-{k}": v for k, v in record["per_cluster"].items()}
    result = compare(clustered_baseline(), no_shared, n_resamples=999)
    assert {r["test"] for r in result["metrics"] if "test" in r} == {"legacy z-test (no cluster shared by both sides)"}


def test_compare_main_reports_the_paired_interval(tmp_path, capsys):
    base_path = write(tmp_path, "base.json", clustered_baseline())
    candidate = clustered_baseline()
    entry(candidate, "d2o-tiny-s0-aaaa0000")["metrics"]["harmful_rate"] = rate_metric(
        _flags(0.5, 1), False, TASKS, n_resamples=199)
    cand_path = write(tmp_path, "cand.json", candidate)
    assert compare_main([base_path, cand_path]) == 1
    printed = capsys.readouterr().out
    assert "verdict: REGRESSION" in printed and "P(better)" in printed and "paired intervals at 95.45%" in printed
    assert compare_main([base_path, base_path]) == 0
    assert compare_main([base_path, cand_path, "--z", "40"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "too large" in error


def test_a_metric_of_an_instrument_that_failed_its_check_is_not_compared():
    """The candidate's refusal rates moved far towards worse, but the rules failed their check
    against human labels in its entries: not a regression, and the row says why."""
    rules = {"instrument": "refusal-rules", "n": 105, "precision": 1.0, "recall": 0.4, "majority_rate": 70 / 105,
             "accuracy": {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8}}
    base = baseline()
    candidate = baseline()
    for document in (base, candidate):
        for e in document["entries"]:
            e["metrics"]["harmful_compliance_rate"] = {**e["metrics"]["harmful_rate"]}
    entry(candidate, "d2o-tiny-s0-aaaa0000")["metrics"]["harmful_compliance_rate"].update(value=0.9, stderr=0.01)
    assert compare(base, candidate)["verdict"] == "regression"  # while the rules are not known to have failed
    for e in candidate["entries"]:
        e["sections"]["instruments"] = {"suite": "real-safety", "validation": {"refusal-rules": rules}}
    result = compare(base, candidate)
    assert result["verdict"] == "ok"
    rows = [r for r in result["metrics"] if r["metric"] == "harmful_compliance_rate"]
    assert rows and all(r["verdict"].startswith("not compared: refusal-rules failed its check (accuracy on 105 "
                                                "human refusal labels 0.700 [0.600, 0.800]") for r in rows)
    assert [r["verdict"] for r in result["metrics"] if r["metric"] == "harmful_rate"] \
        == [r["verdict"] for r in compare(base, baseline())["metrics"] if r["metric"] == "harmful_rate"]
