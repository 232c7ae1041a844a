"""Caller ID towards carriers: which number a call presents, and whether it is withheld.

A carrier routes calls back to the number in From (and relies on P-Asserted-Identity,
RFC 3325, where it trusts the PBX). The internal extension number means nothing to it,
and a number the tenant does not own is spoofing, which STIR/SHAKEN attestation and EU
CLI rules forbid. So a call an extension places through a carrier presents, in E.164,
the extension's chosen outbound caller ID if it is still one of the tenant's DIDs, else
the extension's own DID, else the tenant's lowest DID; never what the phone wrote in
From. A tenant that owns no number presents none (an anonymous From).

Withholding (per extension, or per call by dialling a prefix such as ``*67`` or
``#31#``) sends ``From: "Anonymous" <sip:anonymous@anonymous.invalid>`` with
``Privacy: id`` (RFC 3323); the carrier still gets the asserted identity where it is
trusted, so that it can bill, trace and let emergency services call back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pbxwarden.pbx.routing import Routing
from pbxwarden.sip.uri import URI, NameAddr

# Dialled before a number: withhold the caller ID for this call (US/CA, GSM).
WITHHOLD_PREFIXES = ("*67", "#31#")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


@dataclass(frozen=True, slots=True)
class Identity:
    """What a leg to a carrier presents: ``number`` (E.164, owned by the tenant, or None
    when it owns none), whether the user withheld it, and ``shown``: the original
    caller of an inbound call that is forwarded out (From shows who is calling, as
    carriers expect with Diversion; the asserted identity stays the tenant's number)."""

    number: str | None
    withheld: bool = False
    shown: str | None = None


def strip_withhold(dialed: str) -> tuple[str, bool]:
    """The number without a withhold prefix, and whether there was one."""
    for prefix in WITHHOLD_PREFIXES:
        if dialed.startswith(prefix) and len(dialed) > len(prefix):
            return dialed[len(prefix) :], True
    return dialed, False


def owned(routing: Routing, tenant: str, number: str) -> bool:
    did = routing.dids.get(number)
    return did is not None and did.tenant == tenant


def outbound(
    routing: Routing,
    tenant: str,
    extension: str,
    chosen: str | None = None,
    withheld: bool = False,
) -> Identity:
    """The identity of a call ``extension`` places through a carrier."""
    if chosen and owned(routing, tenant, chosen):
        return Identity(chosen, withheld)
    return Identity(routing.callback_number(tenant, extension), withheld)


def from_and_headers(
    identity: Identity, host: str, tag: str, assert_identity: bool
) -> tuple[NameAddr, list[tuple[str, str]]]:
    """From (with ``tag``) and the extra headers of a leg to a carrier at ``host``."""
    extra: list[tuple[str, str]] = []
    if identity.number is not None and assert_identity:
        extra.append(("P-Asserted-Identity", f"<sip:{identity.number}@{host}>"))
    if identity.number is None or identity.withheld:
        if identity.withheld:
            extra.append(("Privacy", "id"))
        anonymous = URI("sip", user="anonymous", host="anonymous.invalid")
        return NameAddr(anonymous, "Anonymous", {"tag": tag}), extra
    user = identity.shown or identity.number  # ``shown``: E.164, checked by forwarded()
    return NameAddr(URI("sip", user=user, host=host), None, {"tag": tag}), extra


def forwarded(routing: Routing, tenant: str, by: str, caller: str) -> Identity:
    """An inbound call from ``caller`` that extension ``by`` forwards to a carrier."""
    number = routing.callback_number(tenant, by)
    shown = caller if _E164.fullmatch(caller) else None
    return Identity(number, withheld=shown is None and number is not None, shown=shown)
