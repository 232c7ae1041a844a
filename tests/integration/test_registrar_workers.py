"""Registrar workers (``sip.workers``) in the real server, against real peers.

Every test checks the workers did the work (the main process would answer just the
same without them) and that what must be shared still is: bindings for call routing
and the database, brute-force counts, bans, enumeration limits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pbxwarden.sip.message import Response, parse_message
from pbxwarden.store.db import Store
from tests.helpers import (
    PbxProcess,
    SipClient,
    cli,
    finish_sipp_uas,
    free_port,
    options_request,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
    status_of,
    udp_exchange,
)

needs_sipp = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

USERS = {str(1000 + i): f"Passw0rd-{i:04d}-workers" for i in range(20)}
USERS["2000"] = "Callee-Passw0rd-workers"
WORKERS = {"PBXWARDEN_SIP__WORKERS": "2"}


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS, env=WORKERS) as server:
        yield server


def stats(pbx: PbxProcess) -> dict[str, object]:
    return dict(json.loads(cli(pbx.data_dir, "stats", "--json").stdout))


def number(pbx: PbxProcess, key: str) -> int:
    value = stats(pbx)[key]
    assert isinstance(value, int)
    return value


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def target(pbx: PbxProcess) -> str:
    return f"{pbx.host}:{pbx.port}"


def registers(pbx: PbxProcess, user: str, source_ip: str = "127.0.0.1") -> int | None:
    client = SipClient((pbx.host, pbx.port), source_ip=source_ip)
    client.sock.settimeout(5.0)  # an answer is expected: give a loaded host time
    try:
        reply = parse_message(client.register(user, USERS[user]))
        return reply.status if isinstance(reply, Response) else None
    except TimeoutError:
        return None
    finally:
        client.close()


def registrations(pbx: PbxProcess) -> set[str]:
    """Extensions with a live registration, as the running server lists them."""
    out = cli(pbx.data_dir, "registrations", "--json").stdout
    return set() if out.strip() == "no registrations" else {r["number"] for r in json.loads(out)}


def stored_registrations(pbx: PbxProcess) -> set[str]:
    """Extensions with a registration in the database (written back periodically)."""
    store = Store(f"sqlite:///{pbx.data_dir / 'pbxwarden.db'}")
    try:
        return {r["number"] for r in store.list_bindings(time.time())}
    finally:
        store.close()


def worker_pids(pbx: PbxProcess) -> list[int]:
    assert pbx.proc is not None
    out = subprocess.run(
        ["pgrep", "-P", str(pbx.proc.pid)], capture_output=True, text=True
    ).stdout.split()
    return [int(p) for p in out]


def bans(pbx: PbxProcess) -> dict[str, dict[str, object]]:
    out = cli(pbx.data_dir, "bans", "list", "--json").stdout
    return {} if out.strip() == "no bans" else {b["address"]: b for b in json.loads(out)}


@needs_sipp
def test_workers_register_phones_and_the_main_process_routes_calls_to_them(
    pbx: PbxProcess, tmp_path: Path
) -> None:
    assert (number(pbx, "workers"), number(pbx, "workers_ready")) == (2, 2)
    assert len(worker_pids(pbx)) == 2
    phones = {u: p for u, p in USERS.items() if u.startswith("10")}
    result = run_sipp(
        "register.xml", target(pbx), users=phones, calls=len(phones), rate=50, workdir=tmp_path
    )
    assert (result.successful, result.failed) == (20, 0), result.output
    # both REGISTERs of each, none here: read by the workers from their own sockets
    assert wait_for(lambda: number(pbx, "worker_handled") >= 40)
    assert number(pbx, "worker_read") >= 40
    assert number(pbx, "worker_dispatched") == 0  # none crossed the main process
    assert wait_for(lambda: number(pbx, "registers_ok") == 20)
    # The bindings reached the main process: written back, and used to route a call.
    assert wait_for(lambda: registrations(pbx) == set(phones))
    port = free_port()
    callee = {"2000": USERS["2000"]}
    reg = run_sipp("register.xml", target(pbx), users=callee, local_port=port, workdir=tmp_path)
    assert reg.successful == 1, reg.output
    phone = start_sipp_uas("call_uas.xml", port, tmp_path)
    call = run_sipp(
        "call_uac.xml",
        target(pbx),
        users={"1000": USERS["1000"]},
        extra=["-s", "2000"],
        workdir=tmp_path,
        timeout=20,
    )
    assert (call.successful, call.failed) == (1, 0), call.output + pbx.log()[-3000:]
    assert finish_sipp_uas(phone, tmp_path).successful == 1


@needs_sipp
def test_registrations_over_tcp_go_to_the_workers_too(pbx: PbxProcess, tmp_path: Path) -> None:
    """The main process holds the connection; the worker's answer comes back through it."""
    users = {u: USERS[u] for u in ("1011", "1012", "1013")}
    before = number(pbx, "worker_dispatched")
    result = run_sipp(
        "register.xml", target(pbx), users=users, calls=3, transport="t1", workdir=tmp_path
    )
    assert (result.successful, result.failed) == (3, 0), result.output
    assert number(pbx, "worker_dispatched") == before + 6
    assert wait_for(lambda: set(users) <= registrations(pbx))


