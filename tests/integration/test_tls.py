"""SIP over TLS (stdlib ssl) with a certificate from the configuration."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from pbxwarden.sip.digest import build_authorization, choose_challenge
from pbxwarden.sip.message import Response, StreamFramer, generate_branch, parse_message
from tests.helpers import free_port, running_pbx

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def exchange(conn: ssl.SSLSocket, framer: StreamFramer, text: str) -> Response:
    conn.sendall(text.encode())
    while True:
        for message in framer.feed(conn.recv(65535)):
            if message:
                parsed = parse_message(message)
                assert isinstance(parsed, Response)
                if parsed.status != 100:
                    return parsed


def register_text(port: int, local: tuple[str, int], cseq: int, auth: str = "") -> str:
    lines = [
        f"REGISTER sips:127.0.0.1:{port} SIP/2.0",
        f"Via: SIP/2.0/TLS {local[0]}:{local[1]};branch={generate_branch()};rport",
        "Max-Forwards: 70",
        "From: <sips:4000@127.0.0.1>;tag=tls1",
        "To: <sips:4000@127.0.0.1>",
        "Call-ID: tls-call-1",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sips:4000@{local[0]}:{local[1]};transport=tls>",
        "Expires: 600",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return "\r\n".join([*lines, "Content-Length: 0", "", ""])


def test_register_over_tls(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    tls_port = free_port()
    env = {
        "PBXWARDEN_SIP__TLS__LISTEN": f"127.0.0.1:{tls_port}",
        "PBXWARDEN_SIP__TLS__CERT_FILE": str(cert),
        "PBXWARDEN_SIP__TLS__KEY_FILE": str(key),
    }
    with running_pbx(tmp_path / "data", {"4000": "Tls-Passw0rd-xyzw"}, env=env):
        ctx = ssl.create_default_context(cafile=str(cert))
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            assert conn.version() in ("TLSv1.2", "TLSv1.3")
            local = conn.getsockname()
            framer = StreamFramer()
            challenge = exchange(conn, framer, register_text(tls_port, local, 1))
            assert challenge.status == 401
            auth = build_authorization(
                choose_challenge(challenge.headers.get_all("WWW-Authenticate")),
                "REGISTER",
                f"sips:127.0.0.1:{tls_port}",
                "4000",
                "Tls-Passw0rd-xyzw",
                "c1",
                1,
            )
            ok = exchange(conn, framer, register_text(tls_port, local, 2, auth))
            assert ok.status == 200
            assert ok.headers.get_all("Contact") == [] and len(ok.contacts) == 1
            assert ok.contacts[0].uri.scheme == "sips"
