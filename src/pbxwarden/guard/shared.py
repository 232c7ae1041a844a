"""What the guard asks of the PBX's other nodes (``pbxwarden.cluster``): counts, spend
and suspensions for the whole PBX. Protocols, so that the guard stays pure logic: a
single node has none of them, the simulator neither, and the cluster's objects
implement them over Redis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

SPEND_UNKNOWN = (
    "the PBX's shared state (Redis) is unreachable: the spend of the other nodes' calls "
    "cannot be known, costly calls are refused until it is back"
)


class SharedCounts(Protocol):
    """Costly calls in progress counted on all the PBX's nodes (``pbxwarden.cluster``):
    asked after every local rule allowed an attempt."""

    def reserve(
        self, tenant: str, extension: str, per_extension: int, per_tenant: int, now: float
    ) -> str | None:
        """None: a slot is held for the extension's next started call; else why not."""

    def started(self, tenant: str, extension: str, ref: int, now: float) -> None: ...

    def ended(self, ref: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Ask:
    """The limits an allowed costly attempt is checked against on all the PBX's nodes."""

    per_extension: int  # costly calls in progress
    per_tenant: int
    per_minute: int  # costly attempts of the extension
    per_hour: int
    prefix: str  # the destination's prefix for the same-prefix limit ("" if not costly)
    same_prefix: int  # attempts to that prefix in 10 minutes
    range: str = ""  # the dear range followed for the range patterns ("" if not watched)
    e164: str = ""  # the destination (with ``range``)
    odd: bool = False  # from a new network or to a new country (with ``range``)


@dataclass(frozen=True, slots=True)
class Admission:
    """What the PBX's nodes together answered an attempt: refused (why, SIP status, rule),
    or counted, with what the other nodes saw of the attempt's dear range."""

    refused: str | None = None
    status: int = 486
    rule: str = "limit"
    range_calls: tuple[tuple[float, str, str], ...] = ()  # at, extension, e164 (last hour)
    range_odd: tuple[tuple[str, float], ...] = ()  # extension, at (new network or country)
    range_test: tuple[float, str, str] | None = None  # a short call into it: at, ext, e164
    range_blocked: tuple[float, str] | None = None  # found pumped: refused until, why


class SharedAttempts(Protocol):
    """Call limits, attempt rates and dear ranges counted on all the PBX's nodes in one
    step (``pbxwarden.cluster.rates``): asked after every local rule allowed an attempt,
    in place of :meth:`SharedCounts.reserve`."""

    def admit(self, tenant: str, extension: str, ask: Ask, now: float) -> Admission | None:
        """None (or an Admission not ``refused``): counted, and a slot held for the
        extension's next started call."""

    def withdraw(self) -> None:
        """The last attempt admitted was refused after all (a range pattern found with
        the other nodes' attempts): it counts nowhere."""

    def range_marked(
        self,
        tenant: str,
        prefix: str,
        test: tuple[float, str, str] | None,
        blocked: float,
        why: str,
    ) -> None:
        """A test call into the range was seen here, or the range was found pumped."""


class SharedSpend(Protocol):
    """What the PBX's other nodes' calls cost (``pbxwarden.cluster.spend``), added to
    this node's own spend wherever a spend cap is checked."""

    fail_closed: bool  # other nodes' spend unknown (Redis down): refuse costly calls

    def others(
        self, tenant: str, extension: str, now: float, read: bool = True
    ) -> tuple[float, float, float] | None:
        """The extension's spend in the last hour and 24 hours and the tenant's in 24
        hours on the other nodes; None while it cannot be known (or, unless ``read``,
        is not at hand without asking Redis now)."""

    def answered(self, tenant: str, extension: str, ref: int, rate: float, at: float) -> None: ...

    def ended(self, ref: int, at: float, cost: float) -> None: ...


class SharedSuspensions(Protocol):
    """Suspensions shared with the PBX's other nodes (``pbxwarden.cluster.suspensions``)."""

    def changed(self, tenant: str, extension: str, reason: str | None, at: float, by: str) -> None:
        """The extension was suspended (``reason``) or resumed (None) on this node."""
