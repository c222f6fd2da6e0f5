"""`d2o-bench tune`: equal-budget tuning on the validation split, then the test runs of the selection.

    d2o-bench tune --methods d2o,npo --preset tiny --out DIR [--trials N] [--set K=V ...]
                   [--executor local|docker|slurm] [--concurrency N] [--skip-test]

Per method, one Optuna study in `DIR/studies.db` searches the method's declared space (the
learning rate on a log scale over `tune.learning_rate_low..high` for every method, plus the
method's own `search_space`) with the seeded sampler `tune.sampler`. Every trial is a normal run
scored on `tune.validation_split` (`--set data.eval_split=...`), executed by the sweep's
executors into `DIR/trials/`; it records two objectives (`tune.harm_metric` minimised,
`tune.help_metric` maximised). Once `tune.trials` trials are COMPLETE, the declared rule
(harness/selection.py) picks one from validation numbers alone, and `DIR/studies/<method>/
study.json` records the study. The test stage then trains the selected configuration with every
seed in `tune.test_seeds` on every world seed in `tune.test_world_seeds`, scores it on
`tune.test_split`, and writes those runs' entries (each pointing at its study) to
`DIR/test/leaderboard.json`.

Rerunning the same command resumes: COMPLETE trials stay, a trial left RUNNING by a kill is
marked FAIL and its parameters are enqueued again (its run directory resumes its finished
stages), complete test runs are skipped. A failed trial run is recorded FAIL with its error and
does not count towards the budget; after `--max-failures` failures the command stops (exit 1).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from harness.errors import BadInput, RunFailure
from harness.registry import CategoricalDim, Dim, FloatDim, IntDim, get_method

STUDIES_DB = "studies.db"
TRIALS_DIR = "trials"
TEST_DIR = "test"
LOCK_FILE = "tune.lock"
# Tune settings that choose what the trials are (the rest of `tune` only reads their results).
_STUDY_TUNE_FIELDS = ("sampler", "sampler_seed", "validation_split", "harm_metric", "help_metric",
                      "learning_rate_low", "learning_rate_high")
# Metrics scored on every dataset; the two oracle rates need the tiny world.


def _progress(message: str) -> None:
    print(f"tune: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Search spaces and samplers


def search_space_for(method: str, tune_cfg) -> dict[str, Dim]:
    """The method's full search space: the shared learning rate first, then its own dimensions."""
    cls = get_method(method)
    return {
        "train.learning_rate": FloatDim(tune_cfg.learning_rate_low, tune_cfg.learning_rate_high, log=True),
        **{f"method.{name}": dim for name, dim in cls.search_space.items()},
    }


def space_json(space: dict[str, Dim]) -> dict:
    return {name: dim.to_json() for name, dim in space.items()}


def _distribution(dim: Dim):
    import optuna

    if isinstance(dim, FloatDim):
        return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, IntDim):
        return optuna.distributions.IntDistribution(dim.low, dim.high, log=dim.log)
    return optuna.distributions.CategoricalDistribution(list(dim.choices))


def suggest(trial, space: dict[str, Dim]) -> dict:
    """Ask the trial for every dimension, in the space's order; returns {name: value}."""
    params = {}
    for name, dim in space.items():
        if isinstance(dim, FloatDim):
            params[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, IntDim):
            params[name] = trial.suggest_int(name, dim.low, dim.high, log=dim.log)
        else:
            params[name] = trial.suggest_categorical(name, list(dim.choices))
    return params


def _capacity(dim: Dim) -> float:
    if isinstance(dim, FloatDim):
        return math.inf
    if isinstance(dim, IntDim):
        return dim.high - dim.low + 1
    return len(dim.choices)


def _axis(dim: Dim, m: int) -> list:
    """m evenly spaced values of one dimension (log-evenly for log dims), endpoints included."""
    if isinstance(dim, CategoricalDim):
        c = len(dim.choices)
        return [dim.choices[0]] if m == 1 else [dim.choices[round(i * (c - 1) / (m - 1))] for i in range(m)]
    lo, hi = (math.log(dim.low), math.log(dim.high)) if dim.log else (dim.low, dim.high)
    if m == 1:
        points = [(lo + hi) / 2]
    else:
        points = [lo + (hi - lo) * i / (m - 1) for i in range(m)]
    values = [float(f"{math.exp(p) if dim.log else p:.12g}") for p in points]  # 1e-4, not 9.99...e-05
    if m > 1:
        values[0], values[-1] = dim.low, dim.high  # exact endpoints, no rounding outside the range
    if isinstance(dim, IntDim):
        rounded = sorted({int(round(v)) for v in values})
        if len(rounded) < m:  # log spacing collapsed neighbours: space them linearly instead
            rounded = [int(round(dim.low + (dim.high - dim.low) * i / (m - 1))) for i in range(m)]
        return rounded
    return values


