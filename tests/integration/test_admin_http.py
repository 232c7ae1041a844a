"""The admin API served by `pbxwarden serve --http`, against the running PBX and SIPp.

Live calls exist only in the SIP server's memory: listing and ending one over HTTP
must reach the real B2BUA, and /metrics must show the real server's counters.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import cli, finish_sipp_uas, free_port, running_pbx, sipp_available
from tests.helpers import start_sipp_uas as start_phone
from tests.integration.test_calls import USERS, register_callee, start_caller

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")


def test_live_call_listed_and_ended_over_http_and_metrics(tmp_path: Path) -> None:
    http_port = free_port()
    env = {"PBXWARDEN_HTTP__ENABLED": "true", "PBXWARDEN_HTTP__LISTEN": f"127.0.0.1:{http_port}"}
    base = f"http://127.0.0.1:{http_port}"
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
        token = cli(pbx.data_dir, "admin", "token", "ops", "--scope", "operator").stdout
        token = token.strip().splitlines()[-1].strip()
        reader = cli(pbx.data_dir, "admin", "token", "ops", "--scope", "read-only").stdout
        reader = reader.strip().splitlines()[-1].strip()
        with httpx.Client(base_url=base, timeout=5) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/api/v1/calls").status_code == 401
            auth = {"Authorization": f"Bearer {token}"}

            events: list[dict[str, Any]] = []
            listening = threading.Event()

            def listen() -> None:
                with (
                    httpx.Client(base_url=base, timeout=20) as sse,
                    sse.stream(
                        "GET", "/api/v1/events", headers={"Authorization": f"Bearer {reader}"}
                    ) as stream,
                ):
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    listening.set()
                    for line in stream.iter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[6:]))
                            if events[-1]["type"] == "call.end":
                                return

            reader_thread = threading.Thread(target=listen, daemon=True)
            reader_thread.start()
            assert listening.wait(5)
            time.sleep(0.2)  # the subscription is registered once the stream has started

            port = register_callee(pbx, tmp_path)
            phone = start_phone("call_uas.xml", port, tmp_path)
            caller = start_caller(pbx, tmp_path, "call_uac_wait_bye.xml", timeout=20)
            live: list[dict[str, object]] = []
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                live = http.get("/api/v1/calls", headers=auth).json()
                if live and live[0]["state"] == "answered":
                    break
                time.sleep(0.2)
            assert live and (live[0]["caller"], live[0]["callee"]) == ("1000", "2000")
            call_id = str(live[0]["call_id"])
            read_only = {"Authorization": f"Bearer {reader}"}
            assert http.delete(f"/api/v1/calls/{call_id}", headers=read_only).status_code == 403
            ended = http.delete(f"/api/v1/calls/{call_id}", headers=auth)
            assert ended.status_code == 200, ended.text
            assert caller.wait(15) == 0  # the caller's scenario ends with the PBX's BYE
            assert finish_sipp_uas(phone, tmp_path).successful == 1
            assert http.get("/api/v1/calls", headers=auth).json() == []
            reader_thread.join(10)
            kinds = [e["type"] for e in events]
            assert kinds[0] == "call.start" and kinds[-1] == "call.end", events
            start, end = events[0], events[-1]
            assert (start["caller"], start["callee"], start["decision"]) == (
                "1000",
                "2000",
                "allow",
            )
            assert start["call_id"] == end["call_id"] and end["disposition"] == "answered"
            missing = http.delete(f"/api/v1/calls/{call_id}", headers=auth)
            assert missing.status_code == 404

            metrics = http.get("/metrics", headers=auth).text
            assert 'pbxwarden_calls_total{kind="internal"} 1.0' in metrics
            assert 'pbxwarden_guard_decisions_total{kind="internal",outcome="allow"' in metrics
            assert "pbxwarden_registrations_total 1.0" in metrics
            assert "pbxwarden_registrations_active 1.0" in metrics
            # the challenge (401/407) and the authenticated retry are two transactions each
            assert 'pbxwarden_sip_transaction_seconds_count{method="REGISTER"} 2.0' in metrics
            assert 'pbxwarden_sip_transaction_seconds_count{method="INVITE"} 2.0' in metrics
