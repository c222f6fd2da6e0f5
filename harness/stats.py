"""Confidence intervals that respect how the test prompts were drawn: tasks, not prompts.

Every evaluation prompt comes from a *task* (the unit prompts are generated from; a task yields up
to 8 prompt templates). Prompts of one task share the task's difficulty, so they are not
independent: treating n prompts as n independent draws understates the uncertainty by the design
effect. Everything here therefore works on **clusters** (tasks): for cluster c = 1..C it keeps the
sum s_c of the per-prompt values (booleans count 1) and the number of prompts m_c. This is also
what a leaderboard record stores (`per_cluster: {cluster_id: [s_c, m_c]}`), so intervals can be
recomputed, pooled over runs and paired without the run directory.

Estimator. The ratio estimator θ̂ = Σ s_c / Σ m_c, i.e. the plain mean over prompts.

Per-run interval (`estimate`, `estimate_table`).
  1. Cluster bootstrap: scipy.stats.bootstrap(paired=True) resamples the C clusters with
     replacement (B resamples, default 9999, seeded) and recomputes θ* = Σ s*/Σ m*. The interval is
     the **percentile** interval [q(α/2), q(1−α/2)] of θ*; SE_boot is the standard deviation of θ*
     (scipy's `standard_error`). Percentile rather than BCa because it stays inside the range of
     the statistic ([0, 1] for rates), never returns NaN (BCa does when the bootstrap distribution
     is degenerate, e.g. a rate of 0), and BCa's acceleration comes from a jackknife over only
     C ≈ 16–30 clusters. Percentile's known weakness — undercoverage with few clusters and with
     skewed, near-boundary rates (≈83% for a rate of 0.03 on 16 tasks × 8 prompts in simulation) —
     is what the floor below repairs.
  2. Floor. The reported interval is the hull of the bootstrap interval and an analytic floor, so
     it is never narrower than the floor and never zero-width:
     * rates (`kind="rate"`): the Wilson score interval at the effective sample size,
           centre = (p̂ + q²/2n')/(1 + q²/n'),  half = q·sqrt(p̂(1−p̂)/n' + q²/4n'²)/(1 + q²/n'),
       with q the Student-t quantile t(1−α/2, df = max(C−1, 1)) (few clusters estimate the
       variance with C−1 degrees of freedom; Korn & Graubard 1998, Dean & Pagano 2015) and
       n' = n / deff. The design effect deff = 1 + (m₀−1)·ICC ≥ 1 uses the one-way ANOVA
       intra-cluster correlation ICC = (MSB − MSW)/(MSB + (m₀−1)·MSW), clipped to [0, 1], with
       MSB = Σ m_c(ȳ_c − ȳ)²/(C−1), MSW = Σ_c Σ_i (y_ci − ȳ_c)²/(n−C), m₀ = (n − Σ m_c²/n)/(C−1).
       For 0/1 data MSW needs only (s_c, m_c), because y² = y. When every cluster holds one
       prompt deff = 1. When the ICC cannot be estimated (fewer than 2 clusters, or constant data
       such as a rate of 0 or 1, where 0/0 arises) n' = C: as if prompts of a task were copies.
       Wilson never has zero width for n' > 0, so a rate of 0 or 1 gets an honest upper/lower bound.
     * means (`kind="mean"`): θ̂ ± q·SE_lin with the cluster-robust (CR1) linearisation variance of
       a ratio estimator, SE_lin² = C/(C−1) · Σ_c (s_c − θ̂ m_c)² / (Σ m_c)², the analytic
       counterpart of the cluster bootstrap plus the small-sample factor it lacks. Constant data
       (and a single cluster) give SE_lin = 0, and an unbounded mean has no scale to borrow, so
       the rule then assumes a per-task standard deviation of max(1, |θ̂|) (the scale of the
       scorer outputs here): SE = max(1, |θ̂|)/sqrt(C). It only applies when the clusters carry
       no spread at all.
     stderr = max(SE_boot, half-width of the floor / q): never 0 when n > 0.

Across runs (`across_runs`): R runs (training seeds × world seeds) evaluated on the same test
tasks. Seeds share the prompts, so their task-sampling errors are one and the same draw: they are
never treated as independent. Per cluster the runs are pooled, S_c = Σ_r s_rc, M_c = Σ_r m_rc,
θ̂ = Σ S_c/Σ M_c, and the cluster bootstrap of (S_c, M_c) gives the task-sampling part [L, U] and
SE_boot. By the law of total variance, Var θ̂ = E[Var(θ̂ | runs)] + Var(E[θ̂ | runs]); the second
term is estimated by s_b²/R, s_b² the sample variance (n−1) of the R run means. The interval is
        [θ̂ − sqrt(max(θ̂−L, 0)² + B²),  θ̂ + sqrt(max(U−θ̂, 0)² + B²)],  B = t(1−α/2, R−1)·s_b/sqrt(R)
(quadrature of half-widths; the t quantile for R−1 degrees of freedom is larger than the normal
one, so this is conservative for the total), clipped to [0, 1] for rates, with
stderr = sqrt(SE_boot² + s_b²/R). With R = 1 there is no between-run term. The floor is the
per-run floor computed on the pooled table, except that a rate's n' is the mean of the runs' own
n' (pooling seeds adds no prompts). Run-level response noise appears in both terms, which errs on
the wide side.

Paired differences (`paired_difference` for per-prompt values, `paired_difference_runs` for
per-cluster tables of several runs): a − b on the clusters present on both sides (count > 0).
Runs are pooled per cluster on each side as above (not paired by seed: a base policy is not
trained, and pooling keeps every cluster's prompts together). One bootstrap resamples the shared
clusters jointly and returns both Δ = θ_a − θ_b and the probability of improvement, so the two
intervals come from the same resamples. Each side's between-run term is added in quadrature as
above. Floors:
  * rates: MOVER (Zou & Donner 2008; Newcombe's hybrid score interval with a correlation term)
    from the two sides' Wilson floors (l, u) at their n':
        L = Δ − sqrt((θ_a−l_a)² + (u_b−θ_b)² − 2ρ(θ_a−l_a)(u_b−θ_b)),
        U = Δ + sqrt((u_a−θ_a)² + (θ_b−l_b)² − 2ρ(u_a−θ_a)(θ_b−l_b)),
    ρ the correlation of θ̂_a and θ̂_b from the cluster linearisation residuals
    r_c = (s_c − θ̂ m_c)/Σm (0 when a side has no spread). It keeps the pairing's power while
    giving score-interval behaviour at small counts, where the percentile bootstrap overstates
    certainty. A side whose ICC cannot be estimated (constant data) borrows the other side's
    design effect: both sides were evaluated on the same tasks.
  * means: Δ ± q·SE_lin with the residuals e_c = r_a,c − r_b,c (covariance included).
Probability of improvement (Agarwal et al. 2021, rliable): P(a better than b) + ½·P(tie), over
prompts compared pairwise on the same prompt; "better" is higher when the metric is higher-is-
better and lower otherwise; ties are exact equality and count ½.
  * 0/1 data: per prompt 1[a>b] + ½·1[a=b] = ½(1 + a − b), so PoI = ½(1 + sign·Δ) exactly
    (sign = +1 higher-is-better, −1 otherwise); with several runs per side it is the average over
    all (a-run, b-run) pairs on each prompt. Its interval is the same map of Δ's interval.
  * per-prompt float values: w_i = 1[a_i better] + ½·1[a_i = b_i], PoI = Σw/Σm over clusters,
    bootstrapped with Δ; floor: Wilson at n' of w (w ∈ [0, 1], so Var w ≤ μ(1−μ) and Wilson is
    conservative).
  * per-cluster float data only (leaderboards): per-prompt pairs are gone, so the comparison is per
    cluster (the pooled cluster means; unit "cluster"), floor Wilson at n' = number of clusters.

Everything is deterministic for a given seed. Cluster ids are compared as strings (JSON keys).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy import stats as _scipy_stats

from harness.errors import BadInput

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 9999
DEFAULT_SEED = 0
KINDS = ("rate", "mean")
RATE_METHOD = "cluster-bootstrap-percentile+wilson-floor"
MEAN_METHOD = "cluster-bootstrap-percentile+t-floor"


# --------------------------------------------------------------------------- cluster tables


@dataclass(frozen=True)
class ClusterTable:
    """Per-cluster sums and counts (and sums of squares when per-prompt values were seen)."""

    ids: tuple[str, ...]
    sums: np.ndarray
    counts: np.ndarray
    sumsq: Optional[np.ndarray] = None

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def n_clusters(self) -> int:
        return len(self.ids)

    @property
    def value(self) -> Optional[float]:
        return float(self.sums.sum() / self.counts.sum()) if self.n else None

    def per_cluster(self, integer_sums: bool = False) -> dict[str, list]:
        """{cluster_id: [sum, count]} as a leaderboard stores it."""
        return {cid: [int(round(s)) if integer_sums else float(s), int(m)]
                for cid, s, m in zip(self.ids, self.sums, self.counts)}


def _check_level(level: float) -> float:
    if not (isinstance(level, (int, float)) and not isinstance(level, bool) and 0 < level < 1):
        raise BadInput(f"confidence level must be a number strictly between 0 and 1, got {level!r}")
    return float(level)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise BadInput(f"statistic kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def _check_resamples(n_resamples: int) -> int:
    if not isinstance(n_resamples, int) or isinstance(n_resamples, bool) or n_resamples < 99:
        raise BadInput(f"n_resamples must be an integer ≥ 99, got {n_resamples!r}")
    return n_resamples


def cluster_table(values: Iterable[Any], clusters: Optional[Iterable[Hashable]] = None, *,
                  kind: str = "mean") -> ClusterTable:
    """Per-cluster sums, counts and sums of squares of per-prompt values.

    `clusters=None` makes every prompt its own cluster (ids "0", "1", ... in prompt order). For
    `kind="rate"` every value must be a boolean (or 0/1).
    """
    _check_kind(kind)
    xs = list(values)
    if kind == "rate":
        for index, x in enumerate(xs):
            if not (isinstance(x, (bool, np.bool_)) or (isinstance(x, (int, np.integer)) and x in (0, 1))):
                raise BadInput(f"rate values must be booleans, got {x!r} at position {index}")
        data = np.asarray([1.0 if x else 0.0 for x in xs], dtype=float)
    else:
        try:
            data = np.asarray([float(x) for x in xs], dtype=float)
        except (TypeError, ValueError):
            bad = next(x for x in xs if not isinstance(x, (int, float, np.number)) or isinstance(x, bool))
            raise BadInput(f"mean values must be numbers, got {bad!r}") from None
        if data.size and not np.isfinite(data).all():
            index = int(np.flatnonzero(~np.isfinite(data))[0])
            raise BadInput(f"mean values must be finite numbers, got {xs[index]!r} at position {index}")
    if clusters is None:
        ids = [str(i) for i in range(len(xs))]
    else:
        ids = [str(c) for c in clusters]
        if len(ids) != len(xs):
            raise BadInput(f"got {len(xs)} values but {len(ids)} cluster ids: one cluster id per prompt")
    order: dict[str, int] = {}
    codes = np.asarray([order.setdefault(cid, len(order)) for cid in ids], dtype=np.intp)
    k = len(order)
    sums = np.bincount(codes, weights=data, minlength=k) if xs else np.zeros(0)
    sumsq = np.bincount(codes, weights=data * data, minlength=k) if xs else np.zeros(0)
    counts = np.bincount(codes, minlength=k).astype(float) if xs else np.zeros(0)
    return ClusterTable(tuple(order), sums, counts, sumsq)


def table_from_per_cluster(per_cluster: Mapping[str, Sequence], *, kind: str = "mean",
                           name: str = "per_cluster") -> ClusterTable:
    """A table from a record's `{cluster_id: [sum, count]}`; clusters with count 0 are dropped.

    For rates the per-prompt values are 0/1, so Σy² = Σy and the ICC is still estimable.
    """
    _check_kind(kind)
    if not isinstance(per_cluster, Mapping):
        raise BadInput(f"{name}: expected an object {{cluster_id: [sum, count]}}, got {type(per_cluster).__name__}")
    ids, sums, counts = [], [], []
    for cid, pair in per_cluster.items():
        ok = (isinstance(pair, (list, tuple)) and len(pair) == 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)
              and math.isfinite(pair[0]) and float(pair[1]).is_integer() and pair[1] >= 0)
        if not ok:
            raise BadInput(f"{name}[{cid!r}]: expected [sum, count] with a finite sum and a count ≥ 0, got {pair!r}")
        if kind == "rate" and not 0 <= pair[0] <= pair[1]:
            raise BadInput(f"{name}[{cid!r}]: a rate's sum must lie in [0, count], got {pair!r}")
        if pair[1] == 0:
            continue
        ids.append(str(cid))
        sums.append(float(pair[0]))
        counts.append(float(pair[1]))
    sums_a, counts_a = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    return ClusterTable(tuple(ids), sums_a, counts_a, sums_a.copy() if kind == "rate" else None)


def pool_tables(tables: Sequence[ClusterTable]) -> ClusterTable:
    """Per cluster, the sums and counts of all runs added up (runs share the test prompts)."""
    order: dict[str, int] = {}
    for table in tables:
        for cid in table.ids:
            order.setdefault(cid, len(order))
    k = len(order)
    sums, counts = np.zeros(k), np.zeros(k)
    sumsq = np.zeros(k) if all(t.sumsq is not None for t in tables) else None
    for table in tables:
        index = np.asarray([order[c] for c in table.ids], dtype=np.intp)
        np.add.at(sums, index, table.sums)
        np.add.at(counts, index, table.counts)
        if sumsq is not None:
            np.add.at(sumsq, index, table.sumsq)
    return ClusterTable(tuple(order), sums, counts, sumsq)


def _align(a: ClusterTable, b: ClusterTable) -> tuple[ClusterTable, ClusterTable]:
    """Both tables restricted to the clusters they share, in a's order."""
    b_index = {cid: i for i, cid in enumerate(b.ids)}
    keep_a = [i for i, cid in enumerate(a.ids) if cid in b_index]
    keep_b = [b_index[a.ids[i]] for i in keep_a]

    def take(table: ClusterTable, keep: list[int]) -> ClusterTable:
        idx = np.asarray(keep, dtype=np.intp)
        return ClusterTable(tuple(table.ids[i] for i in keep), table.sums[idx], table.counts[idx],
                            None if table.sumsq is None else table.sumsq[idx])

    return take(a, keep_a), take(b, keep_b)


