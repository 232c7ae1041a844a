"""Session timers (RFC 4028) on the caller's leg, sans-I/O: what was asked, what to answer.

A caller that supports timers asks for a session interval (``Session-Expires``): the
session lives as long as someone refreshes it (a re-INVITE or UPDATE answered 2xx)
within the interval. The PBX, the caller's UAS, answers with the interval and who
refreshes (the caller unless it asked the PBX to), and hangs up both legs when a
session is not refreshed in time (RFC 4028 10: the interval less a third, at most 32 s):
a phone that died, or lost its network, stops refreshing. An interval shorter than the
PBX's ``Min-SE`` is answered 422. Timers are not offered to callees: the B legs are
watched by the keep-alive (:mod:`pbxwarden.pbx.mid_call`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pbxwarden.sip.message import Request

MIN_SE = 90  # seconds: the smallest interval RFC 4028 allows
MAX_INTERVAL = 86400


@dataclass(frozen=True, slots=True)
class SessionTimer:
    interval: int  # seconds
    refresher: str  # "uac": the caller refreshes; "uas": the PBX does


class TooBrief(Exception):
    """The interval asked for is below ``min_se``: answer 422 with ``Min-SE``."""

    def __init__(self, min_se: int) -> None:
        super().__init__(f"session interval below {min_se} s")
        self.min_se = min_se


def _tags(request: Request) -> set[str]:
    values = [*request.headers.get_all("Supported"), *request.headers.get_all("Require")]
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def _seconds(text: str, what: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise ValueError(f"{what} is not a number of seconds")
    return int(text)


def asked(request: Request, min_se: int = MIN_SE) -> SessionTimer | None:
    """The session timer a request asks for, or None (no timer, or the caller does not
    support them: RFC 4028 9 lets the UAS leave it out then). Raises ValueError on an
    unreadable header and :class:`TooBrief` on an interval below ``min_se``."""
    value = request.headers.get("Session-Expires")
    if value is None or "timer" not in _tags(request):
        return None
    delta, *params = value.split(";")
    interval = _seconds(delta, "Session-Expires")
    refresher = "uac"
    for param in params:
        name, _, text = param.strip().partition("=")
        if name.strip().lower() == "refresher":
            refresher = text.strip().lower()
            if refresher not in ("uac", "uas"):
                raise ValueError("Session-Expires refresher is neither uac nor uas")
    floor = min_se
    theirs = request.headers.get("Min-SE")
    if theirs is not None:
        floor = max(floor, _seconds(theirs.split(";")[0], "Min-SE"))
    if interval < floor:
        raise TooBrief(floor)
    return SessionTimer(min(interval, MAX_INTERVAL), refresher)


def answer_headers(timer: SessionTimer) -> list[tuple[str, str]]:
    """What a 2xx to the caller carries (RFC 4028 9)."""
    return [
        ("Session-Expires", f"{timer.interval};refresher={timer.refresher}"),
        ("Require", "timer"),
    ]


def expiry(interval: int) -> float:
    """Seconds without a refresh after which the session is over (RFC 4028 10)."""
    return interval - min(32.0, interval / 3)
