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
