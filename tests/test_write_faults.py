"""Faults at a write (issue 27), for every writer: runs, leaderboards, publish, compare, tune state
and build caches all write through harness/atomic.py.

A full disk (ENOSPC, injected with D2O_BENCH_DISK_FULL_AT) at any write leaves what was there
byte for byte, no temp file, one line, and a rerun that works; SIGTERM and SIGHUP during a write
are delivered after the rename; SIGKILL between writing and renaming leaves a temp file that the
next writer of that target removes; a symlinked target is written where it points; two writers of
one kind never leave a mix of their files. The tiny fixtures only: no model is built here but in
the one slow test at the end."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import atomic, faults
from harness.errors import BadInput, RunFailure

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_BOARD = Path(__file__).parent / "fixtures" / "leaderboards" / "tiny.json"


@pytest.fixture(autouse=True)
def no_faults_set(monkeypatch):
    for name in (faults.ENV, faults.DISK_FULL_ENV, faults.DISK_FULL_SKIP_ENV, faults.PAUSE_ENV, faults.PAUSE_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    faults.reset_counts()
    yield
    faults.reset_counts()


def _disk_full_at(monkeypatch, pattern: str, skip: int = 0) -> None:
    monkeypatch.setenv(faults.DISK_FULL_ENV, pattern)
    monkeypatch.setenv(faults.DISK_FULL_SKIP_ENV, str(skip))
    faults.reset_counts()


def _temps(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _stale_name(target: Path, pid: int, host: str | None = None) -> Path:
    host = host or re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]
    return target.parent / f".{target.name}.{host}.{pid}.deadbeef.tmp"


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """A second process running `code` with this worktree's harness and the fault variables given."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} before pausing: {process.stderr.read()}")
        assert time.monotonic() < deadline, "the writer never reached its pause point"
        time.sleep(0.02)


# --------------------------------------------------------------------------- the writer itself


def test_a_write_is_a_temp_file_of_its_own_beside_the_target_fsynced_then_renamed(tmp_path, monkeypatch):
    target = tmp_path / "board.json"
    target.write_text("old")
    target.chmod(0o640)
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: calls.append(("replace", str(a), str(b))) or real_replace(a, b))
    atomic.write_json(target, {"new": 1})
    assert json.loads(target.read_text()) == {"new": 1} and target.stat().st_mode & 0o777 == 0o640
    (_, fsynced), (_, moved, onto) = calls[0], [c for c in calls if c[0] == "replace"][0]
    assert fsynced == moved and onto == str(target)  # the temp file is fsynced, then renamed over
    assert calls[-1][0] == "fsync" and calls[-1][1] == str(tmp_path)  # and the directory after
    assert re.fullmatch(r"\.board\.json\.[A-Za-z0-9-]+\." + str(os.getpid()) + r"\.[0-9a-f]{8}\.tmp", Path(moved).name)
    assert Path(moved).parent == tmp_path and not _temps(tmp_path)


def test_disk_full_at_a_write_leaves_the_target_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_text('{"old": true}\n')
    _disk_full_at(monkeypatch, "write:state.json")
    with pytest.raises(OSError) as raised:
        atomic.write_json(target, {"new": True})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert target.read_text() == '{"old": true}\n' and not _temps(tmp_path)
    assert atomic.describe_os_error(raised.value) == (f"disk full writing {target}; free space and rerun "
                                                      "(what was there is unchanged)")
    _disk_full_at(monkeypatch, "write:state.json", skip=1)  # the second write of it fails, the first lands
    atomic.write_json(target, {"first": 1})
    with pytest.raises(OSError):
        atomic.write_json(target, {"second": 2})
    assert json.loads(target.read_text()) == {"first": 1}


