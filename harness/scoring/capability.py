"""Capability check: lm-eval tasks run on an in-memory policy, reported as leaderboard metrics.

The shipped local tasks (`lm_eval_tasks/`, e.g. `tiny_world_knowledge`) are looked up first;
other names are lm-eval built-ins (e.g. `mmlu`). Indexing every built-in task costs ~15-20 s, so a
built-in name is first looked up only in the built-in folders whose names prefix it at a `_`
boundary (`mmlu_anatomy` -> `mmlu/`, `arc_easy` -> `arc/`; ~0.6 s for `mmlu`); the full index is
built only when that finds nothing or the task needs a sibling from elsewhere, and a name that
no built-in YAML file mentions is rejected without it. Built-in tasks
fetch their data from the Hugging Face Hub, so they need a network or a warm datasets cache;
the local tasks run offline.

Every metric that is a mean over items gets the scorers' treatment: a bootstrap interval that
resamples clusters of items (a task YAML names its cluster field in `metadata.cluster_field`;
otherwise each item is its own cluster), never zero-width at 0 or 1, and per-cluster counts so
runs pool in `publish`. lm-eval's own stderr is kept as `stderr_lm_eval`.

`lm_eval.evaluator.evaluate` is called rather than `simple_evaluate`: the latter reseeds the
global random generators, asks the Hub for the model's sha and shells out to git, none of which
belongs inside a pipeline stage.
"""

from __future__ import annotations

import contextlib
import functools

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Optional

from harness.errors import BadInput, RunFailure
from harness.scoring.metrics import mean_metric, rate_metric

log = logging.getLogger(__name__)

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
# Stderr of acc-like metrics is analytic; bootstrap only serves other aggregations, where 1000
# resamples keep the run short and the estimate usable.
BOOTSTRAP_ITERS = 1000
FEWSHOT_SEED = 1234
# lm-eval scores a batch by materialising its logits over the whole vocabulary for every token,
# then a log-softmax copy of them: 2 x batch x length x vocabulary floats. At real-smollm2's
# eval.batch_size of 32, MMLU's longest contexts made that 7.7 GB of a run's peak (measured:
# benchmarks/RESULTS.md, "Where a real run's memory goes"). Batches are therefore cut so each
# copy stays within this budget (at least one item per batch); results do not depend on it.
LOGITS_BUDGET_BYTES = 256 * 2**20


def _builtin_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks"


def _candidate_dirs(name: str) -> list[Path]:
    """Built-in task folders whose name prefixes `name` at a `_` boundary, longest first."""
    root = _builtin_tasks_dir()
    parts = name.split("_")
    found = []
    for end in range(len(parts), 0, -1):
        prefix = "_".join(parts[:end])
        for spelled in dict.fromkeys((prefix, prefix.replace("_", "-"))):
            folder = root / spelled
            if spelled and folder.is_dir():
                found.append(folder)
    return found


def _task_manager(paths: list[Path], *, include_defaults: bool = False):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(p) for p in paths], include_defaults=include_defaults)


@lru_cache(maxsize=1)
def _local_task_names() -> tuple[str, ...]:
    return tuple(_task_manager([LOCAL_TASKS_DIR]).all_tasks)


def local_task_names() -> list[str]:
    """Names of the tasks shipped with the harness (indexed once per process)."""
    return list(_local_task_names())


