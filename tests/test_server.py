"""Overload detection of the running server: event-loop lag and the kernel's queue."""

from __future__ import annotations

import pytest

from pbxwarden.server import overload_state

LAG, QUEUE = 0.25, 1_000_000


@pytest.mark.parametrize(
    ("was", "lag", "backlog", "expected"),
    [
        (False, 0.01, 0, False),
        (False, 0.30, 0, True),  # the loop lags
        (False, 0.01, 1_200_000, True),  # SIP waits unread in the kernel
        (True, 0.20, 0, True),  # still above half the lag: stays on
        (True, 0.01, 400_000, True),  # queue not yet below a quarter: stays on
        (True, 0.01, 200_000, False),  # both low again: over
        (False, 0.20, 900_000, False),  # below both limits: off stays off
    ],
)
def test_overload_state(was: bool, lag: float, backlog: int, expected: bool) -> None:
    assert overload_state(was, lag, LAG, backlog, QUEUE) is expected


def test_queue_limit_zero_means_lag_only() -> None:
    assert not overload_state(False, 0.01, LAG, 10**9, 0)
    assert not overload_state(True, 0.01, LAG, 10**9, 0)