def even_grid(space: dict[str, Dim], n_points: int) -> dict[str, list]:
    """An even grid over the space with exactly `n_points` points: `n_points` is factored into one
    count per dimension, as balanced as possible, the larger counts going to the earlier
    dimensions (the learning rate first): 6 points over 2 dims are 3 learning rates × 2."""
    names = list(space)
    factors: list[int] = []
    remaining = n_points
    for index in range(len(names)):
        dims_left = len(names) - index
        if dims_left == 1:
            factors.append(remaining)
            break
        target = remaining ** (1 / dims_left)
        divisors = [k for k in range(1, remaining + 1) if remaining % k == 0]
        best = min(divisors, key=lambda k: (round(abs(math.log(k) - math.log(target)), 9), -k))
        factors.append(best)
        remaining //= best
    grid = {}
    for name, count in zip(names, sorted(factors, reverse=True)):
        if count > _capacity(space[name]):
            raise BadInput(f"tune.sampler=grid: {name} has only {int(_capacity(space[name]))} distinct values, "
                           f"too few for an even grid of {n_points} points; use another trial count or sampler")
        grid[name] = _axis(space[name], count)
    return grid


def make_sampler(name: str, seed: int, space: dict[str, Dim], n_trials: int):
    """The seeded sampler `tune.sampler` names; the same seed gives the same parameters."""
    import optuna

    if name == "qmc":
        distributions = {k: _distribution(d) for k, d in space.items()}

        class DeclaredSpaceQMCSampler(optuna.samplers.QMCSampler):
            """QMCSampler over the declared space from the first trial on (the stock sampler
            infers the space from a finished trial and samples its first trial at random)."""

            def infer_relative_search_space(self, study, trial):
                return dict(distributions)

        with warnings.catch_warnings():  # "QMCSampler is experimental": it is pinned with optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return DeclaredSpaceQMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":

        class BudgetGridSampler(optuna.samplers.GridSampler):
            """GridSampler whose grid has as many points as the budget; the tuner counts the
            budget itself, so the stock `study.stop()` (meant for `optimize`) is not called."""

            def after_trial(self, study, trial, state, values):
                return None

        return BudgetGridSampler(even_grid(space, n_trials), seed=seed)
    raise BadInput(f"tune.sampler: unknown sampler {name!r}")


# ----------------------------------------------------------------------------------------------
# Planning (everything resolved and validated before anything runs)


@dataclass
class MethodPlan:
    method: str
    space: dict[str, Dim]
    tune: object  # the resolved TuneConfig
    trial_sets: list[str]  # --set pairs of every trial, before its parameters
    test_sets: list[str]  # --set pairs of every test run, before the selected parameters
    seed: int  # the trials' run seed
    study_name: str
    trial_config: dict = field(default_factory=dict)  # a trial's resolved config (tuned fields at a probe)
    study_json: Path = field(default=None)


def _set_keys(sets: list[str]) -> set[str]:
    return {pair.split("=", 1)[0].strip() for pair in sets if "=" in pair}


def param_sets(params: dict) -> list[str]:
    """--set pairs for a trial's parameters; floats as repr so they round-trip exactly."""
    return [f"{name}={value!r}" if isinstance(value, float) else f"{name}={value}" for name, value in params.items()]


def reported_point(method: str, space: dict[str, Dim]) -> dict:
    """The method's reported setting as a trial: its own tuned hyperparameters at their Config
    defaults, the learning rate at the geometric middle of its range."""
    import dataclasses

    defaults = {f"method.{f.name}": f.default for f in dataclasses.fields(get_method(method).Config)
                if f.default is not dataclasses.MISSING}
    point = {}
    for name, dim in space.items():
        value = defaults.get(name)
        if value is None:
            value = _axis(dim, 1)[0]
        elif isinstance(dim, (FloatDim, IntDim)) and not dim.low <= value <= dim.high:
            raise BadInput(f"tune.include_reported_point: {method}'s reported {name}={value} lies outside its "
                           f"search space [{dim.low}, {dim.high}]")
        point[name] = value
    return point


def _midpoint(space: dict[str, Dim]) -> dict:
    return {name: values[0] for name, values in even_grid(space, 1).items()}


