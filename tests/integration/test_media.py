"""The RTP relay in the running PBX: SIPp phones whose SDP the B2BUA rewrites to the
relay's ports, and media (the test's own sockets, or SIPp playing a G.711 pcap to a
SIPp echoing it back) flowing through them."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    SCENARIOS,
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import USERS, register_callee, start_caller, target

pytestmark = [
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.timeout(90),
]

PCAP = Path("/usr/share/sip-tester/g711a.pcap")


def _relay_env(**extra: str) -> dict[str, str]:
    base = free_port() & ~1
    low = base if base + 200 < 65535 else 30000
    return {
        "PBXWARDEN_MEDIA__RELAY": "true",
        "PBXWARDEN_MEDIA__PORT_MIN": str(low),
        "PBXWARDEN_MEDIA__PORT_MAX": str(low + 199),
        **extra,
    }


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS, env=_relay_env()) as server:
        yield server


def _start_caller(
    pbx: PbxProcess, workdir: Path, scenario: str, talk_ms: int, extra: list[str]
) -> subprocess.Popen[bytes]:
    """The caller talks for ``talk_ms``; its messages are kept for the SDP checks."""
    trace = ["-timeout_error", "-trace_msg", "-message_file", str(workdir / "caller-messages.log")]
    return start_caller(pbx, workdir, scenario, 30, ["-d", str(talk_ms), *trace, *extra])


BYE_FROM_THE_PBX = """  <recv request="BYE"/>
  <send>
    <![CDATA[

      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


def _until_hung_up(scenario: str, workdir: Path) -> str:
    """The caller's scenario, talking until the PBX hangs up instead of for a fixed time:
    the test ends the call once it has looked, however slow the machine is."""
    text = (SCENARIOS / scenario).read_text()
    path = workdir / scenario.replace(".xml", "_until_bye.xml")
    path.write_text(text[: text.index("  <pause/>")] + BYE_FROM_THE_PBX)
    return str(path)


@contextlib.contextmanager
def _stopped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """A SIPp started by the test is gone when the test ends, whatever happened."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _end(pbx: PbxProcess, call_id: str) -> None:
    cli(pbx.data_dir, "calls", "end", call_id)


def _live_call(pbx: PbxProcess, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cli(pbx.data_dir, "calls", "--json", check=False).stdout.strip()
        if out.startswith("["):
            answered = [c for c in json.loads(out) if c["state"] == "answered"]
            if answered:
                return dict(answered[0])
        time.sleep(0.1)
    raise AssertionError("no answered call:\n" + pbx.log()[-3000:])


def _media_port(message_log: Path, start_line: str) -> int:
    """The audio port in the SDP of the first message that starts with ``start_line``."""
    text = message_log.read_text(errors="replace")
    for block in re.split(r"-{10,}[^\n]*\n", text):
        body = block.split("\n", 1)[-1].strip()  # after "UDP message received ... :"
        if body.startswith(start_line) and "m=audio" in body:
            found = re.search(r"^m=audio (\d+) ", body, re.MULTILINE)
            assert found is not None
            return int(found.group(1))
    raise AssertionError(f"no {start_line!r} with SDP in {message_log}:\n{text[-3000:]}")


def _socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(3)
    return sock


def _even_free_port() -> int:
    for _ in range(100):
        port = free_port() & ~1
        try:
            with _socket(port), _socket(port + 1):
                return port
        except OSError:
            continue
    raise RuntimeError("no free even port")


def test_sdp_points_both_phones_at_the_relay_and_media_flows(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    alice_port, bob_port = _even_free_port(), _even_free_port()
    callee_sip = register_callee(pbx, tmp_path)
    phone = start_sipp_uas(
        "call_uas_media.xml",
        callee_sip,
        tmp_path,
        extra=[
            "-key",
            "mport",
            str(bob_port),
            "-trace_msg",
            "-message_file",
            str(tmp_path / "callee-messages.log"),
        ],
    )
    caller = _start_caller(
        pbx,
        tmp_path,
        _until_hung_up("call_uac_media.xml", tmp_path),
        0,
        ["-key", "mport", str(alice_port)],
    )
    with _socket(alice_port) as alice, _socket(bob_port) as bob, _stopped(caller):
        live = _live_call(pbx, timeout=30)
        [stream] = live["media"]
        a_port, b_port = stream["a_port"], stream["b_port"]
        assert a_port != b_port and a_port % 2 == 0 and b_port % 2 == 0
        for rtp in range(3):
            alice.sendto(b"alice-%d" % rtp, ("127.0.0.1", a_port))
            data, source = bob.recvfrom(2048)
            assert (data, source) == (b"alice-%d" % rtp, ("127.0.0.1", b_port))
            bob.sendto(b"bob-%d" % rtp, ("127.0.0.1", b_port))
            data, source = alice.recvfrom(2048)
            assert (data, source) == (b"bob-%d" % rtp, ("127.0.0.1", a_port))
        # a stranger's datagram to either port goes nowhere
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.77", 0))
            stranger.sendto(b"injected", ("127.0.0.1", a_port))
            stranger.sendto(b"injected", ("127.0.0.1", b_port))
        time.sleep(0.2)
        bob.settimeout(0.3)
        with pytest.raises(TimeoutError):
            bob.recvfrom(2048)
        live = _live_call(pbx)
        assert live["media"][0]["a_packets"] == 3 and live["media"][0]["b_packets"] == 3
        assert live["media"][0]["a_latched"] == f"127.0.0.1:{alice_port}"
        _end(pbx, str(live["call_id"]))
        assert caller.wait(30) == 0
    assert finish_sipp_uas(phone, tmp_path).successful == 1
    # each phone was told the relay's port for its side, never the other phone's
    assert _media_port(tmp_path / "callee-messages.log", "INVITE") == b_port
    assert _media_port(tmp_path / "caller-messages.log", "SIP/2.0 200") == a_port
    stats = json.loads(cli(pbx.data_dir, "stats", "--json").stdout)
    assert stats["media_packets"] == 6 and stats["media_strangers"] == 2
    # the call is over: its ports are free again
    deadline = time.monotonic() + 5
    while json.loads(cli(pbx.data_dir, "stats", "--json").stdout)["media_sessions"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for port in (a_port, a_port + 1, b_port, b_port + 1):
        _socket(port).close()


@pytest.mark.skipif(not PCAP.exists(), reason="sip-tester's g711a.pcap not installed")
def test_sipp_rtp_is_relayed_and_echoed_back(pbx: PbxProcess, tmp_path: Path) -> None:
    """Real RTP: the caller's SIPp plays G.711 to the address in its 200 OK (the relay);
    the callee's SIPp echoes what reaches it (from the relay) back to the relay."""
    callee_sip = register_callee(pbx, tmp_path)
    phone = start_sipp_uas(
        "call_uas.xml", callee_sip, tmp_path, extra=["-rtp_echo", "-mp", str(_even_free_port())]
    )
    scenario = _until_hung_up("call_uac_rtp.xml", tmp_path)
    caller = _start_caller(pbx, tmp_path, scenario, 0, ["-mp", str(_even_free_port())])
    with _stopped(caller):
        live = _live_call(pbx, timeout=30)
        [stream] = live["media"]
        deadline = time.monotonic() + 30
        while min(stream["a_packets"], stream["b_packets"]) < 40:  # about a second of audio
            assert time.monotonic() < deadline, stream
            time.sleep(0.2)
            [stream] = _live_call(pbx)["media"]
        _end(pbx, str(live["call_id"]))
        assert caller.wait(30) == 0
    assert finish_sipp_uas(phone, tmp_path).successful == 1
    # ~50 G.711 packets a second from the caller, every one echoed by the callee
    assert stream["a_packets"] >= 40, stream
    assert stream["b_packets"] >= 40, stream
    assert stream["a_latched"] is not None and stream["b_latched"] is not None


def _traced_call(pbx: PbxProcess, workdir: Path, caller: str, callee: str) -> range:
    """One call between two SIPp phones that both keep their messages (caller.log,
    callee-messages.log) for SDP checks; returns the relay's port range."""
    callee_sip = register_callee(pbx, workdir)
    trace = ["-trace_msg", "-message_file"]
    phone = start_sipp_uas(
        callee, callee_sip, workdir, extra=[*trace, str(workdir / "callee-messages.log")]
    )
    result = run_sipp(
        caller,
        target(pbx),
        users={"1000": USERS["1000"]},
        extra=["-s", "2000", *trace, str(workdir / "caller.log")],
        workdir=workdir,
    )
    assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]
    assert finish_sipp_uas(phone, workdir).successful == 1  # the callee's checks passed
    low = int(pbx.env["PBXWARDEN_MEDIA__PORT_MIN"])
    return range(low, int(pbx.env["PBXWARDEN_MEDIA__PORT_MAX"]) + 1)


def test_hold_reinvite_is_anchored_too(pbx: PbxProcess, tmp_path: Path) -> None:
    relay = _traced_call(pbx, tmp_path, "call_uac_reinvite.xml", "call_uas_reinvite.xml")
    log = (tmp_path / "callee-messages.log").read_text(errors="replace")
    ports = {int(p) for p in re.findall(r"^m=audio (\d+) ", log, re.MULTILINE)}
    relay_ports = {p for p in ports if p in relay}
    assert len(relay_ports) == 1, log[-3000:]  # the first INVITE and the hold re-INVITE
    assert log.count("a=sendonly") >= 1  # and the callee saw the hold (sendonly)


def test_answered_call_without_media_is_hung_up(tmp_path: Path) -> None:
    env = _relay_env(PBXWARDEN_MEDIA__TIMEOUT="2")
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        callee_sip = register_callee(pbx, tmp_path)
        phone = start_sipp_uas("call_uas.xml", callee_sip, tmp_path)
        result = run_sipp(
            "call_uac_wait_bye.xml",
            target(pbx),
            users={"1000": USERS["1000"]},
            extra=["-s", "2000"],
            workdir=tmp_path,
            timeout=20,
        )
        assert (result.successful, result.failed) == (1, 0), result.output + pbx.log()[-3000:]
        assert finish_sipp_uas(phone, tmp_path).successful == 1
        deadline = time.monotonic() + 5
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = json.loads(cli(pbx.data_dir, "cdr", "--json").stdout or "[]")
            if rows and rows[0]["disposition"] != "in-progress":
                break
            time.sleep(0.2)
        [row] = rows
        assert row["disposition"] == "answered"
        assert "no media for 2 s" in row["reasons"]
        assert 2 <= row["duration"] < 6


def test_unreadable_sdp_is_refused_with_488(pbx: PbxProcess, tmp_path: Path) -> None:
    scenario = tmp_path / "bad_sdp.xml"
    template = (SCENARIOS / "call_uac_refused.xml.tmpl").read_text()
    scenario.write_text(
        template.format(code=488).replace(
            "m=audio [media_port] RTP/AVP 0", "m=audio notaport RTP/AVP 0"
        )
    )
    result = run_sipp(
        str(scenario),
        target(pbx),
        users={"1000": USERS["1000"]},
        extra=["-s", "2000", "-trace_msg", "-message_file", str(tmp_path / "m.log")],
        workdir=tmp_path,
    )
    assert (result.successful, result.failed) == (1, 0), result.output
    assert "488 Not Acceptable Here (m= line 1 port is not a port number)" in (
        tmp_path / "m.log"
    ).read_text(errors="replace")
    assert pbx.alive()


def test_delayed_offer_is_anchored(pbx: PbxProcess, tmp_path: Path) -> None:
    relay = _traced_call(pbx, tmp_path, "call_uac_delayed_offer.xml", "call_uas_delayed_offer.xml")
    assert _media_port(tmp_path / "callee-messages.log", "ACK") in relay
    assert _media_port(tmp_path / "caller.log", "SIP/2.0 200") in relay