def test_the_next_writer_removes_what_dead_writers_left_and_nothing_else(tmp_path):
    target = tmp_path / "board.json"
    dead = _stale_name(target, _dead_pid())
    live = _stale_name(target, os.getppid())  # a writer still running
    elsewhere_new = _stale_name(target, 1, host="other-node")
    elsewhere_old = _stale_name(target, 2, host="other-node")
    legacy_old = tmp_path / ".board.json.k1ll3d.tmp"  # the names earlier writers used
    legacy_new = tmp_path / "board.json.abcd.tmp"
    other_target = _stale_name(tmp_path / "other.json", _dead_pid())
    longer_name = _stale_name(tmp_path / "board.json.bak", os.getpid())  # another file's, being written
    for path in (dead, live, elsewhere_new, elsewhere_old, legacy_old, legacy_new, other_target, longer_name):
        path.write_text("half")
    hours_ago = time.time() - 2 * atomic.STALE_AFTER_S
    for path in (elsewhere_old, legacy_old):
        os.utime(path, (hours_ago, hours_ago))
    atomic.write_text(target, "new")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"board.json", live.name, elsewhere_new.name, legacy_new.name, other_target.name, longer_name.name}
    # A writer holding the target's lock knows every other temp file of it is a dead writer's.
    atomic.write_text(target, "newer", exclusive=True)
    assert {p.name for p in tmp_path.iterdir()} == {"board.json", other_target.name, longer_name.name}


def test_a_symlinked_target_is_written_where_it_points_and_stays_a_link(tmp_path):
    (tmp_path / "shared").mkdir()
    real = tmp_path / "shared" / "index.html"
    real.write_text("old")
    link = tmp_path / "index.html"
    link.symlink_to(real)
    atomic.write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new" and not _temps(tmp_path)
    loop = tmp_path / "loop.json"
    loop.symlink_to("loop.json")
    with pytest.raises(BadInput, match=r"loop\.json: a symbolic link loop"):
        atomic.write_text(loop, "x")
    to_folder = tmp_path / "folder.json"
    to_folder.symlink_to(tmp_path / "shared")
    with pytest.raises(BadInput, match="a symbolic link to the directory"):
        atomic.write_text(to_folder, "x")
    assert not _temps(tmp_path)


def test_writes_in_all_or_none_land_together_or_not_at_all(tmp_path, monkeypatch):
    first, second = tmp_path / "a.md", tmp_path / "b.html"
    first.write_text("a0")
    second.write_text("b0")
    _disk_full_at(monkeypatch, "write:b.html")
    with pytest.raises(OSError):
        with atomic.all_or_none():
            atomic.write_text(first, "a1")
            assert first.read_text() == "a0" and atomic.read_bytes(first) == b"a1"  # staged, not landed
            atomic.write_text(second, "b1")
    assert (first.read_text(), second.read_text()) == ("a0", "b0") and not _temps(tmp_path)
    monkeypatch.delenv(faults.DISK_FULL_ENV)
    with atomic.all_or_none(lock=True):
        atomic.write_text(first, "a1")
        atomic.write_text(second, "b1")
    assert (first.read_text(), second.read_text()) == ("a1", "b1") and not _temps(tmp_path)


