"""Alert channels against real receivers on loopback: HTTP, SMTP, syslog (UDP, TCP, Unix)."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.message
import email.policy
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from pbxwarden.guard.alerts import (
    Alert,
    AlertDispatcher,
    AlertsConfig,
    EmailChannelConfig,
    SyslogChannelConfig,
    WebhookChannelConfig,
    sign,
    verify_signature,
)
from tests.helpers import free_port

T0 = 1_800_000_000.0
HOOK_SECRET = "hook-secret-0123456789-abcdef"
SMTP_PASSWORD = "smtp-pa55word-never-logged"


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def alert(
    *,
    severity: str = "critical",
    ext: str | None = "1000",
    rule: str = "forwarding-recon",
    summary: str = "Diversion to a premium-rate number blocked.",
    reasons: tuple[str, ...] = (
        "extension 1000 tried to forward its calls to +19005550123, a premium-rate number",
        "the forwarding was set from 203.0.113.7, an address never seen before",
    ),
    alert_id: int | None = 42,
    at: float = T0 + 0.25,
) -> Alert:
    return Alert(alert_id, "acme", ext, severity, rule, summary, reasons, at, count=1)


# -- receivers -----------------------------------------------------------------------------


class _HookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.requests: list[tuple[dict[str, str], bytes, str]] = []
        self.statuses: deque[int] = deque()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/pbx"


class _HookHandler(BaseHTTPRequestHandler):
    server: _HookServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((dict(self.headers.items()), body, self.path))
        status = self.server.statuses.popleft() if self.server.statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[_HookServer]:
    server = _HookServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def silent_tcp() -> Iterator[int]:
    """A port that completes TCP handshakes (the backlog) but never says anything."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@dataclass
class _Mail:
    envelope: Envelope
    authenticated: bool
    tls: bool


def parse_mail(mail: _Mail) -> tuple[email.message.EmailMessage, str]:
    """The message as received, and its plain-text body with newlines."""
    content = mail.envelope.content
    assert isinstance(content, bytes)
    msg = email.message_from_bytes(
        content, _class=email.message.EmailMessage, policy=email.policy.default
    )
    body = msg.get_body(("plain",))
    assert body is not None
    return msg, body.get_content().replace("\r\n", "\n")


@dataclass
class _MailHandler:
    received: list[_Mail] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.received.append(_Mail(envelope, bool(session.authenticated), session.ssl is not None))
        return "250 OK"


