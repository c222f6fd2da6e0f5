"""Named kill points for fault-injection tests.

`D2O_BENCH_KILL_AT=<point>` makes the process SIGKILL itself when it reaches that point, as a
preemption, an OOM kill or a node failure would: no cleanup, no exception handler, no flush. The
points are where a kill is most likely to leave something half-done: the start and end of every
stage (`stage:<name>:start`, `stage:<name>:end`, the latter after the stage's work and before its
COMPLETE marker), every optimizer step (`train:step:<n>`), a checkpoint written but not yet
sealed (`checkpoint:<n>:unsealed`) and a leaderboard written but not yet renamed into place
(`leaderboard:unreplaced`). Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "D2O_BENCH_KILL_AT"


def kill_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
