"""The phone's real source behind a trusted SIP front (Kamailio, ``deploy/kamailio``).

Behind a front every request arrives from the front's address. Judged by that address,
one phone's password guessing or flood would ban the front, and with it every phone;
the registrar's network reasoning and the guard's "new network" signal would see one
network for the whole PBX. So the front writes the phone's source into a header,
``X-PBX-Source: 192.0.2.7:5060;udp``, after removing any the phone sent, and a node
believes that header from the front's addresses only (``cluster.fronts``).

The substitution happens in one place: :meth:`Fronts.relayed`, first thing in
``SipServer.on_message``, before the firewall's pre-check. What it returns is an
:class:`~pbxwarden.sip.transaction.Address` of the phone (``host``, ``port``) whose
``front`` is the hop the bytes came over. Everything downstream that judges the source
(firewall rate counters and bans, failed-authentication counts and locks, ACLs, the
registration watch, the guard's network signal, the media relay's NAT reasoning)
reads ``host`` and so sees the phone; everything that moves bytes (Via stamping,
response routing, the sockets, registrar workers) goes by ``Address.hop``, the front.
A binding records both (``Address.flow``), so calls to the phone go back through the
front, which relays them on by the Path it added (RFC 3327, ``received``).

From any other address the header is ignored: nothing but this module reads it, so
a phone writing one to a node directly gains nothing (it is judged by its packets'
source, as always). Bytes are not rewritten: a front's request is searched once for
the header (a regular expression over the head), other sources cost nothing.
A ban of the real source is in force at once: the node drops that phone's requests
relayed by the front before parsing them; the front's own address is never banned
(it is allow-listed with the configured networks).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from pbxwarden.sip.transaction import Address
from pbxwarden.sip.uri import URI

HEADER = "X-PBX-Source"
_HEADER = re.compile(rb"\r\nx-pbx-source[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_VALUE = re.compile(r"^\[?([0-9A-Fa-f.:]+)\]?:([0-9]{1,5})(?:;([A-Za-z]{2,8}))?[ \t]*$")


def parse_value(value: str) -> tuple[str, int] | None:
    """``192.0.2.7:5060;udp`` or ``[2001:db8::7]:5060;tcp`` -> (host, port), or None."""
    m = _VALUE.match(value)
    if m is None:
        return None
    try:
        host = str(ipaddress.ip_address(m.group(1)))
    except ValueError:
        return None
    port = int(m.group(2))
    if not 0 < port < 65536:
        return None
    return host, port


class Fronts:
    """The trusted fronts' addresses, and the one rule that reads their header."""

    def __init__(self, addresses: Iterable[str] = ()) -> None:
        self.addresses = frozenset(str(ipaddress.ip_address(a)) for a in addresses)

    def __bool__(self) -> bool:
        return bool(self.addresses)

    def relayed(self, data: bytes, source: Address) -> Address:
        """The source to judge ``data`` by: the phone's when a front relayed it, else
        ``source`` itself (a front's own requests, such as its OPTIONS probes, and
        anything from anyone else)."""
        if source.host not in self.addresses:
            return source
        end = data.find(b"\r\n\r\n")
        # the front appends its own after removing the phone's: the last one counts
        matches = list(_HEADER.finditer(data, 0, end if end >= 0 else len(data)))
        if not matches:
            return source
        found = matches[-1]
        parsed = parse_value(found.group(1).decode("ascii", "replace"))
        if parsed is None:
            return source
        host, port = parsed
        return Address(source.transport, host, port, source)


def front_route(dest: Address, uri: URI | None = None) -> str:
    """The Route that takes a request to a phone through the front that relayed its
    REGISTER: the front's Path (RFC 3327) with ``received``, which its path module
    (``use_received``) turns into the next hop. ``transport`` in the Route is the
    node's link to the front; the phone's own link to the front is the one its Contact
    (the request URI) asks for, ``transport=tcp`` or ``tls``, written into ``received``
    escaped, as Kamailio's ``add_path_received`` does: the front then reuses the
    phone's connection instead of sending UDP to the connection's address."""
    assert dest.front is not None
    front, phone = dest.front, dest
    host = f"[{front.host}]" if ":" in front.host else front.host
    target = f"[{phone.host}]" if ":" in phone.host else phone.host
    transport = "" if front.transport == "UDP" else f";transport={front.transport.lower()}"
    wanted = (uri.transport or "").lower() if uri is not None else ""
    link = f"%3btransport%3d{wanted}" if wanted in ("tcp", "tls") else ""
    return f"<sip:{host}:{front.port}{transport};lr;received=sip:{target}:{phone.port}{link}>"
