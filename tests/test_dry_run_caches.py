"""`--dry-run` names the shared caches a run will use: each one's key, computed by the stage's own
key function, and whether it is already cached (reused) or will be computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from conftest import REDUCED_WORLD

CACHE_LINE = "  cache/"


def dry_run(capsys, out: Path, *argv: str, sets=()) -> dict[str, str]:
    """The dry run's cache lines, `cache/<kind>[ (role)]` → the rest of the line."""
    assert main([*argv, "--out", str(out), "--dry-run", *(a for s in sets for a in ("--set", s))]) == 0
    lines = [line[len("  "):] for line in capsys.readouterr().out.splitlines() if line.startswith(CACHE_LINE)]
    return {line[:34].strip(): line[34:] for line in lines}


def test_before_anything_is_built_the_keys_wait_for_the_assets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D2O_BENCH_HOME", str(tmp_path / "home"))
    caches = dry_run(capsys, tmp_path / "out", "--method", "d2o")
    # In the order the stages use them; one reference_logps line per reference role of D²O's.
    assert list(caches) == ["cache/self_samples", "cache/reference_logps (negative)",
                            "cache/reference_logps (samples)", "cache/base_generations", "cache/base_scores"]
    assert all(v.startswith("key not known yet: needs policy, ") and "which the run builds or fetches" in v
               for v in caches.values()), caches
    assert not (tmp_path / "home").exists()


def test_a_method_without_self_samples_or_references_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D2O_BENCH_HOME", str(tmp_path / "home"))
    caches = dry_run(capsys, tmp_path / "out", "--method", "sft")
    assert caches["cache/self_samples"] == "none: the method uses no self-samples"
    assert caches["cache/reference_logps"] == "none: the method uses no reference model"
    assert "cache/base_generations" in caches


RUN = [*REDUCED_WORLD, "data.max_train_examples=8", "train.max_steps=2", "train.per_device_batch_size=4",
       "sampling.max_new_tokens=16", "eval.max_new_tokens=16", "eval.lm_eval_tasks=[]", "method.k=2"]


@pytest.fixture(scope="module")
def finished(bench_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert main(["--method", "d2o", "--out", str(out), *(a for s in RUN for a in ("--set", s))]) == 0
    run_dir = next(p for p in out.iterdir() if p.is_dir())
    summaries = {stage: json.loads((run_dir / stage / "COMPLETE").read_text())
                 for stage in ("self_samples", "reference_logps", "generate")}
    return out, summaries


def _key(line: str) -> str:
    assert line.startswith("key "), line
    return line.split()[1]


@pytest.mark.slow
def test_after_a_run_its_caches_are_reported_cached_under_the_keys_the_stages_wrote(finished, bench_home, capsys):
    out, stages = finished
    caches = dry_run(capsys, out, "--method", "d2o", sets=RUN)
    assert _key(caches["cache/self_samples"]) == stages["self_samples"]["cache_key"]
    for role, key in stages["reference_logps"]["cache_keys"].items():
        assert _key(caches[f"cache/reference_logps ({role})"]) == key
    assert set(stages["reference_logps"]["cache_keys"]) == {"samples", "negative"}
    base = stages["generate"]["base_cache_key"]
    assert _key(caches["cache/base_generations"]) == base
    scores = _key(caches["cache/base_scores"])
    assert scores.startswith(base + "-v") and (bench_home / "cache" / "base_scores" / f"{scores}.json").is_file()
    assert all(line.endswith("  cached: reused") for line in caches.values()), caches
    for kind in ("self_samples", "base_generations"):
        assert (bench_home / "cache" / kind / f"{_key(caches[f'cache/{kind}'])}.json").is_file()


@pytest.mark.slow
def test_another_sampling_temperature_is_another_self_samples_key_to_compute(finished, capsys):
    out, stages = finished
    caches = dry_run(capsys, out, "--method", "d2o", sets=[*RUN, "sampling.temperature=0.7"])
    key = _key(caches["cache/self_samples"])
    assert key != stages["self_samples"]["cache_key"] and len(key) == 24
    assert caches["cache/self_samples"].endswith("  not cached: computed by this run")
    # Reference log-probs of samples not drawn yet have no key; the base's answers do not depend
    # on how self-samples are drawn, so they are reused.
    assert caches["cache/reference_logps (samples)"] == "key not known yet: it follows from the self-samples, which this run draws"
    assert _key(caches["cache/base_generations"]) == stages["generate"]["base_cache_key"]
    assert caches["cache/base_generations"].endswith("  cached: reused")


@pytest.mark.slow
def test_a_method_without_self_samples_after_a_run(finished, capsys):
    out, stages = finished
    caches = dry_run(capsys, out, "--method", "dpo", sets=[s for s in RUN if not s.startswith("method.")])
    assert caches["cache/self_samples"] == "none: the method uses no self-samples"
    assert [name for name in caches if name.startswith("cache/reference_logps")] == [
        "cache/reference_logps (chosen)", "cache/reference_logps (negative)"]
    assert _key(caches["cache/base_generations"]) == stages["generate"]["base_cache_key"]
