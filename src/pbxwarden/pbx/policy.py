"""The one authorization hook every costly call attempt passes through.

The fraud guard implements :class:`CallAuthorizer`; until it does, the default
policy below is what runs, closed by default: calls between extensions and calls
coming in are allowed; going out, only valid national fixed, mobile and toll-free
numbers are; international, premium-rate, shared-cost and other special numbers are
refused until a policy allows them, so a fresh install cannot be used to run up a
bill on revenue-share numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pbxwarden.pbx.numbers import Destination

# "standard-rate": a short code of the home country billed like a national call (ES 091)
# kinds that are someone else's call sent on at the extension's cost, and with the
# setting of a diversion, every kind judged as a diversion
DIVERTED = frozenset(("forwarded", "transferred", "carrier-transfer", "group"))
DIVERSIONS = DIVERTED | {"forward-change"}
NATIONAL_ALLOWED = frozenset(("fixed", "mobile", "fixed-or-mobile", "toll-free", "standard-rate"))


@dataclass(frozen=True, slots=True)
class CallAttempt:
    tenant: str
    extension: str  # the extension that pays for the call
    caller: str
    dialed: str
    # "internal" (extension to extension), "external" (out), "inbound" (from a carrier),
    # "forwarded" (a diversion or redirect: a new call paid by ``extension``),
    # "transferred" (a call ``extension`` transfers out: judged like a diversion),
    # "carrier-transfer" (a carrier's party transfers ``extension``'s call out),
    # "group" (a ring group's external member, ``extension`` the group's number), or
    # "forward-change" (setting a diversion: judged like a call to the target)
    kind: str
    source: str  # transport address the request came from
    at: float
    destination: Destination | None = None  # for external calls


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...]
    status: int = 403  # the SIP answer when denied
    score: int = 0  # the guard's anomaly score, 0-100
    severity: str | None = None  # "warning" or "critical" when the attempt raised an alert
    rule: str = ""  # the rule that refused it or raised the alert

    @property
    def label(self) -> str:
        return "allow" if self.allow else "deny"


class CallAuthorizer(Protocol):
    def authorize(self, attempt: CallAttempt) -> Decision: ...

    def on_call_start(self, attempt: CallAttempt, ref: int) -> None:
        """An authorized attempt became a call (counts towards concurrency limits)."""

    def on_call_answer(self, ref: int, at: float) -> None:
        """The call was answered: from now on it costs money."""

    def on_call_end(self, ref: int, at: float) -> float | None:
        """The call is over; returns its estimated cost when known (for the CDR)."""

    def police(self, now: float) -> list[tuple[int, str]]:
        """Calls in progress that must be cut off now (spend cap, suspension), with why."""


class DefaultPolicy:
    def on_call_start(self, attempt: CallAttempt, ref: int) -> None:
        pass

    def on_call_answer(self, ref: int, at: float) -> None:
        pass

    def on_call_end(self, ref: int, at: float) -> float | None:
        return None

    def police(self, now: float) -> list[tuple[int, str]]:
        return []

    def authorize(self, attempt: CallAttempt) -> Decision:
        if attempt.kind == "internal":
            return Decision(True, ("internal call between extensions",))
        if attempt.kind == "inbound":
            return Decision(True, ("inbound call to a DID",))
        dest = attempt.destination
        if dest is None or not dest.valid:
            return Decision(False, (f"{attempt.dialed!r} is not a valid telephone number",), 404)
        if not dest.national:
            return Decision(
                False,
                (f"international call to {dest.e164} ({dest.country}) is not allowed by default",),
            )
        if dest.number_type not in NATIONAL_ALLOWED:
            what = f" ({dest.costly_range})" if dest.costly_range else ""
            return Decision(
                False, (f"{dest.number_type} number {dest.e164}{what} is not allowed by default",)
            )
        return Decision(True, (f"national {dest.number_type} number",))