def test_sigterm_in_the_main_thread_waits_for_the_write_then_reaches_its_handler(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with atomic.signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_polite_stop_during_a_write_lands_the_write_then_stops_the_process(tmp_path, signum):
    """Before: SIGTERM between writing and renaming left the temp file for good (and the old
    content); now the process still dies of the signal, after the rename."""
    target, flag = tmp_path / "leaderboard.json", tmp_path / "paused"
    target.write_text("old\n")
    # The default disposition first: a suite started under nohup hands its children SIGHUP ignored,
    # and a process that ignores a signal rightly does not die of it.
    writer = _python("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_DFL); from harness import atomic; "
                     "atomic.write_text(sys.argv[1], 'new\\n')", str(target),
                     env={faults.PAUSE_ENV: "write:leaderboard.json", faults.PAUSE_FILE_ENV: str(flag)})
    _wait_for(flag, writer)
    writer.send_signal(signum)
    time.sleep(0.2)
    assert writer.poll() is None  # held off while the write is in flight
    flag.unlink()
    assert writer.wait(timeout=30) == -signum
    assert target.read_text() == "new\n" and not _temps(tmp_path)


def test_sigkill_between_writing_and_renaming_leaves_a_temp_file_the_next_writer_removes(tmp_path):
    target = tmp_path / "verdict.json"
    target.write_text("old\n")
    writer = _python("import sys; from harness import atomic; atomic.write_text(sys.argv[1], 'new\\n')", str(target),
                     env={faults.ENV: "write:verdict.json"})
    assert writer.wait(timeout=60) == -signal.SIGKILL
    assert target.read_text() == "old\n" and len(_temps(tmp_path)) == 1
    atomic.write_text(target, "next\n")  # not holding any lock: the dead writer's pid tells
    assert target.read_text() == "next\n" and not _temps(tmp_path)


# --------------------------------------------------------------------------- runs


def _stage_context(tmp_path: Path):
    from harness import pipeline
    from harness.rundir import RunDir

    run_dir = RunDir(tmp_path / "run", "r", pipeline.STAGES, {"method": "d2o"})
    return SimpleNamespace(run_dir=run_dir, progress=lambda _: None)


def _writes_responses(ctx):
    ctx.run_dir.layout.responses.write([{"prompt": "p", "response": "r"}])
    return {}


@pytest.mark.parametrize("point", ["write:responses.jsonl", "write:COMPLETE", "write:run.json"])
def test_disk_full_at_any_write_of_a_stage_is_one_line_run_json_honest_and_a_rerun_works(tmp_path, monkeypatch, point):
    """Before: a full disk writing the COMPLETE marker or run.json escaped as a bare OSError and
    left run.json saying "running"."""
    from harness import pipeline
    from harness.rundir import RunDir

    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "generate", _writes_responses)
    ctx = _stage_context(tmp_path)
    before = (tmp_path / "run" / "run.json").read_bytes()
    # run.json's first write in the stage marks it running: let that one pass, fail the next.
    _disk_full_at(monkeypatch, point, skip=1 if point == "write:run.json" else 0)
    with pytest.raises(RunFailure) as raised:
        pipeline._run_stage(ctx, "generate", True)
    message = str(raised.value)
    assert message.startswith("stage generate failed: disk full writing ") and "\n" not in message
    assert point.split(":")[1] in message and "run.json not updated" not in message
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    # The marker landed before run.json filled the disk: the stage is done and run.json says so.
    done = point == "write:run.json"
    assert status["stages"]["generate"] == ("complete" if done else "failed") and not status["complete"]
    assert (tmp_path / "run" / "generate" / "COMPLETE").exists() == done and not _temps(tmp_path)
    if done:
        (tmp_path / "run" / "generate" / "COMPLETE").unlink()  # to see the stage run again below
    assert before != (tmp_path / "run" / "run.json").read_bytes()
    # At the stage's start: one line, and run.json as it was.
    before = (tmp_path / "run" / "run.json").read_bytes()
    _disk_full_at(monkeypatch, "write:run.json")
    with pytest.raises(RunFailure, match=r"^stage generate failed: disk full writing .*run\.json"):
        pipeline._run_stage(ctx, "generate", True)
    assert (tmp_path / "run" / "run.json").read_bytes() == before and not _temps(tmp_path)
    # Space freed: the rerun (a new process opening the directory) completes the stage.
    monkeypatch.delenv(faults.DISK_FULL_ENV)
    rerun = SimpleNamespace(run_dir=RunDir(tmp_path / "run", "r", pipeline.STAGES, {"method": "d2o"}),
                            progress=lambda _: None)
    pipeline._run_stage(rerun, "generate", True)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["generate"] == "complete"
    assert rerun.run_dir.layout.responses.read() == [{"prompt": "p", "response": "r"}]


