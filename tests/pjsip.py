"""Real PJSIP phones (PyPI ``pjsua2-python``) for the integration tests, in-process.

PJSIP runs with no worker threads and a null sound device: the test's own thread polls
its events (:meth:`Phones.until`), so every callback runs there and nothing races the
assertions. Each phone is an account on its own UDP port on loopback. RTP is sent all
the time (no voice activity detection), so media can be counted at each phone.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pj: Any = pytest.importorskip("pjsua2", reason="pjsua2-python is not installed")


# every PJSIP object made here: those still alive when the library goes are disowned
LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


class PhoneCall(pj.Call):  # type: ignore[misc]
    def __init__(self, phone: Phone, call_id: int | None = None) -> None:
        if call_id is None:
            super().__init__(phone)
        else:
            super().__init__(phone, call_id)
        self.phone = phone
        LIVE.add(self)
        self.state = pj.PJSIP_INV_STATE_NULL
        self.last_status = 0
        self.last_reason = ""
        self.transfers: list[tuple[int, bool]] = []  # (sipfrag status, final) from NOTIFYs
        self.refers: list[str] = []  # Refer-To of REFERs that reached this phone (declined)
        self.media_active = False

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        self.state = info.state
        self.last_status = info.lastStatusCode
        self.last_reason = str(info.lastReason)

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        self.media_active = any(
            m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE
            for m in info.media
        )

    def onCallTransferStatus(self, prm: Any) -> None:
        self.transfers.append((int(prm.statusCode), bool(prm.finalNotify)))
        prm.cont = True

    def onCallTransferRequest(self, prm: Any) -> None:
        self.refers.append(str(prm.dstUri))
        prm.statusCode = 603  # a PBX that performs transfers never hands one over

    def held(self) -> bool:
        """The audio stream is not sendrecv (this phone holds, or is held)."""
        info = self.getInfo()
        return any(
            m.type == pj.PJMEDIA_TYPE_AUDIO
            and m.status in (pj.PJSUA_CALL_MEDIA_LOCAL_HOLD, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD)
            for m in info.media
        )

    def rtp(self) -> tuple[int, int]:
        """RTP packets (received, sent) on the audio stream, 0 when there is none."""
        try:
            stat = self.getStreamStat(0)
        except pj.Error:
            return 0, 0
        return int(stat.rtcp.rxStat.pkt), int(stat.rtcp.txStat.pkt)

    @property
    def confirmed(self) -> bool:
        return bool(self.state == pj.PJSIP_INV_STATE_CONFIRMED)

    @property
    def disconnected(self) -> bool:
        return bool(self.state == pj.PJSIP_INV_STATE_DISCONNECTED)


class Watched(pj.Buddy):  # type: ignore[misc]
    """A buddy whose presence a phone subscribes to (RFC 3856)."""

    def __init__(self) -> None:
        super().__init__()
        LIVE.add(self)
        self.states: list[tuple[int, str]] = []  # (PJSUA_BUDDY_STATUS_*, note)

    def onBuddyState(self) -> None:
        info = self.getInfo()
        self.states.append((int(info.presStatus.status), str(info.presStatus.note)))

    def ended(self) -> tuple[int, str] | None:
        """(code, reason) once the subscription was refused or ended."""
        info = self.getInfo()
        refused = info.subState == pj.PJSIP_EVSUB_STATE_NULL and info.subTermCode >= 300
        if info.subState == pj.PJSIP_EVSUB_STATE_TERMINATED or refused:
            return int(info.subTermCode), str(info.subTermReason)
        return None


class Phone(pj.Account):  # type: ignore[misc]
    def __init__(self, phones: Phones, number: str) -> None:
        super().__init__()
        self.phones = phones
        self.number = number
        self.domain = ""  # the tenant realm it registered in ("": the PBX's address)
        self.incoming: list[PhoneCall] = []
        self.calls: list[PhoneCall] = []
        self.registered = 0
        self.reg_codes: list[int] = []  # every registration answer, in order
        self.received: list[tuple[str, str]] = []  # instant messages: (From URI, body)
        self.sent: list[tuple[int, str]] = []  # the answers to ours: (status, reason)
        self.buddies: list[Any] = []
        LIVE.add(self)

    def onInstantMessage(self, prm: Any) -> None:
        self.received.append((str(prm.fromUri), str(prm.msgBody)))

    def onInstantMessageStatus(self, prm: Any) -> None:
        self.sent.append((int(prm.code), str(prm.reason)))

    def message(self, number: str, text: str) -> None:
        """Send an instant message (MESSAGE, RFC 3428) to ``number`` through the PBX."""
        cfg = pj.BuddyConfig()
        cfg.uri = self.phones.uri(number)
        cfg.subscribe = False
        buddy = pj.Buddy()
        buddy.create(self, cfg)
        LIVE.add(buddy)
        self.buddies.append(buddy)
        prm = pj.SendInstantMessageParam()
        prm.content = text
        buddy.sendInstantMessage(prm)

    def watch(self, number: str) -> Watched:
        """Subscribe to ``number``'s presence through the PBX."""
        cfg = pj.BuddyConfig()
        cfg.uri = self.phones.uri(number)
        cfg.subscribe = True
        buddy = Watched()
        buddy.create(self, cfg)
        self.buddies.append(buddy)
        return buddy

    def onRegState(self, prm: Any) -> None:
        self.registered = int(prm.code)
        self.reg_codes.append(self.registered)

    def onIncomingCall(self, prm: Any) -> None:
        call = PhoneCall(self, prm.callId)
        call.state = pj.PJSIP_INV_STATE_INCOMING
        self.incoming.append(call)
        ringing = pj.CallOpParam()
        ringing.statusCode = 180  # as a desk phone does: it rings
        call.answer(ringing)

    def call(self, number: str, headers: dict[str, str] | None = None) -> PhoneCall:
        call = PhoneCall(self)
        self.calls.append(call)
        uri = f"sip:{number}@{self.domain}" if self.domain else self.phones.uri(number)
        prm = pj.CallOpParam(True)
        for name, value in (headers or {}).items():
            header = pj.SipHeader()
            header.hName, header.hValue = name, value
            prm.txOption.headers.append(header)
        call.makeCall(uri, prm)
        return call

    def answer(self, call: PhoneCall, status: int = 200) -> None:
        """Answer (200) or refuse (486 busy, 603 decline...) a ringing call."""
        prm = pj.CallOpParam()
        prm.statusCode = status
        call.answer(prm)


