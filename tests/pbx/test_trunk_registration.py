"""The PBX's registration to a carrier (pbxwarden.pbx.trunk_registration), with plain
numbers as the clock and our own DigestServer playing the carrier's registrar."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from pbxwarden.pbx.locate import Failover
from pbxwarden.pbx.routing import Trunk
from pbxwarden.pbx.trunk_registration import (
    RegistrationTimers,
    RegState,
    TrunkRegistration,
    TrunkRegistrations,
)
from pbxwarden.sip.digest import Algorithm, DigestServer, compute_ha1, parse_credentials
from pbxwarden.sip.message import Request, Response, make_response, parse_message
from pbxwarden.sip.transaction import Address, TransactionKey
from pbxwarden.sip.uri import NameAddr

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "carrier.example"
USER = "pbx-1"
PASSWORD = "the-carrier-password"
LOCAL = Address("UDP", "192.0.2.1", 5060)
NOW = 1_000.0
TRUNK = Trunk(
    "default",
    "carrier",
    "198.51.100.10",
    5070,
    "udp",
    ("+",),
    username=USER,
    password=PASSWORD,
    register=True,
    register_expires=600,
)
CARRIER_NOW = 1_700_000_000.0  # the registrar's wall clock, for its nonces


class Registrar:
    """Just enough of a carrier's registrar: challenge, verify, grant."""

    def __init__(self, password: str = PASSWORD, grant: int | None = 120) -> None:
        self.digest = DigestServer(SECRET, REALM, [Algorithm.MD5])
        self.ha1 = compute_ha1(USER, REALM, password, Algorithm.MD5)
        self.grant = grant
        self.seen: list[Request] = []

    def answer(self, request: Request, *, stale: bool = False) -> Response:
        # over the wire and back, as the real thing would see it
        parsed = parse_message(request.to_bytes())
        assert isinstance(parsed, Request)
        self.seen.append(parsed)
        value = parsed.headers.get("Authorization")
        if value is None or stale:
            challenges = self.digest.challenges(CARRIER_NOW, stale=stale)
            return self._reply(parsed, 401, [("WWW-Authenticate", c) for c in challenges])
        creds = parse_credentials(value)
        if not self.digest.verify("REGISTER", creds, self.ha1, CARRIER_NOW).ok:
            challenges = self.digest.challenges(CARRIER_NOW)
            return self._reply(parsed, 401, [("WWW-Authenticate", c) for c in challenges])
        ok = make_response(parsed, 200)
        if self.grant is not None and parsed.expires != 0:
            ok.contacts = [
                NameAddr(c.uri, None, {"expires": str(self.grant)}) for c in parsed.contacts
            ]
        return self._roundtrip(ok)

    def _reply(self, request: Request, status: int, headers: list[tuple[str, str]]) -> Response:
        return self._roundtrip(make_response(request, status, headers=headers))

    @staticmethod
    def _roundtrip(response: Response) -> Response:
        parsed = parse_message(response.to_bytes())
        assert isinstance(parsed, Response)
        return parsed


def _reg(trunk: Trunk = TRUNK, jitter: float = 0.0) -> TrunkRegistration:
    return TrunkRegistration(trunk, LOCAL, jitter=lambda: jitter)


def _register(reg: TrunkRegistration, registrar: Registrar, now: float = NOW) -> None:
    """Start, get challenged, answer, get the 200."""
    [first] = reg.start(now)
    [second] = reg.on_response(registrar.answer(first), now)
    assert reg.on_response(registrar.answer(second), now) == []


def test_registers_answering_the_challenge() -> None:
    registrar = Registrar()
    reg = _reg()
    [first] = reg.start(NOW)
    assert reg.state is RegState.REGISTERING
    wire = first.to_bytes().decode()
    assert wire.startswith("REGISTER sip:198.51.100.10:5070 SIP/2.0\r\n")
    assert f"To: <sip:{USER}@198.51.100.10>\r\n" in wire
    assert f"From: <sip:{USER}@198.51.100.10>;tag=" in wire
    assert "Contact: <sip:192.0.2.1:5060>\r\n" in wire and "Expires: 600\r\n" in wire
    assert "Authorization" not in wire and PASSWORD not in wire
    [second] = reg.on_response(registrar.answer(first), NOW)
    assert (second.call_id, second.from_.tag) == (first.call_id, first.from_.tag)
    assert second.cseq.number == first.cseq.number + 1
    assert second.via[0].branch != first.via[0].branch
    assert reg.on_response(registrar.answer(second), NOW + 0.1) == []
    assert reg.state is RegState.REGISTERED and reg.granted == 120
    assert reg.next_wakeup == pytest.approx(NOW + 0.1 + 60)  # 50 % with no jitter
    assert reg.status(NOW + 10) == {"state": "registered", "expires_in": 110}