@needs_sipp
def test_bindings_registered_by_workers_survive_a_restart(pbx: PbxProcess, tmp_path: Path) -> None:
    one = {"1002": USERS["1002"]}
    reg = run_sipp("register.xml", target(pbx), users=one, workdir=tmp_path)
    assert reg.successful == 1, reg.output
    assert wait_for(lambda: "1002" in stored_registrations(pbx), 30.0)  # written back
    pbx.stop(signal.SIGKILL)  # the workers see their channel close and leave the port
    pbx.start()
    assert wait_for(lambda: number(pbx, "workers_ready") == 2, 60.0)
    query = run_sipp("query.xml", target(pbx), users=one, workdir=tmp_path)
    assert (query.successful, query.failed) == (1, 0), query.output


def test_retransmission_is_absorbed_by_the_worker(pbx: PbxProcess) -> None:
    msg = (
        f"REGISTER sip:{pbx.host} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5998;branch=z9hG4bKworkers1;rport\r\n"
        "From: <sip:1005@127.0.0.1>;tag=1\r\nTo: <sip:1005@127.0.0.1>\r\n"
        "Call-ID: retrans-workers\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:1005@127.0.0.1:5998>\r\n"
        'Authorization: Digest username="1005", realm="x", nonce="0", uri="sip:x",'
        ' response="00000000000000000000000000000000"\r\n'
        "Content-Length: 0\r\n\r\n"
    ).encode()
    before = number(pbx, "worker_handled")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        sock.sendto(msg, (pbx.host, pbx.port))
        first = sock.recv(65535)
        sock.sendto(msg, (pbx.host, pbx.port))
        second = sock.recv(65535)
    assert status_of(first) in (401, 403)
    assert first == second  # replayed by the worker's transaction, not a second attempt
    assert wait_for(lambda: number(pbx, "worker_handled") == before + 2)


