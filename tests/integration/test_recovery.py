"""Recovery after a compromise, with real phones (SIPp) on distinct loopback addresses:
a new SIP password throws the hijacked phone out at once and ends the extension's calls;
each registration is visible and removable; an extension the guard suspended for fraud
is only resumed once its password changed (or by a forced, audited resume)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    PbxProcess,
    SipClient,
    cli,
    finish_sipp_uas,
    free_port,
    run_sipp,
    running_pbx,
    sipp_available,
    start_sipp_uas,
    status_of,
)
from tests.integration.test_calls import (
    USERS,
    call,
    refused_scenario,
    start_caller,
    target,
    wait_cdr,
)

pytestmark = pytest.mark.skipif(not sipp_available(), reason="SIPp (sip-tester) not installed")
HIJACKER = "127.0.0.3"


@pytest.fixture
def pbx(tmp_path: Path) -> Iterator[PbxProcess]:
    with running_pbx(tmp_path / "data", USERS) as server:
        yield server


def wait_for(what: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def bindings(pbx: PbxProcess, number: str) -> list[dict[str, Any]]:
    rows = json.loads(cli(pbx.data_dir, "registrations", "--json").stdout or "[]")
    return [r for r in rows if r["number"] == number]


def register_from(pbx: PbxProcess, workdir: Path, ip: str) -> int:
    port = free_port(ip)
    reg = run_sipp(
        "register.xml",
        target(pbx),
        users={"2000": USERS["2000"]},
        local_ip=ip,
        local_port=port,
        workdir=workdir,
    )
    assert reg.successful == 1, reg.output
    return port


def test_a_new_password_throws_every_phone_out(pbx: PbxProcess, tmp_path: Path) -> None:
    register_from(pbx, tmp_path, "127.0.0.1")
    register_from(pbx, tmp_path, HIJACKER)  # the attacker, with the stolen password
    rows = wait_for(lambda: len(bindings(pbx, "2000")) == 2 and bindings(pbx, "2000"))
    assert sorted(r["address"].rsplit(":", 1)[0] for r in rows) == ["127.0.0.1", HIJACKER]
    for row in rows:  # every binding says from where, over what, since when, until when
        assert row["transport"] == "UDP" and row["registered_at"] and row["expires_in"] > 0
        assert row["id"] and row["user_agent"]
    table = cli(pbx.data_dir, "registrations", env={"COLUMNS": "200"}).stdout
    assert HIJACKER in table and rows[0]["id"] in table

    new = cli(pbx.data_dir, "extension", "password", "2000").stdout
    assert "password" in new
    assert wait_for(lambda: bindings(pbx, "2000") == []), bindings(pbx, "2000")
    assert "registrations removed and calls ended" in pbx.log()
    # The hijacker's phone no longer rings, and its old password no longer works.
    ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 480))
    assert ok == 1, output
    client = SipClient((pbx.host, pbx.port), source_ip=HIJACKER)
    try:
        assert status_of(client.register("2000", USERS["2000"])) == 403
    finally:
        client.close()


def test_a_new_password_ends_the_extensions_calls(pbx: PbxProcess, tmp_path: Path) -> None:
    port = free_port()
    reg = run_sipp(
        "register.xml", target(pbx), users={"2000": USERS["2000"]}, local_port=port,
        workdir=tmp_path,
    )  # fmt: skip
    assert reg.successful == 1, reg.output
    phone = start_sipp_uas("call_uas.xml", port, tmp_path, timeout=30)
    caller = start_caller(pbx, tmp_path, "call_uac_wait_bye.xml", timeout=30)
    try:
        live = wait_for(
            lambda: [
                c
                for c in json.loads(cli(pbx.data_dir, "calls", "--json").stdout or "[]")
                if c["state"] == "answered"
            ]
        )
        assert live, pbx.log()[-2000:]
        cli(pbx.data_dir, "extension", "password", "1000")  # the caller's password
        assert caller.wait(20) == 0  # the caller got the PBX's BYE
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait(5)
        answered = finish_sipp_uas(phone, tmp_path)
    assert answered.successful == 1, answered.output
    [row] = wait_cdr(pbx)
    assert row["disposition"] == "answered" and float(row["duration"] or 0) > 0  # type: ignore[arg-type]
    assert "SIP password was changed" in str(row["reasons"])


def test_one_registration_is_removed_by_its_id(pbx: PbxProcess, tmp_path: Path) -> None:
    register_from(pbx, tmp_path, "127.0.0.1")
    register_from(pbx, tmp_path, HIJACKER)
    rows = wait_for(lambda: len(bindings(pbx, "2000")) == 2 and bindings(pbx, "2000"))
    [stranger] = [r for r in rows if r["address"].startswith(HIJACKER)]
    done = cli(pbx.data_dir, "registrations", "remove", "2000", stranger["id"])
    assert stranger["id"] in done.stdout
    left = bindings(pbx, "2000")
    assert [r["address"].split(":")[0] for r in left] == ["127.0.0.1"]
    again = cli(pbx.data_dir, "registrations", "remove", "2000", stranger["id"], check=False)
    assert again.returncode == 1 and "no registration" in again.stderr
    unknown = cli(pbx.data_dir, "registrations", "remove", "9999", "abc", check=False)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr


def _suspend_by_the_guard(pbx: PbxProcess, tmp_path: Path) -> None:
    """The seed's attack: 2000's phone diverts to premium rate; the guard suspends 2000."""
    port = free_port()
    reg = run_sipp(
        "register.xml", target(pbx), users={"2000": USERS["2000"]}, local_port=port,
        workdir=tmp_path,
    )  # fmt: skip
    assert reg.successful == 1, reg.output
    hijacked = start_sipp_uas(
        "call_uas_redirect.xml", port, tmp_path, extra=["-key", "target", "19005550123"]
    )
    try:
        ok, _, output = call(pbx, tmp_path, refused_scenario(tmp_path, 403))
        assert ok == 1, output + pbx.log()[-3000:]
    finally:
        finish_sipp_uas(hijacked, tmp_path)

    def suspended() -> bool:
        rows = json.loads(cli(pbx.data_dir, "extension", "list", "--json").stdout)
        return any(r["number"] == "2000" and r["suspended"] for r in rows)

    assert wait_for(suspended), pbx.log()[-3000:]


def test_resume_waits_for_a_new_password(pbx: PbxProcess, tmp_path: Path) -> None:
    _suspend_by_the_guard(pbx, tmp_path)
    refused = cli(pbx.data_dir, "extension", "resume", "2000", check=False)
    assert refused.returncode == 1
    assert "pbxwarden extension password 2000" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    cli(pbx.data_dir, "extension", "password", "2000")
    assert "resumed" in cli(pbx.data_dir, "extension", "resume", "2000").stdout


def test_a_forced_resume_is_audited_with_its_reason(pbx: PbxProcess, tmp_path: Path) -> None:
    _suspend_by_the_guard(pbx, tmp_path)
    bare = cli(pbx.data_dir, "extension", "resume", "2000", "--force", check=False)
    assert bare.returncode == 1 and "--reason" in bare.stderr
    cli(pbx.data_dir, "extension", "resume", "2000", "--force", "--reason", "user is abroad")
    entries = json.loads(cli(pbx.data_dir, "audit-log", "--json").stdout)
    forced = [e for e in entries if e["action"] == "extension.resume.forced"]
    assert forced and forced[0]["after"]["reason"] == "user is abroad"
    assert str(forced[0]["actor"]).startswith("cli:")


def _token(pbx: PbxProcess, name: str, role: str, tenant: str | None = None) -> str:
    args = ["admin", "add", name, "--role", role, "--password", "-"]
    if tenant:
        args += ["--tenant", tenant]
    cli(pbx.data_dir, *args, input_text="quartz-violin-harbor-97\n")
    out = cli(pbx.data_dir, "admin", "token", name, "--scope", role).stdout
    return out.strip().splitlines()[-1].strip()


def test_recovery_and_trust_rules_over_http(tmp_path: Path) -> None:
    """The same recovery through the admin API of the running server, and the trust rules
    a tenant admin meets: trunks are the provider's, bans may not hurt the PBX itself."""
    import httpx

    http_port = free_port()
    env = {"PBXWARDEN_HTTP__ENABLED": "true", "PBXWARDEN_HTTP__LISTEN": f"127.0.0.1:{http_port}"}
    with running_pbx(tmp_path / "data", USERS, env=env) as pbx:
        cli(pbx.data_dir, "tenant", "add", "acme", "--realm", "acme.example")
        cli(pbx.data_dir, "trunk", "add", "carrier", "--host", "127.0.0.2", "--port", "5070")
        root = {"Authorization": f"Bearer {_token(pbx, 'root', 'admin')}"}
        acme = {"Authorization": f"Bearer {_token(pbx, 'acme-admin', 'admin', 'acme')}"}
        register_from(pbx, tmp_path, "127.0.0.1")
        register_from(pbx, tmp_path, HIJACKER)
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as http:
            rows = wait_for(
                lambda: (
                    len(http.get("/api/v1/registrations", headers=root).json()) == 2
                    and http.get("/api/v1/registrations", headers=root).json()
                )
            )
            assert rows, pbx.log()[-2000:]
            assert http.get("/api/v1/registrations", headers=acme).json() == []  # not its own
            [stranger] = [r for r in rows if r["address"].startswith(HIJACKER)]
            path = f"/api/v1/tenants/default/extensions/2000/registrations/{stranger['id']}"
            assert http.delete(path, headers=acme).status_code in (403, 404)
            removed = http.delete(path, headers=root)
            assert removed.status_code == 200, removed.text
            left = http.get("/api/v1/registrations", headers=root).json()
            assert [r["address"].split(":")[0] for r in left] == ["127.0.0.1"]
            assert http.delete(path, headers=root).status_code == 404

            # A tenant admin cannot make any host a trusted carrier (here: 2000's phone).
            trunk = {"name": "mine", "host": "127.0.0.1", "port": 5060}
            refused = http.post("/api/v1/tenants/acme/trunks", json=trunk, headers=acme)
            assert refused.status_code == 403 and "provider" in refused.json()["detail"]
            assert [t["name"] for t in http.get("/api/v1/trunks", headers=root).json()] == [
                "carrier"
            ]
            # ... and 2000's phone is still reachable as an extension, not as a "carrier".
            port = int(left[0]["address"].rsplit(":", 1)[1])
            phone = start_sipp_uas("call_uas.xml", port, tmp_path)
            try:
                ok, failed, output = call(pbx, tmp_path)
            finally:
                finish_sipp_uas(phone, tmp_path)
            assert (ok, failed) == (1, 0), output

            # Bans that would hurt the PBX itself are refused unless forced.
            for address, why in (("127.0.0.1", "this machine"), ("127.0.0.2", "trunk")):
                ban = http.post("/api/v1/bans", json={"address": address}, headers=root)
                assert ban.status_code == 409 and why in ban.json()["detail"], ban.text
            assert http.get("/api/v1/bans", headers=root).json() == []
            cli_ban = cli(pbx.data_dir, "bans", "add", "127.0.0.1", check=False)
            assert cli_ban.returncode == 1 and "this machine" in cli_ban.stderr
            assert cli(pbx.data_dir, "bans", "add", "192.0.2.66").returncode == 0

            # Resume over HTTP waits for the new password too.
            _suspend_by_the_guard(pbx, tmp_path)
            resume = "/api/v1/tenants/default/extensions/2000/resume"
            early = http.post(resume, headers=root)
            assert early.status_code == 409 and "password" in early.json()["detail"]
            forced = http.post(resume, json={"force": True}, headers=root)
            assert forced.status_code == 422  # a forced resume needs a reason
            new = http.post("/api/v1/tenants/default/extensions/2000/password", headers=root)
            assert new.status_code == 200, new.text
            assert http.post(resume, headers=root).status_code == 200