def _load_tasks(names: list[str], include_paths: list[Path] = ()) -> dict:
    """lm-eval's TaskDict for `names`, indexing as little of lm-eval's own task tree as works.

    `include_paths`: folders of task YAMLs a suite wrote (stock tasks pointed at local data)."""
    local = set(local_task_names()) | set(_task_manager(list(include_paths)).all_tasks if include_paths else [])
    paths = [LOCAL_TASKS_DIR, *map(Path, include_paths)]
    for name in names:
        if name not in local:
            paths += [p for p in _candidate_dirs(name) if p not in paths]
    manager = _task_manager(paths)
    missing = [n for n in names if n not in manager.all_tasks]
    if not missing:
        try:
            return manager.load(list(names))
        except KeyError as exc:
            # A group in a narrow folder can name a task defined elsewhere.
            log.info("capability: %s needs the full lm-eval task index (%s)", names, exc)
    absent = [n for n in missing if not _mentioned_in_builtin_yaml(n)]
    if not absent:
        log.info("capability: indexing all lm-eval tasks to find %s (about 15-20 s)", missing or names)
        manager = _task_manager([LOCAL_TASKS_DIR, *map(Path, include_paths)], include_defaults=True)
        absent = [n for n in names if n not in manager.all_tasks]
    if absent:
        raise BadInput(
            f"unknown lm-eval task(s) {', '.join(absent)}: not a shipped task "
            f"({', '.join(sorted(local))}) nor an lm-eval {_lm_eval_version()} task, group or tag"
        )
    return manager.load(list(names))


def check_task_names(names: list[str], suite_written: tuple[str, ...] = ()) -> None:
    """Refuse a task name lm-eval cannot know, before any stage: found at the score stage, it
    cost a whole run. Known: a shipped task, a name the run's suite writes (`suite_written`,
    matched as a suffix: real-safety's `<stock task>_offline`), or a name written in one of
    lm-eval's own task YAMLs (~1 s; the full index, 15-20 s, is left to the score stage)."""
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        return
    local = set(local_task_names())
    absent = [n for n in names if n not in local and not n.endswith(suite_written or ("\0",))
              and not _mentioned_in_builtin_yaml(n)]
    if absent:
        raise BadInput(f"eval.lm_eval_tasks: unknown lm-eval task(s) {', '.join(absent)}: not a shipped task "
                       f"({', '.join(sorted(local))}) nor an lm-eval {_lm_eval_version()} task, group or tag")


def _mentioned_in_builtin_yaml(name: str) -> bool:
    """Whether any built-in task YAML contains `name` at all (~1 s, against ~15-20 s to index).

    Every task, group and tag name lm-eval knows is written in one of its YAML files, so a name
    found in none of them is unknown without building the index.
    """
    for path in _builtin_tasks_dir().glob("**/*.yaml"):
        try:
            if name in path.read_text(encoding="utf-8", errors="ignore"):
                return True
        except OSError:
            continue
    return False


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" where it has no stderr
    return number if math.isfinite(number) else None


def _metrics(scores: dict, higher_is_better: dict, n: int) -> dict:
    """{"acc": {"value", "stderr", "n", "higher_is_better"}, ...} from lm-eval's "acc,none" keys."""
    metrics = {}
    for key, value in scores.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, _, filter_name = key.partition(",")
        label = metric if filter_name == "none" else f"{metric}/{filter_name}"
        metrics[label] = {
            "value": _number(value),
            "stderr": _number(scores.get(f"{metric}_stderr,{filter_name}")),
            "n": n,
            "higher_is_better": bool(higher_is_better.get(metric, True)),
        }
    return metrics


def _metric_and_filter(label: str) -> tuple[str, str]:
    metric, _, filter_name = label.partition("/")
    return metric, filter_name or "none"


def _cluster_field(task) -> Optional[str]:
    """The doc field that groups a task's items (items about one procedure are not independent),
    declared as `metadata: {cluster_field: ...}` in the task YAML; None: each item stands alone."""
    metadata = getattr(getattr(task, "config", None), "metadata", None) or {}
    field = metadata.get("cluster_field") if isinstance(metadata, dict) else None
    return str(field) if field else None


