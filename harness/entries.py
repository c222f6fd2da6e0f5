"""Leaderboard entries for a finished run: the trained method's and the base policy's."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

import harness
from harness.hashing import sha256_json

SCHEMA_ENTRY_STATUS = "complete"


def _version(package: str):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": cuda,
        "gpu": gpu,
        "transformers": _version("transformers"),
        "deepspeed": _version("deepspeed"),
        "lm_eval": _version("lm_eval") or _version("lm-eval"),
        "datasets": _version("datasets"),
        "platform": platform.platform(),
    }


@lru_cache(maxsize=1)
def git_state() -> dict:
    """The harness's own commit; inside an image, the commit baked in at build time."""
    baked = os.environ.get("D2O_BENCH_GIT_COMMIT")
    source = Path(harness.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": baked, "dirty": None if baked is None else False}


def _trajectory(run_root) -> list[dict]:
    from harness.rundir import RunLayout

    trajectory = RunLayout(run_root).trajectory
    return trajectory.read() if trajectory.exists() else []


def base_entry_config(cfg) -> tuple[dict, str]:
    """The base policy entry's recorded config and its hash.

    The base entry depends only on what evaluates it, not on the method trained, so the
    method, training and sampling sections are blanked before hashing.
    """
    config = cfg.to_dict()
    config.update({"method_name": "base", "method": None, "train": None, "sampling": None})
    return config, sha256_json(config)[:16]


def build_entries(ctx) -> list[dict]:
    run_dir = ctx.run_dir
    cfg = ctx.cfg
    data = run_dir.summary("data")
    scores = run_dir.layout.metrics.read()
    stages = {name: run_dir.summary(name) for name in run_dir.stages if run_dir.is_complete(name)}
    wall_time = sum(s.get("duration_s", 0.0) for s in stages.values())
    train = stages.get("train", {})
    common = {
        "base_model": data["base_model"],
        # The suite's record rides along (the real suite's sources: files, sha256, licences).
        "dataset": {k: v for k, v in data["dataset"].items() if k not in ("train_rows", "eval_rows")},
        "harness_version": harness.__version__,
        "git": git_state(),
        "container_image_digest": os.environ.get("D2O_BENCH_IMAGE_DIGEST") or None,
        "environment": environment(),
        "started_at": ctx.started_at,
        "finished_at": stages.get("score", {}).get("finished_at", ctx.started_at),
    }
    entries = []
    if ctx.method.trains:
        entries.append({
            "run_id": run_dir.run_id,
            "method": cfg.method_name,
            "preset": cfg.preset,
            "seed": cfg.seed,
            "status": SCHEMA_ENTRY_STATUS,
            "hyperparameters": ctx.method.hyperparameters(),
            "metrics": scores["metrics"],
            "sections": scores["sections"],
            "provenance": {
                **common,
                "config": cfg.to_dict(),
                "config_hash": cfg.hash(),
                "run_dir": str(run_dir.root),
                "cache_keys": {
                    "self_samples": stages.get("self_samples", {}).get("cache_key"),
                    "reference_logps": stages.get("reference_logps", {}).get("cache_keys"),
                    "base_eval": stages["generate"]["base_cache_key"],
                },
                "wall_time_s": wall_time,
                "train": {
                    "steps": train.get("steps"),
                    "examples": train.get("examples"),
                    "throughput_samples_per_s": train.get("throughput_samples_per_s"),
                    "peak_memory_mb": train.get("peak_memory_mb"),
                    "loss_curve": train.get("loss_curve", []),
                    "grad_norm_curve": train.get("grad_norm_curve", []),
                    # The method's per-step diagnostics (D²O: log-ratios, σ(−u), term shares).
                    "diagnostics": _trajectory(run_dir.root),
                    # Present only for a LoRA run: the adapter's settings, size and sha256.
                    **({"lora": train["lora"]} if train.get("lora") else {}),
                },
                # Which servers wrote the evaluation answers (eval.backend=openai only).
                **({"generation": {"backend": "openai", "server": stages["generate"]["server"]}}
                   if stages["generate"].get("server") else {}),
                # How the self-samples were drawn when the method steered or filtered them.
                **({"anchors": stages["self_samples"]["anchors"]}
                   if "anchors" in stages.get("self_samples", {}) else {}),
            },
        })
        if getattr(ctx, "selection", None):
            # How this configuration was chosen (`d2o-bench run --selection STUDY.json`).
            entries[-1]["selection"] = ctx.selection
    base_config, base_hash = base_entry_config(cfg)
    entries.append({
        "run_id": f"base-{cfg.preset}-s{cfg.seed}-{base_hash[:8]}",
        "method": "base",
        "preset": cfg.preset,
        "seed": cfg.seed,
        "status": SCHEMA_ENTRY_STATUS,
        "hyperparameters": {},
        "metrics": scores["base_metrics"],
        "sections": scores["base_sections"],
        "provenance": {
            **common,
            "config": base_config,
            "config_hash": base_hash,
            "run_dir": str(run_dir.root),
            "cache_keys": {"base_eval": stages["generate"]["base_cache_key"]},
            "wall_time_s": sum(stages[s].get("duration_s", 0.0) for s in ("data", "generate", "score") if s in stages),
            "train": None,
        },
    })
    return entries