def _check_metrics(run_plan, tune_cfg) -> None:
    # The metrics this run's instruments report (the tiny world's oracle only in its own suite).
    cfg, directions = run_plan.cfg, run_plan.metric_directions
    for role, name, wanted in (("harm", tune_cfg.harm_metric, False), ("help", tune_cfg.help_metric, True)):
        key = f"tune.{role}_metric"
        if name not in directions:
            raise BadInput(f"{key}: suite {cfg.suite} reports no metric {name!r}; it reports: "
                           f"{', '.join(sorted(directions))}")
        if directions[name] != wanted:
            kind = "lower" if not wanted else "higher"
            raise BadInput(f"{key}: {name} is not {kind}-is-better; the {role} objective is "
                           f"{'minimised' if role == 'harm' else 'maximised'}")
    if tune_cfg.harm_metric == tune_cfg.help_metric:
        raise BadInput("tune.harm_metric and tune.help_metric must differ")


def plan_method(method: str, preset: str, sets: list[str]) -> MethodPlan:
    from harness.config import parse_set_options, resolve_config, without_added_defaults, without_operational_fields
    from harness.hashing import sha256_json

    cls = get_method(method)
    if not cls.trains:
        raise BadInput(f"method {method!r} trains nothing, so there is nothing to tune "
                       f"(its entries come with every run)")
    cfg = resolve_config(method=method, preset=preset, overrides=parse_set_options(sets))
    tune_cfg = cfg.tune
    space = search_space_for(method, tune_cfg)
    clash = sorted(_set_keys(sets) & (set(space) | {"data.eval_split"}))
    if clash:
        raise BadInput(f"tune chooses {', '.join(clash)} itself (search space / tune.*_split); do not --set it")
    splits = {"data.train_split": cfg.data.train_split, "tune.validation_split": tune_cfg.validation_split,
              "tune.test_split": tune_cfg.test_split}
    if len(set(splits.values())) != 3:
        raise BadInput(f"{', '.join(f'{k}={v}' for k, v in splits.items())}: the three splits must differ "
                       "(selection must never see the test split)")
    from harness.plan import resolve_plan

    # The trials' plan: the suite checked once, its metric table (the objectives must be in it).
    _check_metrics(resolve_plan(cfg, check=False), tune_cfg)
    # Trials never call the judge: it takes no part in selection, and its calls are the dearest
    # part of a run. Test runs keep the judge settings (harness/selection.JUDGE_FIELDS).
    from harness.selection import JUDGE_FIELDS

    judge_keys = {f"{section}.{name}" for section, name in JUDGE_FIELDS}
    trial_sets = [*(s for s in sets if s.split("=", 1)[0].strip() not in judge_keys),
                  f"data.eval_split={tune_cfg.validation_split}", "eval.judge_model=none"]
    if not tune_cfg.capability_on_trials:
        trial_sets.append("eval.lm_eval_tasks=[]")
    test_sets = [*sets, f"data.eval_split={tune_cfg.test_split}"]
    probe = param_sets(_midpoint(space))
    trial_cfg = resolve_config(method=method, preset=preset, overrides=parse_set_options(trial_sets + probe))
    for world_seed in tune_cfg.test_world_seeds or [None]:
        world = [] if world_seed is None else [f"world.seed={world_seed}"]
        for seed in tune_cfg.test_seeds:
            resolve_config(method=method, preset=preset, seed=seed,
                           overrides=parse_set_options(test_sets + probe + world))
    if tune_cfg.sampler == "grid":
        even_grid(space, tune_cfg.trials)
    # The study's identity: the trials' resolved configuration without the tuned fields, the
    # space, the sampler and the objectives. Settings that only read results (rule, budget,
    # test seeds) are left out, so changing them reuses the study's trials.
    # Fields added since (at their defaults) are left out, so earlier studies keep their names.
    config = without_added_defaults(without_operational_fields(trial_cfg.to_dict()))
    config.pop("tune", None)
    for name in space:
        section, _, key = name.partition(".")
        (config.get(section) or {}).pop(key, None)
    identity = {"config": config, "search_space": space_json(space),
                "tune": {k: getattr(tune_cfg, k) for k in _STUDY_TUNE_FIELDS}}
    if tune_cfg.include_reported_point:  # a later setting: studies without it keep their names
        identity["tune"]["include_reported_point"] = True
    name = f"{preset}-{method}-{sha256_json(identity)[:12]}"
    return MethodPlan(method=method, space=space, tune=tune_cfg, trial_sets=trial_sets, test_sets=test_sets,
                      seed=trial_cfg.seed, study_name=name, trial_config=trial_cfg.to_dict())


def _run_for(plan: MethodPlan, preset: str, seed: int, sets: list[str]):
    from harness.config import parse_set_options, resolve_config
    from harness.plan import resolve_plan
    from harness.sweep import SweepRun

    cfg = resolve_config(method=plan.method, preset=preset, seed=seed, overrides=parse_set_options(sets))
    return SweepRun(plan.method, seed, sets, resolve_plan(cfg, check=False).run_id)


# ----------------------------------------------------------------------------------------------
# Executing runs through the sweep's executors


