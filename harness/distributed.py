"""Running one pipeline under a multi-process launcher (DeepSpeed's, torchrun, srun).

Rank 0 alone resolves the run: its RunPlan (suite lookup and check, counts, run id) and its
assets (built, fetched and hashed there) reach the other ranks through `from_main_process`, and
every rank checks that the plan is its own (`harness/plan.py`, `shared_plan`). Only the train
stage is collective: every rank trains its shard and DeepSpeed/Trainer keep them
in step. Every other stage (data, sampling, reference log-probs, generation, scoring, the
leaderboard) runs on rank 0 alone while the other ranks wait, so the caches, the run directory
and the leaderboard have exactly one writer. What rank 0 does alone runs as a one-process job
(`single_process_job`), and the others wait for it through a group with a long timeout
(`rank0_wait`). Without a launcher (WORLD_SIZE unset or 1) all of this is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from datetime import timedelta
from typing import Callable, Iterator, Optional, TypeVar

import torch

from harness.errors import BadInput, D2OBenchError, RunFailure

T = TypeVar("T")

# How long the other ranks wait for rank 0's solo work (resolving and building the assets, every
# stage but train) before giving up, in hours; D2O_BENCH_RANK0_WAIT_HOURS changes it.
RANK0_WAIT_HOURS = 7 * 24
RANK0_WAIT_ENV = "D2O_BENCH_RANK0_WAIT_HOURS"
_waiting_group = None


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


def rank0_wait() -> timedelta:
    """How long a rank waits for rank 0's solo work (RANK0_WAIT_HOURS, or $D2O_BENCH_RANK0_WAIT_HOURS)."""
    text = os.environ.get(RANK0_WAIT_ENV, "").strip()
    if not text:
        return timedelta(hours=RANK0_WAIT_HOURS)
    try:
        hours = float(text)
    except ValueError:
        hours = float("nan")
    if not hours > 0 or hours == float("inf"):
        raise BadInput(f"{RANK0_WAIT_ENV}={text!r}: give the hours the other ranks wait for rank 0 as a positive number")
    return timedelta(hours=hours)


def _rank0_group():
    """The process group the ranks wait for rank 0 through: gloo, with the `rank0_wait()` timeout.

    The launcher's default group keeps torch's timeout (30 minutes for gloo, 10 for NCCL), which is
    right for training's collectives but not for waiting while rank 0 alone builds the tiny world
    or a suite's cost model, converts a checkpoint, generates or scores: those take longer on a big
    model, and a waiting rank would time out and take the run down. Every rank reaches its first
    wait at the same point, so creating the group there (a collective) is safe.
    """
    global _waiting_group
    if _waiting_group is None:
        _waiting_group = torch.distributed.new_group(backend="gloo", timeout=rank0_wait())
    return _waiting_group


def _wait_for_rank0(box: list, what: str) -> None:
    """`broadcast_object_list(box)` from rank 0 on the waiting group; a rank whose wait ends without
    rank 0's message (the timeout passed, rank 0 died) stops with one line."""
    group = _rank0_group()
    if is_main_process():
        torch.distributed.broadcast_object_list(box, src=0, group=group)
        return
    try:
        torch.distributed.broadcast_object_list(box, src=0, group=group)
    except RuntimeError as exc:  # gloo's timeout or a closed connection (DistBackendError)
        raise RunFailure(f"rank {rank()} stopped waiting for rank 0 ({what}; the wait allows {rank0_wait().total_seconds() / 3600:g} h, "
                         f"${RANK0_WAIT_ENV} sets it in hours): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def barrier() -> None:
    if world_size() > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier(group=_rank0_group())


def main_process_outcome(error: str | None) -> str | None:
    """Rank 0's error (or None) as seen by every rank: the others stop when rank 0 failed."""
    if world_size() <= 1 or not torch.distributed.is_initialized():
        return error
    box = [error]
    _wait_for_rank0(box, "a stage rank 0 runs alone")
    return box[0]


# What a launcher tells a process about its job. transformers' TrainingArguments builds accelerate's
# PartialState (training_args._setup_devices), which decides it is one rank of a distributed job when
# LOCAL_RANK is set, or on the CPU when WORLD_SIZE, PMI_SIZE, OMPI_COMM_WORLD_SIZE or
# MV2_COMM_WORLD_SIZE is above 1 (accelerate.state.PartialState._prepare_backend); it then takes the
# launcher's already initialised process group for its own (num_processes = its world size) and
# the Trainer trains with DDP, waiting in collectives that the other ranks, themselves waiting for
# rank 0, never join. The rest are hidden too, so that nothing rank 0 does alone (a vLLM server it
# starts included) takes itself for one rank of the launch or reaches the launcher's store.
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE",
                    "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                    "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_RANK",
                    "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")


class _DropProcessGroupNotice(logging.Filter):
    """TrainingArguments warns that a process group is initialised but it is not distributed: inside
    a single-process job under a launcher that is the intent."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torch.distributed process group is initialized")


@contextlib.contextmanager
def single_process_job() -> Iterator[None]:
    """Run what rank 0 does alone while the other ranks wait (building the tiny world and other
    assets, every stage but train) as a one-process job, even under a launcher.

    The tiny world's builder trains with transformers' Trainer; inside a launched rank the Trainer
    would take the launch for its own (LAUNCH_VARIABLES says how) and rank 0 would wait for ever.
    So, for this block only: the launcher's variables are hidden (rank(), world_size() read 0 and
    1 here), accelerate's process state is set aside so that it is built afresh from what it then
    sees, and a ZeRO-3 Trainer's DeepSpeed config, which transformers keeps globally and which would
    make model loading and generate() partition or sync across ranks, is set aside too. The launcher's
    process group is not touched: nothing in here uses it, and it is the same group after. Everything
    is put back on leaving. Without a launcher it does nothing.
    """
    if world_size() <= 1:
        yield
        return
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from transformers.integrations import deepspeed as hf_deepspeed

    hidden = {name: os.environ.pop(name) for name in LAUNCH_VARIABLES if name in os.environ}
    states = [(cls, dict(cls._shared_state)) for cls in (PartialState, AcceleratorState, GradientState)]
    for cls, _ in states:
        cls._shared_state.clear()
    zero3 = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    notice = _DropProcessGroupNotice()
    logging.getLogger("transformers.training_args").addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger("transformers.training_args").removeFilter(notice)
        hf_deepspeed._hf_deepspeed_config_weak_ref = zero3
        for cls, saved in states:
            cls._shared_state.clear()
            cls._shared_state.update(saved)
        os.environ.update(hidden)


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
    _rank0_group()
    if is_main_process():
        try:
            with single_process_job():
                box = [(produce(), None)]
        except D2OBenchError as exc:
            own_error, box = exc, [(None, (exc.exit_code, str(exc)))]
        except Exception as exc:
            own_error, box = exc, [(None, (1, f"{type(exc).__name__}: {exc}"))]
    _wait_for_rank0(box, "resolving the run")
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
    global _waiting_group
    if completed:
        torch.distributed.barrier()
    _waiting_group = None
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
