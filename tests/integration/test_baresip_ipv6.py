"""Calls over IPv6 loopback with a real softphone: two baresip 1.0 phones (headless,
over ctrl_tcp: :mod:`tests.baresip`) bound to ::1 alone register to a PBX listening on
[::1], one calls the other, the callee answers and both send a tone (G.711) that the
other receives, then the caller hangs up and the call's record is closed as answered.

PJSIP from PyPI is built without IPv6 media, and SIPp (test_ipv6.py) sends no RTP of
its own; baresip does both. Media is counted by each phone (its RTCP session's packets
received from the peer, ``audio_debug``) and, with ``media.relay``, at the relay too.
What the PBX wrote is read in baresip's SIP trace: [::1] in brackets in Via, Contact
and URIs (RFC 5118), ``IN IP6`` in the SDP (RFC 4566).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.baresip import Baresip, running_baresip, wait_for
from tests.helpers import PbxProcess, cli, closed_cdrs, free_port

HOST = "::1"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, 0))
        return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip not installed"),
    pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here"),
    pytest.mark.timeout(90),
]

USERS = {"1000": "Harbor-Quill-47v", "2000": "Lantern-Sable-83t"}
CALLER, CALLEE = "1000", "2000"
PACKETS = 50  # 20 ms packets: a second of audio


@contextlib.contextmanager
def pbx_on_ipv6(data: Path, relay: bool) -> Iterator[PbxProcess]:
    cli(data, "init")
    users = data / "extensions.csv"
    users.write_text("".join(f"{n},{p}\n" for n, p in USERS.items()))
    cli(data, "extension", "import", str(users))
    env = {}
    if relay:
        base = free_port(HOST) & ~1
        env = {
            "PBXWARDEN_MEDIA__RELAY": "true",
            "PBXWARDEN_MEDIA__PORT_MIN": str(base),
            "PBXWARDEN_MEDIA__PORT_MAX": str(base + 99),
        }
    server = PbxProcess(data, host=HOST, port=free_port(HOST), env=env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def registrations(pbx: PbxProcess) -> dict[str, dict[str, Any]]:
    out = cli(pbx.data_dir, "registrations", "--json").stdout.strip()
    return {row["number"]: row for row in json.loads(out)} if out.startswith("[") else {}


def sip_messages(ua: Baresip, start: str, from_port: int) -> list[str]:
    """The SIP messages baresip's trace (``-s``) shows received from ``[::1]:from_port``
    whose first line starts with ``start``, each as its head and body."""
    found = []
    for block in re.split(r"\x1b\[36;1m#\n", ua.trace().replace("\r\n", "\n")):
        route, _, message = block.partition("\n")
        if route.split(" -> ")[0].endswith(f" [::1]:{from_port}") and message.startswith(start):
            found.append(message.split("\x1b[;m", 1)[0])
    return found


@pytest.mark.parametrize("relay", [False, True], ids=["direct-media", "relay"])
def test_two_baresip_phones_call_over_ipv6(tmp_path: Path, relay: bool) -> None:
    with (
        pbx_on_ipv6(tmp_path / "data", relay) as pbx,
        running_baresip(tmp_path / "caller", pbx, CALLER, USERS[CALLER], tone=True) as caller,
        running_baresip(tmp_path / "callee", pbx, CALLEE, USERS[CALLEE], tone=True) as callee,
    ):
        wait_for(lambda: len(registrations(pbx)) == 2, "both phones registered", timeout=20)
        for number, row in registrations(pbx).items():
            assert row["source"].startswith("udp:[::1]:"), row
            assert re.fullmatch(rf"sip:{number}-\S+@\[::1\]:\d+", row["contact"]), row
            assert row["user_agent"].startswith("baresip"), row

        assert caller.command("dial", CALLEE)["ok"], caller.log()
        established = caller.wait_event("CALL_ESTABLISHED", timeout=20)
        assert established["peeruri"].startswith(f"sip:{CALLEE}@[::1]:{pbx.port}"), established
        answered = callee.wait_event("CALL_ESTABLISHED", timeout=20)  # answermode=auto
        assert answered["direction"] == "incoming", answered

        wait_for(
            lambda: caller.audio().received >= PACKETS and callee.audio().received >= PACKETS,
            "RTP both ways between the phones",
            timeout=20,
        )
        to_callee, to_caller = caller.audio(), callee.audio()
        assert to_callee.sent >= PACKETS and to_caller.sent >= PACKETS, (to_callee, to_caller)
        if relay:  # each phone sends to the relay's port for it, on ::1
            [call] = json.loads(cli(pbx.data_dir, "calls", "--json").stdout)
            [stream] = call["media"]
            assert to_callee.remote == f"[::1]:{stream['a_port']}", (to_callee, stream)
            assert to_caller.remote == f"[::1]:{stream['b_port']}", (to_caller, stream)
            assert stream["a_packets"] >= PACKETS and stream["b_packets"] >= PACKETS, stream
            assert re.fullmatch(r"\[::1\]:\d+", str(stream["a_latched"])), stream
            assert re.fullmatch(r"\[::1\]:\d+", str(stream["b_latched"])), stream
        else:  # straight to each other
            assert to_callee.remote.startswith("[::1]:") and to_caller.remote.startswith("[::1]:")
            assert to_callee.remote != to_caller.remote, (to_callee, to_caller)

        assert caller.command("hangup")["ok"], caller.log()
        caller.wait_event("CALL_CLOSED")
        callee.wait_event("CALL_CLOSED")  # the BYE reached the callee through the PBX

        # what the PBX sent: [::1] bracketed in Via, Contact and URIs; IP6 in the SDP
        # (maybe retransmitted, on a loaded machine: the first of each is read)
        invites = sip_messages(callee, "INVITE sip:", from_port=pbx.port)
        assert invites, callee.log()
        invite = invites[0]
        assert invite.startswith(f"INVITE sip:{CALLEE}-"), invite
        assert re.match(r"INVITE sip:\S+@\[::1\]:\d+ SIP/2\.0\n", invite), invite
        assert f"\nVia: SIP/2.0/UDP [::1]:{pbx.port};" in invite, invite
        assert f"\nContact: <sip:[::1]:{pbx.port}>" in invite, invite
        assert "\nc=IN IP6 ::1\n" in invite, invite
        ok = [m for m in sip_messages(caller, "SIP/2.0 200 ", pbx.port) if " INVITE\n" in m]
        assert ok and f"\nContact: <sip:[::1]:{pbx.port}>" in ok[0], ok
        assert "\nc=IN IP6 ::1\n" in ok[0], ok
        byes = sip_messages(callee, "BYE sip:", from_port=pbx.port)
        assert byes and f"\nVia: SIP/2.0/UDP [::1]:{pbx.port};" in byes[0], byes

        [row] = closed_cdrs(pbx, 0, 1)
        assert (row["disposition"], row["sip_code"]) == ("answered", 200), row
        assert (row["caller"], row["callee"], row["kind"]) == (CALLER, CALLEE, "internal"), row
        assert row["answer_ts"] is not None and float(str(row["duration"])) >= 1, row
        assert "caller hung up" in str(row["reasons"]), row
        if relay:
            stats = json.loads(cli(pbx.data_dir, "stats", "--json").stdout)
            assert stats["media_sessions"] == 0 and stats["media_strangers"] == 0, stats
