"""The fraud guard through the running PBX: SIPp phones and carrier, a real webhook.

The diversion attack end to end: the hijacked phone answers the company's call with
a 302 to a premium-rate number; the PBX refuses the diverted leg, suspends the
extension, stores the alert and delivers it, signed, to the operator's webhook.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pbxwarden.cli.audit_trail import actor
from pbxwarden.guard.alerts import verify_signature
from pbxwarden.store.db import Store
from tests.helpers import (
    cli,
    finish_sipp_uas,
    free_port,
    running_pbx,
    sipp_available,
    start_sipp_uas,
)
from tests.integration.test_calls import call, refused_scenario, wait_cdr
from tests.integration.test_forwarding import CARRIER, USERS, register

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")

SECRET = "webhook-secret-for-the-test-0123456789"


class Receiver:
    """A webhook endpoint on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, count: int = 1, timeout: float = 10) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return list(self.posts)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def alerts(data_dir: Path, *args: str) -> list[dict[str, object]]:
    out = cli(data_dir, "alerts", "list", "--json", *args).stdout.strip()
    return json.loads(out) if out.startswith("[") else []


def test_diversion_attack_is_refused_suspended_and_reported(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = {
        "PBXWARDEN_ALERTS__WEBHOOK__URL": receiver.url,
        "PBXWARDEN_ALERTS__WEBHOOK__SECRET": SECRET,
    }
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        port = register(pbx, "2000", tmp_path)
        hijacked = start_sipp_uas(
            "call_uas_redirect.xml", port, tmp_path, extra=["-key", "target", "19005550123"]
        )
        ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 403), dialed="2000")
        assert ok == 1, output + pbx.log()[-3000:]
        assert finish_sipp_uas(hijacked, tmp_path).successful == 1

        [(headers, body)] = receiver.wait(1)
        assert verify_signature(
            SECRET,
            headers["X-Pbxwarden-Timestamp"],
            body,
            headers["X-Pbxwarden-Signature"],
            time.time(),
        )
        sent = json.loads(body)
        assert (sent["severity"], sent["rule"], sent["extension"]) == (
            "critical",
            "forwarding-destination",
            "2000",
        )
        assert "premium-rate number +19005550123" in " ".join(sent["reasons"])
        assert "suspended" in sent["summary"]
        assert SECRET not in pbx.log()

        [stored] = alerts(pbx.data_dir)
        assert stored["status"] == "open" and stored["id"] == sent["id"]
        extensions = json.loads(cli(pbx.data_dir, "extension", "list", "--json").stdout)
        suspended = {e["number"]: e["suspended"] for e in extensions}
        assert suspended["1000"] is None and "premium-rate" in str(suspended["2000"])
        [row] = wait_cdr(pbx)
        assert (row["decision"], row["severity"]) == ("deny", "critical")

        cli(pbx.data_dir, "alerts", "ack", str(stored["id"]), "--by", "alice")
        assert alerts(pbx.data_dir)[0]["acked_by"] == "alice"
        cli(pbx.data_dir, "alerts", "resolve", str(stored["id"]))
        assert alerts(pbx.data_dir) == []
        assert alerts(pbx.data_dir, "--status", "resolved")[0]["resolved_by"] == actor()
        again = cli(pbx.data_dir, "alerts", "resolve", str(stored["id"]), check=False)
        assert again.returncode == 1 and "already resolved" in again.stderr
        # recovery in the safe order: resuming waits for a new password
        early = cli(pbx.data_dir, "extension", "resume", "2000", check=False)
        assert early.returncode == 1 and "extension password 2000" in early.stderr
        cli(pbx.data_dir, "extension", "password", "2000")
        assert "resumed" in cli(pbx.data_dir, "extension", "resume", "2000").stdout


def test_spend_cap_cuts_off_a_call_in_progress(tmp_path: Path) -> None:
    env = {"PBXWARDEN_GUARD__DEFAULT__SPEND_PER_HOUR": "0.0001"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        carrier_port = free_port(CARRIER)
        cli(pbx.data_dir, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
        time.sleep(1.5)
        carrier = start_sipp_uas(
            "call_uas.xml", carrier_port, tmp_path, local_ip=CARRIER, name="carrier"
        )
        ok, _, output = call(pbx, tmp_path, "call_uac_wait_bye.xml", dialed="2025550143")
        assert ok == 1, output + pbx.log()[-3000:]  # the caller got the PBX's BYE
        assert finish_sipp_uas(carrier, tmp_path, name="carrier").successful == 1
        [row] = wait_cdr(pbx)
        assert row["disposition"] == "answered" and "spend cap" in str(row["reasons"])
        assert float(row["cost"]) > 0  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while not alerts(pbx.data_dir) and time.monotonic() < deadline:
            time.sleep(0.3)
        [alert] = alerts(pbx.data_dir)
        assert (alert["rule"], alert["severity"]) == ("spend-cap", "critical")
    # What the guard learned (the call's spend) is stored at the stop, for the next start.
    store = Store(f"sqlite:///{tmp_path / 'data' / 'pbxwarden.db'}")
    try:
        learned = {(t, e): d for t, e, d in store.load_baselines()}
    finally:
        store.close()
    assert sum(learned[("default", "1000")]["spend_by_day"]) > 0
    assert ("default", "") in learned


def test_running_pbx_follows_a_policy_change(tmp_path: Path) -> None:
    with running_pbx(tmp_path / "data", USERS) as pbx:
        carrier_port = free_port(CARRIER)
        cli(pbx.data_dir, "trunk", "add", "carrier", "--host", CARRIER, "--port", str(carrier_port))
        time.sleep(1.5)
        london = "011442079460000"
        ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 403), dialed=london)
        assert ok == 1, output  # closed by default: international refused
        cli(pbx.data_dir, "tenant", "policy", "default", "--set", 'allow_countries=["GB"]')
        time.sleep(1.5)  # the server re-reads stored policies every second
        carrier = start_sipp_uas(
            "call_uas.xml", carrier_port, tmp_path, local_ip=CARRIER, name="carrier"
        )
        ok, _, output = call(pbx, tmp_path, dialed=london)
        assert ok == 1, output + pbx.log()[-2000:]
        assert finish_sipp_uas(carrier, tmp_path, name="carrier").successful == 1
        assert "guard policies updated" in pbx.log()
