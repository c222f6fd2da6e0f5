"""Metric records (value, standard error, n, direction) as the leaderboard stores them."""

from __future__ import annotations

import math
from typing import Iterable

# Direction of every standard metric; the leaderboard schema carries it per metric.
HIGHER_IS_BETTER = {
    "harmful_rate": False,
    "helpful_rate": True,
    "cost": False,
    "safe_rate": True,
    "reward": True,
}


def mean_metric(values: Iterable[float], higher_is_better: bool) -> dict:
    """Sample mean with the standard error of the mean (n−1 in the variance)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"value": None, "stderr": None, "n": 0, "higher_is_better": higher_is_better}
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return {"value": mean, "stderr": math.sqrt(var / n), "n": n, "higher_is_better": higher_is_better}


def rate_metric(flags: Iterable[bool], higher_is_better: bool) -> dict:
    """A proportion with the binomial standard error sqrt(p(1−p)/n)."""
    xs = [bool(f) for f in flags]
    n = len(xs)
    if n == 0:
        return {"value": None, "stderr": None, "n": 0, "higher_is_better": higher_is_better}
    p = sum(xs) / n
    return {"value": p, "stderr": math.sqrt(p * (1 - p) / n), "n": n, "higher_is_better": higher_is_better}
