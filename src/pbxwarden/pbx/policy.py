"""The one authorization hook every costly call attempt passes through.

The fraud guard implements :class:`CallAuthorizer`; until it does, the default
policy below is what runs: calls between extensions of the same tenant are
allowed and everything else is denied (there are no trunks to reach it yet), so
a fresh install can never dial out at the owner's cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CallAttempt:
    tenant: str
    extension: str  # the extension that pays for the call
    caller: str
    dialed: str
    kind: str  # "internal" (extension to extension) or "external"
    source: str  # transport address the request came from
    at: float


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...]
    status: int = 403  # the SIP answer when denied

    @property
    def label(self) -> str:
        return "allow" if self.allow else "deny"


class CallAuthorizer(Protocol):
    def authorize(self, attempt: CallAttempt) -> Decision: ...


class DefaultPolicy:
    def authorize(self, attempt: CallAttempt) -> Decision:
        if attempt.kind == "internal":
            return Decision(True, ("internal call between extensions",))
        return Decision(False, ("external calls are denied until a trunk and a policy allow them",))