@pytest.mark.parametrize(("jitter", "fraction"), [(0.0, 0.5), (0.5, 0.65), (1.0, 0.8)])
def test_refresh_between_half_and_four_fifths_of_the_expiry(jitter: float, fraction: float) -> None:
    reg = _reg(jitter=jitter)
    _register(reg, Registrar(grant=1000))
    assert reg.next_wakeup == pytest.approx(NOW + 1000 * fraction)


def test_refresh_reuses_call_id_and_counts_cseq_up() -> None:
    registrar = Registrar()
    reg = _reg()
    _register(reg, registrar)
    assert reg.wake(NOW + 59) == []  # too early: nothing
    [refresh] = reg.wake(NOW + 60)
    assert reg.state is RegState.REGISTERED  # still registered while refreshing
    assert refresh.call_id == registrar.seen[0].call_id and refresh.cseq.number == 3
    [auth] = reg.on_response(registrar.answer(refresh), NOW + 60)
    assert reg.on_response(registrar.answer(auth), NOW + 60) == []
    assert reg.next_wakeup == pytest.approx(NOW + 120)


def test_granted_time_from_expires_header_when_contact_has_none() -> None:
    reg = _reg()
    [first] = reg.start(NOW)
    [second] = reg.on_response(Registrar().answer(first), NOW)
    ok = make_response(second, 200)
    ok.expires = 300
    reg.on_response(ok, NOW)
    assert reg.granted == 300


def test_wrong_password_fails_once_and_backs_off_without_a_loop() -> None:
    registrar = Registrar(password="what the carrier really has")
    reg = _reg()
    [first] = reg.start(NOW)
    [second] = reg.on_response(registrar.answer(first), NOW)
    assert reg.on_response(registrar.answer(second), NOW) == []  # no third REGISTER
    assert reg.state is RegState.FAILED
    assert "rejected our credentials" in reg.reason
    assert reg.next_wakeup == NOW + RegistrationTimers().auth_retry_first
    status = reg.status(NOW)
    assert status["state"] == "failed" and status["retry_in"] == 300
    # the retry fails the same way: the wait doubles
    [retry] = reg.wake(NOW + 300)
    [auth] = reg.on_response(registrar.answer(retry), NOW + 300)
    assert reg.on_response(registrar.answer(auth), NOW + 300) == []
    assert reg.next_wakeup == NOW + 300 + 600
    assert len(registrar.seen) == 4


def test_stale_nonce_is_answered_once_more() -> None:
    registrar = Registrar()
    reg = _reg()
    [first] = reg.start(NOW)
    [second] = reg.on_response(registrar.answer(first), NOW)
    [third] = reg.on_response(registrar.answer(second, stale=True), NOW)
    assert third.cseq.number == 3 and "Authorization" in third.headers
    assert reg.on_response(registrar.answer(third, stale=True), NOW) == []  # but only once
    assert reg.state is RegState.FAILED


def test_timeouts_retry_with_exponential_backoff() -> None:
    reg = _reg()
    [first] = reg.start(NOW)
    assert reg.on_timeout(first.cseq.number + 7, NOW) == []  # not ours: ignored
    assert reg.on_timeout(first.cseq.number, NOW + 32) == []
    assert (reg.state, reg.reason) == (RegState.FAILED, "no answer from the carrier")
    assert reg.next_wakeup == NOW + 32 + 30
    [retry] = reg.wake(NOW + 62)
    assert reg.state is RegState.REGISTERING
    reg.on_timeout(retry.cseq.number, NOW + 94)
    assert reg.next_wakeup == NOW + 94 + 60
    for _ in range(10):
        at = reg.next_wakeup
        assert at is not None
        [again] = reg.wake(at)
        reg.on_timeout(again.cseq.number, at)
    assert reg.next_wakeup is not None
    at = reg.next_wakeup
    [last] = reg.wake(at)
    assert reg.next_wakeup is None  # consumed by the wake
    reg.on_timeout(last.cseq.number, at + 32)
    assert reg.next_wakeup == at + 32 + RegistrationTimers().retry_max  # capped