def _with_interval(record: dict, metric: str, filter_name: str, leaves: list[str], results: dict,
                   loaded: dict) -> dict:
    """The record with a cluster-bootstrap interval and per-cluster counts from the logged
    samples (as the scorers' metrics have), so capability numbers pool across runs and get
    intervals like every other metric. Left as lm-eval reported it where the samples do not
    reproduce its value (a metric that is not a mean over items)."""
    values, clusters = [], []
    for leaf in leaves:
        field = _cluster_field(loaded["tasks"].get(leaf))
        for sample in results.get("samples", {}).get(leaf, []):
            if sample.get("filter") != filter_name or metric not in sample:
                continue
            value = _number(sample[metric])
            if value is None:
                return record
            doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
            unit = doc.get(field) if field and field in doc else f"doc{sample.get('doc_id')}"
            values.append(value)
            clusters.append(f"{leaf}:{unit}")
    if not values or record["value"] is None or not math.isclose(sum(values) / len(values), record["value"],
                                                                   rel_tol=1e-9, abs_tol=1e-12):
        return record
    binary = all(v in (0.0, 1.0) for v in values)
    interval = (rate_metric([v == 1.0 for v in values], record["higher_is_better"], clusters) if binary
                else mean_metric(values, record["higher_is_better"], clusters))
    return {**interval, "value": record["value"], "stderr_lm_eval": record["stderr"]}


def _summarise(results: dict, loaded: dict, names: list[str]) -> dict:
    samples = results.get("n-samples", {})
    leaf_n = {task: int(counts.get("effective", 0)) for task, counts in samples.items()}
    group_leaves = {name: [t.task_name for t in group.get_all_tasks()] for name, group in loaded["groups"].items()}
    out = {}
    for name in names:
        if name in group_leaves:
            leaves = group_leaves[name]
            scores = results.get("groups", {}).get(name) or results["results"].get(name, {})
            n = sum(leaf_n.get(t, 0) for t in leaves)
            n_shot = sorted({results.get("n-shot", {}).get(t) for t in leaves} - {None})
            version = results.get("versions", {}).get(name)
            entry = {"version": version, "n_shot": n_shot[0] if len(n_shot) == 1 else n_shot, "n": n,
                     "subtasks": leaves}
        else:
            scores = results["results"].get(name, {})
            n = leaf_n.get(name, 0)
            entry = {"version": results.get("versions", {}).get(name),
                     "n_shot": results.get("n-shot", {}).get(name), "n": n}
        metrics = _metrics(scores, results.get("higher_is_better", {}).get(name, {}), n)
        leaves = group_leaves.get(name, [name])
        entry["metrics"] = {label: _with_interval(record, *_metric_and_filter(label), leaves, results, loaded)
                            for label, record in metrics.items()}
        out[name] = entry
    return out


def _tokens_of(request, max_length: int) -> Optional[int]:
    """The padded length lm-eval gives a loglikelihood request, (args, context, continuation);
    None for a request that is not tokenised yet (a generation request)."""
    if isinstance(request, tuple) and len(request) == 3 and isinstance(request[1], list):
        _, context, continuation = request
        return max(1, len((context + continuation)[-(max_length + 1):][:-1]))
    return None