def execute_runs(runs: list, args: argparse.Namespace, out: Path, after_each=None) -> list[dict]:
    """Run each run (skipping complete ones) with the chosen executor; one status per run, in
    order. Runs that share a run id (the same configuration twice) execute once. `after_each`
    is called after every local run finishes (saving the study's state)."""
    from harness.sweep import _is_complete, _run_external, run_local

    results: dict[str, dict] = {}
    pending = []
    for run in runs:
        if run.run_id in results or any(p.run_id == run.run_id for p in pending):
            continue
        if _is_complete(out, run.run_id):
            results[run.run_id] = {"status": "complete", "skipped": "run directory already complete"}
        else:
            pending.append(run)
    for run in pending:
        _progress(f"running {run.run_id} ({args.executor}; log {out / 'logs' / (run.run_id + '.log')})")
    if pending and args.executor == "local":
        with ThreadPoolExecutor(max_workers=max(1, min(args.concurrency, len(pending)))) as pool:
            def run_one(run):
                result = run_local(run, args.preset, out)
                if after_each is not None:
                    after_each()
                return result

            done = list(pool.map(run_one, pending))
    elif pending:
        done = _run_external(args, pending, out)
    else:
        done = []
    for run, result in zip(pending, done):
        results[run.run_id] = result
    return [results[run.run_id] for run in runs]


def _read_scores(out: Path, run_id: str) -> tuple[Optional[dict], Optional[str]]:
    from harness.rundir import RunLayout

    metrics = RunLayout.of(out, run_id).metrics
    path = metrics.path
    try:
        scores = metrics.read()
        from harness.instruments.checks import entry_validation

        return {"metrics": scores["metrics"], "base_metrics": scores["base_metrics"],
                "validation": entry_validation(scores)}, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"the run exited 0 but {path} is unreadable ({type(exc).__name__}); did its run id change?"


# ----------------------------------------------------------------------------------------------
# One method's study


def _open_study(plan: MethodPlan, storage, n_trials: int):
    import optuna

    sampler = make_sampler(plan.tune.sampler, plan.tune.sampler_seed, plan.space, n_trials)
    return optuna.create_study(study_name=plan.study_name, storage=storage, sampler=sampler,
                               directions=["minimize", "maximize"], load_if_exists=True)