_ENDPOINT: list[Any] = []


def endpoint() -> Any:
    """pjsua2's Endpoint is a singleton: one object for the whole test run, its library
    created and destroyed per test (a second Endpoint, while a failed test's traceback
    still holds the first, would tear the library down under the next test)."""
    if not _ENDPOINT:
        ep = pj.Endpoint()
        ep.thisown = False  # never destroyed by Python, even at exit
        _ENDPOINT.append(ep)
    return _ENDPOINT[0]


class Phones:
    """One PJSIP endpoint with a phone (account) per extension."""

    def __init__(self, pbx_host: str, pbx_port: int) -> None:
        self.pbx = f"{pbx_host}:{pbx_port}"
        self.ep = endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.logConfig.level = int(os.environ.get("PJSIP_LOG", "1"))
        cfg.logConfig.consoleLevel = cfg.logConfig.level
        cfg.medConfig.noVad = True
        cfg.medConfig.sndAutoCloseTime = -1  # the null device is the media clock: keep it
        self.ep.libInit(cfg)
        self.ep.audDevManager().setNullDev()
        self.ep.libStart()
        self.phones: list[Phone] = []

    def uri(self, number: str) -> str:
        return f"sip:{number}@{self.pbx}"

    def add(
        self,
        number: str,
        password: str,
        *,
        require_timer: bool = False,
        require_100rel: bool = False,
        domain: str = "",
        tcp: bool = False,
    ) -> Phone:
        """A phone registered as ``number``; ``require_timer``: its calls require session
        timers (RFC 4028), as some desk phones are set to; ``require_100rel``: reliable
        provisional responses (RFC 3262, PJSUA_100REL_MANDATORY): its INVITEs say
        ``Require: 100rel`` and it refuses (421) INVITEs that do not offer it, its 180s
        go reliably; ``domain``: a tenant's realm (its requests go to the PBX as their
        outbound proxy); ``tcp``: the phone registers over TCP and is called back over
        its connection."""
        tcfg = pj.TransportConfig()
        tcfg.boundAddress = "127.0.0.1"
        tcfg.port = 0
        kind = pj.PJSIP_TRANSPORT_TCP if tcp else pj.PJSIP_TRANSPORT_UDP
        transport = self.ep.transportCreate(kind, tcfg)
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{number}@{domain}" if domain else self.uri(number)
        if domain:
            acfg.sipConfig.proxies.append(f"sip:{self.pbx};lr")
        acfg.regConfig.registrarUri = f"sip:{self.pbx}" + (";transport=tcp" if tcp else "")
        acfg.sipConfig.transportId = transport
        acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", number, 0, password))
        acfg.natConfig.sipOutboundUse = 0
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        if require_timer:
            acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_REQUIRED
            acfg.callConfig.timerSessExpiresSec = 90
        if require_100rel:
            acfg.callConfig.prackUse = pj.PJSUA_100REL_MANDATORY
        phone = Phone(self, number)
        phone.domain = domain
        phone.create(acfg)
        self.phones.append(phone)
        self.until(lambda: phone.registered == 200, f"{number} registered")
        return phone

    def until(self, condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for: {what}")
            self.ep.libHandleEvents(20)

    def run(self, seconds: float) -> None:
        """Let media flow for a while (events are handled meanwhile)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.ep.libHandleEvents(20)

    def _hang_up_all(self) -> None:
        """A call object still alive after the library is gone aborts the process:
        every call must be over (its id invalidated) before the library goes."""
        calls = [c for phone in self.phones for c in (*phone.calls, *phone.incoming)]
        with contextlib.suppress(Exception):
            self.ep.hangupAllCalls()
        with contextlib.suppress(AssertionError):
            self.until(lambda: all(c.disconnected for c in calls), "calls over", timeout=10)

    def close(self) -> None:
        self._hang_up_all()
        self.run(0.3)  # answers to messages in flight: their callbacks need the accounts
        for phone in self.phones:
            phone.incoming.clear()
            phone.calls.clear()
            phone.buddies.clear()
            with contextlib.suppress(Exception):
                phone.shutdown()
        self.phones.clear()
        gc.collect()  # Python's Call objects must go before the library they wrap
        for alive in list(LIVE):  # ones a failed test's traceback still holds:
            alive.thisown = False  # never destroyed then (a leak, not an abort)
        self.ep.libDestroy()


@contextlib.contextmanager
def pjsip_phones(pbx_host: str, pbx_port: int) -> Iterator[Phones]:
    phones = Phones(pbx_host, pbx_port)
    try:
        yield phones
    finally:
        phones.close()