def batch_plan(lengths: list[Optional[int]], *, max_batch: int, budget_tokens: int) -> list[int]:
    """For requests sorted longest first (as lm-eval orders them), the size of the batch each
    one falls in: a batch starts at its longest request and holds as many as keep
    batch x that length within `budget_tokens`, at least 1 and at most `max_batch`. A request of
    unknown length (None) is budgeted at `max_batch`."""
    sizes, start = [0] * len(lengths), 0
    while start < len(lengths):
        length = lengths[start]
        fits = max_batch if length is None else max(1, min(max_batch, budget_tokens // length))
        size = min(fits, len(lengths) - start)
        sizes[start:start + size] = [size] * size
        start += size
    return sizes


def _budgeted_lm(model, tokenizer, max_batch: int):
    """lm-eval's HFLM with batches cut to a logits memory budget (LOGITS_BUDGET_BYTES).

    Uses lm-eval's adaptive-batch hooks (`batch_size="auto"`): `_batch_scheduler` is asked the
    size of the batch at each position of the length-sorted requests, `_detect_batch_size` the
    one size for generation and rolling windows. lm-eval's own versions probe by running
    forward passes until CUDA reports out-of-memory, which never happens on a CPU."""
    from lm_eval.models.huggingface import HFLM

    vocabulary = int(model.get_output_embeddings().weight.shape[0])
    element = max(next(model.parameters()).element_size(), 4)  # log-softmax may upcast
    budget_tokens = max(1, LOGITS_BUDGET_BYTES // (2 * vocabulary * element))

    class BudgetedHFLM(HFLM):
        _planned_for = None
        _plan: list[int] = []

        def _batch_scheduler(self, pos, requests):
            if self._planned_for is not requests:  # the same tuple for one pass over requests
                self._planned_for = requests
                self._plan = batch_plan([_tokens_of(r, self.max_length) for r in requests],
                                        max_batch=max_batch, budget_tokens=budget_tokens)
            return self._plan[pos]

        def _detect_batch_size(self, requests=None, pos: int = 0):
            length = _tokens_of(requests[pos], self.max_length) if requests else self.max_length
            return batch_plan([length], max_batch=max_batch, budget_tokens=budget_tokens)[0]

    return BudgetedHFLM(pretrained=model, tokenizer=tokenizer, batch_size="auto", max_batch_size=max_batch)


@contextlib.contextmanager
def _labelled_request_building():
    """lm-eval draws an unlabelled bar while it builds a task's requests (lm_eval.api.task's
    `tqdm(doc_id_docs, total=...)`): give it a label for the call's length."""
    try:
        import lm_eval.api.task as lm_task
    except ImportError:
        yield
        return
    original = getattr(lm_task, "tqdm", None)
    if original is None:
        yield
        return
    lm_task.tqdm = functools.partial(original, desc="lm-eval: building requests")
    try:
        yield
    finally:
        lm_task.tqdm = original


def run_capability(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 16,
    num_fewshot: int | None = None,
    device: str = "cpu",
    include_paths: list[Path] = (),
) -> dict:
    """Runs lm-eval `tasks` on a loaded causal LM; returns the leaderboard's capability section.

    {"lm_eval_version": str, "tasks": {name: {"version", "n_shot", "n",
      "metrics": {metric: {"value", "stderr", "n", "higher_is_better", and for means over items
      "ci_low", "ci_high", "ci_level", "ci_method", "n_clusters", "per_cluster", "kind",
      "stderr_lm_eval"}}}}}
    """
    names = [str(t).strip() for t in (tasks or []) if str(t).strip()]
    if not names:
        raise BadInput("capability: no lm-eval task named")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise BadInput(f"capability: limit must be a positive integer, got {limit!r}")
    if num_fewshot is not None and (not isinstance(num_fewshot, int) or num_fewshot < 0):
        raise BadInput(f"capability: num_fewshot must be a non-negative integer, got {num_fewshot!r}")

    from lm_eval.evaluator import evaluate

    loaded = _load_tasks(names, include_paths)
    for task in loaded["tasks"].values():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)

    if device and str(model.device) != str(device):
        model.to(device)
    was_training = model.training
    model.eval()
    try:
        lm = _budgeted_lm(model, tokenizer, max_batch=batch_size)
        with _labelled_request_building():
            results = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=BOOTSTRAP_ITERS,
                               log_samples=True)  # per-item results: task-clustered intervals
    except BadInput:
        raise
    except Exception as exc:
        raise RunFailure(f"capability: lm-eval failed on {', '.join(names)}: {type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    if results is None:
        raise RunFailure("capability: lm-eval returned no results (not rank 0)")

    # A tag has no row of its own in lm-eval's results: its tasks are reported one by one.
    reported = [n for n in names if n in loaded["tasks"] or n in loaded["groups"]]
    covered = {t.task_name for g in reported if g in loaded["groups"] for t in loaded["groups"][g].get_all_tasks()}
    reported += [t for t in loaded["tasks"] if t not in covered and t not in reported]
    return {"lm_eval_version": _lm_eval_version(), "tasks": _summarise(results, loaded, reported)}
