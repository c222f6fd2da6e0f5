"""`d2o-bench`: the command line.

    d2o-bench [run] [--method NAME] [--preset NAME] [--out DIR] [--seed N] [--set key=value ...]
    d2o-bench methods
    d2o-bench config [--method NAME] [KEY ...]
    d2o-bench sweep --methods a,b --seeds 0,1,2 [--grid key=v1,v2] [--out DIR]
    d2o-bench tune --methods a,b --out DIR [--trials N] [--skip-test]
    d2o-bench publish LEADERBOARD... --to DIR
    d2o-bench compare BASELINE.json CANDIDATE.json
    d2o-bench serve-judge --model PATH

Exit codes: 0 success, 2 bad usage or input, 1 a failure while running. Every error is one line
on stderr.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings
from pathlib import Path

from harness.arguments import OneLineArgumentParser
from harness.errors import BadInput, D2OBenchError

DESCRIPTION = ("Train and score LLM alignment from negative samples (D²O and baselines) on one loop, "
               "into versioned leaderboards.")

# Every subcommand: where its main(argv) lives, imported only when it runs, and what it does.
# Dispatch and `--help` both read this table.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("harness.cli:run_main", "train and score one method (the default: `d2o-bench --method d2o`)"),
    "methods": ("harness.cli:methods_main", "list the registered methods"),
    "config": ("harness.settings:config_main",
               "list every --set key with its type, default, help and the presets that set it"),
    "sweep": ("harness.sweep:sweep_main", "a grid of methods × seeds × hyperparameters into one leaderboard"),
    "tune": ("harness.tune:tune_main",
             "equal-budget tuning on the validation split, then test runs of the selected configurations"),
    "publish": ("harness.publish:publish_main", "leaderboards as Markdown, CSV, a sortable HTML page and plots"),
    "compare": ("harness.compare:compare_main", "flag a candidate leaderboard's regressions against a baseline"),
    "serve-judge": ("harness.scoring.judge_server:serve_judge_main",
                    "serve a local model as an OpenAI-compatible judge on 127.0.0.1"),
}


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    from harness.config import preset_names
    from harness.registry import method_names

    parser.add_argument("--method", default="d2o",
                        help=f"the method to train (default d2o): {', '.join(method_names())}; see d2o-bench methods")
    parser.add_argument("--preset", default="tiny",
                        help=f"the preset to start from (default tiny): {', '.join(preset_names())}")
    parser.add_argument("--out", default="./d2o-bench-out", help="output directory (runs + leaderboard.json)")
    parser.add_argument("--seed", type=int, default=None, help="run seed (default: the preset's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set method.beta=0.5 (repeatable; the keys: "
                             "d2o-bench config)")
    parser.add_argument("--dry-run", action="store_true", help="resolve, validate and print the plan only")
    parser.add_argument("--judge-base-url", default=None, help="OpenAI-compatible endpoint for the judge")
    parser.add_argument("--judge-model", default=None, help="judge model name (enables the LLM judge)")
    parser.add_argument("--selection", default=None, metavar="STUDY.json",
                        help="the `d2o-bench tune` study that selected this configuration; recorded in the "
                             "trained entry (the run's parameters must be the study's selected ones)")


def _resolve(args) -> "RunConfig":  # noqa: F821
    from harness.config import parse_set_options, resolve_config

    overrides = parse_set_options(args.overrides)
    if args.judge_model:
        overrides.setdefault("eval", {})["judge_model"] = args.judge_model
    if args.judge_base_url:
        overrides.setdefault("eval", {})["judge_base_url"] = args.judge_base_url
    return resolve_config(method=args.method, preset=args.preset, seed=args.seed, overrides=overrides)


def _format_metric(metric: dict | None) -> str:
    if not metric or metric.get("value") is None:
        return "—"
    return f"{metric['value']:.3f} ± {metric['stderr']:.3f}"


def capability_rows(sections: dict | None) -> dict:
    """lm-eval capability metrics as table rows, `<task> <metric>` → metric record."""
    tasks = ((sections or {}).get("capability") or {}).get("tasks") or {}
    return {f"{task} {name}": record for task, result in sorted(tasks.items())
            for name, record in sorted((result.get("metrics") or {}).items()) if isinstance(record, dict)}


def comparison_table(base: dict, trained: dict | None, method: str, *, base_sections: dict | None = None,
                     sections: dict | None = None, scored_on: str | None = None) -> str:
    from harness.scoring.metrics import HIGHER_IS_BETTER

    # Whatever the suite's instruments reported, in the standard order, then the capability
    # metrics the entry holds (lm-eval tasks, before and after training).
    base = {**base, **capability_rows(base_sections)}
    if trained is not None:
        trained = {**trained, **capability_rows(sections)}
    names = [n for n in HIGHER_IS_BETTER if n in base or (trained and n in trained)]
    names += [n for n in {**base, **(trained or {})} if n not in HIGHER_IS_BETTER and n not in names
              and isinstance((trained or {}).get(n, base.get(n)), dict)
              and "higher_is_better" in (trained or {}).get(n, base.get(n))]
    arrow = {True: "↑", False: "↓"}
    width = max([16, *(len(n) + 3 for n in names)])
    header = f"{'metric':<{width}}{'base':>20}" + (f"{method:>20}" if trained else "")
    lines = [header, "-" * len(header)]
    for name in names:
        direction = arrow[bool((trained or {}).get(name, base.get(name))["higher_is_better"])]
        line = f"{name + ' ' + direction:<{width}}{_format_metric(base.get(name)):>20}"
        if trained:
            line += f"{_format_metric(trained.get(name)):>20}"
        lines.append(line)
    lines.append("value ± standard error (bootstrap over prompt groups, floored for small samples; the entry holds 95% intervals); "
                 "↑/↓: higher/lower is better")
    if scored_on:
        lines.append(f"scored on: {scored_on}")
    return "\n".join(lines)


def _scored_on(ctx) -> str:
    """Which evaluation prompts the table scores: the held-out split, never the training rows."""
    cfg = ctx.cfg
    n = len(ctx.run_dir.layout.eval_prompts.read())
    source = cfg.data.eval_dataset or cfg.data.dataset
    if cfg.data.held_out_share is not None:
        where = f"{source}, the held-out {cfg.data.held_out_share:g} share"
    else:
        where = f"{source}[{cfg.data.eval_split}]"
    return f"{where}, {n} evaluation prompts"


def cmd_run(args) -> int:
    cfg = _resolve(args)
    selection = None
    if args.selection is not None:
        from harness.selection import selection_summary

        selection = selection_summary(Path(args.selection), cfg)
    from harness import distributed
    from harness.plan import resolve_plan, shared_plan
    from harness.preflight import preflight

    def resolved():
        # Resolved once (method, suite, K, metrics, run id); everything below reads it. Preflight
        # makes the suite's check after naming any missing model or dataset.
        plan = resolve_plan(cfg, check=False)
        # Before any work: the leaderboard, the output directory, disk for checkpoints, the models.
        preflight(plan, Path(args.out), warn=lambda message: print(f"d2o-bench: warning: {message}", file=sys.stderr),
                  strict_sources=not args.dry_run)
        return plan

    if args.dry_run:
        if not distributed.is_main_process():
            return 0  # under a launcher, rank 0 prints the plan once; a dry run joins no process group
        from harness.cache import bench_home
        from harness.plan import describe_plan

        print(describe_plan(resolved(), Path(args.out), bench_home()))
        return 0
    # Under a launcher, rank 0 alone resolves and preflights; the other ranks receive its plan.
    plan = shared_plan(cfg, resolved)
    from harness.pipeline import run_pipeline

    from harness.progress import log

    # Along the way: stderr, through the one logger; stdout holds the result below.
    ctx = run_pipeline(plan, Path(args.out), progress=log.info,
                       selection=selection)
    if not ctx.run_dir.writer:
        return 0  # a non-zero rank under a launcher: rank 0 reports
    scores = ctx.run_dir.layout.metrics.read()
    trained = scores["metrics"] if ctx.method.trains else None
    print(comparison_table(scores["base_metrics"], trained, cfg.method_name,
                           base_sections=scores.get("base_sections"),
                           sections=scores.get("sections") if ctx.method.trains else None,
                           scored_on=_scored_on(ctx)))
    print(f"run directory: {ctx.run_dir.root}")
    print(f"leaderboard:   {Path(args.out) / 'leaderboard.json'}")
    return 0


def run_main(argv: list[str]) -> int:
    return cmd_run(build_parser().parse_args(argv))


def methods_main(argv: list[str]) -> int:
    OneLineArgumentParser(prog="d2o-bench methods", description=SUBCOMMANDS["methods"][1]).parse_args(argv)
    from harness.registry import registered_methods

    methods = registered_methods()
    width = max(len(name) for name in methods)
    for name, cls in methods.items():
        print(f"{name:<{width}}  {cls.summary}")
    return 0


def _help_epilog() -> str:
    from harness.config import preset_names
    from harness.settings import preset_summary

    width = max(len(name) for name in [*SUBCOMMANDS, *preset_names()]) + 2
    lines = ["subcommands (d2o-bench SUBCOMMAND --help):"]
    lines += [f"  {name:<{width}}{summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    lines += ["", "presets (--preset; harness/presets/*.yaml):"]
    lines += [f"  {name:<{width}}{preset_summary(name)}" for name in preset_names()]
    lines += ["", "Every --set key, its type, default and help: d2o-bench config.",
              "Exit codes: 0 success, 2 bad usage or input, 1 a failure while running."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="d2o-bench", usage="d2o-bench [SUBCOMMAND] [options]",
                                   description=DESCRIPTION, epilog=_help_epilog(),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_options(parser)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("transformers", "datasets", "accelerate", "deepspeed", "torch", "lm_eval", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    # DeepSpeed says "Setting accelerator to CPU ..." at WARNING on every CPU run, through its own
    # logger and handler: dropped by a filter on that logger (its other warnings still show).
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).addFilter(_DropDeepSpeedAcceleratorNotice())
    from harness.progress import setup_logging

    setup_logging()


class _DropDeepSpeedAcceleratorNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Setting accelerator to CPU")


def dispatch(argv: list[str]) -> int:
    import importlib

    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "run"
    rest = argv[1:] if argv and argv[0] in SUBCOMMANDS else argv
    module, _, function = SUBCOMMANDS[command][0].partition(":")
    return getattr(importlib.import_module(module), function)(rest)


def _take_local_rank(argv: list[str]) -> list[str]:
    """Drop the `--local_rank=N` that DeepSpeed's launcher puts before the user's arguments.

    The launcher also exports LOCAL_RANK, which is what transformers reads; the flag's value is
    only copied there if the environment lacks it. Accepted anywhere in argv, also as
    `--local-rank N` (torch.distributed.launch's spelling).
    """
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in ("--local_rank", "--local-rank"):
            value = value if eq else next(args, "")
            if not value.isdigit():
                raise BadInput(f"{name} needs a non-negative integer, got {value!r}")
            os.environ.setdefault("LOCAL_RANK", value)
            continue
        rest.append(arg)
    return rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    try:
        code = dispatch(_take_local_rank(argv))
    except D2OBenchError as exc:
        print(f"d2o-bench: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("d2o-bench: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:  # an unexpected failure is still one line unless debugging
        if os.environ.get("D2O_BENCH_DEBUG"):
            raise
        detail = " ".join(str(exc).split())[:300]
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # outside any stage (opening a run)
            from harness.atomic import describe_os_error

            detail = describe_os_error(exc)
        print(f"d2o-bench: error: {type(exc).__name__}: {detail} (set D2O_BENCH_DEBUG=1 for a traceback)",
              file=sys.stderr)
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