def test_a_challenge_is_stateless_in_the_worker(pbx: PbxProcess) -> None:
    msg = (
        f"REGISTER sip:{pbx.host} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5998;branch=z9hG4bKworkers1c;rport\r\n"
        "From: <sip:1005@127.0.0.1>;tag=1\r\nTo: <sip:1005@127.0.0.1>\r\n"
        "Call-ID: retrans-workers-c\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
        "Contact: <sip:1005@127.0.0.1:5998>\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    before = number(pbx, "worker_handled")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        sock.sendto(msg, (pbx.host, pbx.port))
        first = sock.recv(65535)
        sock.sendto(msg, (pbx.host, pbx.port))
        second = sock.recv(65535)
    assert status_of(first) == 401
    assert status_of(second) == 401
    assert first != second  # a fresh nonce: a challenge keeps no transaction (absorbs)
    assert wait_for(lambda: number(pbx, "worker_handled") == before + 2)


def test_a_crashed_worker_is_replaced_and_nothing_is_refused_meanwhile(pbx: PbxProcess) -> None:
    victims = worker_pids(pbx)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    # Gone (reaped by the server, or at least dead): a datagram sent before that would
    # be lost with the worker, as with any crash; phones retransmit, this test does not.
    assert wait_for(lambda: not set(victims) & set(worker_pids(pbx)), 30.0)
    # With no worker left, the main process registers phones itself.
    assert all(registers(pbx, user) == 200 for user in ("1006", "1007", "1008"))
    assert wait_for(lambda: number(pbx, "workers_ready") == 2, 60.0)
    assert number(pbx, "worker_restarts") == 2
    assert not set(victims) & set(worker_pids(pbx))
    before = number(pbx, "worker_handled")
    assert registers(pbx, "1009") == 200
    assert wait_for(lambda: number(pbx, "worker_handled") == before + 2)


@needs_sipp
def test_brute_force_counted_across_workers_is_banned(tmp_path: Path) -> None:
    env = {**WORKERS, "PBXWARDEN_FIREWALL__AUTH_FAILURE_LIMIT": "5"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        attacker = "127.0.0.9"
        result = run_sipp(
            "register_wrong_password.xml",
            target(pbx),
            users={"1000": "guess-number-one"},
            calls=8,
            rate=4,
            local_ip=attacker,
            recv_timeout_ms=1000,
            timeout=25,
            workdir=tmp_path,
        )
        # The workers answered five guesses 403 and told the main process, which banned.
        assert (result.successful, result.failed) == (5, 3), result.output
        assert wait_for(lambda: attacker in bans(pbx))
        assert "5 failed authentications" in str(bans(pbx)[attacker]["reason"])
        assert registers(pbx, "1000") == 200
        assert registers(pbx, "1001", source_ip=attacker) is None


def test_scanner_and_enumeration_are_banned_with_workers(tmp_path: Path) -> None:
    env = {**WORKERS, "PBXWARDEN_FIREWALL__IDENTITY_LIMIT": "10"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        dest = (pbx.host, pbx.port)
        # A scanner's REGISTER: the worker spots the fingerprint, the main process bans.
        scanner = SipClient(dest, source_ip="127.0.0.20")
        scanner.sock.settimeout(0.7)
        with pytest.raises(TimeoutError):
            scanner.request("1000", extra=("User-Agent: friendly-scanner",))
        scanner.close()
        assert wait_for(lambda: "127.0.0.20" in bans(pbx))
        assert udp_exchange(options_request(dest), dest, 0.7, source_ip="127.0.0.20") is None
        # Many identities from one address: counted before dispatch, whichever worker.
        enumerator = SipClient(dest, source_ip="127.0.0.21")
        enumerator.sock.settimeout(0.5)
        answered = 0
        try:
            for user in range(1000, 1020):
                try:
                    enumerator.request(str(user))
                    answered += 1
                except TimeoutError:
                    pass
        finally:
            enumerator.close()
        assert answered == 10
        assert wait_for(lambda: "127.0.0.21" in bans(pbx))
        assert registers(pbx, "1010") == 200


def test_an_invite_may_reuse_the_nonce_a_worker_gave_for_registering(pbx: PbxProcess) -> None:
    """Phones often answer the next challenge-free request with the nonce they hold:
    the main process takes a worker's nonce for an INVITE (only REGISTERs are held to
    their issuer), so calls cost no extra round trip with workers on."""
    from pbxwarden.sip.digest import build_authorization, choose_challenge

    client = SipClient((pbx.host, pbx.port))
    try:
        first = parse_message(client.request("1000"))
        assert isinstance(first, Response) and first.status == 401
        challenge = choose_challenge(first.headers.get_all("WWW-Authenticate"))
        uri = f"sip:{pbx.host}:{pbx.port}"
        auth = build_authorization(
            challenge, "REGISTER", uri, "1000", USERS["1000"], cnonce="c0ffee", nc=1
        )
        ok = parse_message(client.request("1000", authorization=auth))
        assert isinstance(ok, Response) and ok.status == 200
        host, (lhost, lport) = pbx.host, client.local
        target_uri = f"sip:2000@{host}"
        auth = build_authorization(
            challenge, "INVITE", target_uri, "1000", USERS["1000"], cnonce="c0ffee", nc=2
        )
        invite = (
            f"INVITE {target_uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {lhost}:{lport};branch=z9hG4bKreuse1;rport\r\n"
            f"From: <sip:1000@{host}>;tag=reuse\r\nTo: <sip:2000@{host}>\r\n"
            f"Call-ID: reuse-{lport}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:1000@{lhost}:{lport}>\r\nAuthorization: {auth}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        client.sock.sendto(invite, (pbx.host, pbx.port))
        final = None
        while final is None:
            reply = parse_message(client.sock.recv(65535))
            if isinstance(reply, Response) and reply.status >= 200:
                final = reply
        # 2000 is not registered: the call was authenticated, routed and found nobody.
        assert final.status not in (401, 403, 407), final.to_bytes()
        assert final.status == 480, final.to_bytes()
    finally:
        client.close()


def test_metrics_count_the_workers_and_their_registrations(tmp_path: Path) -> None:
    import httpx

    http_port = free_port()
    env = {
        **WORKERS,
        "PBXWARDEN_HTTP__ENABLED": "true",
        "PBXWARDEN_HTTP__LISTEN": f"127.0.0.1:{http_port}",
    }
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        cli(
            pbx.data_dir,
            "admin",
            "add",
            "ops",
            "--role",
            "operator",
            "--password",
            "-",
            input_text="quartz-violin-harbor-97\n",
        )
        token = cli(pbx.data_dir, "admin", "token", "ops", "--scope", "read-only").stdout
        auth = {"Authorization": f"Bearer {token.strip().splitlines()[-1].strip()}"}
        assert registers(pbx, "1003") == 200
        assert registers(pbx, "1004") == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as http:

            def scrape() -> str:
                return http.get("/metrics", headers=auth).text

            # The workers hand over their latency counts once a second.
            assert wait_for(
                lambda: 'pbxwarden_sip_transaction_seconds_count{method="REGISTER"} 4.0' in scrape()
            ), scrape()
            metrics = scrape()
        assert 'pbxwarden_registrar_workers{state="ready"} 2.0' in metrics
        assert 'pbxwarden_registrar_worker_datagrams_total{outcome="handled"} 4.0' in metrics
        assert 'pbxwarden_registrar_worker_datagrams_total{outcome="read"} 4.0' in metrics
        assert "pbxwarden_registrations_total 2.0" in metrics
        assert "pbxwarden_registrations_active 2.0" in metrics


def test_a_restarted_worker_learns_what_the_main_process_registered_meanwhile(
    tmp_path: Path,
) -> None:
    """The database lags the main process by a write-back period (300 s here, so that
    even a slow machine restarts the workers well within it): a worker back from a crash
    gets the main process's bindings of its extensions, so a phone registered while the
    worker was down is still listed, and counted, by it."""
    env = {**WORKERS, "PBXWARDEN_STORAGE__FLUSH_INTERVAL": "300"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        dest = (pbx.host, pbx.port)

        def register(contact: str) -> Response:
            client = SipClient(dest)
            try:
                reply = parse_message(client.register("1006", USERS["1006"], contact=contact))
                assert isinstance(reply, Response)
                return reply
            finally:
                client.close()

        assert registers(pbx, "1001") == 200
        victims = worker_pids(pbx)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not set(victims) & set(worker_pids(pbx)), 30.0)
        assert register("<sip:1006@127.0.0.1:40001>").status == 200  # by the main process
        assert wait_for(lambda: number(pbx, "workers_ready") == 2, 60.0)
        assert "1006" not in stored_registrations(pbx)  # not in the database yet
        before = number(pbx, "worker_handled")
        reply = register("<sip:1006@127.0.0.1:40002>")
        assert wait_for(lambda: number(pbx, "worker_handled") == before + 2)  # a worker's answer
        assert reply.status == 200
        assert sorted(str(c.uri) for c in reply.contacts) == [
            "sip:1006@127.0.0.1:40001",
            "sip:1006@127.0.0.1:40002",
        ]


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (its parent may be gone: nobody reaps)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_never_outlive_their_main_process(pbx: PbxProcess) -> None:
    """Main process killed with SIGKILL: its workers go too, even one that cannot run
    at that moment (stopped here), which would otherwise keep its socket of the port."""
    workers = worker_pids(pbx)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGSTOP)
    assert pbx.proc is not None
    pbx.proc.kill()
    pbx.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(_running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in workers if _running(p)]
    for pid in left:  # never leave one behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, left