def test_a_run_directory_opened_again_removes_what_a_killed_run_left(tmp_path):
    from harness import pipeline
    from harness.rundir import RunDir

    ctx = _stage_context(tmp_path)
    run_json = ctx.run_dir.layout.status.path
    stale = _stale_name(run_json, _dead_pid())
    stale.write_text('{"half": ')
    RunDir(tmp_path / "run", "r", pipeline.STAGES, {"method": "d2o"})  # the second writer of run.json
    assert not stale.exists() and json.loads(run_json.read_text())["run_id"] == "r"


# --------------------------------------------------------------------------- leaderboards


def _entry(run_id: str) -> dict:
    entry = json.loads(FIXTURE_BOARD.read_text())["entries"][0]
    return {**entry, "run_id": run_id, "seed": 40 + int(run_id[-1])}


def test_disk_full_appending_to_a_board_leaves_it_byte_for_byte_and_a_retry_lands(tmp_path, monkeypatch):
    from harness.leaderboard import append_entries, read_leaderboard

    (tmp_path / "shared").mkdir()
    real = tmp_path / "shared" / "leaderboard.json"
    real.write_bytes(FIXTURE_BOARD.read_bytes())
    link = tmp_path / "leaderboard.json"
    link.symlink_to(real)
    before = real.read_bytes()
    for board in (real, link):
        _disk_full_at(monkeypatch, "write:leaderboard.json")
        with pytest.raises(OSError, match="No space left"):
            append_entries(board, [_entry("full-disk-1")])
        assert real.read_bytes() == before and link.is_symlink() and not _temps(tmp_path)
    monkeypatch.delenv(faults.DISK_FULL_ENV)
    append_entries(link, [_entry("full-disk-1")])
    assert link.is_symlink() and "full-disk-1" in [e["run_id"] for e in read_leaderboard(real)["entries"]]


# --------------------------------------------------------------------------- publish


def _board_without(tmp_path: Path, method: str) -> Path:
    document = json.loads(FIXTURE_BOARD.read_text())
    document["entries"] = [e for e in document["entries"] if e["method"] != method]
    path = tmp_path / f"without-{method}.json"
    path.write_text(json.dumps(document))
    return path