def _recover_interrupted(study, storage) -> None:
    """Trials left RUNNING by a killed tune: FAIL them and enqueue their parameters again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "error", "interrupted: the tune that ran it was killed; "
                                                               "its parameters were enqueued again")
        study.tell(trial.number, state=TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
        _progress(f"{study.study_name}: trial {trial.number} was left RUNNING; marked FAIL"
                  + (", parameters enqueued again" if trial.params else ""))


def tune_method(plan: MethodPlan, args: argparse.Namespace, out: Path, storage, storage_url: str) -> dict:
    from optuna.trial import TrialState

    n_trials = plan.tune.trials
    trials_out = out / TRIALS_DIR
    study = _open_study(plan, storage, n_trials)
    _recover_interrupted(study, storage)
    if plan.tune.include_reported_point and not study.get_trials(deepcopy=False):
        study.enqueue_trial(reported_point(plan.method, plan.space), user_attrs={"reported_point": True})
    failures = 0
    while True:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(complete) >= n_trials:
            break
        if complete or failures:
            _progress(f"{plan.method}: {len(complete)}/{n_trials} trials COMPLETE")
        batch = []
        for _ in range(min(args.concurrency, n_trials - len(complete))):
            trial = study.ask()
            params = suggest(trial, plan.space)
            run = _run_for(plan, args.preset, plan.seed, plan.trial_sets + param_sets(params))
            trial.set_user_attr("run_id", run.run_id)
            _progress(f"{plan.method}: trial {trial.number} {params}")
            batch.append((trial, run))
        results = execute_runs([run for _, run in batch], args, trials_out)
        last_error = None
        for (trial, run), result in zip(batch, results):
            error = result.get("error") if result["status"] != "complete" else None
            values = None
            if error is None and result["status"] == "complete":
                scores, error = _read_scores(trials_out, run.run_id)
                if scores is not None:
                    trial.set_user_attr("metrics", scores["metrics"])
                    trial.set_user_attr("base_metrics", scores["base_metrics"])
                    _refuse_invalid_objectives(study, trial, plan.tune, scores["validation"])
                    values, error = _objective_values(scores["metrics"], plan.tune)
            elif error is None:
                error = f"run {run.run_id} {result['status']}"
            if error is None:
                study.tell(trial, values)
                _progress(f"{plan.method}: trial {trial.number} COMPLETE: {plan.tune.harm_metric}={values[0]:.4g} "
                          f"{plan.tune.help_metric}={values[1]:.4g}")
            else:
                failures += 1
                last_error = error
                trial.set_user_attr("error", error)
                study.tell(trial, state=TrialState.FAIL)
                _progress(f"{plan.method}: trial {trial.number} FAIL ({failures}/{args.max_failures}): {error}")
        _save_state_if_asked(args, out)
        if failures >= args.max_failures:
            raise RunFailure(f"tune {plan.method}: {failures} trial runs failed (limit --max-failures "
                             f"{args.max_failures}); last: {last_error}; logs under {trials_out / 'logs'}")
    return study_record(study, plan, args.preset, storage_url)


def _refuse_invalid_objectives(study, trial, tune_cfg, validation: dict) -> None:
    """Stop the study (BadInput, exit 2) when an objective comes from an instrument that failed its
    check: the trial is told FAIL with the reason and no study file is written. It can only be
    known once a run has built and checked its instruments, so one trial has run by then."""
    from optuna.trial import TrialState

    from harness.selection import invalid_objectives

    reasons = invalid_objectives({"harm": tune_cfg.harm_metric, "help": tune_cfg.help_metric}, validation)
    if reasons:
        trial.set_user_attr("error", reasons[0])
        study.tell(trial, state=TrialState.FAIL)
        raise BadInput(reasons[0])


def _objective_values(metrics: dict, tune_cfg) -> tuple[Optional[list[float]], Optional[str]]:
    values = []
    for name in (tune_cfg.harm_metric, tune_cfg.help_metric):
        record = metrics.get(name)
        if record is None:
            return None, f"the run has no metric {name!r} (has: {', '.join(sorted(metrics))})"
        value = record.get("value")
        if value is None or not math.isfinite(value):
            return None, f"the run's {name} has no value (n={record.get('n')})"
        values.append(float(value))
    return values, None


def _validation_record(record: dict) -> dict:
    return {"value": record.get("value"), "stderr": record.get("stderr"), "n": record.get("n"),
            "ci_low": record.get("ci_low"), "ci_high": record.get("ci_high")}


def study_record(study, plan: MethodPlan, preset: str, storage_url: str) -> dict:
    """The study file's content: every trial, the front, the selection (validation numbers only)."""
    import optuna
    from optuna.trial import TrialState

    from harness.selection import (RULE_TEXTS, TrialPoint, helpful_at_matched_harm, pareto_front,
                                   select_trial)

    tune_cfg = plan.tune
    harm, help_ = tune_cfg.harm_metric, tune_cfg.help_metric
    all_trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    # The budget: the first `trials` COMPLETE trials (a study extended by an earlier, larger
    # budget still gives this budget's selection).
    budget = [t for t in all_trials if t.state == TrialState.COMPLETE][: tune_cfg.trials]
    points = [TrialPoint(t.number, t.values[0], t.values[1]) for t in budget]
    base_metrics = budget[0].user_attrs["base_metrics"]
    base_harm = base_metrics[harm]["value"]
    selection = select_trial(points, base_harm, tune_cfg.harm_cap_ratio, tune_cfg.selection_rule)
    trials = []
    for t in all_trials:
        item = {"number": t.number, "state": t.state.name, "params": dict(t.params),
                "run_id": t.user_attrs.get("run_id")}
        if t.state == TrialState.COMPLETE:
            metrics = t.user_attrs.get("metrics", {})
            # Every metric the trial's instruments reported, not only the two objectives, so that
            # what a study says about any of them can be checked from the study file.
            item["validation"] = {name: _validation_record(metrics.get(name, {}))
                                  for name in dict.fromkeys([harm, help_, *sorted(metrics)])}
            item["in_budget"] = any(t.number == b.number for b in budget)
        if "error" in t.user_attrs:
            item["error"] = t.user_attrs["error"]
        if "retry_of" in t.user_attrs:
            item["retry_of"] = t.user_attrs["retry_of"]
        if t.user_attrs.get("reported_point"):
            item["reported_point"] = True
        trials.append(item)
    return {
        "method": plan.method,
        "preset": preset,
        "study_name": study.study_name,
        "storage": storage_url,
        "objectives": {"harm": harm, "help": help_},
        "search_space": space_json(plan.space),
        # What every trial ran with (tuned fields at a probe value): `run --selection` refuses a
        # test run that differs from it in anything but the tuned fields, seeds and split.
        "trial_config": plan.trial_config,
        "sampler": {"name": tune_cfg.sampler, "seed": tune_cfg.sampler_seed, "optuna": optuna.__version__},
        "n_trials": tune_cfg.trials,
        "validation_split": tune_cfg.validation_split,
        "selection_rule": {"name": tune_cfg.selection_rule, "text": RULE_TEXTS[tune_cfg.selection_rule],
                           "params": {"harm_cap_ratio": tune_cfg.harm_cap_ratio}},
        "base_validation": {harm: base_harm, help_: base_metrics[help_]["value"]},
        "trials": trials,
        "pareto_front": pareto_front(points),
        "selected_trial": selection.number,
        "selected_under_harm_cap": selection.under_cap,
        "harm_cap": selection.harm_cap,
        "helpful_at_matched_harm": helpful_at_matched_harm(points, base_harm, tune_cfg.matched_harm_ratio),
        **({"notes": [f"the base's validation {harm} is {base_harm:g} <= 0, so harm_cap_ratio × base harm is no "
                      "fraction of the base's harm; the rule was applied literally"]} if base_harm <= 0 else {}),
    }


