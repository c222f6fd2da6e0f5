"""Shared cache directories: built once however many processes ask for them at the same time."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from harness.build_cache import build_once


def _slow_build(tmp: Path) -> None:
    with open(tmp.parent / "builds.log", "a") as log:
        log.write("build\n")
    time.sleep(1.0)  # long enough that the other process arrives while this one builds
    (tmp / "weights.bin").write_text("w")


def _ask_for_it(final: str, results) -> None:
    built = build_once(Path(final), _slow_build)
    results.put((built / "weights.bin").read_text())


def test_concurrent_processes_build_a_cache_directory_once(tmp_path):
    final = tmp_path / "cache" / "policy"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_ask_for_it, args=(str(final), results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [results.get(timeout=5) for _ in workers] == ["w", "w"]
    assert (tmp_path / "cache" / "builds.log").read_text() == "build\n"
    assert sorted(p.name for p in final.parent.iterdir()) == [".policy.lock", "builds.log", "policy"]


def test_a_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    final = tmp_path / "policy"

    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(final, broken)
    assert not final.exists() and [p.name for p in tmp_path.iterdir()] == [".policy.lock"]
    assert (build_once(final, lambda tmp: (tmp / "ok.bin").write_text("y")) / "ok.bin").read_text() == "y"


@pytest.mark.parametrize("damage", [
    lambda final: (final / "weights.safetensors").write_bytes(b"trunc"),  # truncated after the build
    lambda final: (final / "weights.safetensors").unlink(),
    lambda final: (final / "stray.bin").write_bytes(b"?"),
])
def test_a_corrupt_cache_directory_is_rebuilt_not_loaded(tmp_path, caplog, damage):
    final = tmp_path / "policy"
    builds = []

    def build(tmp: Path) -> None:
        builds.append(1)
        (tmp / "weights.safetensors").write_bytes(b"full weights " * 100)
        (tmp / "config.json").write_text("{}")

    build_once(final, build)
    assert build_once(final, build) == final and len(builds) == 1  # intact: reused
    damage(final)
    with caplog.at_level("WARNING"):
        build_once(final, build)
    assert len(builds) == 2 and "is corrupt" in caplog.text
    assert (final / "weights.safetensors").read_bytes() == b"full weights " * 100
    assert not (final / "stray.bin").exists()


def test_a_marker_written_before_checksums_is_still_trusted(tmp_path):
    final = tmp_path / "policy"
    final.mkdir()
    (final / "weights.bin").write_text("w")
    (final / "COMPLETE").write_text("ok\n")
    assert build_once(final, lambda tmp: pytest.fail("rebuilt a legacy build")) == final


def test_a_changed_or_truncated_json_cache_entry_is_recomputed_not_used(tmp_path, caplog):
    """Self-samples, reference log-probs and base evaluations: an entry whose content no longer
    matches its recorded sha256 reads as missing (the stage recomputes it)."""
    import json

    from harness.pipeline import JsonCache

    cache = JsonCache(tmp_path, "self_samples")
    cache.put("k", {"samples": [[1, 2], [3]]})
    assert cache.get("k") == {"samples": [[1, 2], [3]]}
    path = tmp_path / "cache" / "self_samples" / "k.json"
    stored = json.loads(path.read_text())
    stored["value"]["samples"][0][0] = 9  # a changed number still parses
    path.write_text(json.dumps(stored))
    with caplog.at_level("WARNING"):
        assert cache.get("k") is None
    assert "does not match its sha256" in caplog.text
    path.write_text(path.read_text()[:20])  # truncated
    assert cache.get("k") is None
    path.write_text(json.dumps({"samples": []}))  # written before hashes were recorded
    assert cache.get("k") == {"samples": []}