# --------------------------------------------------------------------------- analytic pieces


def quantile(level: float, df: Optional[float] = None) -> float:
    """Two-sided quantile: Student t with `df` degrees of freedom, normal when df is None."""
    p = 0.5 + level / 2
    return float(_scipy_stats.norm.ppf(p) if df is None else _scipy_stats.t.ppf(p, df))


def design_effect(table: ClusterTable) -> Optional[float]:
    """Kish's deff = 1 + (m₀−1)·ICC (ANOVA ICC, clipped to [0, 1]); None when not estimable."""
    if table.n_clusters and np.all(table.counts == 1):
        return 1.0  # one prompt per cluster: nothing to correlate
    if table.sumsq is None or table.n_clusters < 2:
        return None
    n, k = float(table.counts.sum()), table.n_clusters
    mean = table.sums.sum() / n
    between = float((table.sums ** 2 / table.counts).sum() - n * mean * mean)
    within = float(table.sumsq.sum() - (table.sums ** 2 / table.counts).sum())
    msb = max(between, 0.0) / (k - 1)
    msw = max(within, 0.0) / (n - k) if n > k else 0.0
    m0 = (n - float((table.counts ** 2).sum()) / n) / (k - 1)
    denominator = msb + (m0 - 1) * msw
    if not denominator > 1e-15 * max(1.0, abs(mean)) ** 2:
        return None  # constant data: 0/0
    icc = min(max((msb - msw) / denominator, 0.0), 1.0)
    return 1.0 + max(m0 - 1.0, 0.0) * icc