# ----------------------------------------------------------------------------------------------
# The test stage


def _selected_run_class():
    from harness.sweep import SweepRun

    @dataclass
    class SelectedRun(SweepRun):
        """A test run: a sweep run that also passes `--selection STUDY.json` to `d2o-bench run`."""

        study: Path = None  # the study file on this machine
        host_out: Path = None  # the test directory on this machine

        def cli_args(self, preset: str, out: str) -> list[str]:
            if Path(out).resolve() == self.host_out.resolve():
                where = str(self.study.resolve())
            else:  # in a container the test directory is mounted at `out`; the study is copied there
                where = f"{out}/{_container_copy(self.method)}"
            return [*super().cli_args(preset, out), "--selection", where]

    return SelectedRun


def _container_copy(method: str) -> str:
    # Not named study.json, so that `publish --studies DIR` finds each study once.
    return f"selection/{method}.study.json"


def plan_test_runs(plans: list[MethodPlan], preset: str, out: Path) -> list:
    from harness.config import parse_set_options, resolve_config
    from harness.plan import resolve_plan
    from harness.selection import read_study, selected_params

    selected_run = _selected_run_class()
    test_out = out / TEST_DIR
    runs = []
    for plan in plans:
        params = selected_params(read_study(plan.study_json))
        for world_seed in plan.tune.test_world_seeds or [None]:
            world = [] if world_seed is None else [f"world.seed={world_seed}"]
            for seed in plan.tune.test_seeds:
                sets = plan.test_sets + param_sets(params) + world
                cfg = resolve_config(method=plan.method, preset=preset, seed=seed, overrides=parse_set_options(sets))
                runs.append(selected_run(plan.method, seed, sets, resolve_plan(cfg, check=False).run_id, study=plan.study_json,
                                         host_out=test_out))
    return runs


def run_test_stage(plans: list[MethodPlan], args: argparse.Namespace, out: Path) -> list[str]:
    """Train and score the selections on the test split; returns the failed runs' lines."""
    from harness.rundir import write_json_atomic

    test_out = out / TEST_DIR
    in_containers = args.executor == "docker" or (args.executor == "slurm" and args.slurm_runtime != "host")
    for plan in plans if in_containers else []:  # containers see only the mounted test directory
        copy = test_out / _container_copy(plan.method)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plan.study_json, copy)
    runs = plan_test_runs(plans, args.preset, out)
    _progress(f"test stage: {len(runs)} runs into {test_out}")
    results = execute_runs(runs, args, test_out, after_each=lambda: _save_state_if_asked(args, out))
    status = {run.run_id: {"method": run.method, "seed": run.seed, "overrides": run.overrides, **result}
              for run, result in zip(runs, results)}
    write_json_atomic(test_out / "test-status.json", status)
    _warn_on_stale_entries(test_out / "leaderboard.json", {run.run_id for run in runs})
    return [f"{rid}: {s.get('error')}" for rid, s in status.items() if s["status"] != "complete"]


def _warn_on_stale_entries(board: Path, planned: set[str]) -> None:
    """The test leaderboard should hold this plan's runs (and their base entries) only."""
    import json

    try:
        entries = json.loads(board.read_text()).get("entries", [])
    except (OSError, ValueError, AttributeError):
        return
    stale = sorted(e.get("run_id") for e in entries if e.get("method") != "base" and e.get("run_id") not in planned)
    if stale:
        _progress(f"warning: {board} also holds {len(stale)} entries of earlier test runs outside this "
                  f"selection ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); use a fresh --out "
                  "or remove them before publishing")


# ----------------------------------------------------------------------------------------------
# A study's state outside its directory (--state-dir): what a later session needs to go on


# What resuming needs: the trials' record, each study file and the leaderboards, and of each
# complete run (trials and test) its status and scores, not its weights or samples.
STATE_FILES = ("studies/*/study.json", "trials/leaderboard.json", "test/leaderboard.json", "test/test-status.json")


