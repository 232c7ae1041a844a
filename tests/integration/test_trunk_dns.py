"""Trunks by DNS name (RFC 3263) with the real server, real SIPp carriers on their own
loopback addresses and a real DNS server on loopback (tests/dns_server.py):
``_sip._udp.carrier.test`` names two servers, 127.0.0.2 (priority 10) and 127.0.0.3
(priority 20). Calls fail over from the first to the second (a 503, or no answer at
all); the carrier's calls are recognised by the addresses DNS gives, which follow the
TTL; the registration to the carrier names its domain and fails over too."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dns_server import DnsServer, dns_server
from tests.helpers import (
    PbxProcess,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import (
    CALLER,
    USERS,
    cdrs,
    register_callee,
    target,
    wait_cdr,
)

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

SRV = "_sip._udp.carrier.test"
FIRST, SECOND = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with dns_server() as server:
        yield server


def carrier_dns(dns: DnsServer, first_port: int, second_port: int, ttl: int = 60) -> None:
    dns.set(
        SRV, "SRV", ttl, f"10 0 {first_port} a.carrier.test.", f"20 0 {second_port} b.carrier.test."
    )
    dns.set("a.carrier.test", "A", ttl, FIRST)
    dns.set("b.carrier.test", "A", ttl, SECOND)


def pbx_env(dns: DnsServer, **extra: str) -> dict[str, str]:
    return {
        "PBXWARDEN_DNS__NAMESERVERS": json.dumps([dns.address]),
        "PBXWARDEN_DNS__MIN_TTL": "1",
        "PBXWARDEN_DNS__TIMEOUT": "1",
        **extra,
    }


def trunks(pbx: PbxProcess) -> list[dict[str, object]]:
    out = cli(pbx.data_dir, "trunk", "list", "--json").stdout
    return [] if out.strip().startswith("no ") else list(json.loads(out))


def wait_addresses(pbx: PbxProcess, expected: set[str], timeout: float = 30) -> dict[str, object]:
    """The running server resolved the trunk's name to exactly ``expected``."""
    deadline = time.monotonic() + timeout
    row: dict[str, object] = {}
    while time.monotonic() < deadline:
        [row] = trunks(pbx)
        if set(row.get("addresses") or []) == expected:  # type: ignore[call-overload]
            return row
        time.sleep(0.3)
    raise AssertionError(f"trunk addresses {row} never became {expected}:\n{pbx.log()[-3000:]}")


def add_named_trunk(pbx: PbxProcess, *args: str, input_text: str | None = None) -> None:
    proc = cli(
        pbx.data_dir,
        "trunk",
        "add",
        "carrier",
        "--host",
        "carrier.test",
        "--prefix",
        "+1",
        *args,
        input_text=input_text,
    )
    assert "carrier.test:SRV/auto" in proc.stdout, proc.stdout


def call_out(pbx: PbxProcess, workdir: Path, dialed: str = "2025550143") -> tuple[int, int, str]:
    result = run_sipp(
        "call_uac.xml",
        target(pbx),
        users=CALLER,
        extra=["-s", dialed],
        workdir=workdir,
        timeout=40,
        recv_timeout_ms=20000,  # the first server may take Timer B to be given up
    )
    return result.successful, result.failed, result.output


