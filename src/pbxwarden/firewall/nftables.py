"""Optional kernel offload of bans: an nftables set the kernel drops SIP traffic from.

A banned scanner already costs Python only a dict lookup per datagram; with this on,
it costs nothing, because its packets to the SIP port never reach the process. Only
the SIP port is filtered, so a ban can never lock an administrator out of SSH.

Runs the ``nft`` command (Linux, root). Where nftables is missing or not permitted,
:meth:`NftablesOffload.setup` says why and the server carries on without it.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess


class NftablesError(Exception):
    pass


class NftablesOffload:
    def __init__(self, table: str, ports: list[int]) -> None:
        if not table.replace("_", "").isalnum():
            raise NftablesError(f"invalid nftables table name {table!r}")
        self.table = table
        self.ports = sorted(set(ports))

    def _nft(self, script: str) -> None:
        try:
            proc = subprocess.run(
                ["nft", "-f", "-"], input=script, text=True, capture_output=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftablesError(str(exc)) from None
        if proc.returncode != 0:
            raise NftablesError(proc.stderr.strip() or f"nft exited {proc.returncode}")

    def setup(self) -> None:
        """(Re)create the table: two sets of banned addresses and one drop rule each."""
        if shutil.which("nft") is None:
            raise NftablesError("the nft command is not installed (Debian package nftables)")
        if os.geteuid() != 0:
            raise NftablesError("nftables offload needs root")
        ports = ", ".join(str(p) for p in self.ports)
        t = self.table
        self._nft(f"""table inet {t} {{}}
delete table inet {t}
table inet {t} {{
    set banned4 {{ type ipv4_addr; flags timeout; }}
    set banned6 {{ type ipv6_addr; flags timeout; }}
    chain input {{
        type filter hook input priority -10; policy accept;
        ip saddr @banned4 meta l4proto {{ tcp, udp }} th dport {{ {ports} }} drop
        ip6 saddr @banned6 meta l4proto {{ tcp, udp }} th dport {{ {ports} }} drop
    }}
}}
""")

    def teardown(self) -> None:
        self._nft(f"table inet {self.table} {{}}\ndelete table inet {self.table}\n")

    @staticmethod
    def _set_for(address: str) -> tuple[str, str] | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        return ("banned4" if ip.version == 4 else "banned6"), str(ip)

    def sync(self, bans: dict[str, float], unbans: list[str], now: float) -> None:
        """Add bans (address -> until) and remove lifted ones, in one nft run."""
        lines = []
        for address in unbans:
            target = self._set_for(address)
            if target is not None:
                # "add" first so that deleting an element that is not there cannot fail.
                lines.append(f"add element inet {self.table} {target[0]} {{ {target[1]} }}")
                lines.append(f"delete element inet {self.table} {target[0]} {{ {target[1]} }}")
        for address, until in bans.items():
            target = self._set_for(address)
            seconds = int(until - now)
            if target is not None and seconds > 0:
                element = f"inet {self.table} {target[0]} {{ {target[1]}"
                # Replace any earlier entry, so that a longer repeat ban takes effect.
                lines.append(f"add element {element} }}")
                lines.append(f"delete element {element} }}")
                lines.append(f"add element {element} timeout {seconds}s }}")
        if lines:
            self._nft("\n".join(lines) + "\n")
