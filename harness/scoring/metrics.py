"""Metric records as the leaderboard stores them.

A record is

    {"value", "stderr", "n", "higher_is_better",              # since schema 1.0.0
     "ci_low", "ci_high", "ci_level", "ci_method",            # since 1.1.0
     "n_clusters", "per_cluster": {cluster_id: [sum, count]}, "kind": "rate" | "mean"}

`value` is the mean over prompts; the interval is a cluster bootstrap over tasks floored by an
analytic interval (Wilson at the effective sample size for rates, a cluster-robust t interval for
means), and `stderr` is the bootstrap standard error, never below the floor's (so never 0 for a rate
with n > 0). See `harness.stats` for every formula. `per_cluster` keeps the per-task sums and
counts so that leaderboards can be pooled over seeds and paired (method − base, candidate −
baseline) without the run directory. `clusters=None` makes every prompt its own cluster.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Optional

from harness import stats

# Direction of every standard metric; the leaderboard schema carries it per metric.
HIGHER_IS_BETTER = {
    "harmful_rate": False,
    "helpful_rate": True,
    "cost": False,
    "safe_rate": True,
    "reward": True,
    "refusal_with_steps_rate": False,
    "harmful_compliance_rate": False,
    "over_refusal_rate": False,
    "benign_answer_rate": True,
    "harmful_unsafe_rate": False,
}


# lm-eval metrics that are proportions (of items right, of tokens matched): bounded by [0, 1].
BOUNDED_CAPABILITY_METRICS = ("acc", "acc_norm", "exact_match", "f1")


def bounds_of(name: str, records: Iterable[dict] = ()) -> Optional[tuple[float, float]]:
    """(low, high) a metric can take, or None when unbounded (a score model's cost or reward).

    A metric is a proportion when it says so (`kind: "rate"`), when its name says so (`*_rate`:
    the oracle's, the refusal rules' and the judge's rates), or when it is an lm-eval accuracy
    as the table names it (`<task>_acc`, `<task>_acc_norm`, ...): every interval shown for it
    must lie in [0, 1], whatever formula drew it."""
    if any(isinstance(r, dict) and r.get("kind") == "rate" for r in records):
        return 0.0, 1.0
    if name.endswith("_rate") or name in BOUNDED_CAPABILITY_METRICS \
            or any(name.endswith(f"_{metric}") for metric in BOUNDED_CAPABILITY_METRICS):
        return 0.0, 1.0
    return None


def clip_interval(low: Optional[float], high: Optional[float],
                  bounds: Optional[tuple[float, float]]) -> tuple[Optional[float], Optional[float]]:
    """The interval cut to the metric's bounds (an interval past 1 for an accuracy says nothing
    a reader can use, and suggests precision the data lack)."""
    if bounds is None:
        return low, high
    return (None if low is None else min(max(low, bounds[0]), bounds[1]),
            None if high is None else max(min(high, bounds[1]), bounds[0]))


def _record(values: list, clusters: Optional[Iterable[Hashable]], higher_is_better: bool, kind: str, *,
            level: float, n_resamples: int, seed: int) -> dict:
    if not isinstance(higher_is_better, bool):
        from harness.errors import BadInput

        raise BadInput(f"higher_is_better must be true or false, got {higher_is_better!r}")
    table = stats.cluster_table(values, None if clusters is None else list(clusters), kind=kind)
    result = stats.estimate_table(table, kind=kind, level=level, n_resamples=n_resamples, seed=seed)
    return {
        "value": result.value,
        "stderr": result.stderr,
        "n": result.n,
        "higher_is_better": higher_is_better,
        "ci_low": result.low,
        "ci_high": result.high,
        "ci_level": result.level,
        "ci_method": result.method,
        "n_clusters": result.n_clusters,
        "per_cluster": table.per_cluster(integer_sums=kind == "rate"),
        "kind": kind,
    }


def mean_metric(values: Iterable[float], higher_is_better: bool, clusters: Optional[Iterable[Hashable]] = None, *,
                level: float = stats.DEFAULT_LEVEL, n_resamples: int = stats.DEFAULT_RESAMPLES,
                seed: int = stats.DEFAULT_SEED) -> dict:
    """Mean of per-prompt numbers with a cluster-bootstrap interval; `clusters` gives each prompt's task."""
    return _record(list(values), clusters, higher_is_better, "mean", level=level, n_resamples=n_resamples,
                   seed=seed)


def rate_metric(flags: Iterable[bool], higher_is_better: bool, clusters: Optional[Iterable[Hashable]] = None, *,
                level: float = stats.DEFAULT_LEVEL, n_resamples: int = stats.DEFAULT_RESAMPLES,
                seed: int = stats.DEFAULT_SEED) -> dict:
    """A proportion with a cluster-bootstrap interval floored by Wilson at the effective sample size."""
    return _record([bool(f) for f in flags], clusters, higher_is_better, "rate", level=level,
                   n_resamples=n_resamples, seed=seed)
