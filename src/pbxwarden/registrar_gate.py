"""The main process's pre-check, run by a registrar worker on what it reads itself.

With the kernel steering REGISTERs to the workers' sockets
(:mod:`pbxwarden.transport.steering`), a worker is the first to see a REGISTER, so it
must judge it as the main process would have before handing it over: the trusted
front's ``X-PBX-Source`` (:class:`~pbxwarden.transport.front.Fronts`), bans and the
per-source flood limit (``Firewall.check_source``), extension enumeration
(``Firewall.observe_identity``), and then whose it is: the worker that owns the To user
(``worker_for``), which keeps every binding, nonce count and transaction of one
extension in one process. One source's REGISTERs all reach one worker (the steering
hashes the source address), so that worker's counters see all of them.

Bans come from the main process (every ban made anywhere: this node, another node, the
CLI), pushed to every worker as they change; a worker's own bans (a flood, an
enumeration) are reported to the main process, which stores, escalates and shares them
as its own. Sans-I/O: data, source and time in; a route out.
"""

from __future__ import annotations

import re
import zlib
from enum import Enum

from pbxwarden.config import Config
from pbxwarden.firewall.engine import Firewall, FirewallSettings, Verdict
from pbxwarden.sip.transaction import Address
from pbxwarden.transport.front import Fronts

# The To user of a REGISTER, read before parsing (the header's user@host part). Only the
# choice of worker depends on it; the worker parses the message properly.
_TO_RE = re.compile(rb"\n(?:to|t)[ \t]*:[^\r\n]*?sips?:([^@>;\s]+)@([^>;:\s]+)", re.IGNORECASE)


def registration_route(data: bytes) -> bytes | None:
    """The To user of a REGISTER (``user@host`` required), or None for anything else."""
    if not data.startswith(b"REGISTER "):
        return None
    head_end = data.find(b"\r\n\r\n")
    m = _TO_RE.search(data, 0, head_end if head_end >= 0 else len(data))
    return None if m is None else m.group(1)


def worker_for(user: bytes, count: int) -> int:
    """By the user part alone, so that phones of one extension writing its domain
    differently (a name, an address) still meet in one worker. Stable across processes
    and restarts (unlike ``hash()``, which is salted)."""
    return zlib.crc32(user) % count


def firewall_settings(config: Config) -> FirewallSettings:
    """The firewall's settings from the configuration: the same in every process."""
    fw = config.firewall
    return FirewallSettings(
        rate_window=fw.rate_window,
        rate_limit=fw.rate_limit,
        trusted_rate_limit=fw.trusted_rate_limit,
        proven_rate_limit=fw.proven_rate_limit,
        auth_failure_limit=fw.auth_failure_limit,
        auth_failure_window=fw.auth_failure_window,
        distributed_sources=fw.distributed_sources,
        ban_steps=tuple(fw.ban_steps),
        reject_banned=fw.reject_banned,
        identity_limit=fw.identity_limit,
        identity_window=fw.identity_window,
        # a front is never banned: its phones are judged each by its own source
        allow=(*fw.allow, *config.cluster.fronts),
    )


class Route(Enum):
    HANDLE = "handle"  # this worker's user: handle it here
    PEER = "peer"  # another worker's user: hand it to that worker
    MAIN = "main"  # not a REGISTER, or its worker is down: to the main process
    DROP = "drop"  # banned, flooding, enumerating: say nothing
    REFUSE = "refuse"  # the same, answered 403 (reject_banned, or relayed by a front)


class Gate:
    """One worker's pre-check. ``peers``: the workers ready to take a hand-over."""

    def __init__(self, index: int, count: int, firewall: Firewall, fronts: Fronts) -> None:
        self.index = index
        self.count = count
        self.firewall = firewall
        self.fronts = fronts
        self.peers: frozenset[int] = frozenset()

    def route(self, data: bytes, source: Address, wall: float) -> tuple[Route, Address, int]:
        """Where ``data`` goes, the source to judge it by, and its worker (-1: not
        judged here, the main process runs its own checks)."""
        user = registration_route(data)
        if user is None:  # not a REGISTER after all: the main process judges it all
            return Route.MAIN, source, -1
        if self.fronts.addresses:
            source = self.fronts.relayed(data, source)
        fw = self.firewall
        verdict = fw.check_source(source.host, wall)
        if verdict is not Verdict.ALLOW:
            return self._refusal(verdict, source), source, -1
        if not fw.is_allowlisted(source.host):
            identity = user[:64].decode("utf-8", "replace")
            verdict = fw.observe_identity(source.host, identity, wall)
            if verdict is not Verdict.ALLOW:
                return self._refusal(verdict, source), source, -1
        owner = worker_for(user, self.count)
        if owner == self.index:
            return Route.HANDLE, source, owner
        if owner in self.peers:
            return Route.PEER, source, owner
        return Route.MAIN, source, owner

    @staticmethod
    def _refusal(verdict: Verdict, source: Address) -> Route:
        # a front always gets an answer: silence would look like a dead node to it
        if verdict is Verdict.REJECT or source.front is not None:
            return Route.REFUSE
        return Route.DROP
