"""Shared fixtures: one private D2O_BENCH_HOME per test session for every test that builds the
reduced tiny world, so it is built once (well under a minute) and reused."""

from __future__ import annotations

import os

import pytest

# World settings that shrink the one-time build; same build and loading code as the default.
REDUCED_WORLD = [
    "world.policy_epochs=3",
    "world.scorer_epochs=1",
    "world.eval_templates_per_task=1",
    "world.practice_objects_per_group=4",
]


@pytest.fixture(scope="session")
def bench_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("d2o-bench-home")
    previous = os.environ.get("D2O_BENCH_HOME")
    os.environ["D2O_BENCH_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("D2O_BENCH_HOME", None)
    else:
        os.environ["D2O_BENCH_HOME"] = previous


# What a multi-process launcher exports. The CLI and single-process DeepSpeed set some of these
# in-process on purpose; a value one test leaves behind (LOCAL_RANK=1 from a launcher-flag test)
# would make every later in-process Trainer wait for a process group that no launcher started.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def launcher_environment_is_restored():
    before = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
