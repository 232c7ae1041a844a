"""The SIP firewall against real traffic from distinct loopback source addresses.

127.0.0.0/8 gives each test its own attacker addresses; the legitimate phone stays on
127.0.0.1 and must keep registering throughout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pbxwarden.sip.message import Response, parse_message
from tests.helpers import (
    PbxProcess,
    SipClient,
    cli,
    options_request,
    run_sipp,
    running_pbx,
    sipp_available,
    status_of,
    udp_exchange,
)

PHONE = {"1000": "Phone-Passw0rd-ok"}
FAST_BANS = {
    "PBXWARDEN_FIREWALL__AUTH_FAILURE_LIMIT": "5",
    "PBXWARDEN_FIREWALL__RATE_LIMIT": "60",
}


def phone_registers(pbx: PbxProcess) -> bool:
    client = SipClient((pbx.host, pbx.port))
    try:
        reply = parse_message(client.register("1000", PHONE["1000"]))
        return isinstance(reply, Response) and reply.status == 200
    finally:
        client.close()


def answered(
    pbx: PbxProcess, source: str, user_agent: str = "pbxwarden-tests", timeout: float = 5.0
) -> bool:
    """An OPTIONS from ``source`` gets its 200 (a slow, loaded host gets time to answer)."""
    dest = (pbx.host, pbx.port)
    reply = udp_exchange(options_request(dest, user_agent), dest, timeout, source_ip=source)
    return status_of(reply) == 200


def silent(
    pbx: PbxProcess, source: str, user_agent: str = "pbxwarden-tests", timeout: float = 0.7
) -> bool:
    """No answer to ``source`` (banned): a short wait, since silence is what we expect."""
    return not answered(pbx, source, user_agent, timeout)


def bans(pbx: PbxProcess) -> dict[str, dict[str, object]]:
    out = cli(pbx.data_dir, "bans", "list", "--json").stdout
    return {} if out.strip() == "no bans" else {b["address"]: b for b in json.loads(out)}


def wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")
def test_password_brute_force_is_banned_while_the_phone_keeps_working(tmp_path: Path) -> None:
    with running_pbx(tmp_path / "data", PHONE, env=FAST_BANS) as pbx:
        attacker = "127.0.0.9"
        guesses = {"1000": "guess-number-one"}
        result = run_sipp(
            "register_wrong_password.xml",
            f"{pbx.host}:{pbx.port}",
            users=guesses,
            calls=8,
            rate=4,
            local_ip=attacker,
            recv_timeout_ms=1000,
            timeout=25,
            workdir=tmp_path,
        )
        # Five wrong guesses are answered 403; from then on the attacker hears nothing.
        assert (result.successful, result.failed) == (5, 3), result.output
        assert phone_registers(pbx)
        assert silent(pbx, attacker)
        assert answered(pbx, "127.0.0.1")
        assert wait_for(lambda: attacker in bans(pbx))
        assert "5 failed authentications" in str(bans(pbx)[attacker]["reason"])
        # An administrator lifts the ban; the running server follows within a second or two.
        cli(pbx.data_dir, "bans", "remove", attacker)
        assert wait_for(lambda: answered(pbx, attacker, timeout=1.0))


def test_scanner_fingerprint_is_banned_on_sight(tmp_path: Path) -> None:
    with running_pbx(tmp_path / "data", PHONE) as pbx:
        assert silent(pbx, "127.0.0.10", user_agent="friendly-scanner")
        assert silent(pbx, "127.0.0.10")  # banned now, whatever it claims to be
        assert answered(pbx, "127.0.0.11")
        assert phone_registers(pbx)


def test_flood_is_cut_off_and_others_are_served(tmp_path: Path) -> None:
    import socket

    with running_pbx(tmp_path / "data", PHONE, env=FAST_BANS) as pbx:
        dest = (pbx.host, pbx.port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.12", 0))
            sock.settimeout(0.5)
            for _ in range(300):
                sock.sendto(options_request(dest), dest)
            replies = 0
            try:
                while True:
                    sock.recv(65535)
                    replies += 1
            except TimeoutError:
                pass
        assert 50 <= replies <= 70, replies  # the limit is 60 per 2 s window
        assert silent(pbx, "127.0.0.12")
        assert answered(pbx, "127.0.0.13")
        assert phone_registers(pbx)


def test_bans_survive_restart_and_cli_bans_apply_live(tmp_path: Path) -> None:
    with running_pbx(tmp_path / "data", PHONE) as pbx:
        cli(
            pbx.data_dir,
            "bans",
            "add",
            "127.0.0.14",
            "--duration",
            "3600",
            "--reason",
            "seen in the logs",
        )
        assert wait_for(lambda: silent(pbx, "127.0.0.14"))
        assert silent(pbx, "127.0.0.15", user_agent="sipcli/v1.8")
        assert wait_for(lambda: "127.0.0.15" in bans(pbx))
        pbx.stop()
        pbx.start()
        assert silent(pbx, "127.0.0.14")
        assert silent(pbx, "127.0.0.15")
        assert answered(pbx, "127.0.0.16")
        proc = cli(pbx.data_dir, "bans", "add", "not-an-ip", check=False)
        assert proc.returncode == 1 and "not an IP address" in proc.stderr


def test_reject_mode_answers_403(tmp_path: Path) -> None:
    env = {"PBXWARDEN_FIREWALL__REJECT_BANNED": "true"}
    with running_pbx(tmp_path / "data", PHONE, env=env) as pbx:
        cli(pbx.data_dir, "bans", "add", "127.0.0.17")
        dest = (pbx.host, pbx.port)
        assert wait_for(
            lambda: (
                status_of(
                    udp_exchange(options_request(dest), dest, timeout=0.5, source_ip="127.0.0.17")
                )
                == 403
            )
        )


def test_unknown_and_known_extension_answers_compare_equal(tmp_path: Path) -> None:
    """No enumeration through REGISTER: same status, reason and header names."""
    with running_pbx(tmp_path / "data", PHONE) as pbx:
        shapes = []
        for user in ("1000", "1999"):  # 1000 exists, 1999 does not
            client = SipClient((pbx.host, pbx.port))
            try:
                first = parse_message(client.request(user))
                final = parse_message(client.register(user, "Wrong-Passw0rd-x"))
            finally:
                client.close()
            assert isinstance(first, Response) and isinstance(final, Response)
            shapes.append(
                [
                    (
                        r.status,
                        r.reason,
                        sorted(name for name, _ in r.headers),
                        [v.split("nonce=")[0] for v in r.headers.get_all("WWW-Authenticate")],
                    )
                    for r in (first, final)
                ]
            )
        assert shapes[0] == shapes[1]
        assert shapes[0][1][0] == 403


def test_extension_acl_limits_where_a_phone_may_register(tmp_path: Path) -> None:
    with running_pbx(tmp_path / "data", PHONE) as pbx:
        cli(pbx.data_dir, "extension", "acl", "1000", "--allow", "127.0.0.0/30")
        time.sleep(1.5)  # the server re-reads extensions every second
        inside = SipClient((pbx.host, pbx.port), source_ip="127.0.0.2")
        outside = SipClient((pbx.host, pbx.port), source_ip="127.0.0.20")
        try:
            ok = parse_message(inside.register("1000", PHONE["1000"]))
            assert isinstance(ok, Response) and ok.status == 200
            # The right password from elsewhere looks exactly like a wrong one.
            refused = parse_message(outside.register("1000", PHONE["1000"]))
            assert isinstance(refused, Response) and refused.status == 403
            wrong = parse_message(outside.register("1000", "Wrong-Passw0rd-x"))
            assert isinstance(wrong, Response)
            assert (refused.status, refused.reason) == (wrong.status, wrong.reason)
        finally:
            inside.close()
            outside.close()
        assert "outside the extension's networks" in pbx.log()
        listed = json.loads(cli(pbx.data_dir, "extension", "list", "--json").stdout)
        assert listed[0]["networks"] == "127.0.0.0/30"
        bad = cli(pbx.data_dir, "extension", "acl", "1000", "--allow", "10.0.0.300/8", check=False)
        assert bad.returncode == 1 and "not a network" in bad.stderr
        cli(pbx.data_dir, "extension", "acl", "1000", "--clear")
        time.sleep(1.5)
        anywhere = SipClient((pbx.host, pbx.port), source_ip="127.0.0.21")
        try:
            ok = parse_message(anywhere.register("1000", PHONE["1000"]))
            assert isinstance(ok, Response) and ok.status == 200
        finally:
            anywhere.close()


def test_registration_from_a_new_network_is_flagged(tmp_path: Path) -> None:
    with running_pbx(tmp_path / "data", PHONE) as pbx:
        home = SipClient((pbx.host, pbx.port), source_ip="127.0.0.1")
        away = SipClient((pbx.host, pbx.port), source_ip="127.0.1.5")
        try:
            for client in (home, away):
                reply = parse_message(client.register("1000", PHONE["1000"]))
                assert isinstance(reply, Response) and reply.status == 200
        finally:
            home.close()
            away.close()
        assert "registration from a new network" in pbx.log()
        assert wait_for(
            lambda: (
                len(json.loads(cli(pbx.data_dir, "extension", "networks", "--json").stdout)) == 2
            )
        )


def test_new_networks_can_require_approval(tmp_path: Path) -> None:
    env = {"PBXWARDEN_FIREWALL__APPROVE_NEW_NETWORKS": "true"}
    with running_pbx(tmp_path / "data", PHONE, env=env) as pbx:
        home = SipClient((pbx.host, pbx.port), source_ip="127.0.0.1")
        away = SipClient((pbx.host, pbx.port), source_ip="127.0.2.5")
        try:
            first = parse_message(home.register("1000", PHONE["1000"]))
            assert isinstance(first, Response) and first.status == 200  # trusted on first use
            held = parse_message(away.register("1000", PHONE["1000"]))
            assert isinstance(held, Response) and held.status == 403
            assert wait_for(
                lambda: (
                    cli(pbx.data_dir, "extension", "networks", "--pending", "--json")
                    .stdout.strip()
                    .startswith("[")
                )
            )
            pending = json.loads(
                cli(pbx.data_dir, "extension", "networks", "--pending", "--json").stdout
            )
            assert [p["network"] for p in pending] == ["127.0.2.0/24"]
            cli(pbx.data_dir, "extension", "approve", "1000", "127.0.2.0/24")
            time.sleep(1.5)
            approved = parse_message(away.register("1000", PHONE["1000"]))
            assert isinstance(approved, Response) and approved.status == 200
        finally:
            home.close()
            away.close()


def test_extension_enumeration_is_banned_and_learns_nothing(tmp_path: Path) -> None:
    env = {"PBXWARDEN_FIREWALL__IDENTITY_LIMIT": "20"}
    with running_pbx(tmp_path / "data", PHONE, env=env) as pbx:
        scanner = SipClient((pbx.host, pbx.port), source_ip="127.0.0.40")
        scanner.sock.settimeout(0.5)
        answers: list[bytes | None] = []
        try:
            for user in ["1000", *(str(1001 + i) for i in range(29))]:  # 1000 exists
                try:
                    answers.append(scanner.request(user))
                except TimeoutError:
                    answers.append(None)
        finally:
            scanner.close()
        answered = [a for a in answers if a is not None]
        assert len(answered) == 20 and all(a is None for a in answers[20:])
        shapes = {
            (
                parse_message(a).status,
                tuple(
                    sorted(  # type: ignore[union-attr]
                        n for n, _ in parse_message(a).headers
                    )
                ),
            )
            for a in answered
        }
        assert len(shapes) == 1  # the existing extension looked like all the others
        assert phone_registers(pbx)
        assert wait_for(lambda: "127.0.0.40" in bans(pbx))


def _nft_usable() -> bool:
    import os
    import shutil
    import subprocess

    if shutil.which("nft") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["nft", "list", "tables"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _nft_usable(), reason="needs root and a working nft (nftables)")
def test_nftables_offload_drops_banned_sources_in_the_kernel(tmp_path: Path) -> None:
    import subprocess

    table = f"pbxw{int(time.time() * 1000) % 10**8}"
    env = {"PBXWARDEN_FIREWALL__NFTABLES": "true", "PBXWARDEN_FIREWALL__NFTABLES_TABLE": table}
    with running_pbx(tmp_path / "data", PHONE, env=env) as pbx:
        assert "nftables offload on" in pbx.log()
        assert silent(pbx, "127.0.0.60", user_agent="friendly-scanner")

        def in_kernel() -> bool:
            out = subprocess.run(
                ["nft", "list", "set", "inet", table, "banned4"], capture_output=True, text=True
            ).stdout
            return "127.0.0.60" in out

        assert wait_for(in_kernel)
        before = json.loads(cli(pbx.data_dir, "stats", "--json").stdout)["received"]
        for _ in range(5):
            assert silent(pbx, "127.0.0.60")
        after = json.loads(cli(pbx.data_dir, "stats", "--json").stdout)["received"]
        assert after == before  # the kernel dropped them: Python never saw them
        assert answered(pbx, "127.0.0.61")
        cli(pbx.data_dir, "bans", "remove", "127.0.0.60")
        assert wait_for(lambda: not in_kernel())
        assert wait_for(lambda: answered(pbx, "127.0.0.60", timeout=1.0))
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert table not in tables  # removed when the server stops


def test_invite_answers_compare_equal_for_known_and_unknown_callers(tmp_path: Path) -> None:
    """No enumeration through INVITE either: a caller that exists and one that does not
    get the same challenge and the same refusal."""
    import socket

    from pbxwarden.sip.digest import build_authorization, choose_challenge
    from pbxwarden.sip.message import generate_branch

    def invite(sock: socket.socket, user: str, cseq: int, auth: str = "") -> Response:
        host, port = pbx.host, pbx.port
        lines = [
            f"INVITE sip:2000@{host}:{port} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{sock.getsockname()[1]};branch={generate_branch()};rport",
            f"From: <sip:{user}@{host}>;tag=enum{user}",
            f"To: <sip:2000@{host}>",
            f"Call-ID: enum-{user}@test",
            f"CSeq: {cseq} INVITE",
            "Max-Forwards: 70",
            f"Contact: <sip:{user}@127.0.0.1:{sock.getsockname()[1]}>",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        sock.sendto(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode(), (host, port))
        while True:
            reply = parse_message(sock.recv(65535))
            assert isinstance(reply, Response)
            if reply.status != 100:
                return reply

    with running_pbx(tmp_path / "data", PHONE) as pbx:
        shapes = []
        for user in ("1000", "1999"):  # 1000 exists, 1999 does not
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                sock.settimeout(10)
                challenge = invite(sock, user, 1)
                auth = build_authorization(
                    choose_challenge(challenge.headers.get_all("WWW-Authenticate")),
                    "INVITE",
                    f"sip:2000@{pbx.host}:{pbx.port}",
                    user,
                    "Wrong-Passw0rd-x",
                    "c",
                    1,
                )
                refused = invite(sock, user, 2, auth)
            shapes.append(
                [
                    (r.status, r.reason, sorted(n for n, _ in r.headers))
                    for r in (challenge, refused)
                ]
            )
        assert shapes[0] == shapes[1]
        assert [s[0] for s in shapes[0]] == [401, 403]


def test_registration_from_a_new_country_with_a_geoip_database(tmp_path: Path) -> None:
    mmdb_writer = pytest.importorskip("mmdb_writer")
    pytest.importorskip("geoip2")
    from netaddr import IPSet

    writer = mmdb_writer.MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoLite2-Country",
        languages=["en"],
        description="pbxwarden test",
    )
    writer.insert_network(IPSet(["127.0.0.0/24"]), {"country": {"iso_code": "US"}})
    writer.insert_network(IPSet(["127.0.3.0/24"]), {"country": {"iso_code": "LV"}})
    database = tmp_path / "countries.mmdb"
    writer.to_db_file(str(database))
    env = {
        "PBXWARDEN_FIREWALL__GEOIP_DATABASE": str(database),
        "PBXWARDEN_FIREWALL__APPROVE_NEW_NETWORKS": "true",
    }
    with running_pbx(tmp_path / "data", PHONE, env=env) as pbx:
        home = SipClient((pbx.host, pbx.port), source_ip="127.0.0.1")
        abroad = SipClient((pbx.host, pbx.port), source_ip="127.0.3.5")
        try:
            first = parse_message(home.register("1000", PHONE["1000"]))
            assert isinstance(first, Response) and first.status == 200
            held = parse_message(abroad.register("1000", PHONE["1000"]))
            assert isinstance(held, Response) and held.status == 403
        finally:
            home.close()
            abroad.close()
        assert "registration from a new country" in pbx.log()
        assert "country:LV" in pbx.log()
        assert wait_for(
            lambda: (
                {"country:US", "country:LV"}
                <= {
                    n["network"]
                    for n in json.loads(cli(pbx.data_dir, "extension", "networks", "--json").stdout)
                }
            )
        )
