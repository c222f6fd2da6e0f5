"""Honest uncertainty: cluster-bootstrap intervals cover known rates, never collapse at 0 and 1,
pool seeds without treating them as independent, and compare paired systems per prompt."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness import stats
from harness.errors import BadInput
from harness.scoring.metrics import mean_metric, rate_metric

B = 999  # resamples in tests: the coverage loops run hundreds of bootstraps


def clustered_flags(rng: np.random.Generator, rate: float, n_tasks: int, per_task: int, concentration: float):
    """0/1 outcomes with a task-level random effect: task rates ~ Beta(rate·κ, (1−rate)·κ), mean `rate`,
    intra-cluster correlation 1/(κ+1)."""
    task_rates = rng.beta(rate * concentration, (1 - rate) * concentration, n_tasks)
    flags = rng.random((n_tasks, per_task)) < task_rates[:, None]
    return flags.ravel(), np.repeat(np.arange(n_tasks), per_task)


def coverage(rate: float, n_tasks: int, concentration: float, runs: int = 300, seed: int = 0) -> tuple[float, int]:
    rng = np.random.default_rng(seed)
    covered = zero_width = 0
    for run in range(runs):
        flags, tasks = clustered_flags(rng, rate, n_tasks, 8, concentration)
        result = stats.estimate(flags, tasks, kind="rate", n_resamples=B, seed=run)
        covered += result.low <= rate <= result.high
        zero_width += result.high <= result.low
    return covered / runs, zero_width


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("rate, n_tasks, concentration", [
    (0.03, 30, 5.0),   # near 0: ~7 events in 240 prompts, clustered
    (0.30, 20, 10.0),  # mid rate, ICC ≈ 0.09, design effect ≈ 1.6
])
def test_rate_interval_covers_the_true_rate_on_clustered_data(rate, n_tasks, concentration):
    covered, zero_width = coverage(rate, n_tasks, concentration)
    assert 0.90 <= covered <= 0.99, covered
    assert zero_width == 0


def test_ignoring_clusters_would_undercover_which_is_why_tasks_are_resampled():
    # Same data, every prompt its own cluster: the interval pretends to 8× more independent draws.
    rng = np.random.default_rng(5)
    covered_tasks = covered_prompts = 0
    for run in range(200):
        flags, tasks = clustered_flags(rng, 0.3, 20, 8, 2.0)  # strong clustering, ICC = 1/3
        clustered = stats.estimate(flags, tasks, kind="rate", n_resamples=B, seed=run)
        covered_tasks += clustered.low <= 0.3 <= clustered.high
        naive = stats.estimate(flags, None, kind="rate", n_resamples=B, seed=run)
        covered_prompts += naive.low <= 0.3 <= naive.high
    assert covered_tasks / 200 >= 0.90
    assert covered_prompts / 200 < 0.85


def test_mean_interval_covers_a_skewed_clustered_mean():
    rng = np.random.default_rng(1)
    covered = 0
    for run in range(200):
        task_effect = rng.normal(0.0, 0.5, 20)[:, None]
        values = 2.0 + task_effect + rng.standard_exponential((20, 8)) - 1.0  # mean 2, skewed noise
        result = stats.estimate(values.ravel(), np.repeat(np.arange(20), 8), kind="mean", n_resamples=B, seed=run)
        covered += result.low <= 2.0 <= result.high
    assert 0.90 <= covered / 200 <= 0.99


def test_paired_rate_difference_covers_the_true_difference():
    rng = np.random.default_rng(2)
    covered = 0
    for run in range(200):
        base_rates = rng.beta(3, 7, 24)  # mean 0.3
        base = rng.random((24, 8)) < base_rates[:, None]
        method = rng.random((24, 8)) < (base_rates / 2)[:, None]  # mean 0.15: true Δ = −0.15
        result = stats.paired_difference(method.ravel(), base.ravel(), np.repeat(np.arange(24), 8), kind="rate",
                                         higher_is_better=False, n_resamples=B, seed=run)
        covered += result.low <= -0.15 <= result.high
    assert 0.90 <= covered / 200 <= 0.99


def test_paired_mean_difference_covers_and_gets_the_sign_right():
    rng = np.random.default_rng(3)
    covered = right_sign = 0
    for run in range(200):
        task = rng.normal(0, 1, (20, 1))
        base = task + rng.normal(0, 1, (20, 8))
        method = task + 0.5 + rng.normal(0, 0.5, (20, 8)) + rng.normal(0, 0.3, (20, 1))
        result = stats.paired_difference(method.ravel(), base.ravel(), np.repeat(np.arange(20), 8), kind="mean",
                                         higher_is_better=True, n_resamples=B, seed=run)
        covered += result.low <= 0.5 <= result.high
        right_sign += result.low > 0
    assert 0.90 <= covered / 200 <= 0.99
    assert right_sign / 200 >= 0.9  # the pairing removes the task effect: Δ = 0.5 is clearly positive


def test_across_runs_interval_covers_when_seeds_shift_the_rate_and_one_run_does_not():
    rng = np.random.default_rng(4)
    across = single = 0
    for run in range(200):
        task_rates = rng.beta(4, 6, 24)  # population rate 0.4
        tables = []
        for _ in range(3):  # three training seeds on the same tasks, each shifting every task's rate
            shifted = np.clip(task_rates + rng.normal(0, 0.1), 0, 1)
            flags = rng.random((24, 8)) < shifted[:, None]
            tables.append(stats.cluster_table(flags.ravel(), np.repeat(np.arange(24), 8), kind="rate"))
        pooled = stats.across_runs(tables, kind="rate", n_resamples=B, seed=run)
        one = stats.estimate_table(tables[0], kind="rate", n_resamples=B, seed=run)
        across += pooled.low <= 0.4 <= pooled.high
        single += one.low <= 0.4 <= one.high
    assert across / 200 >= 0.90
    assert single / 200 < across / 200


# --------------------------------------------------------------------------- never zero-width


@pytest.mark.parametrize("flags", [[False] * 40, [True] * 40, [False], [True]])
@pytest.mark.parametrize("clustered", [False, True])
def test_rates_of_0_and_1_are_never_zero_width(flags, clustered):
    clusters = [i // 8 for i in range(len(flags))] if clustered else None
    record = rate_metric(flags, False, clusters, n_resamples=B)
    assert record["ci_high"] > record["ci_low"]
    assert record["stderr"] > 0
    assert record["ci_low"] <= record["value"] <= record["ci_high"]
    assert 0.0 <= record["ci_low"] and record["ci_high"] <= 1.0
    if record["value"] == 0.0:
        assert record["ci_low"] == 0.0
    else:
        assert record["ci_high"] == 1.0


def test_all_zero_rate_uses_the_number_of_tasks_as_effective_sample_size():
    # 40 prompts in 5 tasks, none harmful: the ICC is 0/0, so n_eff = 5 tasks, not 40 prompts.
    clustered = stats.estimate([False] * 40, [i // 8 for i in range(40)], kind="rate", n_resamples=B)
    independent = stats.estimate([False] * 40, None, kind="rate", n_resamples=B)
    assert clustered.n_eff == 5 and independent.n_eff == 40
    q = stats.quantile(0.95, 4)
    assert clustered.high == pytest.approx(q * q / (5 + q * q))  # Wilson's upper end at p = 0
    assert clustered.high > independent.high


def test_constant_means_are_never_zero_width():
    record = mean_metric([1.5] * 24, True, [i // 6 for i in range(24)], n_resamples=B)
    assert record["ci_low"] < 1.5 < record["ci_high"] and record["stderr"] > 0
    assert mean_metric([0.0], True, n_resamples=B)["ci_high"] > 0


def test_wilson_interval_by_hand():
    low, high = stats.wilson_interval(0.2, 50, 0.95)
    z = 1.959963984540054
    centre = (0.2 + z * z / 100) / (1 + z * z / 50)
    half = z * math.sqrt(0.2 * 0.8 / 50 + z * z / (4 * 2500)) / (1 + z * z / 50)
    assert (low, high) == pytest.approx((centre - half, centre + half))


def test_design_effect_from_anova_icc():
    # Within-cluster identical, clusters differ: ICC = 1, deff = cluster size.
    table = stats.cluster_table([True] * 8 + [False] * 8 + [True] * 8, [0] * 8 + [1] * 8 + [2] * 8, kind="rate")
    assert stats.design_effect(table) == pytest.approx(8.0)
    assert stats.effective_n(table) == pytest.approx(3.0)
    # Each prompt its own cluster: deff 1.
    assert stats.design_effect(stats.cluster_table([True, False, True], kind="rate")) == 1.0
    # Constant data: not estimable.
    assert stats.design_effect(stats.cluster_table([False] * 16, [i // 4 for i in range(16)], kind="rate")) is None


# --------------------------------------------------------------------------- records


def test_rate_record_fields_and_per_cluster_sums():
    flags = [True, False, False, True, True, False]
    record = rate_metric(flags, False, ["t1", "t1", "t2", "t2", "t3", "t3"], n_resamples=B)
    assert set(record) == {"value", "stderr", "n", "higher_is_better", "ci_low", "ci_high", "ci_level", "ci_method",
                           "n_clusters", "per_cluster", "kind"}
    assert record["value"] == 0.5 and record["n"] == 6 and record["n_clusters"] == 3
    assert record["per_cluster"] == {"t1": [1, 2], "t2": [1, 2], "t3": [1, 2]}
    assert record["ci_level"] == 0.95 and record["kind"] == "rate" and record["higher_is_better"] is False
    assert record["ci_method"] == stats.RATE_METHOD
    json.dumps(record, allow_nan=False)  # storable as it is


def test_records_are_reproducible_and_seeded():
    rng = np.random.default_rng(0)
    values = list(rng.normal(size=64))
    tasks = [i // 8 for i in range(64)]
    assert mean_metric(values, True, tasks) == mean_metric(values, True, tasks)
    a = mean_metric(values, True, tasks, n_resamples=B, seed=1)
    b = mean_metric(values, True, tasks, n_resamples=B, seed=2)
    assert a["value"] == b["value"] and a["per_cluster"] == b["per_cluster"]


def test_without_clusters_every_prompt_is_its_own_cluster():
    record = mean_metric([1.0, 2.0, 3.0], True, n_resamples=B)
    assert record["per_cluster"] == {"0": [1.0, 1], "1": [2.0, 1], "2": [3.0, 1]}
    assert record["n_clusters"] == 3


def test_empty_input_gives_an_empty_record():
    record = rate_metric([], True)
    assert record["value"] is None and record["stderr"] is None and record["n"] == 0
    assert record["ci_low"] is None and record["per_cluster"] == {} and record["n_clusters"] == 0


@pytest.mark.parametrize("call, message", [
    (lambda: rate_metric([True, False], True, ["a"]), "got 2 values but 1 cluster ids"),
    (lambda: mean_metric([1.0, float("nan")], True), "finite numbers"),
    (lambda: mean_metric([1.0, "x"], True), "must be numbers"),
    (lambda: stats.estimate([2], kind="rate"), "rate values must be booleans"),
    (lambda: stats.estimate([1.0], kind="median"), "kind must be one of rate, mean"),
    (lambda: stats.estimate([1.0], kind="mean", level=95), "strictly between 0 and 1"),
    (lambda: stats.paired_difference([1.0], [1.0, 2.0], kind="mean", higher_is_better=True), "same prompts"),
    (lambda: stats.across_runs([{"a": [1, "x"]}], kind="rate"), "runs[0].per_cluster['a']"),
    (lambda: stats.across_runs([{"a": [3, 2]}], kind="rate"), "sum must lie in [0, count]"),
])
def test_bad_input_is_one_line(call, message):
    with pytest.raises(BadInput) as raised:
        call()
    assert message in str(raised.value) and "\n" not in str(raised.value)


# --------------------------------------------------------------------------- across runs


def _run(rng, rate, n_tasks=20, per_task=8):
    flags = rng.random((n_tasks, per_task)) < rate
    return rate_metric(flags.ravel(), False, np.repeat(np.arange(n_tasks), per_task), n_resamples=B)


def test_identical_seeds_are_not_treated_as_independent():
    record = _run(np.random.default_rng(0), 0.3)
    one = stats.across_runs([record["per_cluster"]], kind="rate", n_resamples=B)
    three = stats.across_runs([record["per_cluster"]] * 3, kind="rate", n_resamples=B)
    # Three copies of the same prompts carry no more information than one: same interval, not 1/√3.
    assert three.value == one.value
    assert three.high - three.low == pytest.approx(one.high - one.low)
    assert three.between_run_sd == 0.0 and three.n_runs == 3


def test_across_runs_is_wider_than_a_single_run_when_seeds_disagree():
    rng = np.random.default_rng(1)
    runs = [_run(rng, rate) for rate in (0.15, 0.30, 0.45)]
    pooled = stats.across_runs([r["per_cluster"] for r in runs], kind="rate", n_resamples=B)
    assert pooled.value == pytest.approx(np.mean([r["value"] for r in runs]))
    assert pooled.between_run_sd == pytest.approx(np.std([r["value"] for r in runs], ddof=1))
    for record in runs:
        assert pooled.high - pooled.low > record["ci_high"] - record["ci_low"]
    assert pooled.stderr > max(r["stderr"] for r in runs)
    assert pooled.low < min(r["value"] for r in runs) and pooled.high > max(r["value"] for r in runs)


# --------------------------------------------------------------------------- probability of improvement


def test_probability_of_improvement_is_1_when_a_dominates_and_half_when_equal():
    rng = np.random.default_rng(0)
    tasks = np.repeat(np.arange(10), 8)
    b = rng.normal(size=80)
    dominant = stats.paired_difference(b + 1.0, b, tasks, kind="mean", higher_is_better=True, n_resamples=B)
    assert dominant.poi == 1.0 and dominant.poi_high == 1.0 and dominant.poi_low < 1.0
    assert dominant.delta == pytest.approx(1.0) and dominant.better() and not dominant.worse()
    equal = stats.paired_difference(b, b, tasks, kind="mean", higher_is_better=True, n_resamples=B)
    assert equal.poi == 0.5 and equal.delta == 0.0 and not equal.worse() and not equal.better()
    # Lower is better: a smaller value wins.
    lower = stats.paired_difference(b - 1.0, b, tasks, kind="mean", higher_is_better=False, n_resamples=B)
    assert lower.poi == 1.0 and lower.better()


def test_probability_of_improvement_for_rates_counts_ties_as_half():
    # a harmful on 2 of 8 prompts, b on 6 of 8; lower is better. Per prompt: a better where (a=0, b=1).
    a = [True, True, False, False, False, False, False, False]
    b = [True, False, True, True, True, True, True, False]
    result = stats.paired_difference(a, b, kind="rate", higher_is_better=False, n_resamples=B)
    by_hand = np.mean([1.0 if (x < y) else 0.5 if x == y else 0.0 for x, y in zip(a, b)])
    assert result.poi == pytest.approx(by_hand) == pytest.approx(0.5 * (1 - (2 / 8 - 6 / 8)))
    assert result.poi_unit == "prompt"
    assert result.poi_low <= result.poi <= result.poi_high
    dominated = stats.paired_difference([False] * 16, [True] * 16, kind="rate", higher_is_better=False, n_resamples=B)
    assert dominated.poi == 1.0 and dominated.delta == -1.0 and dominated.better()
    same = stats.paired_difference([True, False] * 8, [True, False] * 8, kind="rate", higher_is_better=True,
                                   n_resamples=B)
    assert same.poi == 0.5 and same.low <= 0.0 <= same.high


def test_paired_runs_pool_per_cluster_and_match_per_prompt_rates():
    rng = np.random.default_rng(3)
    tasks = np.repeat(np.arange(16), 8)
    base = rng.random(128) < 0.8
    method = rng.random(128) < 0.3
    per_prompt = stats.paired_difference(method, base, tasks, kind="rate", higher_is_better=False, n_resamples=B)
    base_record = rate_metric(base, False, tasks, n_resamples=B)
    method_record = rate_metric(method, False, tasks, n_resamples=B)
    from_records = stats.paired_difference_runs([method_record["per_cluster"]], [base_record["per_cluster"]],
                                                kind="rate", higher_is_better=False, n_resamples=B)
    assert from_records.delta == pytest.approx(per_prompt.delta)
    assert (from_records.low, from_records.high) == pytest.approx((per_prompt.low, per_prompt.high))
    assert from_records.poi == pytest.approx(per_prompt.poi)
    assert from_records.worse() is False and from_records.better() is True and from_records.high < 0


def test_runs_paired_by_world_cover_the_difference_and_drop_the_shared_world_effect():
    """Three worlds, each easy or hard for every policy alike (base rate 0.3–0.7); the method
    halves each task's rate, so the true Δ over worlds is −0.25. Pairing run i with run i (one
    world) covers it (conservatively: the between-world spread of the differences already holds
    some task-sampling noise, which is counted again) and is narrower than adding both sides'
    between-world spreads."""
    rng = np.random.default_rng(5)
    covered, paired_widths, unpaired_widths = 0, [], []
    for run in range(200):
        method_runs, base_runs = [], []
        for world_rate in rng.uniform(0.3, 0.7, 3):
            task_rates = rng.beta(world_rate * 20, (1 - world_rate) * 20, 16)
            tasks = np.repeat(np.arange(16), 8)
            base = rng.random((16, 8)) < task_rates[:, None]
            method = rng.random((16, 8)) < (task_rates / 2)[:, None]
            base_runs.append(stats.cluster_table(base.ravel(), tasks, kind="rate"))
            method_runs.append(stats.cluster_table(method.ravel(), tasks, kind="rate"))
        paired = stats.paired_difference_runs(method_runs, base_runs, kind="rate", higher_is_better=False,
                                              n_resamples=B, seed=run, paired_runs=True)
        unpaired = stats.paired_difference_runs(method_runs, base_runs, kind="rate", higher_is_better=False,
                                                n_resamples=B, seed=run)
        covered += paired.low <= -0.25 <= paired.high
        paired_widths.append(paired.high - paired.low)
        unpaired_widths.append(unpaired.high - unpaired.low)
    assert paired.method.endswith("+between-unit-differences") and unpaired.method.endswith("+between-runs")
    assert covered / 200 >= 0.90, covered
    assert np.mean(paired_widths) < 0.8 * np.mean(unpaired_widths), (np.mean(paired_widths), np.mean(unpaired_widths))
    with pytest.raises(BadInput, match="one run per unit"):
        stats.paired_difference_runs(method_runs, base_runs[:2], kind="rate", higher_is_better=False,
                                     paired_runs=True)


def test_paired_difference_uses_only_shared_clusters():
    a = {"t1": [1, 4], "t2": [2, 4], "t3": [4, 4]}
    b = {"t2": [2, 4], "t3": [0, 4], "t9": [4, 4]}
    result = stats.paired_difference_runs([a], [b], kind="rate", higher_is_better=True, n_resamples=B)
    assert result.n_clusters == 2
    assert result.delta == pytest.approx(6 / 8 - 2 / 8)
    nothing = stats.paired_difference_runs([{"x": [1, 2]}], [{"y": [1, 2]}], kind="rate", higher_is_better=True)
    assert nothing.delta is None and nothing.n_clusters == 0