def effective_n(table: ClusterTable, fallback_deff: Optional[float] = None) -> float:
    """n / deff; the number of clusters when the design effect cannot be estimated."""
    deff = design_effect(table)
    if deff is None:
        deff = fallback_deff
    if deff is None:
        return float(table.n_clusters)
    return max(table.n / deff, 1.0) if table.n else 0.0


def wilson_interval(p: float, n_eff: float, level: float = DEFAULT_LEVEL,
                    df: Optional[float] = None) -> tuple[float, float]:
    """Wilson score interval for a proportion at (effective) sample size n_eff; t quantile with df."""
    if not n_eff > 0:
        return 0.0, 1.0
    q = quantile(level, df)
    q2n = q * q / n_eff
    centre = (p + q2n / 2) / (1 + q2n)
    half = q * math.sqrt(max(p * (1 - p), 0.0) / n_eff + q * q / (4 * n_eff * n_eff)) / (1 + q2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _residuals(table: ClusterTable) -> np.ndarray:
    """Linearisation residuals of the ratio estimator, (s_c − θ̂ m_c)/Σm."""
    total = table.counts.sum()
    return (table.sums - (table.sums.sum() / total) * table.counts) / total


def linearised_se(residuals: np.ndarray) -> float:
    """Cluster-robust (CR1) standard error from per-cluster linearisation residuals."""
    k = residuals.size
    if k < 2:
        return 0.0
    return math.sqrt(k / (k - 1) * float((residuals ** 2).sum()))


def _df(n_clusters: int) -> int:
    return max(n_clusters - 1, 1)


# --------------------------------------------------------------------------- bootstrap


def _ratio(s, m, axis=-1):
    return s.sum(axis=axis) / m.sum(axis=axis)


def _bootstrap(data: tuple[np.ndarray, ...], statistic, *, level: float, n_resamples: int, seed: int):
    """scipy's paired percentile bootstrap over clusters: (low, high, standard error, degenerate).

    Arrays of `low`, `high`, `se` when the statistic returns several values. With fewer than two
    clusters there is nothing to resample: the point, with zero spread (the floor takes over).
    """
    point = np.asarray(statistic(*data, axis=-1), dtype=float)
    if data[0].size < 2:
        return point, point, np.zeros_like(point), np.ones_like(point, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = _scipy_stats.bootstrap(data, statistic, paired=True, vectorized=True, axis=-1,
                                        method="percentile", confidence_level=level,
                                        n_resamples=n_resamples, rng=np.random.default_rng(seed))
    distribution = np.asarray(result.bootstrap_distribution, dtype=float)
    degenerate = np.ptp(distribution, axis=-1) <= 1e-12 * np.maximum(1.0, np.abs(point))
    return (np.asarray(result.confidence_interval.low, dtype=float),
            np.asarray(result.confidence_interval.high, dtype=float),
            np.asarray(result.standard_error, dtype=float), degenerate)


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval. `n` counts prompt evaluations (summed over runs)."""

    value: Optional[float]
    low: Optional[float]
    high: Optional[float]
    stderr: Optional[float]
    level: float
    method: Optional[str]
    kind: str
    n: int
    n_clusters: int
    n_eff: Optional[float] = None
    n_runs: int = 1
    between_run_sd: Optional[float] = None

    def as_dict(self) -> dict:
        return asdict(self)


def _empty(kind: str, level: float, n_runs: int = 1) -> Estimate:
    return Estimate(None, None, None, None, level, None, kind, 0, 0, None, n_runs, None)


def _floor(table: ClusterTable, kind: str, level: float, n_eff: Optional[float] = None) -> tuple[float, float, float, Optional[float]]:
    """(low, high, standard error, n_eff) of the analytic floor on one (possibly pooled) table."""
    theta = table.value
    df = _df(table.n_clusters)
    q = quantile(level, df)
    if kind == "rate":
        n_eff = effective_n(table) if n_eff is None else n_eff
        low, high = wilson_interval(theta, n_eff, level, df)
        return low, high, (high - low) / (2 * q), n_eff
    se = linearised_se(_residuals(table))
    if se <= 1e-12 * max(1.0, abs(theta)):
        se = max(1.0, abs(theta)) / math.sqrt(table.n_clusters)  # constant data: unit-scale rule
    return theta - q * se, theta + q * se, se, None


def estimate_table(table: ClusterTable, *, kind: str, level: float = DEFAULT_LEVEL,
                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Estimate:
    """Per-run interval from a cluster table (see the module docstring)."""
    _check_kind(kind)
    level = _check_level(level)
    n_resamples = _check_resamples(n_resamples)
    if table.n == 0:
        return _empty(kind, level)
    theta = table.value
    low, high, se, _ = _bootstrap((table.sums, table.counts), _ratio, level=level, n_resamples=n_resamples,
                                  seed=seed)
    f_low, f_high, f_se, n_eff = _floor(table, kind, level)
    return Estimate(theta, min(float(low), f_low, theta), max(float(high), f_high, theta),
                    max(float(se), f_se), level, RATE_METHOD if kind == "rate" else MEAN_METHOD, kind,
                    table.n, table.n_clusters, n_eff)


def estimate(values: Iterable[Any], clusters: Optional[Iterable[Hashable]] = None, *, kind: str,
             level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
             seed: int = DEFAULT_SEED) -> Estimate:
    """Per-run interval of the mean of per-prompt values (booleans for kind="rate")."""
    return estimate_table(cluster_table(values, clusters, kind=kind), kind=kind, level=level,
                          n_resamples=n_resamples, seed=seed)


def _as_table(run: Any, kind: str, name: str) -> ClusterTable:
    if isinstance(run, ClusterTable):
        return run
    return table_from_per_cluster(run, kind=kind, name=name)


def _between(tables: Sequence[ClusterTable], level: float) -> tuple[float, float]:
    """(s_b, B): sd of the run means and the between-run half-width t(R−1)·s_b/sqrt(R)."""
    return _spread([t.value for t in tables if t.n], level)


def _spread(values: Sequence[float], level: float) -> tuple[float, float]:
    if len(values) < 2:
        return 0.0, 0.0
    sd = float(np.std(values, ddof=1))
    return sd, quantile(level, len(values) - 1) * sd / math.sqrt(len(values))


def _combine(theta: float, low: float, high: float, *halves: float) -> tuple[float, float]:
    extra = sum(h * h for h in halves)
    return (theta - math.sqrt(max(theta - low, 0.0) ** 2 + extra),
            theta + math.sqrt(max(high - theta, 0.0) ** 2 + extra))


def across_runs(runs: Sequence[Any], *, kind: str, level: float = DEFAULT_LEVEL,
                n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Estimate:
    """Interval over R runs on the same test tasks: task sampling (pooled cluster bootstrap) plus
    between-run variance s_b²/R. `runs` are ClusterTables or `{cluster_id: [sum, count]}` mappings."""
    _check_kind(kind)
    level = _check_level(level)
    n_resamples = _check_resamples(n_resamples)
    tables = [_as_table(run, kind, f"runs[{i}].per_cluster") for i, run in enumerate(runs)]
    tables = [t for t in tables if t.n]
    if not tables:
        return _empty(kind, level, 0)
    pooled = pool_tables(tables)
    theta = pooled.value
    low, high, se, _ = _bootstrap((pooled.sums, pooled.counts), _ratio, level=level, n_resamples=n_resamples,
                                  seed=seed)
    sd, half = _between(tables, level)
    low, high = _combine(theta, float(low), float(high), half)
    if kind == "rate":
        low, high = max(low, 0.0), min(high, 1.0)
    n_eff = float(np.mean([effective_n(t) for t in tables])) if kind == "rate" else None
    f_low, f_high, f_se, n_eff = _floor(pooled, kind, level, n_eff)
    stderr = max(math.sqrt(float(se) ** 2 + sd * sd / len(tables)), f_se)
    return Estimate(theta, min(low, f_low, theta), max(high, f_high, theta), stderr, level,
                    (RATE_METHOD if kind == "rate" else MEAN_METHOD) + ("+between-runs" if len(tables) > 1 else ""),
                    kind, pooled.n, pooled.n_clusters, n_eff, len(tables), sd if len(tables) > 1 else None)


# --------------------------------------------------------------------------- paired differences


@dataclass(frozen=True)
class PairedDifference:
    """a − b on shared clusters, and the probability that a is better than b."""

    delta: Optional[float]
    low: Optional[float]
    high: Optional[float]
    stderr: Optional[float]
    poi: Optional[float]
    poi_low: Optional[float]
    poi_high: Optional[float]
    poi_unit: str
    level: float
    method: str
    kind: str
    higher_is_better: bool
    n_clusters: int
    n_runs_a: int = 1
    n_runs_b: int = 1

    def as_dict(self) -> dict:
        return asdict(self)

    def worse(self) -> bool:
        """The whole interval of a − b lies on the worse side of 0 (a is worse than b)."""
        if self.low is None:
            return False
        return self.high < 0 if self.higher_is_better else self.low > 0

    def better(self) -> bool:
        if self.low is None:
            return False
        return self.low > 0 if self.higher_is_better else self.high < 0


def _mover(a: ClusterTable, b: ClusterTable, level: float, n_eff_a: float, n_eff_b: float) -> tuple[float, float]:
    """MOVER interval of θ_a − θ_b from the two Wilson floors and their correlation."""
    df = _df(a.n_clusters)
    la, ua = wilson_interval(a.value, n_eff_a, level, df)
    lb, ub = wilson_interval(b.value, n_eff_b, level, df)
    ra, rb = _residuals(a), _residuals(b)
    norm = math.sqrt(float((ra ** 2).sum() * (rb ** 2).sum()))
    rho = float((ra * rb).sum()) / norm if norm > 0 else 0.0
    rho = min(max(rho, -1.0), 1.0)
    da_low, da_high = a.value - la, ua - a.value
    db_low, db_high = b.value - lb, ub - b.value
    delta = a.value - b.value
    low = delta - math.sqrt(max(da_low ** 2 + db_high ** 2 - 2 * rho * da_low * db_high, 0.0))
    high = delta + math.sqrt(max(da_high ** 2 + db_low ** 2 - 2 * rho * da_high * db_low, 0.0))
    return low, high


def _paired(a_tables: list[ClusterTable], b_tables: list[ClusterTable], *, kind: str, higher_is_better: bool,
            level: float, n_resamples: int, seed: int, prompt_wins: Optional[ClusterTable],
            paired_runs: bool = False) -> PairedDifference:
    pooled_a, pooled_b = pool_tables(a_tables), pool_tables(b_tables)
    a, b = _align(pooled_a, pooled_b)
    runs = (len(a_tables), len(b_tables))
    if a.n_clusters == 0:
        unit = "prompt" if prompt_wins is not None or kind == "rate" else "cluster"
        return PairedDifference(None, None, None, None, None, None, None, unit, level, "no shared cluster", kind,
                                higher_is_better, 0, *runs)
    sign = 1.0 if higher_is_better else -1.0
    if prompt_wins is not None:
        wins_table = _align(prompt_wins, a)[0]
        wins, win_counts, unit = wins_table.sums, wins_table.counts, "prompt"
    elif kind == "rate":
        wins, win_counts, unit = None, None, "prompt"
    else:
        means_a, means_b = a.sums / a.counts, b.sums / b.counts
        diff = sign * (means_a - means_b)
        wins = np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))
        win_counts, unit = np.ones_like(wins), "cluster"
        wins_table = ClusterTable(a.ids, wins, win_counts, wins * wins)

    if wins is None:
        def statistic(sa, ma, sb, mb, axis=-1):
            return _ratio(sa, ma, axis) - _ratio(sb, mb, axis)

        data = (a.sums, a.counts, b.sums, b.counts)
    else:
        def statistic(sa, ma, sb, mb, w, k, axis=-1):
            return np.stack([_ratio(sa, ma, axis) - _ratio(sb, mb, axis), _ratio(w, k, axis)])

        data = (a.sums, a.counts, b.sums, b.counts, wins, win_counts)
    low, high, se, _ = _bootstrap(data, statistic, level=level, n_resamples=n_resamples, seed=seed)
    low, high, se = np.atleast_1d(low), np.atleast_1d(high), np.atleast_1d(se)
    delta = a.value - b.value
    if paired_runs:
        # Run i of each side shares a unit (a world: its base, data and scorers), so what varies
        # between units is the per-unit difference; the two sides' spreads would count the
        # shared world effect twice.
        unit_deltas = [ra.value - rb.value for ra, rb in (_align(ta, tb) for ta, tb in zip(a_tables, b_tables))
                       if ra.n and rb.n]
        sd_d, half_d = _spread(unit_deltas, level)
        d_low, d_high = _combine(delta, float(low[0]), float(high[0]), half_d)
        stderr = math.sqrt(float(se[0]) ** 2 + sd_d ** 2 / max(len(unit_deltas), 1))
    else:
        sd_a, half_a = _between(a_tables, level)
        sd_b, half_b = _between(b_tables, level)
        d_low, d_high = _combine(delta, float(low[0]), float(high[0]), half_a, half_b)
        stderr = math.sqrt(float(se[0]) ** 2 + sd_a ** 2 / max(runs[0], 1) + sd_b ** 2 / max(runs[1], 1))
    q = quantile(level, _df(a.n_clusters))
    if kind == "rate":
        # Each side's n' from its own runs' tables (restricted to the shared clusters), pooled runs
        # adding no prompts; a side with no estimable ICC borrows the other side's design effect.
        def side_n_eff(tables, other_tables):
            restricted = [r for r in (_align(t, a)[0] for t in tables) if r.n]
            other = (design_effect(r) for r in (_align(t, a)[0] for t in other_tables) if r.n)
            fallback = next((d for d in other if d is not None), None)
            values = [effective_n(r, fallback) for r in restricted]
            return float(np.mean(values)) if values else float(a.n_clusters)

        f_low, f_high = _mover(a, b, level, side_n_eff(a_tables, b_tables), side_n_eff(b_tables, a_tables))
        f_low, f_high = max(f_low, -1.0), min(f_high, 1.0)
        method = "paired-cluster-bootstrap-percentile+mover-wilson-floor"
    else:
        se_lin = linearised_se(_residuals(a) - _residuals(b))
        f_low, f_high = delta - q * se_lin, delta + q * se_lin
        method = "paired-cluster-bootstrap-percentile+t-floor"
    d_low, d_high = min(d_low, f_low, delta), max(d_high, f_high, delta)
    if kind == "rate":
        d_low, d_high = max(d_low, -1.0), min(d_high, 1.0)
    stderr = max(stderr, (f_high - f_low) / (2 * q))
    if paired_runs and len(a_tables) > 1:
        method += "+between-unit-differences"
    elif len(a_tables) > 1 or len(b_tables) > 1:
        method += "+between-runs"

    if wins is None:  # 0/1 data: PoI = ½(1 + sign·Δ), exactly, and so is its interval
        poi = 0.5 * (1 + sign * delta)
        ends = sorted((0.5 * (1 + sign * d_low), 0.5 * (1 + sign * d_high)))
        poi_low, poi_high = ends
    else:
        poi = float(wins_table.sums.sum() / wins_table.counts.sum())
        n_eff = effective_n(wins_table) if unit == "prompt" else float(wins_table.n_clusters)
        w_low, w_high = wilson_interval(poi, n_eff, level, _df(a.n_clusters))
        poi_low, poi_high = min(float(low[1]), w_low, poi), max(float(high[1]), w_high, poi)
    return PairedDifference(delta, d_low, d_high, stderr, poi, poi_low, poi_high, unit, level, method, kind,
                            higher_is_better, a.n_clusters, *runs)


def paired_difference(a: Iterable[Any], b: Iterable[Any], clusters: Optional[Iterable[Hashable]] = None, *,
                      kind: str, higher_is_better: bool, level: float = DEFAULT_LEVEL,
                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> PairedDifference:
    """a − b for per-prompt values of two systems on the same prompts (position i is one prompt)."""
    _check_kind(kind)
    level = _check_level(level)
    n_resamples = _check_resamples(n_resamples)
    xs, ys = list(a), list(b)
    if len(xs) != len(ys):
        raise BadInput(f"paired difference needs the same prompts on both sides, got {len(xs)} and {len(ys)} values")
    cluster_ids = None if clusters is None else list(clusters)
    table_a = cluster_table(xs, cluster_ids, kind=kind)
    table_b = cluster_table(ys, cluster_ids, kind=kind)
    wins = None
    if kind == "mean":
        va, vb = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        diff = (va - vb) if higher_is_better else (vb - va)
        wins = cluster_table(np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0)), cluster_ids, kind="mean")
    return _paired([table_a], [table_b], kind=kind, higher_is_better=higher_is_better, level=level,
                   n_resamples=n_resamples, seed=seed, prompt_wins=wins)


def paired_difference_runs(a_runs: Sequence[Any], b_runs: Sequence[Any], *, kind: str, higher_is_better: bool,
                           level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
                           seed: int = DEFAULT_SEED, paired_runs: bool = False) -> PairedDifference:
    """a − b from per-cluster tables of several runs per side (pooled per cluster; see the docstring).

    paired_runs: a_runs[i] and b_runs[i] come from the same unit (e.g. one world seed), so the
    between-run part of the interval is the spread of the per-unit differences."""
    _check_kind(kind)
    level = _check_level(level)
    n_resamples = _check_resamples(n_resamples)
    if paired_runs and len(a_runs) != len(b_runs):
        raise BadInput(f"paired runs need one run per unit on each side, got {len(a_runs)} and {len(b_runs)}")
    a_tables = [_as_table(r, kind, f"a[{i}].per_cluster") for i, r in enumerate(a_runs)]
    b_tables = [_as_table(r, kind, f"b[{i}].per_cluster") for i, r in enumerate(b_runs)]
    if paired_runs:
        kept = [(ta, tb) for ta, tb in zip(a_tables, b_tables) if ta.n and tb.n]
        a_tables, b_tables = [ta for ta, _ in kept], [tb for _, tb in kept]
    else:
        a_tables, b_tables = [t for t in a_tables if t.n], [t for t in b_tables if t.n]
    if not a_tables or not b_tables:
        return PairedDifference(None, None, None, None, None, None, None,
                                "prompt" if kind == "rate" else "cluster", level, "no data", kind,
                                higher_is_better, 0, len(a_tables), len(b_tables))
    return _paired(a_tables, b_tables, kind=kind, higher_is_better=higher_is_better, level=level,
                   n_resamples=n_resamples, seed=seed, prompt_wins=None, paired_runs=paired_runs)


# --------------------------------------------------------------------------- leaderboard records


def record_kind(record: Mapping) -> str:
    """A record's kind; records without one (written before kinds existed) count as means."""
    kind = record.get("kind")
    return kind if kind in KINDS else "mean"


def record_table(record: Mapping, name: str = "metric") -> Optional[ClusterTable]:
    """The record's per-cluster table, or None when it has no `per_cluster` (a legacy record)."""
    per_cluster = record.get("per_cluster")
    if per_cluster is None:
        return None
    return table_from_per_cluster(per_cluster, kind=record_kind(record), name=f"{name}.per_cluster")


def level_for_z(z: float) -> float:
    """Two-sided coverage of ±z standard errors, e.g. z = 2 → 0.9545."""
    return float(2 * _scipy_stats.norm.cdf(z) - 1)
