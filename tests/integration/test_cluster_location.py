"""Location shared across nodes, for real: redis-server, the shipped Kamailio front, two
nodes. A phone registered through node A is called from a phone on node B, with RTP
both ways; its unregister on A reaches B within about a second; a Redis restarted
mid-test does not lose B's replica, and the bindings are in Redis again afterwards.

Kamailio (127.0.60.1) hashes a phone's user onto a node (its REGISTER by the To user, its
calls by the From user), so which node holds which extension is found by registering
and looking (:func:`tests.integration.test_kamailio_front.placement`), not assumed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pbxwarden.control import ControlError, ask
from pbxwarden.sip.message import Response
from tests import kamailio as kam
from tests.cluster_nodes import start_node
from tests.helpers import (
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    sipp_available,
    start_sipp_uas,
    wait_for,
)
from tests.integration.test_kamailio_front import (
    NUMBERS,
    PASSWORDS,
    Front,
    Phone,
    bindings,
    placement,
)
from tests.integration.test_media import PCAP, _even_free_port, _stopped, _until_hung_up
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.sipp,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not kam.available(), reason="kamailio not installed (Debian kamailio)"),
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
    pytest.mark.skipif(not PCAP.exists(), reason="sip-tester's g711a.pcap not installed"),
]

FRONT = "127.0.60.1"
NODE_A, NODE_B = "127.0.60.11", "127.0.60.12"
SUBNET = 61  # the phones: 127.0.61.x


def relay(low: int) -> dict[str, str]:
    return {
        "PBXWARDEN_MEDIA__RELAY": "true",
        "PBXWARDEN_MEDIA__PORT_MIN": str(low),
        "PBXWARDEN_MEDIA__PORT_MAX": str(low + 99),
    }


@pytest.fixture
def front(
    tmp_path: Path, redis_server: RedisServer, request: pytest.FixtureRequest
) -> Iterator[Front]:
    """Kamailio in front of nodes A and B; ``request.param``: registrar workers each."""
    workers = str(getattr(request, "param", 0))
    started: list[PbxProcess] = []
    kamailio = None
    base = 20000 + (free_port() % 200) * 100  # two relay ranges of 100 ports
    try:
        for name, host, low in (("a", NODE_A, base), ("b", NODE_B, base + 100)):
            started.append(
                start_node(
                    tmp_path,
                    name,
                    host,
                    redis_server,
                    PASSWORDS,
                    PBXWARDEN_CLUSTER__FRONTS=f'["{FRONT}"]',
                    PBXWARDEN_CLUSTER__RECONCILE_INTERVAL="1",
                    PBXWARDEN_SIP__WORKERS=workers,
                    **relay(low),
                )
            )
        kamailio = kam.Kamailio(
            tmp_path / "kamailio",
            FRONT,
            free_port(FRONT),
            [(pbx.host, pbx.port) for pbx in started],
            ping_interval=1,
            fr_timer_ms=2000,
        )
        kamailio.start()
        yield Front(kamailio, started[0], started[1])
    finally:
        if kamailio is not None:
            kamailio.stop()
        for pbx in started:
            pbx.stop()


def stats(pbx: PbxProcess) -> dict[str, Any]:
    """The node's counters, asked over its control socket (as ``stats --json`` does,
    without a CLI start-up each time: the polls below measure propagation)."""
    try:
        return ask(pbx.data_dir, {"cmd": "stats"}, timeout=5.0)
    except ControlError:
        return {}


def replica(pbx: PbxProcess) -> int:
    return int(stats(pbx).get("cluster_location_replica", -1))


def answered_call(pbx: PbxProcess) -> dict[str, Any] | None:
    """An answered call this node carries (``calls`` lists every node's, with its node)."""
    out = cli(pbx.data_dir, "calls", "--json", check=False).stdout.strip()
    if not out.startswith("["):
        return None
    node = pbx.env.get("PBXWARDEN_CLUSTER__NODE")
    calls = [
        c for c in json.loads(out) if c["state"] == "answered" and c.get("node") in (None, node)
    ]
    return dict(calls[0]) if calls else None


def redis_fields(redis: RedisServer, key: str) -> list[str]:
    import redis as redis_client

    client = redis_client.Redis.from_url(redis.url, decode_responses=True, socket_timeout=2)
    try:
        return sorted(str(f) for f in client.hkeys(key))
    finally:
        client.close()


def refused_call(front: Front, caller: str, callee: str, workdir: Path) -> str:
    """A call from ``caller`` to ``callee`` that must be refused: the status it got."""
    workdir.mkdir()
    scenario = workdir / "refused.xml"
    template = (Path(__file__).parent / "scenarios" / "call_uac_refused.xml.tmpl").read_text()
    scenario.write_text(template.format(code="480"))
    result = run_sipp(
        str(scenario),
        front.target,
        users={caller: PASSWORDS[caller]},
        extra=["-s", callee],
        local_ip=f"127.0.{SUBNET}.60",
        workdir=workdir,
        timeout=20,
    )
    return "480" if result.successful == 1 else result.output


def test_a_phone_registered_through_a_is_called_from_b_with_media(
    front: Front, tmp_path: Path, redis_server: RedisServer
) -> None:
    placed = placement(front, NUMBERS, subnet=SUBNET)
    on = {name: [n for n, (where, _) in placed.items() if where == name] for name in "ab"}
    assert on["a"] and on["b"], placed  # 8 users hashed onto two nodes: both have some
    callee, caller = on["a"][0], on["b"][0]
    callee_phone = placed[callee][1]
    for _, phone in placed.values():
        phone.close()  # the callee's SIPp answers on the very address its binding recorded
    host, port = callee_phone.host, callee_phone.port
    assert bindings(front.a)[callee] == [f"udp:{host}:{port} via udp:{FRONT}:{front.kamailio.port}"]
    # B knows A's bindings (all of them: every phone here came through the front)
    assert wait_for(lambda: replica(front.b) >= len(on["a"]), timeout=10), stats(front.b)

    # Y (on B) calls X (registered through A): B sends it through the front, RTP both ways
    workdir = tmp_path / "call"
    workdir.mkdir()
    uas = start_sipp_uas(
        "call_uas.xml",
        port,
        workdir,
        local_ip=host,
        timeout=60,
        extra=["-rtp_echo", "-mp", str(_even_free_port())],
    )
    with _stopped(uas):
        caller_sipp = run_sipp(
            _until_hung_up("call_uac_rtp.xml", workdir),
            front.target,
            users={caller: PASSWORDS[caller]},
            extra=["-s", callee, "-mp", str(_even_free_port())],
            local_ip=f"127.0.{SUBNET}.50",
            workdir=workdir,
            timeout=60,
            background=True,
        )
        with _stopped(caller_sipp):
            assert wait_for(lambda: answered_call(front.b) is not None, timeout=20), (
                front.b.log()[-4000:],
                front.kamailio.log()[-3000:],
            )
            assert answered_call(front.a) is None  # the call is B's alone
            call: dict[str, Any] = {}

            def talking() -> bool:
                nonlocal call
                call = answered_call(front.b) or {}
                streams = call.get("media") or [{}]
                return min(streams[0].get("a_packets", 0), streams[0].get("b_packets", 0)) >= 40

            assert wait_for(talking, timeout=30), call  # about a second of audio each way
            cli(front.b.data_dir, "calls", "end", str(call["call_id"]))
            assert caller_sipp.wait(30) == 0
    assert finish_sipp_uas(uas, workdir).successful == 1
    [stream] = call["media"]
    assert stream["a_latched"] is not None and stream["b_latched"] is not None

    # Redis restarted (empty): B keeps its replica; both nodes write theirs again
    before = replica(front.b)
    redis_server.stop()
    assert wait_for(lambda: stats(front.b).get("redis") == "down", timeout=10)
    assert replica(front.b) == before
    redis_server.start()
    assert wait_for(lambda: stats(front.b).get("redis") == "up", timeout=15)
    field = f"{callee}\tsip:{callee}@{host}:{port}"
    assert wait_for(
        lambda: any(f.endswith(field) for f in redis_fields(redis_server, "test:loc:a")),
        timeout=15,
    ), redis_fields(redis_server, "test:loc:a")
    assert wait_for(lambda: replica(front.b) == before, timeout=10)

    # X unregisters through the front (on A): gone from B within about a second
    phone = Phone(front.address, host, port)
    try:
        assert phone.register(callee, expires=0) == 200
        gone = time.monotonic()
        assert wait_for(lambda: replica(front.b) == before - 1, timeout=5, step=0.005)
        unregistered = time.monotonic() - gone
        assert unregistered < 1.0, unregistered
        assert refused_call(front, caller, callee, tmp_path / "refused") == "480"
        # and registered again: in B's replica as fast
        assert phone.register(callee) == 200
        began = time.monotonic()
        assert wait_for(lambda: replica(front.b) == before, timeout=5, step=0.005)
        registered = time.monotonic() - began
    finally:
        phone.close()
    print(
        f"B's replica: unregister after {unregistered * 1000:.0f} ms,",
        f"register after {registered * 1000:.0f} ms",
    )


@pytest.mark.parametrize("front", [1], indirect=True)
def test_a_phone_of_a_killed_node_is_still_called_from_b_through_the_front(
    front: Front, tmp_path: Path
) -> None:
    """The front holds the phone's flow and B has its binding: A is not needed. Each
    node runs a registrar worker here: bindings made in a worker are shared too."""
    placed = placement(front, NUMBERS, subnet=SUBNET + 1)
    on = {name: [n for n, (where, _) in placed.items() if where == name] for name in "ab"}
    assert on["a"] and on["b"], placed
    callee, caller = on["a"][0], on["b"][0]
    host, port = placed[callee][1].host, placed[callee][1].port
    for _, phone in placed.values():
        phone.close()
    assert wait_for(lambda: replica(front.b) >= len(on["a"]), timeout=10), stats(front.b)
    assert stats(front.a)["worker_handled"] >= len(on["a"])  # registered in the worker
    assert front.a.proc is not None
    front.a.proc.send_signal(signal.SIGKILL)
    front.a.proc.wait(10)
    killed = time.monotonic()
    workdir = tmp_path / "call"
    workdir.mkdir()
    uas = start_sipp_uas("call_uas.xml", port, workdir, local_ip=host, timeout=40)
    with _stopped(uas):
        result = run_sipp(
            "call_uac.xml",
            front.target,
            users={caller: PASSWORDS[caller]},
            extra=["-s", callee],
            local_ip=f"127.0.{SUBNET + 1}.50",
            workdir=workdir,
            timeout=30,
        )
        answered_after = time.monotonic() - killed
        assert result.successful == 1, (result.output, front.b.log()[-4000:])
        assert finish_sipp_uas(uas, workdir).successful == 1
    print(f"node A killed: its phone answered a call from B {answered_after:.2f} s later")


def test_phones_whose_node_died_register_on_the_other_even_with_its_old_credentials(
    front: Front,
) -> None:
    """A real PJSIP phone refreshes its registration through the front: on the other
    node once its own died. A phone that sends the credentials it holds with each
    refresh (as baresip's and linphone's stacks do) answers the other node with the
    dead node's nonce, which that node did not sign: it must get a fresh challenge
    (stale=true), not the 403 of a wrong password, which stops a real phone for good."""
    from pbxwarden.sip.digest import build_authorization, choose_challenge, parse_challenge
    from pbxwarden.sip.message import parse_message
    from tests.pjsip import pjsip_phones

    number = NUMBERS[0]
    cached = Phone(front.address, f"127.0.{SUBNET + 2}.1")  # a second phone of the number
    first = parse_message(cached.client.request(number))
    assert isinstance(first, Response) and first.status == 401
    challenge = choose_challenge(first.headers.get_all("WWW-Authenticate"))
    uri = f"sip:{front.address[0]}:{front.address[1]}"

    def credentials(nc: int) -> str:
        return build_authorization(
            challenge, "REGISTER", uri, number, PASSWORDS[number], cnonce="cafe01", nc=nc
        )

    answer = parse_message(cached.client.request(number, authorization=credentials(1)))
    assert isinstance(answer, Response) and answer.status == 200
    with contextlib.closing(cached.client), pjsip_phones(*front.address) as phones:
        phone = phones.add(number, PASSWORDS[number])
        homes: list[str] = []

        def located() -> bool:
            homes[:] = [n for n, pbx in front.nodes().items() if number in bindings(pbx)]
            return bool(homes)

        assert wait_for(located), front.kamailio.log()[-3000:]
        home = homes[0]
        dead, survivor = (front.a, front.b) if home == "a" else (front.b, front.a)
        assert dead.proc is not None
        dead.proc.send_signal(signal.SIGKILL)
        dead.proc.wait(10)
        killed = time.monotonic()
        # the caching phone: its next refresh carries the dead node's nonce
        reply = parse_message(cached.client.request(number, authorization=credentials(2)))
        assert isinstance(reply, Response) and reply.status == 401, (reply, survivor.log()[-2000:])
        fresh = parse_challenge(reply.headers.get_all("WWW-Authenticate")[0])
        assert fresh.stale, reply
        assert parse_message(cached.client.register(number, PASSWORDS[number])).status == 200
        phone.reg_codes.clear()
        phone.setRegistration(True)  # as the phone does at its refresh, or when unsure
        phones.until(lambda: bool(phone.reg_codes), "an answer to the refresh", timeout=30)
        again = time.monotonic() - killed
        assert phone.reg_codes[0] == 200, (phone.reg_codes, survivor.log()[-3000:])
        assert wait_for(lambda: number in bindings(survivor)), survivor.log()[-3000:]
        print(f"PJSIP re-registered on the other node {again:.2f} s after its node died")


def test_a_phone_on_tcp_to_the_front_is_called_from_the_other_node(front: Front) -> None:
    """The front holds the phone's TCP connection: a call from a phone of the other node
    must come back over that connection, not over UDP to the connection's address."""
    from tests.pjsip import pj, pjsip_phones

    with pjsip_phones(*front.address) as phones:
        callee = phones.add(NUMBERS[0], PASSWORDS[NUMBERS[0]], tcp=True)
        homes: list[str] = []

        def located(number: str) -> bool:
            homes[:] = [n for n, pbx in front.nodes().items() if number in bindings(pbx)]
            return bool(homes)

        assert wait_for(lambda: located(NUMBERS[0])), front.kamailio.log()[-3000:]
        home = homes[0]
        caller = None
        for number in NUMBERS[1:]:  # a caller the front hashes onto the other node
            phone = phones.add(number, PASSWORDS[number])
            assert wait_for(lambda n=number: located(n))  # type: ignore[misc]
            if homes[0] != home:
                caller = phone
                break
        assert caller is not None
        call = caller.call(NUMBERS[0])
        phones.until(lambda: bool(callee.incoming), "the TCP phone rings", timeout=20)
        callee.answer(callee.incoming[0])
        phones.until(lambda: call.confirmed, "answered", timeout=20)
        ringing = callee.incoming[0]
        phones.until(lambda: ringing.confirmed, "the TCP phone's call confirmed", timeout=20)
        call.hangup(pj.CallOpParam())  # the BYE reaches the TCP phone within the dialog
        phones.until(lambda: ringing.disconnected, "the TCP phone hung up", timeout=20)