def test_publish_on_a_full_disk_leaves_the_previous_site_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Before: the files were replaced one by one, so a full disk on the page left new tables
    beside the old page."""
    from harness.publish import publish_main

    site = tmp_path / "site"
    assert publish_main([str(FIXTURE_BOARD), "--to", str(site)]) == 0
    before = _snapshot(site)
    for name in ("leaderboard.md", "index.html"):
        _disk_full_at(monkeypatch, f"write:{name}")
        capsys.readouterr()
        assert publish_main([str(_board_without(tmp_path, "dpo")), "--to", str(site)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"d2o-bench publish: error: disk full writing {site / name};"), err
        assert _snapshot(site) == before and not _temps(site)
    monkeypatch.delenv(faults.DISK_FULL_ENV)
    assert publish_main([str(_board_without(tmp_path, "dpo")), "--to", str(site)]) == 0
    assert "dpo" not in (site / "leaderboard.md").read_text() and not _temps(site)


def test_publish_writes_a_symlinked_page_where_it_lives(tmp_path):
    """Before: the link was replaced by a copy, and the page it pointed to silently went stale."""
    from harness.publish import publish

    (tmp_path / "www").mkdir()
    real = tmp_path / "www" / "index.html"
    real.write_text("old page")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").symlink_to(real)
    publish([FIXTURE_BOARD], site)
    assert (site / "index.html").is_symlink() and real.read_text().startswith("<!DOCTYPE html>")


def test_two_publishers_of_one_folder_leave_one_whole_set(tmp_path):
    """The first publisher pauses in the middle of landing its files, holding the folder; the
    second waits, then lands all of its own: never the first's page beside the second's table."""
    from harness.publish import publish

    site, flag = tmp_path / "site", tmp_path / "paused"
    first = _python("import sys; from pathlib import Path; from harness.publish import publish; "
                    "publish([Path(sys.argv[1])], Path(sys.argv[2]))", str(FIXTURE_BOARD), str(site),
                    env={faults.PAUSE_ENV: "write:leaderboard.csv", faults.PAUSE_FILE_ENV: str(flag)})
    _wait_for(flag, first, limit=120)
    second = threading.Thread(target=publish, args=([_board_without(tmp_path, "dpo")], site))
    second.start()
    time.sleep(1.0)
    assert second.is_alive()  # waiting for the first to finish landing its set
    flag.unlink()
    assert first.wait(timeout=120) == 0, first.stderr.read()
    second.join(timeout=120)
    assert not second.is_alive()
    assert "dpo" not in (site / "leaderboard.md").read_text()
    assert "dpo" not in (site / "leaderboard.csv").read_text() and ">dpo<" not in (site / "index.html").read_text()
    assert not _temps(site)


# --------------------------------------------------------------------------- compare


def test_compare_verdicts_on_a_full_disk_and_after_a_killed_compare(tmp_path, monkeypatch, capsys):
    from harness.compare import compare_main

    verdict = tmp_path / "verdict.json"
    argv = [str(FIXTURE_BOARD), str(FIXTURE_BOARD), "--json", str(verdict)]
    assert compare_main(argv) == 0
    before = verdict.read_bytes()
    _disk_full_at(monkeypatch, "write:verdict.json")
    capsys.readouterr()
    compare_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not written (No space left on device)" in err[0]
    assert verdict.read_bytes() == before and not _temps(tmp_path)
    monkeypatch.delenv(faults.DISK_FULL_ENV)
    # A second compare killed while writing the same verdict; the next one cleans up after it.
    killed = _python("import sys; from harness.compare import compare_main; compare_main(sys.argv[1:])", *argv,
                     env={faults.ENV: "write:verdict.json"})
    assert killed.wait(timeout=120) == -signal.SIGKILL and len(_temps(tmp_path)) == 1
    assert compare_main(argv) == 0
    assert json.loads(verdict.read_text()) == json.loads(before) and not _temps(tmp_path)


# --------------------------------------------------------------------------- tune state


def _study_out(out: Path, trials: int) -> None:
    (out / "studies" / "d2o").mkdir(parents=True, exist_ok=True)
    (out / "studies" / "d2o" / "study.json").write_text(json.dumps({"method": "d2o", "trials": trials}))
    db = sqlite3.connect(out / "studies.db")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS trials (number INTEGER)")
        db.execute("INSERT INTO trials VALUES (?)", (trials,))
        db.commit()
    finally:
        db.close()


def _trials_saved(state: Path) -> list[int]:
    db = sqlite3.connect(state / "studies.db")
    try:
        return [row[0] for row in db.execute("SELECT number FROM trials ORDER BY number")]
    finally:
        db.close()


@pytest.mark.parametrize("point", ["write:studies.db", "write:study.json", "write:costs.json"])
def test_tune_state_saved_on_a_full_disk_stays_the_previous_state(tmp_path, monkeypatch, point):
    """Before: the database was replaced first and the study files after it, so a full disk half
    way left a database one trial ahead of its study."""
    from harness.tune import save_state

    out, state = tmp_path / "out", tmp_path / "state"
    _study_out(out, 1)
    save_state(out, state)
    before = _snapshot(state)
    _study_out(out, 2)
    _disk_full_at(monkeypatch, point)
    with pytest.raises(OSError, match="No space left"):
        save_state(out, state)
    assert _snapshot(state) == before and not _temps(state)
    from harness.tune import _save_state_if_asked

    faults.reset_counts()
    with pytest.raises(RunFailure, match=rf"^--state-dir {state}: not saved: disk full writing .*; rerun"):
        _save_state_if_asked(SimpleNamespace(state_dir=str(state)), out)  # what `tune` prints, one line
    monkeypatch.delenv(faults.DISK_FULL_ENV)
    save_state(out, state)
    assert _trials_saved(state) == [1, 2] and json.loads((state / "studies" / "d2o" / "study.json").read_text())["trials"] == 2


def test_two_savers_of_one_tune_state_take_turns(tmp_path):
    """Before: both backed the database up into the same `.studies.db.tmp`."""
    from harness.tune import save_state

    out, state, flag = tmp_path / "out", tmp_path / "state", tmp_path / "paused"
    _study_out(out, 1)
    stale = _stale_name(state / "studies.db", _dead_pid())
    state.mkdir()
    stale.write_bytes(b"half a database")
    first = _python("import sys; from pathlib import Path; from harness.tune import save_state; "
                    "save_state(Path(sys.argv[1]), Path(sys.argv[2]))", str(out), str(state),
                    env={faults.PAUSE_ENV: "write:studies.db", faults.PAUSE_FILE_ENV: str(flag)})
    _wait_for(flag, first)
    second = threading.Thread(target=save_state, args=(out, state))
    second.start()
    time.sleep(0.5)
    assert second.is_alive()  # the first holds the state
    flag.unlink()
    assert first.wait(timeout=60) == 0, first.stderr.read()
    second.join(timeout=60)
    assert not second.is_alive() and _trials_saved(state) == [1] and not _temps(state)


# --------------------------------------------------------------------------- build caches


def test_a_build_cache_removes_killed_builds_and_survives_a_full_disk(tmp_path, monkeypatch):
    from harness.build_cache import build_once

    final = tmp_path / "world-abc"
    killed = tmp_path / "world-abc.tmp-k1ll3d"  # a builder SIGKILLed mid-build: gigabytes, for good
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"x" * 1000)

    def build(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"weights")

    _disk_full_at(monkeypatch, "write:COMPLETE")
    with pytest.raises(OSError, match="No space left"):
        build_once(final, build)
    assert not final.exists() and not killed.exists() and not _temps(tmp_path)
    monkeypatch.delenv(faults.DISK_FULL_ENV)
    assert (build_once(final, build) / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".world-abc.lock", "world-abc"]


# --------------------------------------------------------------------------- a real checkpoint


@pytest.mark.slow
def test_disk_full_writing_a_checkpoint_leaves_no_partial_one_and_the_rerun_resumes(bench_home, tmp_path, monkeypatch):
    """The tiny world's training with a checkpoint every 2 steps; the disk fills writing the one of
    step 4. One line, run.json says failed, checkpoint-4 is gone and checkpoint-2 kept; the rerun
    resumes from step 2 and completes."""
    from harness.config import parse_set_options, resolve_config
    from harness.pipeline import run_pipeline
    from harness.plan import resolve_plan

    from test_checkpoints import RUN

    cfg = resolve_plan(resolve_config(method="d2o-online", preset="tiny", seed=0, overrides=parse_set_options(RUN)))
    _disk_full_at(monkeypatch, "checkpoint:4:unsealed")
    with pytest.raises(RunFailure) as raised:
        run_pipeline(cfg, tmp_path, progress=lambda _: None, stop_after="train")
    assert str(raised.value).startswith("stage train failed: disk full writing ") and "checkpoint-4" in str(raised.value)
    (run_root,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((run_root / "run.json").read_text())["stages"]["train"] == "failed"
    assert sorted(p.name for p in (run_root / "checkpoints" / "train").iterdir()) == ["checkpoint-2"]
    monkeypatch.delenv(faults.DISK_FULL_ENV)
    ctx = run_pipeline(cfg, tmp_path, progress=lambda _: None, stop_after="train")
    assert ctx.run_dir.summary("train")["resumed_from_step"] == 2
    assert json.loads((run_root / "run.json").read_text())["stages"]["train"] == "complete"


def test_a_full_disk_outside_any_stage_is_still_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """Opening a run directory writes run.json before any stage: a full disk there named nothing."""
    import harness.cli

    def opens_a_run(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "r" / "run.json"))

    monkeypatch.setattr(harness.cli, "dispatch", opens_a_run)
    assert harness.cli.main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"disk full writing {tmp_path / 'out' / 'r' / 'run.json'}; free space and rerun" in err[0]


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB filesystem (tmpfs), where mounting is allowed (root in a container); skipped
    elsewhere. The injected faults above stand in for it everywhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a small filesystem here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)  # unbuffered: nothing left to fail again at close
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_really_full_disk_fails_a_stage_in_one_line_keeps_run_json_honest_and_the_rerun_works(small_disk, monkeypatch):
    from harness import pipeline
    from harness.leaderboard import append_entries
    from harness.rundir import RunDir

    board = small_disk / "leaderboard.json"
    board.write_bytes(FIXTURE_BOARD.read_bytes())
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "generate",
                        lambda ctx: ctx.run_dir.layout.responses.write([{"prompt": "p", "response": "r" * 8192}]) or {})
    ctx = SimpleNamespace(run_dir=RunDir(small_disk / "run", "r", pipeline.STAGES, {"method": "d2o"}),
                          progress=lambda _: None)
    before = board.read_bytes()
    # The stage is marked running before the disk fills (in a run, earlier stages filled it).
    real_mark = ctx.run_dir.mark

    def fill_after_running(name, state, summary=None):
        real_mark(name, state, summary)
        if state == "running":
            _fill(small_disk)

    monkeypatch.setattr(ctx.run_dir, "mark", fill_after_running)
    in_place = []
    real_in_place = RunDir._overwrite_status_in_place
    monkeypatch.setattr(RunDir, "_overwrite_status_in_place", lambda self: in_place.append(1) or real_in_place(self))
    with pytest.raises(RunFailure) as raised:
        pipeline._run_stage(ctx, "generate", True)
    assert str(raised.value).startswith(f"stage generate failed: disk full writing {small_disk / 'run' / 'generate'}")
    assert "responses.jsonl" in str(raised.value) and "run.json not updated" not in str(raised.value)
    assert json.loads((small_disk / "run" / "run.json").read_text())["stages"]["generate"] == "failed"
    assert in_place == [1]  # no new run.json fitted: "failed" went into the old one's blocks
    with pytest.raises(OSError) as full:
        append_entries(board, [_entry("full-disk-1")])
    assert full.value.errno == errno.ENOSPC and full.value.filename == str(board)
    assert board.read_bytes() == before and not _temps(small_disk)
    (small_disk / "filler").unlink()
    monkeypatch.undo()
    rerun = SimpleNamespace(run_dir=RunDir(small_disk / "run", "r", pipeline.STAGES, {"method": "d2o"}),
                            progress=lambda _: None)
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "generate", _writes_responses)
    pipeline._run_stage(rerun, "generate", True)
    assert json.loads((small_disk / "run" / "run.json").read_text())["stages"]["generate"] == "complete"


def test_a_really_full_disk_leaves_the_published_site_and_the_tune_state_as_they_were(small_disk, capsys):
    from harness.publish import publish_main
    from harness.tune import _save_state_if_asked, save_state

    site, out, state = small_disk / "site", small_disk / "out", small_disk / "state"
    assert publish_main([str(FIXTURE_BOARD), "--to", str(site)]) == 0
    _study_out(out, 1)
    save_state(out, state)
    site_before, state_before = _snapshot(site), _snapshot(state)
    _study_out(out, 2)
    filler = _fill(small_disk)
    capsys.readouterr()
    assert publish_main([str(FIXTURE_BOARD), "--to", str(site)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"d2o-bench publish: error: disk full writing {site}/"), err
    with pytest.raises(RunFailure, match=rf"^--state-dir {state}: not saved: disk full writing {state}/"):
        _save_state_if_asked(SimpleNamespace(state_dir=str(state)), out)
    assert _snapshot(site) == site_before and _snapshot(state) == state_before and not _temps(small_disk)
    filler.unlink()
    save_state(out, state)
    assert _trials_saved(state) == [1, 2]
