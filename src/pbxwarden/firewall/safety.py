"""Which manual bans would hurt the PBX itself: refused unless the admin insists.

A ban is a one-line command, and a mistaken one is an outage: banning 127.0.0.1 while
the phones of a small office reach the PBX through loopback (or a front on the same
machine) silenced every phone; banning the carrier's address drops every inbound
call; banning the admin's own address locks the admin out. Sans-I/O: the caller says
what the PBX listens on, which networks and trunks it trusts and where the admin is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

WILDCARDS = ("0.0.0.0", "::", "")
LOOPBACK = ("127.0.0.1", "::1")


def ban_refusal(
    address: str,
    *,
    allow: Iterable[str] = (),
    trunk_hosts: Iterable[str] = (),
    listen_hosts: Iterable[str] = (),
    admin_address: str | None = None,
) -> str | None:
    """Why banning ``address`` (a valid IP) would be a mistake, or None if it is fine."""
    ip = ipaddress.ip_address(address)
    for network in allow:
        if ip in ipaddress.ip_network(network, strict=False):
            return f"{address} is in firewall.allow ({network}) and would never be banned"
    for host in trunk_hosts:
        if _same(host, ip):
            return f"{address} is a trunk's carrier: banning it drops every call from it"
    for host in listen_hosts:
        own = _same(host, ip)
        # Phones and tools on this machine reach a loopback (or wildcard) listener from
        # the usual loopback address; another 127.x address is a source of its own.
        via_loopback = (host in WILDCARDS or _loopback(host)) and address in LOOPBACK
        if own or via_loopback:
            return (
                f"the PBX listens on {host or 'every address'}: banning {address} "
                "silences every phone and tool that reaches it from this machine"
            )
    if admin_address is not None and _same(admin_address, ip):
        return f"{address} is the address you are administering from: you would lock yourself out"
    return None


def _same(host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) == ip
    except ValueError:
        return False


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ssh_client_address(environ: dict[str, str]) -> str | None:
    """The address an SSH session comes from (``SSH_CLIENT`` / ``SSH_CONNECTION``)."""
    for name in ("SSH_CONNECTION", "SSH_CLIENT"):
        value = environ.get(name, "").split()
        if value:
            try:
                return str(ipaddress.ip_address(value[0]))
            except ValueError:
                continue
    return None
