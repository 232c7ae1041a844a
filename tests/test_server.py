"""Overload detection of the running server: event-loop lag and the kernel's queue."""

from __future__ import annotations

import pytest

from pbxwarden.server import overload_state

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
