"""The dashboard against the running PBX (`serve --http`) and real phones (SIPp): the
registered phones an operator sees, and removing the one that is not theirs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.api.conftest import ROOT_PASSWORD
from tests.helpers import cli, free_port, run_sipp, running_pbx, sipp_available

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed"),
]
USERS = {"2000": "Callee-Passw0rd-y"}


async def test_operator_sees_each_phone_and_removes_the_strange_one(
    tmp_path: Path, page: Page
) -> None:
    http_port = free_port()
    env = {"PBXWARDEN_HTTP__ENABLED": "true", "PBXWARDEN_HTTP__LISTEN": f"127.0.0.1:{http_port}"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        cli(pbx.data_dir, "admin", "add", "root", "--password", "-",
            input_text=f"{ROOT_PASSWORD}\n")  # fmt: skip
        for ip in ("127.0.0.1", "127.0.0.3"):
            reg = run_sipp(
                "register.xml",
                f"{pbx.host}:{pbx.port}",
                users=USERS,
                local_ip=ip,
                local_port=free_port(ip),
                workdir=tmp_path,
            )
            assert reg.successful == 1, reg.output
        await page.goto(f"http://127.0.0.1:{http_port}/ui/")
        await page.fill("#username", "root")
        await page.fill("#password", ROOT_PASSWORD)
        await page.click("#login-form button[type=submit]")
        rows = page.locator("#registrations tr[data-registration]")
        await expect(rows).to_have_count(2)
        strange = page.locator("#registrations tr", has_text="127.0.0.3")
        await expect(strange).to_contain_text("SIPp pbxwarden-tests")
        await strange.get_by_role("button", name="Remove").click()
        await expect(rows).to_have_count(1)
        await expect(page.locator("#registrations")).not_to_contain_text("127.0.0.3")
        deadline = time.monotonic() + 10
        while True:
            live = json.loads(cli(pbx.data_dir, "registrations", "--json").stdout)
            if len(live) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [r["address"].split(":")[0] for r in live] == ["127.0.0.1"]
        audit = json.loads(cli(pbx.data_dir, "audit-log", "--json").stdout)
        assert any(e["action"] == "registration.remove" for e in audit)
