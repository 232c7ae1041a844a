"""Emergency calls: always connected, never judged, never cut off, always notified.

A business phone system must connect 911, 112, 999 from every phone (Kari's Law in the
US: directly, with or without an outside-line prefix, and with a notification to a
central point on site; the EU's 112 obligations). So an emergency number of the
tenant's country (libphonenumber's short-number metadata, see
:func:`pbxwarden.pbx.numbers.emergency_number`) is decided here, before the fraud
guard, which is never asked: a suspended or locked extension, one past every limit
and spend cap, still gets through. The call goes out through the tenant's trunk
marked for emergency calls (else its ordinary route to its own country), presenting
the extension's own DID (else the tenant's first) as the callback number in From and
P-Asserted-Identity, so that the answering point can call back. The tenant's admins
are told at once: which extension, where its phone is registered from.
"""

from __future__ import annotations

from dataclasses import dataclass

from pbxwarden.pbx.policy import Decision
from pbxwarden.pbx.routing import Routing, Trunk

KIND = "emergency"
RULE = "emergency-call"


@dataclass(frozen=True, slots=True)
class EmergencyRoute:
    number: str  # the emergency number as the carrier gets it (911, 112)
    trunk: Trunk | None  # None: the tenant has no trunk at all
    callback: str | None  # E.164 number the answering point can call back


def decision(number: str, dialed: str) -> Decision:
    how = "" if dialed == number else f" (dialled as {dialed})"
    return Decision(True, (f"emergency call to {number}{how}: always connected",))


def route(routing: Routing, tenant: str, extension: str, number: str) -> EmergencyRoute:
    return EmergencyRoute(
        number,
        routing.emergency_trunk(tenant),
        routing.callback_number(tenant, extension),
    )


def notification(
    tenant: str,
    extension: str,
    number: str,
    callback: str | None,
    trunk: str | None,
    registered_from: list[str],
    call_id: str,
) -> tuple[str, tuple[str, ...]]:
    """The summary and the reasons of the alert the tenant's admins receive."""
    summary = f"Emergency call: extension {extension} dialled {number}"
    reasons = [
        f"extension {extension} of tenant {tenant} is calling {number}",
        "its phone is registered from "
        + (", ".join(registered_from) if registered_from else "nowhere (no live registration)"),
        f"callback number presented: {callback}"
        if callback
        else "no DID to present as the callback number: give the extension or tenant a DID",
        f"sent through trunk {trunk}" if trunk else "no trunk to send it through: add one now",
        f"call {call_id[:64]}",
    ]
    return summary, tuple(reasons)
