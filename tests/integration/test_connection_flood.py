"""TCP/TLS connection exhaustion against the real server: thousands of idle connections
from one address, or from 40, must not keep a phone on another address from
registering, and the flooding sources are banned."""

from __future__ import annotations

import errno
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbxwarden.control import ask
from pbxwarden.sip.digest import build_authorization, choose_challenge
from pbxwarden.sip.message import Response, StreamFramer, generate_branch, parse_message
from tests.helpers import PbxProcess, cli, free_port, run_sipp, running_pbx, sipp_available

PASSWORD = "Flood-Test-Passw0rd-1"
PHONE = "127.0.0.9"
ONE_SOURCE = ["127.0.0.2"]
FORTY_SOURCES = [f"127.0.1.{i}" for i in range(1, 41)]
AIM = 1.0  # seconds for a phone's whole registration (connect, 401, 200)


@pytest.fixture(scope="module", autouse=True)
def open_files() -> Iterator[None]:
    """The test holds ~10,000 client sockets: raise its own descriptor limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 12_000 if hard == resource.RLIM_INFINITY else min(hard, 12_000)
    if wanted < 11_000:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below what the flood needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


OPEN_RATE = 5_000.0  # connections per second, as bench/flood.py's TCP floods


class Flood:
    """Idle connections from ``sources`` (round robin), opened without waiting for the
    handshake, ``rate`` per second, held until :meth:`close`; bounded in count and time.

    Paced so that the test measures the server and not how deep a burst piles up in the
    kernel's accept queue on a loaded machine (bench/flood.py --tcp-open-rate 0 measures
    unpaced bursts)."""

    def __init__(
        self, dest: tuple[str, int], sources: list[str], total: int, rate: float = OPEN_RATE
    ) -> None:
        self.dest = dest
        self.sources = sources
        self.total = total
        self.rate = rate
        self.socks: list[socket.socket] = []
        self.opened = threading.Event()  # set once every connection has been started
        self.halfway = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self, deadline: float = 20.0) -> None:
        self._thread = threading.Thread(target=self._run, args=(deadline,), daemon=True)
        self._thread.start()

    def _run(self, deadline: float) -> None:
        end = time.monotonic() + deadline
        try:
            start = time.monotonic()
            for i in range(self.total):
                if time.monotonic() > end:
                    break
                if i % 50 == 0:
                    time.sleep(max(0.0, start + i / self.rate - time.monotonic()))
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.socks.append(sock)
                sock.setblocking(False)
                sock.bind((self.sources[i % len(self.sources)], 0))
                code = sock.connect_ex(self.dest)
                if code not in (0, errno.EINPROGRESS):
                    raise OSError(code, os.strerror(code))
                if i == self.total // 2:
                    self.halfway.set()
        except BaseException as exc:  # reported by wait()
            self.error = exc
        finally:
            self.halfway.set()
            self.opened.set()

    def wait(self, timeout: float = 30.0) -> None:
        assert self.opened.wait(timeout), "the flood did not finish opening in time"
        assert self.error is None, f"flood failed: {self.error!r}"

    def closed_by_server(self) -> int:
        """How many of the connections the server has closed (EOF or reset)."""
        closed = 0
        for sock in self.socks:
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    closed += 1
            except (BlockingIOError, InterruptedError):
                continue  # open (or still connecting)
            except OSError as exc:
                if exc.errno not in (errno.ENOTCONN, errno.EAGAIN):
                    closed += 1  # reset, refused
        return closed

    def close(self) -> None:
        self.opened.wait(30)
        for sock in self.socks:
            sock.close()


class TcpPhone:
    """A phone registering over one TCP (or TLS) connection: REGISTER, 401, REGISTER
    with digest credentials, 200; built on pbxwarden's own parser and digest code."""

    def __init__(
        self,
        server: tuple[str, int],
        user: str,
        source: str = PHONE,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.server = server
        self.user = user
        self.source = source
        self.tls = tls
        self.sock: socket.socket | None = None
        self.framer = StreamFramer()
        self.call_id = f"flood-{os.getpid()}-{time.monotonic_ns()}"
        self.cseq = 0

    def connect(self) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            raw.settimeout(5)
            raw.bind((self.source, 0))
            raw.connect(self.server)
            self.sock = self.tls.wrap_socket(raw, server_hostname="127.0.0.1") if self.tls else raw
        except BaseException:
            raw.close()
            raise

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def register(self) -> tuple[int, float]:
        """(final status, seconds from connect to the final answer)."""
        start = time.monotonic()
        if self.sock is None:
            self.connect()
        first = self._request()
        if first.status != 401:
            return first.status, time.monotonic() - start
        scheme = "sips" if self.tls else "sip"
        auth = build_authorization(
            choose_challenge(first.headers.get_all("WWW-Authenticate")),
            "REGISTER",
            f"{scheme}:{self.server[0]}:{self.server[1]}",
            self.user,
            PASSWORD,
            cnonce=os.urandom(8).hex(),
            nc=1,
        )
        final = self._request(auth)
        return final.status, time.monotonic() - start

    def keepalive(self) -> bytes:
        assert self.sock is not None
        self.sock.sendall(b"\r\n\r\n")
        return self.sock.recv(16)

    def _request(self, auth: str | None = None) -> Response:
        assert self.sock is not None
        self.cseq += 1
        host, port = self.server
        local = self.sock.getsockname()
        transport, scheme = ("TLS", "sips") if self.tls else ("TCP", "sip")
        lines = [
            f"REGISTER {scheme}:{host}:{port} SIP/2.0",
            f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch={generate_branch()};rport",
            "Max-Forwards: 70",
            f"From: <{scheme}:{self.user}@{host}>;tag=f{self.cseq}",
            f"To: <{scheme}:{self.user}@{host}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <{scheme}:{self.user}@{local[0]}:{local[1]};transport={transport.lower()}>",
            "Expires: 600",
            *([f"Authorization: {auth}"] if auth else []),
            "Content-Length: 0",
            "",
            "",
        ]
        self.sock.sendall("\r\n".join(lines).encode())
        while True:
            data = self.sock.recv(65535)
            if not data:
                raise ConnectionError("the server closed the phone's connection")
            for message in self.framer.feed(data):
                if message:
                    parsed = parse_message(message)
                    assert isinstance(parsed, Response)
                    if parsed.status >= 200:
                        return parsed


def wait_for(what: str, condition: object, timeout: float = 20.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def stats(pbx: PbxProcess) -> dict[str, int]:
    """The running server's counters, over its control socket (what `pbxwarden stats`
    asks, without starting a CLI process each time)."""
    answer = ask(pbx.data_dir, {"cmd": "stats"})
    return {k: v for k, v in answer.items() if isinstance(v, int)}


def banned(pbx: PbxProcess) -> dict[str, str]:
    """Stored bans, as the operator lists them."""
    out = cli(pbx.data_dir, "bans", "list", "--json").stdout.strip()
    rows = json.loads(out) if out.startswith("[") else []
    return {str(r["address"]): str(r["reason"]) for r in rows}


def register_during(pbx: PbxProcess, flood: Flood, user: str) -> list[float]:
    """Register a phone while the flood is being opened and once it is all held."""
    times = []
    flood.halfway.wait(30)
    for moment in ("while opening", "while held"):
        if moment == "while held":
            flood.wait()
        phone = TcpPhone((pbx.host, pbx.port), user)
        try:
            status, seconds = phone.register()
        finally:
            phone.close()
        assert status == 200, f"{moment}: {status}"
        assert seconds < AIM, f"{moment}: registration took {seconds:.3f} s"
        times.append(seconds)
    print(f"phone registrations during the flood: {[f'{t * 1000:.1f} ms' for t in times]}")
    return times


OFFICE = {str(2000 + i): PASSWORD for i in range(40)}


@pytest.fixture(scope="module")
def pbx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PbxProcess]:
    """One server with the default limits for the floods and the office (distinct
    sources, so that one test's bans do not touch another's)."""
    data = tmp_path_factory.mktemp("flood") / "data"
    with running_pbx(data, {"1000": PASSWORD, "1001": PASSWORD, **OFFICE}) as server:
        yield server


@pytest.mark.parametrize(
    ("sources", "total"), [(ONE_SOURCE, 4_100), (FORTY_SOURCES, 10_000)], ids=["one", "forty"]
)
def test_idle_connection_flood_is_banned_and_a_phone_registers(
    pbx: PbxProcess, tmp_path: Path, sources: list[str], total: int
) -> None:
    before = stats(pbx)
    flood = Flood((pbx.host, pbx.port), sources, total)
    try:
        flood.start()
        register_during(pbx, flood, "1000")
        if sipp_available():  # an independent phone too, SIPp over TCP
            result = run_sipp(
                "register.xml",
                f"{pbx.host}:{pbx.port}",
                users={"1001": PASSWORD},
                transport="t1",
                local_ip=PHONE,
                timeout=10,
                workdir=tmp_path,
            )
            assert (result.successful, result.failed) == (1, 0), result.output
        # Every flood connection is closed by the server: dropped at the ban, or refused
        # at accept afterwards.
        wait_for("flood connections closed", lambda: flood.closed_by_server() == total)
        after = stats(pbx)
        delta = {k: after[k] - before.get(k, 0) for k in after if k.startswith("connections_")}
        assert after["connections"] <= before["connections"] + 1  # SIPp's, if still open
        assert after["bans"] == before["bans"] + len(sources)
        # One refusal at the limit per source bans it; the rest are refused at accept.
        assert delta["connections_refused_source_limit"] == len(sources), delta
        assert delta["connections_accepted"] >= len(sources) * 64
        assert (
            delta["connections_refused_banned"]
            + delta["connections_refused_source_limit"]
            + delta["connections_accepted"]
        ) >= total, delta
        wait_for("bans stored", lambda: set(sources) <= set(banned(pbx)))
        bans = banned(pbx)
        assert all("connection flood" in bans[s] for s in sources), bans
        assert PHONE not in bans
        assert pbx.alive()
    finally:
        flood.close()


def test_an_office_behind_one_address_is_not_a_flood(pbx: PbxProcess) -> None:
    """A few dozen phones behind one NAT, each with its own connection: all registered,
    none banned, all still connected."""
    phones = [TcpPhone((pbx.host, pbx.port), user, source="127.0.0.20") for user in OFFICE]
    try:
        for phone in phones:
            assert phone.register()[0] == 200
        assert "127.0.0.20" not in banned(pbx)
        assert all(phone.keepalive() == b"\r\n" for phone in phones)
    finally:
        for phone in phones:
            phone.close()


def test_a_full_table_of_idle_connections_yields_to_a_phone(tmp_path: Path) -> None:
    """Under every source's limit (no bans) the attacker fills the whole table; the
    oldest idle connections make room and a crowded table expires them in 2 s."""
    env = {
        "PBXWARDEN_SIP__MAX_CONNECTIONS": "1000",
        "PBXWARDEN_FIREWALL__CONNECTIONS_PER_SOURCE": "100",
    }
    with running_pbx(tmp_path / "data", {"1000": PASSWORD}, env=env) as pbx:
        early = TcpPhone((pbx.host, pbx.port), "1000")  # established before the flood
        flood = Flood((pbx.host, pbx.port), FORTY_SOURCES, 1_200)
        try:
            assert early.register()[0] == 200
            flood.start()
            flood.wait()
            late = TcpPhone((pbx.host, pbx.port), "1000", source="127.0.0.10")
            try:
                status, seconds = late.register()
                assert status == 200 and seconds < AIM, (status, seconds)
            finally:
                late.close()
            figures = stats(pbx)
            assert figures["connections"] <= 1000
            assert figures["connections_evicted"] >= 200 - 5
            wait_for(
                "idle connections expired in the crowded table",
                lambda: flood.closed_by_server() == 1_200,
            )
            assert banned(pbx) == {}
            assert early.keepalive() == b"\r\n"  # the established phone was never touched
            assert stats(pbx)["connections_new"] == 0
        finally:
            early.close()
            flood.close()


@pytest.mark.skipif(not os.path.exists("/usr/bin/openssl"), reason="openssl CLI missing")
def test_stuck_tls_handshakes_are_closed_and_a_tls_phone_registers(tmp_path: Path) -> None:
    from tests.integration.test_tls import make_cert

    cert, key = make_cert(tmp_path)
    tls_port = free_port()
    env = {
        "PBXWARDEN_SIP__TLS__LISTEN": f"127.0.0.1:{tls_port}",
        "PBXWARDEN_SIP__TLS__CERT_FILE": str(cert),
        "PBXWARDEN_SIP__TLS__KEY_FILE": str(key),
        "PBXWARDEN_SIP__NEW_CONNECTION_TIMEOUT": "5",
    }
    client = ssl.create_default_context(cafile=str(cert))
    with running_pbx(tmp_path / "data", {"1000": PASSWORD}, env=env) as pbx:
        # Connected, never a ClientHello: each holds a slot during its "handshake".
        flood = Flood(("127.0.0.1", tls_port), FORTY_SOURCES[:20], 1_000)
        try:
            flood.start()
            flood.wait()
            start = time.monotonic()
            wait_for("stuck handshakes counted", lambda: stats(pbx)["connections_new"] >= 900)
            phone = TcpPhone(("127.0.0.1", tls_port), "1000", tls=client)
            try:
                status, seconds = phone.register()
                assert status == 200 and seconds < AIM, (status, seconds)
            finally:
                phone.close()
            wait_for("stuck handshakes closed", lambda: flood.closed_by_server() == 1_000)
            # The crowded-table timeout does not apply (1,000 of 4,096): the configured one.
            assert time.monotonic() - start < 5.0 + 10.0
            assert banned(pbx) == {}
            assert stats(pbx)["connections_setup_failed"] + stats(pbx)["connections_expired"] >= (
                1_000
            )
        finally:
            flood.close()


def options(sock: socket.socket, n: int) -> None:
    sock.sendall(
        (
            f"OPTIONS sip:{PHONE} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.30:9;branch=z9hG4bKo{n}\r\n"
            f"From: <sip:probe@127.0.0.30>;tag={n}\r\nTo: <sip:probe@127.0.0.30>\r\n"
            f"Call-ID: opt-{n}-{os.getpid()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )


def test_a_ban_from_the_cli_closes_the_sources_connections(pbx: PbxProcess) -> None:
    """Banned for any reason (here by an administrator), a source's established
    connections are closed, not only its new ones refused."""
    socks = []
    try:
        for n in range(5):
            sock = socket.create_connection((pbx.host, pbx.port), 5, ("127.0.0.30", 0))
            socks.append(sock)
            options(sock, n)
            assert sock.recv(65535).startswith(b"SIP/2.0 200 ")
        cli(pbx.data_dir, "bans", "add", "127.0.0.30", "--duration", "600")

        def all_closed() -> bool:
            for sock in socks:
                sock.settimeout(0.05)
                try:
                    if sock.recv(1) != b"":
                        return False
                except TimeoutError:
                    return False
                except ConnectionResetError:
                    pass
            return True

        wait_for("the banned source's connections closed", all_closed)
        try:  # refused at accept (the reset may come before connect returns)
            with socket.create_connection((pbx.host, pbx.port), 5, ("127.0.0.30", 0)) as again:
                again.settimeout(5)
                assert again.recv(1) == b""
        except ConnectionResetError:
            pass
    finally:
        for sock in socks:
            sock.close()


def test_requests_for_workers_and_for_the_main_process_both_establish(tmp_path: Path) -> None:
    """A REGISTER handed to a registrar worker and an OPTIONS parsed in the main process
    both count as a valid request: those connections outlive the new-connection
    deadline, an idle one opened at the same time does not."""
    env = {"PBXWARDEN_SIP__WORKERS": "1", "PBXWARDEN_SIP__NEW_CONNECTION_TIMEOUT": "1"}
    with running_pbx(tmp_path / "data", {"1000": PASSWORD}, env=env) as pbx:
        wait_for("the worker ready", lambda: stats(pbx).get("workers_ready") == 1)
        phone = TcpPhone((pbx.host, pbx.port), "1000")
        idle = socket.create_connection((pbx.host, pbx.port), 5, ("127.0.0.31", 0))
        prober = socket.create_connection((pbx.host, pbx.port), 5, ("127.0.0.32", 0))
        try:
            assert phone.register()[0] == 200
            options(prober, 1)
            assert prober.recv(65535).startswith(b"SIP/2.0 200 ")
            idle.settimeout(10)
            assert idle.recv(1) == b""  # closed at its deadline
            assert phone.keepalive() == b"\r\n"
            prober.sendall(b"\r\n\r\n")
            prober.settimeout(5)
            assert prober.recv(16) == b"\r\n"
            figures = stats(pbx)
            assert figures["connections_expired"] == 1
            assert figures["worker_dispatched"] >= 2  # both REGISTERs went to the worker
        finally:
            phone.close()
            idle.close()
            prober.close()


def test_a_bad_limit_stops_serve_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cli(data, "init")
    result = cli(
        data, "serve", check=False, env={"PBXWARDEN_FIREWALL__CONNECTIONS_PER_SOURCE": "0"}
    )
    assert result.returncode != 0
    assert "firewall.connections_per_source" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
