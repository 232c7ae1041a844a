"""Overload detection of the running server: event-loop lag and the kernel's queue."""

from __future__ import annotations

import pytest

from pbxwarden.overload import overload_state

LAG, QUEUE = 0.25, 1_000_000


@pytest.mark.parametrize(
    ("was", "lag", "backlog", "expected"),
    [
        (0, 0.01, 0, 0),
        (0, 0.30, 0, 2),  # the loop lags: every new call is shed
        (0, 0.01, 1_200_000, 1),  # SIP waits unread: new calls without credentials shed
        (0, 0.01, 4_500_000, 2),  # a deep queue: every new call
        (2, 0.01, 2_000_000, 1),  # the queue shrinks: back to the milder level
        (1, 0.20, 0, 1),  # still above half the lag: stays on
        (1, 0.01, 400_000, 1),  # queue not yet below a quarter: stays on
        (1, 0.01, 200_000, 0),  # both low again: over
        (2, 0.01, 200_000, 1),  # one level at a time
        (0, 0.20, 900_000, 0),  # below both limits: off stays off
    ],
)
def test_overload_state(was: int, lag: float, backlog: int, expected: int) -> None:
    assert overload_state(was, lag, LAG, backlog, QUEUE) == expected


def test_queue_limit_zero_means_lag_only() -> None:
    assert overload_state(0, 0.01, LAG, 10**9, 0) == 0
    assert overload_state(1, 0.01, LAG, 10**9, 0) == 0


@pytest.mark.parametrize(
    ("lag", "backlog", "busy", "late_before", "expected"),
    [
        (0.30, 0, True, True, 2),  # lasting lag, messages kept arriving: load
        (0.30, 5_000, False, True, 2),  # lasting lag, SIP queued behind it: load
        (0.30, 0, False, True, 0),  # lasting lag with nothing waiting: not load
        (0.30, 5_000, True, False, 0),  # one late probe (start-up, a collection): not yet
        (3.00, 0, False, False, 0),  # a long stall with nothing waiting: never
    ],
)
def test_lag_is_load_only_when_it_lasts_and_sip_waits(
    lag: float, backlog: int, busy: bool, late_before: bool, expected: int
) -> None:
    assert (
        overload_state(0, lag, LAG, backlog, QUEUE, busy=busy, late_before=late_before) == expected
    )


def test_lag_limit_zero_means_queue_only() -> None:
    """0 turns the lag signal off (it once meant "always overloaded")."""
    assert overload_state(0, 5.0, 0, 0, QUEUE) == 0
    assert overload_state(0, 5.0, 0, 1_200_000, QUEUE) == 1
    assert overload_state(2, 0.01, 0, 0, QUEUE) == 1
