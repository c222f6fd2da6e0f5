"""Running one pipeline under a multi-process launcher (DeepSpeed's, torchrun, srun).

Rank 0 alone resolves the run: its RunPlan (suite lookup and check, counts, run id) and its
assets (built, fetched and hashed there) reach the other ranks through `from_main_process`, and
every rank checks that the plan is its own (`harness/plan.py`, `shared_plan`). Only the train
stage is collective: every rank trains its shard and DeepSpeed/Trainer keep them
in step. Every other stage (data, sampling, reference log-probs, generation, scoring, the
leaderboard) runs on rank 0 alone while the other ranks wait, so the caches, the run directory
and the leaderboard have exactly one writer. Without a launcher (WORLD_SIZE unset or 1) all of
this is a no-op.
"""

from __future__ import annotations

import os
import socket
from typing import Callable, Optional, TypeVar

import torch

from harness.errors import BadInput, D2OBenchError, RunFailure

T = TypeVar("T")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def local_device() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_if_launched() -> None:
    """Join the launcher's process group early, so rank-0-only stages can be fenced."""
    if world_size() <= 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
    torch.distributed.init_process_group(backend=backend)


def barrier() -> None:
    if world_size() > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def main_process_outcome(error: str | None) -> str | None:
    """Rank 0's error (or None) as seen by every rank: the others stop when rank 0 failed."""
    if world_size() <= 1 or not torch.distributed.is_initialized():
        return error
    box = [error]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def from_main_process(produce: Callable[[], T]) -> T:
    """`produce()` run on rank 0 alone; every rank gets its value, or stops with rank 0's error.

    Sent over the launcher's process group (`broadcast_object_list`, a pickle), not through a file
    in the run directory: every launcher this harness supports (deepspeed, torchrun, srun) starts
    the ranks with MASTER_ADDR/MASTER_PORT, so the group can be joined before anything is
    resolved; it needs no file system shared between nodes and no polling; and a rank 0 that
    fails (a bad config, a missing model) tells the others in the same message, where a file that
    never appears would leave them waiting. Without a launcher it is `produce()`.
    """
    if world_size() <= 1:
        return produce()
    init_if_launched()
    own_error: Optional[BaseException] = None
    box: list = [None]
    if is_main_process():
        try:
            box = [(produce(), None)]
        except D2OBenchError as exc:
            own_error, box = exc, [(None, (exc.exit_code, str(exc)))]
        except Exception as exc:
            own_error, box = exc, [(None, (1, f"{type(exc).__name__}: {exc}"))]
    torch.distributed.broadcast_object_list(box, src=0)
    if own_error is not None:
        raise own_error
    value, failure = box[0]
    if failure is not None:
        code, message = failure
        raise (BadInput if code == 2 else RunFailure)(f"rank 0: {message}")
    return value


def first_refusal(refusal: Optional[str]) -> Optional[str]:
    """Every rank's objection (None: none) gathered on every rank; the first one, or None. Lets a
    rank that refuses what rank 0 sent stop every rank, not only itself (the others would wait for
    it at the next collective until the group's timeout)."""
    if world_size() <= 1 or not torch.distributed.is_initialized():
        return refusal
    gathered: list = [None] * world_size()
    torch.distributed.all_gather_object(gathered, refusal)
    return next((r for r in gathered if r is not None), None)


def leave_process_group(*, completed: bool) -> None:
    """Tear the launcher's process group down before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads can be destroyed while a peer is still
    closing its side, and the process aborts ("terminate called without an active exception")
    after a run that succeeded. After a completed run every rank first meets at a barrier; after
    a failure the ranks may not all get there, so each just leaves.
    """
    if world_size() <= 1 or not torch.distributed.is_initialized():
        return
    if completed:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def describe_single_process_group() -> None:
    """Without a launcher, describe a one-process group in the environment for DeepSpeed.

    deepspeed.initialize() needs a process group; with no RANK/WORLD_SIZE/MASTER_* set (a plain
    `d2o-bench` or `python` run) it falls back to MPI discovery and dies on a missing mpi4py.
    A launcher (deepspeed, torchrun, mpirun, srun with several tasks) sets its own variables;
    then nothing is touched, so a multi-process job never turns into independent 1-rank runs.
    """
    launched = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
    if any(name in os.environ for name in launched) or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_loopback_port())
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