def invite_status(pbx: PbxProcess, source: str, number: str, timeout: float = 10) -> int | None:
    """An INVITE without credentials from ``source`` to ``number``: the final status. A
    carrier's call to an unknown number gets 404; anyone else is challenged (401/407)."""
    from pbxwarden.sip.message import generate_branch

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        port = sock.getsockname()[1]
        branch, call_id = generate_branch(), f"dns-test-{time.monotonic_ns()}"
        head = (
            f"INVITE sip:{number}@{pbx.host}:{pbx.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {source}:{port};branch={branch};rport\r\n"
            f"From: <sip:+15551230000@{source}>;tag=dns1\r\nTo: <sip:{number}@{pbx.host}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:+15551230000@{source}:{port}>\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(head.encode(), (pbx.host, pbx.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65535)
            except TimeoutError:
                return None
            status = int(data.split(b" ", 2)[1])
            if status >= 200:
                ack = (
                    f"ACK sip:{number}@{pbx.host}:{pbx.port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {source}:{port};branch={branch};rport\r\n"
                    f"From: <sip:+15551230000@{source}>;tag=dns1\r\n"
                    f"To: <sip:{number}@{pbx.host}>\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\n"
                    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                )
                sock.sendto(ack.encode(), (pbx.host, pbx.port))
                return status
    return None


def test_call_fails_over_from_a_503_and_inbound_follows_dns(tmp_path: Path, dns: DnsServer) -> None:
    first_port, second_port = free_port(FIRST), free_port(SECOND)
    carrier_dns(dns, first_port, second_port, ttl=1)
    with running_pbx(tmp_path / "data", USERS, env=pbx_env(dns)) as pbx:
        add_named_trunk(pbx, "--inbound-from", "127.0.5.0/24")
        row = wait_addresses(pbx, {FIRST, SECOND})
        assert (row["host"], row["port"], row["transport"]) == ("carrier.test", None, "auto")
        # the first server says 503: the call goes to the second, which answers
        busy = start_sipp_uas(
            "call_uas_503.xml", first_port, tmp_path, local_ip=FIRST, name="first"
        )
        answering = start_sipp_uas(
            "carrier_uas_named.xml", second_port, tmp_path, local_ip=SECOND, name="second"
        )
        ok, failed, output = call_out(pbx, tmp_path)
        assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
        assert finish_sipp_uas(busy, tmp_path, name="first").successful == 1
        second = finish_sipp_uas(answering, tmp_path, name="second")
        assert second.successful == 1, second.output
        [cdr] = wait_cdr(pbx)
        assert (cdr["disposition"], cdr["trunk"], cdr["callee_e164"]) == (
            "answered",
            "carrier",
            "+12025550143",
        )
        assert "carrier server failed; trying the next one" in pbx.log()

        # the carrier's call from the second server's address rings the DID's extension
        cli(pbx.data_dir, "did", "add", "2025550100", "--extension", "2000")
        deadline = time.monotonic() + 10
        while invite_status(pbx, SECOND, "+12025550100") != 480:  # the DID is loaded; its
            assert time.monotonic() < deadline, pbx.log()[-3000:]  # phone not registered yet
            time.sleep(0.3)
        phone_port = register_callee(pbx, tmp_path)
        phone = start_sipp_uas("call_uas.xml", phone_port, tmp_path, name="phone")
        inbound = run_sipp(
            "call_uac_carrier.xml",
            target(pbx),
            users={"+15551230000": "-"},
            extra=["-s", "+12025550100"],
            local_ip=SECOND,
            workdir=tmp_path,
        )
        assert (inbound.successful, inbound.failed) == (1, 0), inbound.output + pbx.log()[-3000:]
        assert finish_sipp_uas(phone, tmp_path, name="phone").successful == 1
        deadline = time.monotonic() + 10
        while ("inbound", "carrier", "answered") not in [
            (r["kind"], r["trunk"], r["disposition"]) for r in cdrs(pbx)
        ]:
            assert time.monotonic() < deadline, (cdrs(pbx), pbx.log()[-3000:])
            time.sleep(0.3)
        # from an address DNS does not name: a stranger, challenged like any phone;
        # from an --inbound-from network: the carrier
        assert invite_status(pbx, "127.0.0.4", "+12025559999") in (401, 407)
        assert invite_status(pbx, "127.0.5.9", "+12025559999") == 404

        # the carrier moves its second server: after the TTL the new address is the
        # carrier's and the old one is not
        dns.set("b.carrier.test", "A", 1, "127.0.0.4")
        wait_addresses(pbx, {FIRST, "127.0.0.4"})
        assert invite_status(pbx, "127.0.0.4", "+12025559999") == 404
        assert invite_status(pbx, SECOND, "+12025559999") in (401, 407)
        listed = cli(pbx.data_dir, "trunk", "list", env={"COLUMNS": "300"}).stdout
        assert "carrier.test" in listed and "127.0.0.4" in listed, listed
        # banning the carrier's resolved address by hand is refused like an IP trunk's
        refused = cli(pbx.data_dir, "bans", "add", "127.0.0.4", check=False)
        assert refused.returncode == 1 and "trunk's carrier" in refused.stderr, refused.stderr


def test_silent_first_server_costs_timer_b_once(tmp_path: Path, dns: DnsServer) -> None:
    """Nothing listens on the first server: the first call goes to the second after
    Timer B (64 x T1; T1 shortened so that the test is quick), the next call straight
    there (a server that failed is tried last for a minute)."""
    first_port, second_port = free_port(FIRST), free_port(SECOND)
    carrier_dns(dns, first_port, second_port)
    with running_pbx(tmp_path / "data", USERS, env=pbx_env(dns, PBXWARDEN_SIP__T1="0.05")) as pbx:
        add_named_trunk(pbx)
        wait_addresses(pbx, {FIRST, SECOND})
        answering = start_sipp_uas(
            "carrier_uas_named.xml", second_port, tmp_path, local_ip=SECOND, calls=2, name="second"
        )
        for _ in range(2):
            ok, failed, output = call_out(pbx, tmp_path)
            assert (ok, failed) == (1, 0), output + pbx.log()[-3000:]
        second = finish_sipp_uas(answering, tmp_path, name="second")
        assert second.successful == 2, second.output
        assert [r["disposition"] for r in wait_cdr(pbx, 2)] == ["answered", "answered"]
        assert pbx.log().count("carrier server failed; trying the next one") == 1
        [row] = trunks(pbx)
        assert row["addresses"] == [FIRST, SECOND]


def test_registration_by_name_fails_over_from_a_503(tmp_path: Path, dns: DnsServer) -> None:
    first_port, second_port = free_port(FIRST), free_port(SECOND)
    carrier_dns(dns, first_port, second_port)
    with running_pbx(tmp_path / "data", USERS, env=pbx_env(dns)) as pbx:
        busy = start_sipp_uas(
            "register_503_uas.xml", first_port, tmp_path, local_ip=FIRST, name="busy"
        )
        registrar = start_sipp_uas(
            "carrier_register_name_uas.xml", second_port, tmp_path, local_ip=SECOND, name="reg"
        )
        add_named_trunk(
            pbx,
            "--username",
            "pbx-user",
            "--password",
            "-",
            "--register",
            input_text="the-carrier-password\n",
        )
        assert finish_sipp_uas(busy, tmp_path, name="busy").successful == 1
        registered = finish_sipp_uas(registrar, tmp_path, name="reg")
        assert registered.successful == 1, registered.output + pbx.log()[-3000:]
        deadline = time.monotonic() + 20
        while True:
            [row] = trunks(pbx)
            registration = row["registration"]
            assert isinstance(registration, dict)
            if registration.get("state") == "registered":
                break
            assert time.monotonic() < deadline, (row, pbx.log()[-3000:])
            time.sleep(0.3)
        assert "carrier registrar failed; trying the next one" in pbx.log()


def test_a_name_without_addresses_fails_the_call_with_a_reason(
    tmp_path: Path, dns: DnsServer
) -> None:
    with running_pbx(tmp_path / "data", USERS, env=pbx_env(dns)) as pbx:
        add_named_trunk(pbx)
        deadline = time.monotonic() + 15
        while not (row := trunks(pbx)[0])["dns_error"]:  # looked up, and nothing found
            assert time.monotonic() < deadline, (row, pbx.log()[-3000:])
            time.sleep(0.3)
        assert row["dns_error"] == "DNS has no address for it" and row["addresses"] == []
        refused = tmp_path / "refused.xml"
        template = (Path(__file__).parent / "scenarios" / "call_uac_refused.xml.tmpl").read_text()
        refused.write_text(template.format(code=503))
        result = run_sipp(
            str(refused), target(pbx), users=CALLER, extra=["-s", "2025550143"], workdir=tmp_path
        )
        assert result.successful == 1, result.output + pbx.log()[-3000:]
        [cdr] = wait_cdr(pbx)
        assert cdr["disposition"] == "failed" and "carrier.test did not resolve" in str(
            cdr["reasons"]
        )
        assert pbx.alive()


def test_trunk_hosts_are_validated(tmp_path: Path) -> None:
    cli(tmp_path, "init")
    for args, expected in [
        (("--host", "carrier..example"), "IP address or a DNS name"),
        (("--host", "192.0.2.300"), "IP address or a DNS name"),
        (("--host", "carrier.example", "--transport", "tls"), "invalid transport"),
        (("--host", "carrier.example", "--inbound-from", "10.0.0.0/99"), "not a network"),
    ]:
        proc = cli(tmp_path, "trunk", "add", "t1", *args, check=False)
        assert proc.returncode == 1 and expected in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert trunks_empty(tmp_path)  # nothing stored by the refused ones
    ok = cli(tmp_path, "trunk", "add", "t1", "--host", "198.51.100.10").stdout
    assert "198.51.100.10:5060/udp" in ok
    named = cli(tmp_path, "trunk", "add", "t2", "--host", "SIP.Carrier.Example", "--port", "5070")
    assert "sip.carrier.example:5070/auto" in named.stdout
    rows = json.loads(cli(tmp_path, "trunk", "list", "--json").stdout)
    assert [(r["host"], r["port"], r["transport"]) for r in rows] == [
        ("198.51.100.10", 5060, "udp"),
        ("sip.carrier.example", 5070, "auto"),
    ]
    assert rows[0]["addresses"] == ["198.51.100.10"]
    assert rows[1]["addresses"] is None  # no server running: just the name
    table = cli(tmp_path, "trunk", "list", env={"COLUMNS": "300"}).stdout
    lines = [ln for ln in table.splitlines() if "198.51.100.10" in ln or "sip.carrier" in ln]
    assert len(lines) == 2 and lines[0].count("│") == lines[1].count("│"), table


def trunks_empty(data_dir: Path) -> bool:
    out = cli(data_dir, "trunk", "list", "--json").stdout.strip()
    return out in ("[]", "") or out.startswith("no ")


@pytest.mark.parametrize("workers", [0, 2], ids=["main", "workers"])
def test_no_registering_from_a_named_carriers_address(
    tmp_path: Path, dns: DnsServer, workers: int
) -> None:
    """The resolved addresses (and --inbound-from networks) are a trunk's addresses for
    the extension lock's rule too (credentials are refused from them unless the extension
    may), in the main process and in registrar workers, which resolve the names
    themselves."""
    from pbxwarden.sip.message import Response, parse_message
    from tests.helpers import SipClient

    clients: dict[str, SipClient] = {}

    def register(source: str) -> int | None:
        """One phone per source (the same contact each time: no pile of bindings)."""
        if source not in clients:
            clients[source] = SipClient((pbx.host, pbx.port), source_ip=source)
        try:
            reply = parse_message(clients[source].register("2000", USERS["2000"]))
        except TimeoutError:
            return None
        return reply.status if isinstance(reply, Response) else None

    carrier_dns(dns, free_port(FIRST), free_port(SECOND))
    env = pbx_env(dns, PBXWARDEN_SIP__WORKERS=str(workers))
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx, contextlib.ExitStack() as stack:
        stack.callback(lambda: [c.close() for c in clients.values()])
        add_named_trunk(pbx, "--inbound-from", "127.0.6.0/24")
        wait_addresses(pbx, {FIRST, SECOND})
        assert register("127.0.0.7") == 200  # not a carrier's address: fine
        deadline = time.monotonic() + 30
        seen = []
        while (status := register(SECOND)) != 403:  # each worker has resolved the name too
            seen.append(status)
            assert time.monotonic() < deadline, (seen, pbx.log()[-3000:])
            time.sleep(0.3)
        assert [register(SECOND) for _ in range(4)] == [403] * 4  # wherever it lands
        assert register(FIRST) == 403
        assert register("127.0.6.5") == 403  # an --inbound-from network is the carrier's too
