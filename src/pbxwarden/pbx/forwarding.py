"""Call forwarding rules shared by every way of setting it (phone feature codes, CLI, API).

A diversion is a standing order to place calls at the extension's cost, so setting
one is judged like placing a call to the target: a target the extension could not
call is refused at set time, not only when the first diverted call arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pbxwarden.pbx.numbers import classify, emergency_number
from pbxwarden.pbx.policy import CallAttempt, CallAuthorizer, Decision

TARGET_RE = re.compile(r"\+?[0-9]{2,20}")
# What people put between digits when they write a number (E.123's visual separators).
_SEPARATORS = re.compile(r"[\s().\-/\u00a0\u2010-\u2015]+")
KINDS = ("always", "busy", "noanswer")
DIVERSION_REASONS = {
    "always": "unconditional",
    "busy": "user-busy",
    "noanswer": "no-answer",
    "redirect": "deflection",
}


@dataclass(frozen=True, slots=True)
class FeatureCode:
    kind: str
    sets: bool  # True: code followed by the target sets it; False: clears


def parse_feature(dialed: str, codes: dict[str, FeatureCode]) -> tuple[FeatureCode, str] | None:
    """(code, target) when ``dialed`` is a feature code; longest code wins."""
    for code in sorted(codes, key=len, reverse=True):
        if dialed.startswith(code):
            return codes[code], dialed[len(code) :]
    return None


def normalise_target(text: str) -> str:
    """A target as people write it, as dialled digits: ``(202) 555-0143`` becomes
    ``2025550143``, ``+49 30 1234-5678`` becomes ``+493012345678``. Only separators are
    dropped; anything else stays, for :func:`judge_target` to refuse with a reason."""
    return _SEPARATORS.sub("", text.strip())


def judge_target(
    policy: CallAuthorizer,
    tenant: str,
    extension: str,
    target: str,
    country: str,
    target_is_internal: bool,
    source: str,
    now: float,
) -> Decision:
    if not TARGET_RE.fullmatch(target):
        return Decision(False, (f"{target!r} is not a number to forward to",), 484)
    if target == extension:
        return Decision(False, ("an extension cannot forward to itself",), 482)
    if emergency_number(target, country) is not None:
        # diverting a company's calls to 112 would flood the answering point
        return Decision(False, (f"calls cannot be forwarded to the emergency number {target}",))
    if target_is_internal:  # an extension, or one of the PBX's own DIDs: never a carrier
        return Decision(True, (f"forwarding to {target}, inside the PBX",))
    return policy.authorize(
        CallAttempt(
            tenant,
            extension,
            extension,
            target,
            "forward-change",
            source,
            now,
            classify(target, country),
        )
    )
