"""Each stage's summary holds its own peak resident memory, not the process's peak so far."""

import resource
import sys

import pytest

from harness import pipeline


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="clear_refs is Linux's")
def test_reset_lets_a_later_stage_read_a_lower_peak():
    block = bytearray(400 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it is resident
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del block
    pipeline._reset_peak_rss()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert pipeline._PEAK_RESETTABLE
    assert after < before - 300, (before, after)


class _Garbage:
    """What a finished stage leaves: a model in a reference cycle (a Trainer holds one so)."""

    def __init__(self, mb: int):
        self.me = self
        self.block = bytearray(mb * 2**20)
        self.block[:: 4096] = b"x" * len(self.block[:: 4096])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="clear_refs is Linux's")
def test_a_stage_does_not_start_on_what_the_stage_before_it_left(monkeypatch):
    """The stages after training peaked at 3.8-4.1 GB while the leaderboard stage, which loads
    nothing, read 3.3-3.6 GB: the trained model, its gradients and Adam's state, unreachable in
    reference cycles or free in malloc's heap, were the next stage's floor."""
    import gc

    class RunDir:
        run_id = "r"

        def reset_stage(self, name):
            pass

        def mark(self, name, state, summary=None):
            if state == "complete":
                marked.update(summary)

    class Context:
        run_dir = RunDir()

        def progress(self, text):
            pass

    marked = {}
    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "leaderboard", lambda ctx: {})
    gc.disable()
    try:
        _Garbage(300)  # unreachable, but alive until a collection
        floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        pipeline._run_stage(Context(), "leaderboard", main_process=True)
    finally:
        gc.enable()
    assert marked["peak_rss_scope"] == "stage"
    assert marked["peak_rss_mb"] < floor - 250, (floor, marked["peak_rss_mb"])
