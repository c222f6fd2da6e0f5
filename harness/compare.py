"""`d2o-bench compare BASELINE.json CANDIDATE.json`: did the candidate get significantly worse?

Entries are matched by a key (default method, preset, config_hash). Each metric is compared with
the same statistics the leaderboard's intervals use (`harness.stats`):

* Records that carry `per_cluster` (schema 1.1.0: per-task sums and counts): each side's runs
  (seeds under one key) are pooled per cluster, because seeds share the same test prompts and are
  never independent evidence; the paired difference candidate − baseline is bootstrapped over the
  clusters present on both sides (plus each side's between-run variance), and the candidate has
  regressed when that interval lies entirely on the metric's worse side. The interval's level is
  the two-sided coverage of ±z, 2Φ(z) − 1 (95.45% for the default z = 2), so `--z` keeps its
  meaning. The row reports the interval and the probability that the candidate is better than
  the baseline (per prompt, ties ½).
* Records without `per_cluster` (files written before 1.1.0, judge and capability records) fall
  back to the two-sample z-test on the recorded standard errors,

      z = (candidate − baseline) / sqrt(stderr_baseline² + stderr_candidate²),

  and the row says so ("legacy z-test"). Several runs under one key are averaged with
  stderr sqrt(Σ stderr²)/k there.

Only a change in the metric's worse direction counts: an improvement, however large, is never a
regression. A run that used to complete and now fails, or a metric that is gone, is a regression
too.

Training trajectories are checked separately, because two runs with the same config_hash and seed
should train alike even when their eval metrics stay within noise: on the steps both curves
record, the largest |candidate − baseline| and the absolute mean of (candidate − baseline) must
stay within `TrajectoryTolerance` (defaults in `DEFAULT_TOLERANCES`). Curves that record different
steps are a breach: the run did not do the same training.

Exit codes of `compare_main`: 0 no regression, 1 regression, 2 unusable input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from harness import atomic, stats
from harness.errors import BadInput
from harness.instruments import checks
from harness.leaderboard import check_leaderboard, read_leaderboard

DEFAULT_KEY = ("method", "preset", "config_hash")
# 2Φ(6) − 1 = 1 − 2e-9: beyond that a percentile interval is just the resamples' range.
MAX_Z = 6.0


@dataclass(frozen=True)
class TrajectoryTolerance:
    max_abs_deviation: float
    mean_drift: float


# Loss is O(1) for every method here; GPU nondeterminism moves a rerun's loss by far less than
# 0.05 at any step and its average by far less than 0.01. Gradient norms are noisier and larger.
DEFAULT_TOLERANCES = {
    "loss_curve": TrajectoryTolerance(max_abs_deviation=0.05, mean_drift=0.01),
    "grad_norm_curve": TrajectoryTolerance(max_abs_deviation=0.5, mean_drift=0.1),
}


# --------------------------------------------------------------------------- statistics


def z_statistic(baseline_value: float, baseline_stderr: Optional[float], candidate_value: float,
                candidate_stderr: Optional[float]) -> float:
    """Two-sample z of candidate − baseline; an unrecorded stderr counts as 0 (an exact value)."""
    difference = candidate_value - baseline_value
    spread = math.sqrt((baseline_stderr or 0.0) ** 2 + (candidate_stderr or 0.0) ** 2)
    if spread == 0.0:
        return 0.0 if difference == 0.0 else math.copysign(math.inf, difference)
    return difference / spread


def worse_z(z: float, higher_is_better: bool) -> float:
    """z measured towards the worse direction: positive means the candidate got worse."""
    return (-z if higher_is_better else z) + 0.0  # + 0.0 turns -0.0 into 0.0 for display


def _combine(records: list[dict]) -> dict:
    """Several runs under one key (e.g. seeds when the key omits config_hash): the mean of their
    values, with stderr sqrt(Σ stderr²)/k, the stderr of a mean of independent estimates."""
    if len(records) == 1:
        return records[0]
    values = [r["value"] for r in records]
    if any(v is None for v in values):
        return {**records[0], "value": None, "stderr": None}
    errors = [r.get("stderr") or 0.0 for r in records]
    k = len(records)
    return {"value": sum(values) / k, "stderr": math.sqrt(sum(e * e for e in errors)) / k,
            "n": sum(r.get("n", 0) for r in records), "higher_is_better": records[0]["higher_is_better"]}


# --------------------------------------------------------------------------- matching


def _key_value(entry: dict, field: str, name: str):
    if field in entry:
        return entry[field]
    provenance = entry.get("provenance") or {}
    if field in provenance:
        return provenance[field]
    raise BadInput(f"{name}: entry {entry.get('run_id')!r} has no key field {field!r} "
                   "(key fields are entry or provenance fields)")


def _group(entries: list[dict], key: tuple[str, ...], name: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        value = tuple(json.dumps(_key_value(entry, field, name), sort_keys=True) for field in key)
        groups.setdefault(value, []).append(entry)
    return groups


def _label(key: tuple[str, ...], value: tuple) -> dict:
    return {field: json.loads(part) for field, part in zip(key, value)}


def _cluster_test(where: str, metric: str, base_records: list[dict], cand_records: list[dict], level: float,
                  n_resamples: int, seed: int) -> Optional[dict]:
    """The paired cluster-bootstrap comparison, or None when no cluster is shared by both sides."""
    kinds = {stats.record_kind(r) for r in base_records + cand_records}
    if len(kinds) > 1:
        raise BadInput(f"{where}: metric {metric} is a rate on one side and a mean on the other")
    kind = kinds.pop()
    higher_is_better = base_records[0]["higher_is_better"]
    base_tables = [stats.record_table(r, f"{where}: {metric}") for r in base_records]
    cand_tables = [stats.record_table(r, f"{where}: {metric}") for r in cand_records]
    difference = stats.paired_difference_runs(cand_tables, base_tables, kind=kind, higher_is_better=higher_is_better,
                                              level=level, n_resamples=n_resamples, seed=seed)
    if difference.delta is None:
        return None
    base = stats.across_runs(base_tables, kind=kind, level=level, n_resamples=n_resamples, seed=seed)
    cand = stats.across_runs(cand_tables, kind=kind, level=level, n_resamples=n_resamples, seed=seed)
    return {"base": base, "cand": cand, "difference": difference}


def _side(estimate: "stats.Estimate") -> dict:
    return {"value": estimate.value, "stderr": estimate.stderr, "ci_low": estimate.low, "ci_high": estimate.high,
            "n_runs": estimate.n_runs}


def _compare_metrics(key_label: dict, base_runs: list[dict], cand_runs: list[dict], z_threshold: float,
                     n_resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED) -> tuple[list[dict], list[str]]:
    rows, regressions = [], []
    where = ",".join(f"{k}={v}" for k, v in key_label.items())
    level = stats.level_for_z(z_threshold)
    base_ok = [e for e in base_runs if e["status"] == "complete"]
    cand_ok = [e for e in cand_runs if e["status"] == "complete"]
    if base_ok and not cand_ok:
        regressions.append(f"{where}: every candidate run failed (baseline completed)")
        rows.append({"key": key_label, "metric": "status", "verdict": "regression",
                     "baseline": "complete", "candidate": "failed"})
        return rows, regressions
    if not base_ok:
        return rows, regressions
    metric_names = sorted({m for e in base_ok for m in e["metrics"]})
    # A metric of an instrument that failed its check against human labels on either side is not
    # a result (harness/instruments/checks.py): it is neither a regression nor an improvement.
    invalid: dict[str, tuple] = {}
    for e in base_ok + cand_ok:
        invalid.update(checks.invalid_metrics(checks.entry_validation(e)))
    for metric in metric_names:
        if checks.is_invalid(metric, invalid):
            instrument, figure = checks.failure_of(metric, invalid)
            rows.append({"key": key_label, "metric": metric,
                         "verdict": f"not compared: {instrument} failed its check ({figure})"})
            continue
        base_records = [e["metrics"][metric] for e in base_ok if metric in e["metrics"]]
        cand_records = [e["metrics"][metric] for e in cand_ok if metric in e["metrics"]]
        base = _combine(base_records)
        row: dict[str, Any] = {"key": key_label, "metric": metric, "higher_is_better": base["higher_is_better"],
                               "baseline": {"value": base["value"], "stderr": base["stderr"]}}
        if base["value"] is None:
            row.update(candidate=None, verdict="not comparable (baseline has no value)")
            rows.append(row)
            continue
        if not cand_records:
            row.update(candidate=None, verdict="regression")
            regressions.append(f"{where}: metric {metric} is missing from the candidate")
            rows.append(row)
            continue
        cand = _combine(cand_records)
        if cand["higher_is_better"] != base["higher_is_better"]:
            raise BadInput(f"{where}: metric {metric} changed direction (higher_is_better "
                           f"{base['higher_is_better']} in the baseline, {cand['higher_is_better']} in the candidate)")
        row["candidate"] = {"value": cand["value"], "stderr": cand["stderr"]}
        if cand["value"] is None:
            row["verdict"] = "regression"
            regressions.append(f"{where}: metric {metric} has no value in the candidate (baseline {base['value']:.4g})")
            rows.append(row)
            continue
        clustered = all(r.get("per_cluster") is not None for r in base_records + cand_records)
        paired = _cluster_test(where, metric, base_records, cand_records, level, n_resamples, seed) if clustered else None
        if paired is not None:
            difference = paired["difference"]
            row.update(test="paired cluster bootstrap", level=level, baseline=_side(paired["base"]),
                       candidate=_side(paired["cand"]), delta=difference.delta, delta_low=difference.low,
                       delta_high=difference.high, delta_stderr=difference.stderr,
                       p_improvement=difference.poi, p_improvement_low=difference.poi_low,
                       p_improvement_high=difference.poi_high, p_improvement_unit=difference.poi_unit,
                       n_clusters=difference.n_clusters, method=difference.method)
            if difference.worse():
                row["verdict"] = "regression"
                regressions.append(
                    f"{where}: {metric} {paired['base'].value:.4g} → {paired['cand'].value:.4g} "
                    f"(Δ {difference.delta:+.4g}, {level:.2%} interval [{difference.low:+.4g}, {difference.high:+.4g}] "
                    f"entirely worse; P(candidate better) {difference.poi:.3f})")
            elif difference.better():
                row["verdict"] = "improvement"
            else:
                row["verdict"] = "within noise"
            rows.append(row)
            continue
        row["test"] = ("legacy z-test (no cluster shared by both sides)" if clustered
                       else "legacy z-test (no per_cluster data)")
        z = z_statistic(base["value"], base["stderr"], cand["value"], cand["stderr"])
        towards_worse = worse_z(z, base["higher_is_better"])
        row.update(delta=cand["value"] - base["value"], z=z, z_worse=towards_worse)
        if towards_worse > z_threshold:
            row["verdict"] = "regression"
            regressions.append(f"{where}: {metric} {base['value']:.4g} → {cand['value']:.4g} "
                               f"(z={towards_worse:.2f} towards worse > {z_threshold}; legacy z-test)")
        elif -towards_worse > z_threshold:
            row["verdict"] = "improvement"
        else:
            row["verdict"] = "within noise"
        rows.append(row)
    return rows, regressions


# --------------------------------------------------------------------------- trajectories


def curve_deviation(baseline: list, candidate: list) -> dict:
    """Deviation of candidate from baseline on the steps both record (null points skipped)."""
    base = {int(step): value for step, value in baseline if value is not None}
    cand = {int(step): value for step, value in candidate if value is not None}
    common = sorted(base.keys() & cand.keys())
    differences = [cand[s] - base[s] for s in common]
    return {
        "steps_compared": len(common),
        "steps_only_in_baseline": len(base.keys() - cand.keys()),
        "steps_only_in_candidate": len(cand.keys() - base.keys()),
        "max_abs_deviation": max((abs(d) for d in differences), default=0.0),
        "mean_drift": abs(sum(differences) / len(differences)) if differences else 0.0,
    }


def _compare_trajectories(baseline: list[dict], candidate: list[dict],
                          tolerances: dict[str, TrajectoryTolerance]) -> tuple[list[dict], list[str]]:
    def by_run(entries):
        out = {}
        for entry in entries:
            train = entry["provenance"].get("train")
            if entry["status"] == "complete" and train:
                out.setdefault((entry["provenance"]["config_hash"], entry["seed"]), train)
        return out

    base_runs, cand_runs = by_run(baseline), by_run(candidate)
    rows, breaches = [], []
    for config_hash, seed in sorted(base_runs.keys() & cand_runs.keys()):
        for curve, tolerance in tolerances.items():
            base_curve = base_runs[(config_hash, seed)].get(curve) or []
            cand_curve = cand_runs[(config_hash, seed)].get(curve) or []
            if not base_curve and not cand_curve:
                continue
            deviation = curve_deviation(base_curve, cand_curve)
            problems = []
            if deviation["steps_only_in_baseline"] or deviation["steps_only_in_candidate"]:
                problems.append(f"steps differ ({deviation['steps_only_in_baseline']} only in baseline, "
                                f"{deviation['steps_only_in_candidate']} only in candidate)")
            if deviation["max_abs_deviation"] > tolerance.max_abs_deviation:
                problems.append(f"max |Δ| {deviation['max_abs_deviation']:.4g} > {tolerance.max_abs_deviation:g}")
            if deviation["mean_drift"] > tolerance.mean_drift:
                problems.append(f"mean drift {deviation['mean_drift']:.4g} > {tolerance.mean_drift:g}")
            rows.append({"config_hash": config_hash, "seed": seed, "curve": curve, **deviation,
                         "tolerance": asdict(tolerance), "breach": bool(problems), "problems": problems})
            if problems:
                breaches.append(f"config_hash={config_hash},seed={seed}: {curve} " + "; ".join(problems))
    return rows, breaches


# --------------------------------------------------------------------------- API


def compare(baseline: dict, candidate: dict, *, z_threshold: float = 2.0, key: Iterable[str] = DEFAULT_KEY,
            tolerances: Optional[dict[str, TrajectoryTolerance]] = None,
            baseline_name: str = "baseline", candidate_name: str = "candidate",
            n_resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED) -> dict:
    """Verdict of candidate against baseline (leaderboard documents); BadInput when nothing matches.

    `z_threshold` is the legacy z-test's threshold and sets the paired intervals' level 2Φ(z) − 1.
    """
    if not (isinstance(z_threshold, (int, float)) and math.isfinite(z_threshold) and z_threshold > 0):
        raise BadInput(f"compare: z threshold must be a positive number, got {z_threshold!r}")
    if z_threshold > MAX_Z:
        raise BadInput(f"compare: z threshold {z_threshold:g} is too large for a bootstrap interval (at most {MAX_Z:g})")
    key = tuple(key)
    if not key:
        raise BadInput("compare: the key needs at least one field")
    baseline = check_leaderboard(baseline, baseline_name)
    candidate = check_leaderboard(candidate, candidate_name)
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    base_groups = _group(baseline["entries"], key, baseline_name)
    cand_groups = _group(candidate["entries"], key, candidate_name)
    matched = sorted(base_groups.keys() & cand_groups.keys())
    if not matched:
        raise BadInput(f"compare: no entry of {candidate_name} matches one of {baseline_name} "
                       f"on key {','.join(key)}")
    metric_rows, regressions = [], []
    for value in matched:
        rows, found = _compare_metrics(_label(key, value), base_groups[value], cand_groups[value], z_threshold,
                                       n_resamples, seed)
        metric_rows.extend(rows)
        regressions.extend(found)
    trajectory_rows, breaches = _compare_trajectories(baseline["entries"], candidate["entries"], tolerances)
    regressions.extend(breaches)
    return {
        "verdict": "regression" if regressions else "ok",
        "z_threshold": z_threshold,
        "interval_level": stats.level_for_z(z_threshold),
        "key": list(key),
        "matched": len(matched),
        "unmatched_baseline": [_label(key, v) for v in sorted(base_groups.keys() - cand_groups.keys())],
        "unmatched_candidate": [_label(key, v) for v in sorted(cand_groups.keys() - base_groups.keys())],
        "metrics": metric_rows,
        "trajectories": trajectory_rows,
        "tolerances": {name: asdict(t) for name, t in tolerances.items()},
        "regressions": regressions,
    }


# --------------------------------------------------------------------------- CLI


def _number(value: Optional[float], digits: int = 4) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _measured(side) -> str:
    if not isinstance(side, dict):
        return str(side) if side is not None else "—"
    if side.get("ci_low") is not None:
        return f"{_number(side['value'])} [{_number(side['ci_low'], 3)}, {_number(side['ci_high'], 3)}]"
    return f"{_number(side['value'])} ± {_number(side['stderr'], 2)}"


def _evidence(row: dict) -> str:
    if "delta_low" in row:
        return (f"Δ {row['delta']:+.3g} [{row['delta_low']:+.3g}, {row['delta_high']:+.3g}], "
                f"P(better) {row['p_improvement']:.2f}")
    if "z_worse" in row:
        return f"z→worse {_number(row['z_worse'], 3)} ({row.get('test', 'legacy z-test')})"
    return ""


def format_report(result: dict) -> str:
    header = ("key", "metric", "baseline", "candidate", "test", "verdict")
    lines = [[",".join(f"{k}={v}" for k, v in row["key"].items()), row["metric"], _measured(row.get("baseline")),
              _measured(row.get("candidate")), _evidence(row), row["verdict"]]
             for row in result["metrics"]]
    for row in result["trajectories"]:
        lines.append([f"config_hash={row['config_hash']},seed={row['seed']}", row["curve"],
                      f"max|Δ| {_number(row['max_abs_deviation'], 3)}", f"drift {_number(row['mean_drift'], 3)}",
                      "", "breach" if row["breach"] else "within tolerance"])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    text = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in [header, *lines]]
    for label, unmatched in (("baseline", result["unmatched_baseline"]), ("candidate", result["unmatched_candidate"])):
        if unmatched:
            text.append(f"unmatched in {label}: {len(unmatched)}")
    text.append(f"verdict: {result['verdict'].upper()} ({len(result['regressions'])} regression(s), "
                f"{result['matched']} matched, z threshold {result['z_threshold']}, "
                f"paired intervals at {result['interval_level']:.2%})")
    text.extend(f"  regression: {line}" for line in result["regressions"])
    return "\n".join(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from harness.arguments import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="d2o-bench compare",
                                   description="Flag significant regressions of CANDIDATE against BASELINE.")
    parser.add_argument("baseline", metavar="BASELINE.json")
    parser.add_argument("candidate", metavar="CANDIDATE.json")
    parser.add_argument("--z", type=_positive, default=2.0,
                        help="significance in standard errors (default 2.0): the legacy z-test's threshold and, "
                             "for records with per_cluster data, the paired interval's level 2Φ(z)−1 (95.45%%)")
    parser.add_argument("--key", default=",".join(DEFAULT_KEY),
                        help=f"comma-separated match fields (default {','.join(DEFAULT_KEY)})")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the verdict here")
    for curve, tolerance in DEFAULT_TOLERANCES.items():
        flag = curve.replace("_curve", "").replace("_", "-")
        parser.add_argument(f"--{flag}-max-abs", type=_positive, default=tolerance.max_abs_deviation,
                            help=f"largest allowed |Δ| of {curve} at any step (default {tolerance.max_abs_deviation})")
        parser.add_argument(f"--{flag}-mean-drift", type=_positive, default=tolerance.mean_drift,
                            help=f"largest allowed |mean Δ| of {curve} (default {tolerance.mean_drift})")
    return parser


def _jsonable(value):
    """Infinite z (a change with zero recorded stderr) as a string: JSON has no Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def compare_main(argv: list[str]) -> int:
    from harness.rundir import write_json_atomic

    try:
        args = build_parser().parse_args(argv)
        if args.json_out:
            _check_json_out(Path(args.json_out))  # before the comparison, not after its report
        key = tuple(field.strip() for field in args.key.split(",") if field.strip())
        tolerances = {
            "loss_curve": TrajectoryTolerance(args.loss_max_abs, args.loss_mean_drift),
            "grad_norm_curve": TrajectoryTolerance(args.grad_norm_max_abs, args.grad_norm_mean_drift),
        }
        result = compare(read_leaderboard(Path(args.baseline)), read_leaderboard(Path(args.candidate)),
                         z_threshold=args.z, key=key, tolerances=tolerances,
                         baseline_name=args.baseline, candidate_name=args.candidate)
    except BadInput as exc:
        print(f"d2o-bench compare: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json_out:
        try:
            write_json_atomic(Path(args.json_out), _jsonable(result))
        except OSError as exc:
            print(f"d2o-bench compare: error: --json {args.json_out}: not written ({exc.strerror})", file=sys.stderr)
            return 1
    return 1 if result["verdict"] == "regression" else 0


def _check_json_out(path: Path) -> None:
    """--json names a file this process can write: a folder or a file where a folder must be is
    the user's to fix (exit 2), found before the comparison runs."""
    try:
        if path.is_dir():
            raise BadInput(f"--json {path}: is a directory; name the verdict file to write")
        linked = atomic.link_problem(path)
        if linked is not None:
            raise BadInput(f"--json {path}: {linked}; name a file or a link to one")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise BadInput(f"--json {path}: {parent} is not a directory")
    except OSError as exc:
        raise BadInput(f"--json {str(path)[:120]}: unusable path ({exc.strerror})") from None