def test_refused_registration_is_reported_with_the_carrier_reason() -> None:
    reg = _reg()
    [first] = reg.start(NOW)
    reg.on_response(make_response(first, 403, "Forbidden (account suspended)"), NOW)
    assert reg.state is RegState.FAILED
    assert reg.reason == "the carrier refused the registration (403 Forbidden (account suspended))"


def test_interval_too_brief_asks_for_the_minimum() -> None:
    reg = _reg(replace(TRUNK, register_expires=60))
    [first] = reg.start(NOW)
    [again] = reg.on_response(make_response(first, 423, headers=[("Min-Expires", "900")]), NOW)
    assert again.expires == 900 and again.cseq.number == first.cseq.number + 1


def test_stale_or_provisional_responses_are_ignored() -> None:
    reg = _reg()
    [first] = reg.start(NOW)
    assert reg.on_response(make_response(first, 100), NOW) == []
    other = make_response(first, 200)
    other.call_id = "someone-else"
    assert reg.on_response(other, NOW) == []
    assert reg.state is RegState.REGISTERING


def test_stop_unregisters_answering_the_challenge() -> None:
    registrar = Registrar()
    reg = _reg()
    _register(reg, registrar)
    [bye] = reg.stop(NOW + 5)
    assert reg.state is RegState.UNREGISTERING and bye.expires == 0
    assert bye.contacts and reg.next_wakeup is None
    [auth] = reg.on_response(registrar.answer(bye), NOW + 5)
    assert auth.expires == 0 and "Authorization" in auth.headers
    assert reg.on_response(registrar.answer(auth), NOW + 5) == []
    assert reg.done


def test_stop_without_a_binding_sends_nothing() -> None:
    reg = _reg()
    [first] = reg.start(NOW)
    reg.on_timeout(first.cseq.number, NOW)
    assert reg.stop(NOW) == [] and reg.done


def test_without_a_usable_password_it_says_so_and_waits() -> None:
    reg = _reg(replace(TRUNK, password=None))
    assert reg.start(NOW) == []
    assert reg.state is RegState.FAILED and "no usable password" in reg.reason
    assert reg.next_wakeup is None


# ------------------------------------------------------------------ the manager


