"""BurstTrim: memory handed back once after a burst of transactions, never while steady."""

from __future__ import annotations

import sys

import pytest

from pbxwarden.memtrim import BurstTrim, _malloc_trim


def test_trims_once_the_burst_is_over_and_not_while_steady() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    watch = BurstTrim(min_drop=2000, trim=trim)
    for live in range(0, 32_001, 1000):  # the burst builds up
        assert not watch.observe(live)
    for live in (30_000, 20_000, 9_000):  # falling, still above a quarter of the peak
        assert not watch.observe(live)
    assert watch.observe(7_000)  # below a quarter: once
    assert calls == [0]
    assert not watch.observe(6_000)  # the peak is now 7,000
    assert watch.observe(1_000)
    assert not watch.observe(0)  # fewer than min_drop below the new peak
    assert watch.trims == 2
    steady = BurstTrim(min_drop=2000, trim=trim)
    for live in [1500, 0] * 50:  # steady traffic: never a drop of 2,000
        assert not steady.observe(live)
    assert steady.trims == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_the_real_malloc_trim_runs() -> None:
    trim = _malloc_trim()
    if trim is None:
        pytest.skip("not glibc")
    blocks = [bytes(4096) for _ in range(10_000)]  # 40 MB from the C heap, then freed
    del blocks
    assert trim(0) in (0, 1)
    watch = BurstTrim(min_drop=10)  # loads the real one on its first trim
    watch.observe(100)
    assert watch.observe(0) and watch.trims == 1