def _run_state_files(out: Path) -> list[tuple[Path, list[Path]]]:
    """(run directory, its files worth keeping) of every complete trial and test run under `out`."""
    from harness.rundir import RunLayout

    found = []
    for folder in (TRIALS_DIR, TEST_DIR):
        for run_dir in sorted(p for p in (out / folder).glob("*") if p.is_dir()):
            layout = RunLayout(run_dir)
            try:
                if not layout.status.read().get("complete"):
                    continue  # an unfinished run resumes from its own directory, or starts again
            except (OSError, ValueError, AttributeError):
                continue
            found.append((run_dir, [a.path for a in (layout.status, layout.metrics) if a.exists()]))
    return found


def save_state(out: Path, state_dir: Path) -> None:
    """Copy the study's state into `state_dir` (a folder to commit): the Optuna database through
    sqlite's backup (a consistent copy while the study is open) and the files resuming needs, of
    complete runs only."""
    from harness import atomic

    state_dir.mkdir(parents=True, exist_ok=True)
    # Two savers of one state (two tune processes sharing --state-dir) take turns (the folder's own
    # lock: no lock file in a folder meant to be committed), and a save lands whole or not at all:
    # a full disk half way leaves the previous state, not a database newer than its study files.
    with atomic.directory_lock(state_dir), atomic.all_or_none():
        _save_state_files(out, state_dir)


def _save_state_files(out: Path, state_dir: Path) -> None:
    import json
    import errno
    import sqlite3

    from harness import atomic
    from harness.rundir import write_json_atomic

    if (out / STUDIES_DB).is_file():
        with atomic.replacing(state_dir / STUDIES_DB) as tmp:
            source, target = sqlite3.connect(out / STUDIES_DB), sqlite3.connect(tmp)
            try:
                source.backup(target)
            except sqlite3.OperationalError as exc:
                if "full" not in str(exc):
                    raise
                # sqlite's word for ENOSPC: as any other full disk, so it reads as one line.
                raise OSError(errno.ENOSPC, str(exc), str(state_dir / STUDIES_DB)) from exc
            finally:
                source.close()
                target.close()
    paths = [p for pattern in STATE_FILES for p in sorted(out.glob(pattern))]
    run_files = _run_state_files(out)
    paths += [p for _, files in run_files for p in files]
    for path in paths:
        target = state_dir / path.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target, json.loads(path.read_text()))
    from harness.study_costs import save_costs

    save_costs(out, state_dir, [run_dir for run_dir, _ in run_files])




def restore_state(state_dir: Path, out: Path) -> int:
    """Copy a saved state into `out` where `out` lacks it (never over what is there); returns the
    number of files restored."""
    import shutil as _shutil

    restored = 0
    if not state_dir.is_dir():
        return 0
    for path in sorted(state_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        target = out / path.relative_to(state_dir)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _shutil.copyfile(path, target)
            restored += 1
    return restored


# ----------------------------------------------------------------------------------------------
# The command


def build_tune_parser():
    from harness.arguments import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="d2o-bench tune", description="Equal-budget tuning on the validation "
                                   "split, then test runs of each method's selected configuration.")
    parser.add_argument("--methods", required=True, help="comma-separated methods to tune (each gets the same budget)")
    parser.add_argument("--preset", default="tiny", help="preset whose `tune` section declares the protocol")
    parser.add_argument("--out", required=True, help="tuning directory: studies.db, studies/, trials/, test/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field for every trial and test run (repeatable); "
                             "tuned fields and data.eval_split are refused")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per method (default: the preset's tune.trials); same for every method")
    parser.add_argument("--max-failures", type=int, default=3,
                        help="stop (exit 1) once this many trial runs of one method failed in this invocation")
    parser.add_argument("--skip-test", action="store_true", help="tune and select only; no test runs")
    parser.add_argument("--executor", choices=["local", "docker", "slurm"], default="local",
                        help="where runs execute: local subprocesses, Docker containers or Slurm jobs")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="trials asked and run together (and test runs at once)")
    parser.add_argument("--state-dir", default=None,
                        help="folder (to commit) that keeps the study's state across machines: restored into "
                             "--out where missing before the study goes on, saved after every finished run")
    parser.add_argument("--image", default="d2o-bench:latest", help="image for --executor docker/slurm")
    parser.add_argument("--gpus", default=None, help="comma-separated GPU indices for --executor docker")
    parser.add_argument("--cache-dir", default=None,
                        help="host directory shared by containers/jobs as the harness cache (worlds, samples)")
    parser.add_argument("--slurm-runtime", choices=["apptainer", "docker", "host"], default="apptainer",
                        help="how a Slurm job runs the harness: the pinned image, or the installed one")
    parser.add_argument("--slurm-partition", default=None, help="Slurm partition (default: the cluster's)")
    parser.add_argument("--slurm-time-min", type=int, default=240, help="Slurm time limit per job, minutes")
    parser.add_argument("--slurm-gpus-per-job", type=int, default=1, help="GPUs per Slurm job")
    parser.add_argument("--slurm-cpus-per-task", type=int, default=8, help="CPUs per Slurm job")
    parser.add_argument("--slurm-mem-gb", type=int, default=64, help="memory per Slurm job, GB")
    return parser


