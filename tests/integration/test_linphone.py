"""Presence with a second real softphone: Debian's linphonec (liblinphone 5.1, package
``linphone-cli``), headless, scripted on its stdin, its buddy list (friends with
``subscribe=1``) subscribing to presence (RFC 3856, PIDF) through the PBX. linphonec
prints every change of a friend's presence ("Friend ... is On the phone"); its log
(``-d 6``) has every SIP message it received. linphonec has no dialog event package
(RFC 4235) either: its busy lamp is presence, like baresip's (test_baresip_features)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PbxProcess, cli, die_with_pytest, free_port, track
from tests.pjsip import Phones, pj, pjsip_phones

pytestmark = [
    pytest.mark.skipif(shutil.which("linphonec") is None, reason="linphone-cli not installed"),
    pytest.mark.timeout(120),
]

USERS = {
    "1000": "Quartz-Harbor-71x",  # linphonec
    "1001": "Maple-Orbit-39q",  # watched
    "1002": "Cobalt-Fjord-58k",  # calls the watched one
}

RC = """\
[sip]
sip_port={sip_port}
sip_tcp_port=-1
sip_tls_port=-1
default_proxy=0
bind_address=127.0.0.1
[rtp]
audio_rtp_port={rtp_port}
[sound]
playback_dev_id=
ringer_dev_id=
capture_dev_id=
[auth_info_0]
username={user}
passwd={password}
realm=pbxwarden
domain=127.0.0.1
[proxy_0]
reg_proxy=<sip:127.0.0.1:{pbx_port};transport=udp>
reg_identity=sip:{user}@127.0.0.1:{pbx_port}
reg_expires=600
reg_sendregister=1
publish=0
"""
FRIEND = """\
[friend_{index}]
url="{number}" <sip:{number}@127.0.0.1:{pbx_port}>
pol=accept
subscribe=1
"""


class Linphonec:
    """A linphonec process with its own HOME (its database), config, output and log."""

    def __init__(self, workdir: Path, pbx: PbxProcess, user: str, watch: tuple[str, ...]):
        self.home = workdir / "linphone"
        (self.home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.rc = self.home / "linphonerc"
        self.rc.write_text(
            RC.format(
                sip_port=free_port(),
                rtp_port=free_port(),
                user=user,
                password=USERS[user],
                pbx_port=pbx.port,
            )
            + "".join(
                FRIEND.format(index=i, number=n, pbx_port=pbx.port) for i, n in enumerate(watch)
            )
        )
        self.out_path = self.home / "linphonec.out"
        self.log_path = self.home / "linphone.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.out_path.open("wb") as out:
            self.proc = track(
                subprocess.Popen(
                    ["linphonec", "-c", str(self.rc), "-d", "6", "-l", str(self.log_path)],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "HOME": str(self.home)},
                    start_new_session=True,
                    preexec_fn=die_with_pytest,
                )
            )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.write(b"quit\n")  # unsubscribes and unregisters
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def states(self, number: str) -> list[str]:
        """Every presence linphonec reported for the friend ``number``, in order."""
        return re.findall(rf'Friend "{number}" <sip:{number}@[^>]*> is ([^\r\n]+)', self.output())

    def received(self, start: str) -> list[str]:
        """SIP messages linphonec received whose first line starts with ``start``."""
        blocks = re.findall(
            r"received \[\d+\] new bytes from \[UDP://[^\]]+\]:\n(.*?)\n\n\n",
            self.log().replace("\r\n", "\n"),
            re.S,
        )
        return [b for b in blocks if b.startswith(start)]

    def diagnosis(self) -> str:
        return f"\n--- linphonec ---\n{self.output()[-3000:]}\n--- log ---\n{self.log()[-4000:]}"


@contextlib.contextmanager
def running_linphonec(
    workdir: Path, pbx: PbxProcess, user: str, watch: tuple[str, ...]
) -> Iterator[Linphonec]:
    ua = Linphonec(workdir, pbx, user, watch)
    try:
        ua.start()
        yield ua
    finally:
        ua.stop()


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PbxProcess]:
    """USERS in the default tenant; tenant ``other`` with 2000."""
    data = tmp_path_factory.mktemp("linphone") / "data"
    cli(data, "init")
    users = data / "extensions.csv"
    users.write_text("".join(f"{n},{p}\n" for n, p in USERS.items()))
    cli(data, "extension", "import", str(users))
    cli(data, "tenant", "add", "other", "--realm", "other.example", "--country", "US")
    cli(data, "extension", "add", "2000", "--password", "Velvet-Canyon-24z", "--tenant", "other")
    server = PbxProcess(data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def phones(pbx: PbxProcess) -> Iterator[Phones]:
    with pjsip_phones(pbx.host, pbx.port) as endpoint:
        yield endpoint


def test_linphone_sees_a_colleague_register_go_on_the_phone_and_come_back(
    pbx: PbxProcess, phones: Phones, tmp_path: Path
) -> None:
    """linphonec watches 1001: offline while 1001 is not registered, online once it is,
    on the phone during a call with 1002 (PJSIP), online again after it."""
    with running_linphonec(tmp_path, pbx, "1000", ("1001",)) as ua:

        def now(state: str) -> bool:
            seen = ua.states("1001")
            return bool(seen) and seen[-1] == state

        phones.until(lambda: now("Offline"), "1001 is offline" + ua.diagnosis())
        watched = phones.add("1001", USERS["1001"])
        phones.until(lambda: now("Online"), "1001 is online" + ua.diagnosis())
        caller = phones.add("1002", USERS["1002"])
        placed = caller.call("1001")
        phones.until(lambda: bool(watched.incoming), "1001 rings")
        watched.answer(watched.incoming[0])
        phones.until(lambda: placed.confirmed, "1001 answered")
        phones.until(lambda: now("On the phone"), "1001 is on the phone" + ua.diagnosis())
        placed.hangup(pj.CallOpParam(True))
        phones.until(lambda: watched.incoming[0].disconnected, "the call is over")
        phones.until(lambda: now("Online"), "1001 is available again" + ua.diagnosis())
        assert ua.states("1001") == ["Offline", "Online", "On the phone", "Online"], ua.states(
            "1001"
        )
        notifies = ua.received("NOTIFY sip:")
        assert len(notifies) == 4 and all("application/pidf+xml" in n for n in notifies)


def _normalized(response: str) -> str:
    out = re.sub(r";tag=[^;\s>]+", ";tag=X", response)
    out = re.sub(r"branch=[^;\s]+", "branch=X", out)
    out = re.sub(r"Call-ID: \S+", "Call-ID: X", out)
    out = re.sub(r"CSeq: \d+", "CSeq: N", out)
    return re.sub(r"(2000|2999)", "N", out)


def test_linphone_subscribing_to_another_tenants_extension_sees_a_missing_one(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    """2000 exists in tenant ``other``, 2999 nowhere: linphonec (default tenant) gets the
    same 404 for both and shows both offline; 1002 of its own tenant it may watch."""
    with running_linphonec(tmp_path, pbx, "1000", ("2000", "2999", "1002")) as ua:
        deadline = time.monotonic() + 30
        while True:
            answers = {
                n: [
                    r
                    for r in ua.received("SIP/2.0 ")
                    if " SUBSCRIBE\n" in r and f"<sip:{n}@" in r and "SIP/2.0 401" not in r
                ]
                for n in ("2000", "2999", "1002")
            }
            if all(answers.values()):
                break
            assert time.monotonic() < deadline, f"SUBSCRIBEs unanswered{ua.diagnosis()}"
            time.sleep(0.2)
        theirs, missing, ours = answers["2000"][0], answers["2999"][0], answers["1002"][0]
        assert theirs.startswith("SIP/2.0 404 "), theirs
        assert _normalized(theirs) == _normalized(missing), (theirs, missing)
        assert ours.startswith("SIP/2.0 200 "), ours
        deadline = time.monotonic() + 10
        while not (ua.states("2000") and ua.states("2999")):
            assert time.monotonic() < deadline, ua.diagnosis()
            time.sleep(0.1)
        assert ua.states("2000") == ua.states("2999") == ["Offline"], ua.output()
        notified = {
            user
            for m in ua.received("NOTIFY sip:")
            for user in re.findall(r'From: (?:"[^"]*" )?<sip:(\d+)@', m)
        }
        assert notified == {"1002"}, notified