def _authenticator(
    server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"alerts",
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@dataclass
class _Smtp:
    handler: _MailHandler
    port: int


@pytest.fixture
def smtp() -> Iterator[_Smtp]:
    """A plaintext SMTP server on loopback that offers AUTH (allowed only on loopback)."""
    handler, port = _MailHandler(), free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield _Smtp(handler, port)
    finally:
        controller.stop()


@dataclass
class _Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> _Cert:
    """A self-signed certificate for 127.0.0.1: a relay with a private CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pbxwarden test relay")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    root = tmp_path_factory.mktemp("tls")
    out = _Cert(root / "cert.pem", root / "key.pem")
    out.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return out


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def recv(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65535), 2)


def drain(sock: socket.socket) -> list[bytes]:
    """Datagrams already waiting (loopback delivers as ``sendto`` returns)."""
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


def syslog_config(sock: socket.socket, **kw: Any) -> AlertsConfig:
    address = f"udp:127.0.0.1:{sock.getsockname()[1]}"
    return AlertsConfig(syslog=SyslogChannelConfig(address=address), **kw)


RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>-|\[.*?(?<!\\)\]) (?P<msg>.*)",
    re.S,
)


def parse_syslog(data: bytes) -> dict[str, Any]:
    m = RFC5424.fullmatch(data)
    assert m is not None, data
    out: dict[str, Any] = {k: v.decode() for k, v in m.groupdict().items() if k != "msg"}
    out["msg"] = m["msg"].removeprefix(b"\xef\xbb\xbf").decode()
    out["bom"] = m["msg"].startswith(b"\xef\xbb\xbf")
    sd = out["sd"]
    out["sd_id"] = sd[1:].split(" ", 1)[0]
    out["params"] = {
        k: re.sub(r"\\(.)", r"\1", v) for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', sd)
    }
    return out


# -- the alert and the configuration -------------------------------------------------------


def test_alert() -> None:
    a = alert()
    assert a.to_json() == {
        "id": 42,
        "tenant": "acme",
        "extension": "1000",
        "severity": "critical",
        "rule": "forwarding-recon",
        "summary": "Diversion to a premium-rate number blocked.",
        "reasons": list(a.reasons),
        "at": T0 + 0.25,
        "time": "2027-01-15T08:00:00.250Z",
        "count": 1,
    }
    json.dumps(a.to_json())
    with pytest.raises(ValueError, match="warning or critical"):
        alert(severity="info")


def test_webhook_config_is_validated() -> None:
    for url in ("ftp://example.com/x", "example.com/hook", "http:///nohost", "http://h:99999/"):
        with pytest.raises(ValidationError, match="url"):
            WebhookChannelConfig(url=url, secret=HOOK_SECRET)
    with pytest.raises(ValidationError, match="at least 16 characters") as err:
        AlertsConfig.model_validate({"webhook": {"url": "https://h/x", "secret": "tooshort-123"}})
    assert "tooshort-123" not in str(err.value)
    cfg = WebhookChannelConfig(url="https://hooks.example.com:8443/T0KEN", secret=HOOK_SECRET)
    assert cfg.timeout == 5.0 and cfg.retries == 2
    assert cfg.origin == "https://hooks.example.com:8443"


def test_email_config_is_validated() -> None:
    base: dict[str, Any] = {"host": "mail.example.com", "sender": "PBX <pbx@example.com>"}
    base["recipients"] = ["ops@example.com"]
    assert EmailChannelConfig(**base).effective_port == 587  # STARTTLS by default
    assert EmailChannelConfig(**base, tls=True, starttls=False).effective_port == 465
    assert EmailChannelConfig(**base, starttls=False).effective_port == 25
    bad: list[tuple[dict[str, Any], str]] = [
        ({"recipients": []}, "at least 1"),
        ({"recipients": ["not an address"]}, "not an e-mail address"),
        ({"sender": "pbx@example.com\r\nBcc: x@example.com"}, "not an e-mail address"),
        ({"tls": True}, "not both"),
        ({"username": "alerts"}, "go together"),
        (
            {"starttls": False, "username": "alerts", "password": SMTP_PASSWORD},
            "unencrypted",
        ),
        ({"extra": 1}, "Extra inputs"),
    ]
    for change, message in bad:
        with pytest.raises(ValidationError, match=message) as err:
            EmailChannelConfig(**{**base, **change})
        assert SMTP_PASSWORD not in str(err.value)
    # A relay on this machine may take the password without TLS.
    local = {**base, "host": "127.0.0.1", "starttls": False}
    EmailChannelConfig(**local, username="alerts", password=SMTP_PASSWORD)


def test_syslog_config_is_validated() -> None:
    cfg = SyslogChannelConfig()
    assert (cfg.address, cfg.facility, cfg.app_name) == ("unix:/dev/log", 10, "pbxwarden")
    assert SyslogChannelConfig(facility="auth").facility == 4
    assert SyslogChannelConfig(facility="local3").facility == 19
    assert SyslogChannelConfig(facility=13).facility == 13
    for address in ("udp:127.0.0.1:514", "tcp:[::1]:6514", "udp:logs.example.com", "unix:/x"):
        SyslogChannelConfig(address=address)
    for address in ("127.0.0.1:514", "udp:::1:514", "tcp:h:0", "tcp:h:x", "unix:dev/log", "udp:"):
        with pytest.raises(ValidationError, match="address"):
            SyslogChannelConfig(address=address)
    for facility in ("nope", 24, -1):
        with pytest.raises(ValidationError, match="facility"):
            SyslogChannelConfig(facility=facility)
    with pytest.raises(ValidationError, match="app_name"):
        SyslogChannelConfig(app_name="pbx warden")
    with pytest.raises(ValidationError, match="Extra inputs"):
        AlertsConfig.model_validate({"pager": {}})


def test_secrets_are_not_in_repr() -> None:
    cfg = AlertsConfig(
        webhook=WebhookChannelConfig(url="https://h.example/x", secret=HOOK_SECRET),
        email=EmailChannelConfig(
            host="mail.example.com",
            username="alerts",
            password=SMTP_PASSWORD,
            sender="pbx@example.com",
            recipients=["ops@example.com"],
        ),
    )
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump())):
        assert HOOK_SECRET not in text and SMTP_PASSWORD not in text


# -- webhook -------------------------------------------------------------------------------


def test_signature() -> None:
    body = b'{"tenant":"acme"}'
    header = sign(HOOK_SECRET, "1800000000", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature(HOOK_SECRET, "1800000000", body, header, now=T0)
    assert verify_signature(HOOK_SECRET.encode(), "1800000000", body.decode(), header, now=T0)
    assert verify_signature(HOOK_SECRET, "1800000000", body, header, now=T0 + 300)
    assert not verify_signature(HOOK_SECRET, "1800000000", body, header, now=T0 + 301)  # stale
    assert not verify_signature(HOOK_SECRET, "1800000000", body, header, now=T0 - 301)  # future
    assert not verify_signature(HOOK_SECRET, "1800000000", b'{"tenant":"evil"}', header, now=T0)
    assert not verify_signature(HOOK_SECRET, "1800000001", body, header, now=T0)
    assert not verify_signature("another-secret-0123456789", "1800000000", body, header, now=T0)
    for ts, hdr in (("+1800000000", header), ("1.8e9", header), ("", header)):
        assert not verify_signature(HOOK_SECRET, ts, body, hdr, now=T0)
    for hdr in ("", header[7:], "sha1=" + header[7:], header + "00", "sha256=é"):
        assert not verify_signature(HOOK_SECRET, "1800000000", body, hdr, now=T0)


async def test_webhook_posts_signed_json(hook: _HookServer) -> None:
    cfg = AlertsConfig(webhook=WebhookChannelConfig(url=hook.url, secret=HOOK_SECRET))
    dispatcher = AlertDispatcher(cfg, clock=Clock())
    try:
        assert await dispatcher.send(alert()) == {"webhook": "sent"}
    finally:
        await dispatcher.aclose()
    [(headers, body, path)] = hook.requests
    assert path == "/hooks/pbx"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == alert().to_json()
    timestamp, signature = headers["X-Pbxwarden-Timestamp"], headers["X-Pbxwarden-Signature"]
    assert timestamp == "1800000000"
    assert verify_signature(HOOK_SECRET, timestamp, body, signature, now=T0 + 5)
    assert not verify_signature(
        HOOK_SECRET, timestamp, body.replace(b"1000", b"1001"), signature, now=T0
    )
    assert not verify_signature(HOOK_SECRET, timestamp, body, signature, now=T0 + 3600)


async def test_webhook_retries_a_5xx(hook: _HookServer) -> None:
    hook.statuses.extend([500, 200])
    cfg = AlertsConfig(webhook=WebhookChannelConfig(url=hook.url, secret=HOOK_SECRET))
    dispatcher = AlertDispatcher(cfg)
    start = time.monotonic()
    assert await dispatcher.send(alert()) == {"webhook": "sent"}
    assert time.monotonic() - start < 2
    assert len(hook.requests) == 2
    # Every attempt is signed on its own and verifies.
    for headers, body, _ in hook.requests:
        ts, sig = headers["X-Pbxwarden-Timestamp"], headers["X-Pbxwarden-Signature"]
        assert verify_signature(HOOK_SECRET, ts, body, sig, now=time.time())
    hook.statuses.extend([503, 502, 500])
    status = (await dispatcher.send(alert(ext="1001")))["webhook"]
    assert (
        status
        == f"failed: http://127.0.0.1:{hook.server_address[1]} answered HTTP 500 (3 attempts)"
    )
    assert len(hook.requests) == 5
    hook.statuses.append(403)  # a refusal is not retried
    assert (await dispatcher.send(alert(ext="1002")))["webhook"].endswith("answered HTTP 403")
    assert len(hook.requests) == 6
    await dispatcher.aclose()


async def test_webhook_unreachable_fails_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/T0KEN-in-path"
    cfg = AlertsConfig(webhook=WebhookChannelConfig(url=url, secret=HOOK_SECRET))
    dispatcher = AlertDispatcher(cfg)
    start = time.monotonic()
    status = (await dispatcher.send(alert()))["webhook"]
    assert time.monotonic() - start < 3
    assert status.startswith("failed: cannot connect to http://127.0.0.1:")
    assert status.endswith("(3 attempts)")
    assert "T0KEN" not in status
    await dispatcher.aclose()


async def test_webhook_silent_server_times_out(silent_tcp: int) -> None:
    url = f"http://127.0.0.1:{silent_tcp}/hook"
    webhook = WebhookChannelConfig(url=url, secret=HOOK_SECRET, timeout=0.3, retries=0)
    dispatcher = AlertDispatcher(AlertsConfig(webhook=webhook))
    start = time.monotonic()
    status = (await dispatcher.send(alert()))["webhook"]
    assert time.monotonic() - start < 2
    assert status == f"failed: http://127.0.0.1:{silent_tcp} did not answer within 0.3 s"
    await dispatcher.aclose()


# -- e-mail --------------------------------------------------------------------------------


def email_config(port: int, **kw: Any) -> AlertsConfig:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "starttls": False,
        "sender": "PBX Guard <pbx@acme.example>",
        "recipients": ["ops@acme.example", "Boss <boss@acme.example>"],
        "timeout": 2,
    }
    return AlertsConfig(email=EmailChannelConfig(**{**settings, **kw}))


async def test_email_with_auth(smtp: _Smtp) -> None:
    cfg = email_config(smtp.port, username="alerts", password=SMTP_PASSWORD)
    dispatcher = AlertDispatcher(cfg, clock=Clock())
    assert await dispatcher.send(alert()) == {"email": "sent"}
    [mail] = smtp.handler.received
    assert mail.authenticated and not mail.tls
    assert mail.envelope.mail_from == "pbx@acme.example"
    assert mail.envelope.rcpt_tos == ["ops@acme.example", "boss@acme.example"]
    msg, text = parse_mail(mail)
    assert msg["Subject"] == (
        "[pbxwarden CRITICAL] tenant acme ext 1000: Diversion to a premium-rate number blocked"
    )
    assert msg["From"] == "PBX Guard <pbx@acme.example>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"].endswith("@acme.example>")
    for expected in (
        "raised a CRITICAL alert",
        "What happened\n  Diversion to a premium-rate number blocked.",
        "Extension (phone):  1000",
        "2027-01-15 08:00:00 UTC",
        "  - extension 1000 tried to forward its calls to +19005550123, a premium-rate number\n",
        "  - the forwarding was set from 203.0.113.7, an address never seen before\n",
        "pbxwarden forward list",
        "pbxwarden forward clear 1000",
        "pbxwarden alerts resolve 42",
    ):
        assert expected in text
    assert SMTP_PASSWORD not in msg.as_string()

    # A warning about the whole tenant, not stored yet.
    await dispatcher.send(alert(severity="warning", ext=None, alert_id=None, rule="spend-cap"))
    msg, text = parse_mail(smtp.handler.received[1])
    assert msg["Subject"].startswith("[pbxwarden WARNING] tenant acme: ")
    assert "pbxwarden bans list" in text and "pbxwarden alerts list" in text
    assert "forward clear" not in text
    await dispatcher.aclose()


async def test_email_wrong_password_fails(smtp: _Smtp) -> None:
    cfg = email_config(smtp.port, username="alerts", password="wrong-" + SMTP_PASSWORD)
    dispatcher = AlertDispatcher(cfg)
    status = (await dispatcher.send(alert()))["email"]
    assert status.startswith(f"failed: SMTP 127.0.0.1:{smtp.port}: SMTPAuthenticationError")
    assert SMTP_PASSWORD not in status
    assert smtp.handler.received == []


async def test_email_closed_port_fails() -> None:
    port = free_port()
    dispatcher = AlertDispatcher(email_config(port))
    start = time.monotonic()
    status = (await dispatcher.send(alert()))["email"]
    assert time.monotonic() - start < 3
    assert status.startswith(f"failed: SMTP 127.0.0.1:{port}: SMTPConnectError")


async def test_email_starttls_is_required_and_verified(smtp: _Smtp, cert: _Cert) -> None:
    # The plaintext server does not offer STARTTLS: no silent downgrade.
    status = (await AlertDispatcher(email_config(smtp.port, starttls=True)).send(alert()))["email"]
    assert status.startswith("failed:") and "STARTTLS" in status
    handler, port = _MailHandler(), free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=cert.server_context(),
        require_starttls=True,
        authenticator=_authenticator,
    )
    controller.start()
    try:
        untrusted = AlertDispatcher(email_config(port, starttls=True))
        status = (await untrusted.send(alert()))["email"]
        assert status.startswith("failed:") and "CERTIFICATE_VERIFY_FAILED" in status
        cfg = email_config(
            port, starttls=True, ca_file=cert.cert, username="alerts", password=SMTP_PASSWORD
        )
        assert await AlertDispatcher(cfg).send(alert()) == {"email": "sent"}
    finally:
        controller.stop()
    [mail] = handler.received
    assert mail.tls and mail.authenticated


async def test_email_implicit_tls(cert: _Cert) -> None:
    handler, port = _MailHandler(), free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, ssl_context=cert.server_context()
    )
    controller.start()
    try:
        cfg = email_config(port, starttls=False, tls=True, ca_file=cert.cert)
        assert await AlertDispatcher(cfg).send(alert()) == {"email": "sent"}
    finally:
        controller.stop()
    assert len(handler.received) == 1


# -- syslog --------------------------------------------------------------------------------


async def test_syslog_udp(udp: socket.socket) -> None:
    dispatcher = AlertDispatcher(syslog_config(udp), clock=Clock())
    assert await dispatcher.send(alert()) == {"syslog": "sent"}
    line = parse_syslog(await recv(udp))
    assert line["pri"] == str(10 * 8 + 2)  # authpriv.crit
    assert line["app"] == "pbxwarden" and line["msgid"] == "forwarding-recon"
    assert line["host"] == socket.gethostname() and line["proc"].isdigit()
    assert line["ts"] == "2027-01-15T08:00:00.250Z"
    assert line["sd_id"] == "pbxwarden@32473"
    assert line["params"] == {
        "tenant": "acme",
        "extension": "1000",
        "rule": "forwarding-recon",
        "severity": "critical",
        "id": "42",
        "count": "1",
    }
    assert line["msg"] == (
        "Diversion to a premium-rate number blocked. Reasons: extension 1000 tried to forward "
        "its calls to +19005550123, a premium-rate number; the forwarding was set from "
        "203.0.113.7, an address never seen before"
    )
    assert not line["bom"]

    address = f"udp:127.0.0.1:{udp.getsockname()[1]}"
    cfg = AlertsConfig(syslog=SyslogChannelConfig(address=address, facility="auth", app_name="pbx"))
    tricky = alert(
        severity="warning",
        ext=None,
        alert_id=None,
        rule='odd"rule]',
        summary="Appel vers un numéro surtaxé\nrefusé.",
        reasons=(),
    )
    assert await AlertDispatcher(cfg).send(tricky) == {"syslog": "sent"}
    line = parse_syslog(await recv(udp))
    assert line["pri"] == str(4 * 8 + 4)  # auth.warning
    assert line["app"] == "pbx"
    assert line["params"] == {
        "tenant": "acme",
        "rule": 'odd"rule]',
        "severity": "warning",
        "count": "1",
    }
    assert line["bom"] and line["msg"] == "Appel vers un numéro surtaxé refusé."


async def test_syslog_udp_truncates_to_a_datagram(udp: socket.socket) -> None:
    huge = alert(reasons=("é" * 5000,))
    assert await AlertDispatcher(syslog_config(udp)).send(huge) == {"syslog": "sent"}
    data = await recv(udp)
    assert len(data) <= 2048
    data.decode()  # not cut inside a character
    assert parse_syslog(data)["params"]["tenant"] == "acme"


async def test_syslog_tcp_octet_counting() -> None:
    connections: list[bytes] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(await reader.read())
        writer.close()
        if len(connections) == 2:
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = AlertsConfig(syslog=SyslogChannelConfig(address=f"tcp:127.0.0.1:{port}"))
        dispatcher = AlertDispatcher(cfg)
        assert await dispatcher.send(alert(ext="1000")) == {"syslog": "sent"}
        assert await dispatcher.send(alert(ext="1001")) == {"syslog": "sent"}
        await asyncio.wait_for(done.wait(), 2)
    finally:
        server.close()
        await server.wait_closed()
    frames = []
    for data in connections:
        while data:
            length, _, data = data.partition(b" ")
            frames.append(data[: int(length)])
            data = data[int(length) :]
    assert sorted(parse_syslog(f)["params"]["extension"] for f in frames) == ["1000", "1001"]


async def test_syslog_tcp_closed_port_fails() -> None:
    cfg = AlertsConfig(syslog=SyslogChannelConfig(address=f"tcp:127.0.0.1:{free_port()}"))
    status = (await AlertDispatcher(cfg).send(alert()))["syslog"]
    assert status.startswith("failed: syslog tcp:127.0.0.1:")


async def test_syslog_unix_datagram(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        cfg = AlertsConfig(syslog=SyslogChannelConfig(address=f"unix:{path}"))
        assert await AlertDispatcher(cfg).send(alert()) == {"syslog": "sent"}
        line = parse_syslog(await recv(sock))
    assert line["pri"] == "82" and line["params"]["rule"] == "forwarding-recon"
    missing = AlertsConfig(syslog=SyslogChannelConfig(address=f"unix:{tmp_path}/nothing"))
    status = (await AlertDispatcher(missing).send(alert()))["syslog"]
    assert status.startswith(f"failed: syslog unix:{tmp_path}/nothing")


# -- the dispatcher ------------------------------------------------------------------------


async def test_duplicates_are_held_back(udp: socket.socket) -> None:
    clock = Clock()
    dispatcher = AlertDispatcher(syslog_config(udp), clock=clock)
    assert dispatcher.configured == ["syslog"]
    assert await dispatcher.send(alert()) == {"syslog": "sent"}
    clock.t += 10
    assert await dispatcher.send(alert()) == {"syslog": "suppressed (duplicate)"}
    assert await dispatcher.send(alert(ext="1001")) == {"syslog": "sent"}  # another key
    assert await dispatcher.send(alert(), key="store/17") == {"syslog": "sent"}
    assert await dispatcher.send(alert(ext="1002"), key="store/17") == {
        "syslog": "suppressed (duplicate)"
    }
    clock.t += 3600
    assert await dispatcher.send(alert()) == {"syslog": "sent"}
    assert len(drain(udp)) == 4


async def test_escalation_is_sent(udp: socket.socket) -> None:
    clock = Clock()
    dispatcher = AlertDispatcher(syslog_config(udp), clock=clock)
    assert await dispatcher.send(alert(severity="warning")) == {"syslog": "sent"}
    clock.t += 60
    assert await dispatcher.send(alert(severity="warning")) == {"syslog": "suppressed (duplicate)"}
    assert await dispatcher.send(alert(severity="critical")) == {"syslog": "sent"}
    assert await dispatcher.send(alert(severity="critical")) == {"syslog": "suppressed (duplicate)"}
    assert await dispatcher.send(alert(severity="warning")) == {"syslog": "suppressed (duplicate)"}
    pris = [parse_syslog(d)["pri"] for d in drain(udp)]
    assert pris == ["84", "82"]


async def test_rate_limit_per_minute(udp: socket.socket) -> None:
    clock = Clock()
    dispatcher = AlertDispatcher(syslog_config(udp, max_per_minute=3), clock=clock)
    results = []
    with structlog.testing.capture_logs() as logs:
        for n in range(5):
            results.append((await dispatcher.send(alert(ext=f"10{n:02}")))["syslog"])
            clock.t += 1
    assert results == ["sent"] * 3 + ["suppressed (rate limit)"] * 2
    assert dispatcher.dropped == {"syslog": 2}
    assert [e["event"] for e in logs].count("alerts dropped by the rate limit") == 1
    # A dropped alert was not sent, so it is not a duplicate later.
    clock.t += 60
    assert await dispatcher.send(alert(ext="1003")) == {"syslog": "sent"}
    assert len(drain(udp)) == 4


async def test_min_severity(udp: socket.socket) -> None:
    dispatcher = AlertDispatcher(syslog_config(udp, min_severity="critical"))
    assert await dispatcher.send(alert(severity="warning")) == {"syslog": "below min_severity"}
    assert await dispatcher.send(alert(severity="critical")) == {"syslog": "sent"}
    assert len(drain(udp)) == 1


async def test_no_channels() -> None:
    dispatcher = AlertDispatcher(AlertsConfig())
    assert dispatcher.configured == []
    assert await dispatcher.send(alert()) == {}
    await dispatcher.aclose()


async def test_a_broken_channel_does_not_stop_the_others(udp: socket.socket) -> None:
    cfg = AlertsConfig(
        webhook=WebhookChannelConfig(url=f"http://127.0.0.1:{free_port()}/h", secret=HOOK_SECRET),
        email=EmailChannelConfig(
            host="127.0.0.1",
            port=free_port(),
            starttls=False,
            sender="pbx@acme.example",
            recipients=["ops@acme.example"],
        ),
        syslog=SyslogChannelConfig(address=f"udp:127.0.0.1:{udp.getsockname()[1]}"),
    )
    dispatcher = AlertDispatcher(cfg, clock=Clock())
    assert dispatcher.configured == ["webhook", "email", "syslog"]
    result = await dispatcher.send(alert())
    assert list(result) == ["webhook", "email", "syslog"]
    assert result["syslog"] == "sent"
    assert result["webhook"].startswith("failed: cannot connect")
    assert result["email"].startswith("failed: SMTP")
    # Failed deliveries are tried again next time; the delivered one is a duplicate.
    again = await dispatcher.send(alert())
    assert again["syslog"] == "suppressed (duplicate)"
    assert again["webhook"].startswith("failed:") and again["email"].startswith("failed:")
    assert len(drain(udp)) == 1


async def test_an_exception_in_a_channel_is_contained(
    udp: socket.socket, hook: _HookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = syslog_config(udp, webhook=WebhookChannelConfig(url=hook.url, secret=HOOK_SECRET))
    dispatcher = AlertDispatcher(cfg)

    async def boom(a: Alert) -> None:
        raise RuntimeError(f"boom {HOOK_SECRET}")

    monkeypatch.setattr(dispatcher._channels["webhook"], "send", boom)
    result = await dispatcher.send(alert())
    assert result == {"webhook": "failed: unexpected RuntimeError: boom ***", "syslog": "sent"}


async def test_channels_run_concurrently(silent_tcp: int) -> None:
    cfg = AlertsConfig(
        webhook=WebhookChannelConfig(
            url=f"http://127.0.0.1:{silent_tcp}/h",
            secret=HOOK_SECRET,
            timeout=1,
            retries=0,
        ),
        email=EmailChannelConfig(
            host="127.0.0.1",
            port=silent_tcp,
            starttls=False,
            sender="pbx@acme.example",
            recipients=["ops@acme.example"],
            timeout=1,
        ),
    )
    start = time.monotonic()
    result = await AlertDispatcher(cfg).send(alert())
    assert time.monotonic() - start < 1.8
    assert result["webhook"].endswith("did not answer within 1 s")
    assert result["email"] == f"failed: SMTP 127.0.0.1:{silent_tcp} did not answer within 1 s"


async def test_closed_dispatcher(udp: socket.socket) -> None:
    dispatcher = AlertDispatcher(syslog_config(udp))
    await dispatcher.aclose()
    assert await dispatcher.send(alert()) == {"syslog": "failed: the dispatcher is closed"}


async def test_secrets_never_logged(
    smtp: _Smtp, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level("DEBUG")
    token = "T0KEN-in-the-path-0123"
    cfg = AlertsConfig(
        webhook=WebhookChannelConfig(
            url=f"http://127.0.0.1:{free_port()}/hooks/{token}",
            secret=HOOK_SECRET,
            retries=0,
        ),
        email=EmailChannelConfig(
            host="127.0.0.1",
            port=smtp.port,
            starttls=False,
            username="alerts",
            password=SMTP_PASSWORD + "-but-wrong",
            sender="pbx@acme.example",
            recipients=["ops@acme.example"],
        ),
    )
    with structlog.testing.capture_logs() as logs:
        dispatcher = AlertDispatcher(cfg)
        result = await dispatcher.send(alert())
        await dispatcher.aclose()
    assert result["webhook"].startswith("failed:") and result["email"].startswith("failed:")
    failures = [e for e in logs if e["event"] == "alert not delivered"]
    assert {e["channel"] for e in failures} == {"webhook", "email"}
    assert all(e["tenant"] == "acme" and e["alert_id"] == 42 for e in failures)
    out = capsys.readouterr()
    everything = " ".join(
        [str(result), str(logs), caplog.text, out.out, out.err, repr(cfg), repr(dispatcher)]
    )
    assert HOOK_SECRET not in everything
    assert SMTP_PASSWORD not in everything
    assert token not in " ".join([str(result), str(logs)])
