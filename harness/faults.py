"""Named fault points for fault-injection tests.

Kill: `D2O_BENCH_KILL_AT=<point>` makes the process SIGKILL itself when it reaches that point, as a
preemption, an OOM kill or a node failure would: no cleanup, no exception handler, no flush. The
points are where a kill is most likely to leave something half-done: the start and end of every
stage (`stage:<name>:start`, `stage:<name>:end`, the latter after the stage's work and before its
COMPLETE marker), every optimizer step (`train:step:<n>`), a checkpoint written but not yet
sealed (`checkpoint:<n>:unsealed`), a leaderboard written but not yet renamed into place
(`leaderboard:unreplaced`) and any file written but not yet renamed (`write:<file name>`, every
write through harness/atomic.py).

Disk full: `D2O_BENCH_DISK_FULL_AT=<pattern>` (shell-style, e.g. `write:run.json`, `write:*`,
`checkpoint:8:unsealed`) raises ENOSPC at the points it matches, as a full disk would at that
write; `D2O_BENCH_DISK_FULL_SKIP=<n>` lets the first n matches in the process pass, so a test can
fill the disk at the first, second, ... write in turn.

Pause: `D2O_BENCH_PAUSE_AT=<pattern>` with `D2O_BENCH_PAUSE_FILE=<path>` makes the process create
that file (holding the point's name) when it reaches a matching point and wait until the file is
removed: a test can then signal the process, or start a second writer, exactly there.

Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import time

ENV = "D2O_BENCH_KILL_AT"
DISK_FULL_ENV = "D2O_BENCH_DISK_FULL_AT"
DISK_FULL_SKIP_ENV = "D2O_BENCH_DISK_FULL_SKIP"
PAUSE_ENV = "D2O_BENCH_PAUSE_AT"
PAUSE_FILE_ENV = "D2O_BENCH_PAUSE_FILE"
# A paused process that nobody releases goes on after this long, so a failed test cannot leave it
# waiting forever.
PAUSE_LIMIT_S = 120.0

_disk_full_matches = 0


def kill_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def disk_full_point(name: str, filename: str | None = None) -> None:
    """Raises ENOSPC (naming `filename`) when `name` matches D2O_BENCH_DISK_FULL_AT."""
    global _disk_full_matches
    pattern = os.environ.get(DISK_FULL_ENV)
    if not pattern or not fnmatch.fnmatchcase(name, pattern):
        return
    _disk_full_matches += 1
    if _disk_full_matches > int(os.environ.get(DISK_FULL_SKIP_ENV) or 0):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename or name)


def reset_counts() -> None:
    """Forget how many disk-full points have matched (for tests that set the variables anew)."""
    global _disk_full_matches
    _disk_full_matches = 0


def pause_point(name: str) -> None:
    pattern = os.environ.get(PAUSE_ENV)
    flag = os.environ.get(PAUSE_FILE_ENV)
    if not pattern or not flag or not fnmatch.fnmatchcase(name, pattern):
        return
    with open(flag, "w") as handle:
        handle.write(name)
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
