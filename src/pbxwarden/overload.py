"""When the server sheds load: the level of overload from the event loop's lag and the
UDP backlog (0: none; 1: new calls without credentials are shed; 2: all new calls), a
pure function of what the lag probe measured, tested apart from any server."""

from __future__ import annotations


def overload_state(
    was: int,
    lag: float,
    lag_limit: float,
    backlog: int,
    backlog_limit: int,
    *,
    busy: bool = True,
    late_before: bool = True,
) -> int:
    """How hard to shed new calls: 0 not at all, 1 those without credentials, 2 all.

    2 when the loop lags past its limit or the receive queue is four times its limit;
    1 when the queue is past its limit. Down again only below half the lag and a quarter
    of the queue (hysteresis: no flapping at the threshold), and one level at a time.

    A late timer is load only when it lasts (``late_before``: the previous probe was
    late too) and SIP waits behind it: bytes still queued in the kernel (``backlog``),
    or messages that arrived since the previous probe (``busy``: a loop kept busy over
    TCP, whose queues are not measured). One stall (start-up, a garbage collection, the
    machine paused) or lag with nothing waiting sheds nothing; a limit of 0 turns the
    lag signal off (as 0 does the queue's).
    """
    queued = backlog_limit > 0 and backlog > backlog_limit
    lagging = 0 < lag_limit < lag and late_before and (backlog > 0 or busy)
    if lagging or (queued and backlog > 4 * backlog_limit):
        return 2
    if queued:
        return 1
    low = (lag_limit == 0 or lag < lag_limit / 2) and (
        backlog_limit == 0 or backlog < backlog_limit / 4
    )
    return max(0, was - 1) if low else was