def _save_state_if_asked(args: argparse.Namespace, out: Path) -> None:
    if getattr(args, "state_dir", None):
        from harness import atomic

        try:
            save_state(out, Path(args.state_dir))
        except OSError as exc:  # a full disk: the save landed whole or not at all
            raise RunFailure(f"--state-dir {args.state_dir}: not saved: {atomic.describe_os_error(exc)}; "
                             "rerun the same command to go on") from exc


def _check_options(args: argparse.Namespace) -> list[str]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise BadInput("--methods: empty list")
    if len(set(methods)) != len(methods):
        raise BadInput(f"--methods names a method twice: {args.methods}")
    for name, value in (("--concurrency", args.concurrency), ("--max-failures", args.max_failures)):
        if value < 1:
            raise BadInput(f"{name} must be >= 1, got {value}")
    if args.trials is not None and args.trials < 1:
        raise BadInput(f"--trials must be >= 1, got {args.trials}")
    if args.gpus is not None and not all(g.strip().isdigit() for g in args.gpus.split(",") if g.strip()):
        raise BadInput(f"--gpus must be comma-separated GPU indices, got {args.gpus!r}")
    if args.executor == "slurm":
        from harness.executors.slurm_executor import check_slurm_options

        check_slurm_options(image=args.image, runtime=args.slurm_runtime, image_digest=None,
                            time_min=args.slurm_time_min, gpus_per_job=args.slurm_gpus_per_job,
                            cpus_per_task=args.slurm_cpus_per_task, mem_gb=args.slurm_mem_gb)
    return methods


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def tune_main(argv: list[str]) -> int:
    import filelock
    import optuna

    from harness.rundir import write_json_atomic

    args = build_tune_parser().parse_args(argv)
    methods = _check_options(args)
    sets = list(args.overrides) + ([f"tune.trials={args.trials}"] if args.trials is not None else [])
    plans = [plan_method(method, args.preset, sets) for method in methods]
    out = Path(args.out)
    _quiet_optuna()
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(out / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BadInput(f"another `d2o-bench tune` is running on {out} (lock {out / LOCK_FILE})") from None
    try:
        if args.state_dir:
            restored = restore_state(Path(args.state_dir), out)
            if restored:
                _progress(f"restored {restored} state files from {args.state_dir}")
        storage_url = f"sqlite:///{(out / STUDIES_DB).resolve()}"
        storage = optuna.storages.RDBStorage(url=storage_url)
        for plan in plans:
            _progress(f"{plan.method}: study {plan.study_name}, {plan.tune.trials} trials, sampler "
                      f"{plan.tune.sampler} (seed {plan.tune.sampler_seed}), space {space_json(plan.space)}")
            record = tune_method(plan, args, out, storage, storage_url)
            plan.study_json = out / "studies" / plan.method / "study.json"
            write_json_atomic(plan.study_json, record)
            _progress(f"{plan.method}: selected trial {record['selected_trial']} -> {plan.study_json}")
            _save_state_if_asked(args, out)
        failed = [] if args.skip_test else run_test_stage(plans, args, out)
        _save_state_if_asked(args, out)
    finally:
        lock.release()
    _print_summary(plans, out, args.skip_test)
    for line in failed:
        print(f"tune: FAILED test run {line}", file=sys.stderr)
    if failed:
        raise RunFailure(f"{len(failed)} test run(s) failed; rerun the same command to retry them "
                         f"(status: {out / TEST_DIR / 'test-status.json'})")
    return 0


def _print_summary(plans: list[MethodPlan], out: Path, skipped_test: bool) -> None:
    from harness.selection import read_study

    for plan in plans:
        study = read_study(plan.study_json)
        trial = next(t for t in study["trials"] if t["number"] == study["selected_trial"])
        harm, help_ = study["objectives"]["harm"], study["objectives"]["help"]
        flag = "" if study["selected_under_harm_cap"] else "  (no trial under the harm cap: lowest harm taken)"
        print(f"{plan.method}: trial {trial['number']} {trial['params']}  validation {harm}="
              f"{trial['validation'][harm]['value']:.4g} {help_}={trial['validation'][help_]['value']:.4g}  "
              f"(base {study['base_validation'][harm]:.4g} / {study['base_validation'][help_]:.4g}){flag}")
    print(f"studies: {out / 'studies'}")
    if not skipped_test:
        print(f"test leaderboard: {out / TEST_DIR / 'leaderboard.json'}")