@dataclass
class _Timer:
    at: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakePort:
    now: float = NOW
    sent: list[tuple[TransactionKey, Request, Address]] = field(default_factory=list)
    timers: list[_Timer] = field(default_factory=list)

    def send_request(self, request: Request, dest: Address) -> TransactionKey:
        key = TransactionKey(False, request.method, request.via[0].branch or "")
        self.sent.append((key, request, dest))
        return key

    def local_address(self, transport: str) -> tuple[str, int]:
        return LOCAL.host, LOCAL.port

    def schedule(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def run_until(self, t: float) -> None:
        while True:
            due = [x for x in self.timers if not x.cancelled and x.at <= t]
            if not due:
                break
            timer = min(due, key=lambda x: x.at)
            self.timers.remove(timer)
            self.now = timer.at
            timer.callback()
        self.now = t


def _answer_last(port: FakePort, manager: TrunkRegistrations, registrar: Registrar) -> bool:
    key, request, _ = port.sent[-1]
    return manager.on_response(registrar.answer(request), key)


def test_manager_follows_the_trunks_and_routes_its_responses() -> None:
    port = FakePort()
    registrar = Registrar()
    manager = TrunkRegistrations(port, lambda: port.now)
    plain = replace(TRUNK, name="plain", username=None, password=None, register=False)
    manager.sync([TRUNK, plain])
    assert port.sent == []  # not before start: the Contact needs the bound address
    manager.start()
    [(_, first, dest)] = port.sent
    assert dest == Address("UDP", "198.51.100.10", 5070)
    assert not manager.on_response(make_response(first, 200), TransactionKey(False, "INVITE"))
    assert _answer_last(port, manager, registrar)
    assert _answer_last(port, manager, registrar)
    assert manager.status() == {"default/carrier": {"state": "registered", "expires_in": 120}}
    # the refresh timer fires between 50 and 80 % of the 120 s
    port.run_until(NOW + 100)
    assert len(port.sent) == 3 and port.sent[-1][1].cseq.number == 3
    # a changed trunk (new password) unregisters the old binding and registers again
    manager.sync([replace(TRUNK, password="new-password")])
    assert [r.expires for _, r, _ in port.sent[3:]] == [0, 600]


def test_manager_stop_waits_for_the_unregistration() -> None:
    port = FakePort()
    registrar = Registrar()
    manager = TrunkRegistrations(port, lambda: port.now)
    manager.start()
    manager.sync([TRUNK])
    _answer_last(port, manager, registrar)
    _answer_last(port, manager, registrar)
    manager.stop()
    assert manager.pending and port.sent[-1][1].expires == 0
    assert all(t.cancelled for t in port.timers)
    _answer_last(port, manager, registrar)  # challenged: answered
    assert manager.pending
    _answer_last(port, manager, registrar)
    assert not manager.pending
    manager.sync([TRUNK])  # routing refreshes after stop start nothing
    assert port.sent[-1][1].expires == 0


def test_manager_timeout_is_claimed() -> None:
    port = FakePort()
    manager = TrunkRegistrations(port, lambda: port.now)
    manager.start()
    manager.sync([TRUNK])
    key = port.sent[-1][0]
    assert manager.on_timeout(key) and not manager.on_timeout(key)
    assert manager.status()["default/carrier"]["state"] == "failed"
    port.run_until(NOW + 30)
    assert len(port.sent) == 2  # retried after the backoff


class TwoServers:
    """A locator for a trunk by name whose DNS gives two servers (pbx/locate.py)."""

    targets = (Address("UDP", "127.0.0.2", 5070), Address("UDP", "127.0.0.3", 5080))

    def __init__(self) -> None:
        self.failures: list[Address] = []

    def failover(self, trunk: Trunk) -> Failover:
        return Failover(self.targets)

    def failed(self, target: Address) -> None:
        self.failures.append(target)


def test_named_trunk_registers_with_its_name_and_fails_over_at_once() -> None:
    port = FakePort()
    registrar = Registrar()
    named = replace(TRUNK, host="carrier.example", port=0, transport="auto")
    locator = TwoServers()
    manager = TrunkRegistrations(port, lambda: port.now, locator=locator)
    manager.start()
    manager.sync([named])
    key, first, dest = port.sent[-1]
    assert dest == TwoServers.targets[0]
    # the carrier's domain in the Request-URI, From and To; no port: SRV gave it
    assert str(first.uri) == "sip:carrier.example"
    assert first.to.uri.host == first.from_.uri.host == "carrier.example"
    assert manager.on_response(make_response(first, 503), key)
    key, second, dest = port.sent[-1]
    assert dest == TwoServers.targets[1] and second.cseq.number > first.cseq.number
    assert manager.status()["default/carrier"]["state"] == "registering"
    assert locator.failures == [TwoServers.targets[0]]  # told, so calls try it last
    assert _answer_last(port, manager, registrar)  # challenged by the second: answered there
    assert port.sent[-1][2] == TwoServers.targets[1]
    assert _answer_last(port, manager, registrar)
    assert manager.status()["default/carrier"]["state"] == "registered"
    port.run_until(NOW + 100)  # the refresh stays with the server that has the binding
    assert port.sent[-1][2] == TwoServers.targets[1]


def test_named_trunk_timeouts_everywhere_fail_then_retry_from_the_first() -> None:
    port = FakePort()
    named = replace(TRUNK, host="carrier.example", port=0, transport="auto")
    manager = TrunkRegistrations(port, lambda: port.now, locator=TwoServers())
    manager.start()
    manager.sync([named])
    assert manager.on_timeout(port.sent[-1][0])
    assert port.sent[-1][2] == TwoServers.targets[1] and len(port.sent) == 2
    assert manager.on_timeout(port.sent[-1][0])
    assert len(port.sent) == 2 and manager.status()["default/carrier"]["state"] == "failed"
    port.run_until(NOW + 30)
    assert len(port.sent) == 3 and port.sent[-1][2] == TwoServers.targets[0]


def test_named_trunk_without_an_address_waits_for_dns() -> None:
    port = FakePort()
    named = replace(TRUNK, host="carrier.example", port=0, transport="auto")
    manager = TrunkRegistrations(port, lambda: port.now)  # no resolver: no address
    manager.start()
    manager.sync([named])
    assert port.sent == []
    status = manager.status()["default/carrier"]
    assert status["state"] == "waiting for DNS" and "DNS name" in status["reason"]
    manager.locator = TwoServers()  # resolved: the next sync starts it
    manager.sync([named])
    assert port.sent[-1][2] == TwoServers.targets[0]
    assert manager.status()["default/carrier"]["state"] == "registering"
