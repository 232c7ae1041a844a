"""Admin API security, attacked over real HTTP: credentials, scopes, tenants, login
throttling, CSRF, the network allow list, headers, and secrets kept out of the database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from pbxwarden.api.app import create_app
from pbxwarden.api.security import Admin
from pbxwarden.api.serve import start_http
from pbxwarden.config import Config
from pbxwarden.store.admin import AdminStore
from pbxwarden.store.db import Store
from tests.api.conftest import ACME_PASSWORD, ROOT_PASSWORD, Api, ApiFactory, seed

pytestmark = pytest.mark.timeout(30)

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert value in response.headers.get(name, ""), (name, response.headers)


async def login(
    client: httpx.AsyncClient, username: str, password: str, totp: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"username": username, "password": password}
    if totp is not None:
        body["totp"] = totp
    return await client.post("/api/v1/auth/login", json=body)


# -- credentials -----------------------------------------------------------------------


async def test_missing_bad_expired_and_revoked_tokens_are_refused(api: Api) -> None:
    anon = api.client()
    for path in ("/api/v1/tenants", "/api/v1/cdrs", "/api/v1/audit", "/metrics"):
        response = await anon.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
        assert_security_headers(response)
    assert (await api.client("pbxw_not-a-real-token").get("/api/v1/tenants")).status_code == 401
    assert (await api.client("something-else").get("/api/v1/tenants")).status_code == 401
    basic = await anon.get("/api/v1/tenants", headers={"Authorization": "Basic cm9vdDpyb290"})
    assert basic.status_code == 401

    _, expiring = api.admins.create_token(
        "root", "short", "admin", None, api.clock.now + 60, api.clock.now
    )
    client = api.client(expiring)
    assert (await client.get("/api/v1/tenants")).status_code == 200
    api.clock.advance(61)
    expired = await client.get("/api/v1/tenants")
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]

    admin = api.as_("admin")
    assert (await admin.delete(f"/api/v1/tokens/{api_token_id(api, 'reader')}")).status_code == 200
    revoked = await api.as_("reader").get("/api/v1/tenants")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


def api_token_id(api: Api, name: str) -> int:
    return next(int(t["id"]) for t in api.admins.list_tokens() if t["name"] == name)


async def test_each_scope_is_limited(api: Api) -> None:
    reader, operator, admin = api.as_("reader"), api.as_("operator"), api.as_("admin")
    assert (await reader.get("/api/v1/extensions")).status_code == 200
    reader_cases: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/alerts/1/ack", None),
        ("POST", "/api/v1/bans", {"address": "203.0.113.1"}),
        ("DELETE", "/api/v1/calls/a1b2@192.0.2.1", None),
        ("POST", "/api/v1/tenants/default/extensions/1000/suspend", None),
        ("PUT", "/api/v1/tenants/default/extensions/1000/forwarding/busy", {"target": "1001"}),
        ("POST", "/api/v1/tenants/default/extensions", {"number": "1009"}),
    ]
    for method, path, body in reader_cases:
        refused = await reader.request(method, path, json=body)
        assert refused.status_code == 403, (method, path)
        assert "read-only" in refused.json()["detail"]
    operator_cases: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/tenants/default/extensions", {"number": "1009"}),
        ("POST", "/api/v1/tenants", {"name": "x", "realm": "x.example"}),
        ("POST", "/api/v1/tenants/default/trunks", {"name": "t", "host": "192.0.2.9"}),
        ("POST", "/api/v1/tenants/default/dids", {"number": "+12025550111", "extension": "1000"}),
        ("POST", "/api/v1/tenants/default/extensions/1000/password", None),
        ("PUT", "/api/v1/tenants/default/extensions/1000/networks", {"networks": []}),
        ("POST", "/api/v1/admins", {"username": "eve"}),
        ("POST", "/api/v1/tokens", {"name": "t"}),
        ("GET", "/api/v1/tokens", None),
        ("GET", "/api/v1/admins", None),
    ]
    for method, path, body in operator_cases:
        refused = await operator.request(method, path, json=body)
        assert refused.status_code == 403, (method, path)
    # what an operator may do
    assert (await operator.post("/api/v1/alerts/1/ack")).status_code == 200
    assert (await operator.delete("/api/v1/calls/a1b2@192.0.2.1")).status_code == 200
    ext = "/api/v1/tenants/default/extensions/1000"
    assert (await operator.post(f"{ext}/suspend")).status_code == 200
    assert (await operator.post(f"{ext}/resume")).status_code == 200
    assert (await admin.post(f"{ext}/password")).status_code == 200
    too_much = await admin.post("/api/v1/admins", json={"username": "x1", "role": "superuser"})
    assert too_much.status_code == 422


async def test_tenant_bound_credentials_see_only_their_tenant(api: Api) -> None:
    for name in ("acme-admin", "acme-reader"):
        acme = api.as_(name)
        cdrs = (await acme.get("/api/v1/cdrs")).json()["items"]
        assert {c["tenant"] for c in cdrs} == {"acme"}
        assert (await acme.get("/api/v1/cdrs", params={"tenant": "default"})).json()["items"] == []
        csv_text = (await acme.get("/api/v1/cdrs", params={"format": "csv"})).text
        assert "default" not in csv_text and "acme" in csv_text
        assert [e["tenant"] for e in (await acme.get("/api/v1/extensions")).json()] == ["acme"]
        assert (await acme.get("/api/v1/extensions", params={"tenant": "default"})).json() == []
        assert {a["tenant"] for a in (await acme.get("/api/v1/alerts")).json()} == {"acme"}
        assert [t["tenant"] for t in (await acme.get("/api/v1/tenants")).json()] == ["acme"]
        assert [c["tenant"] for c in (await acme.get("/api/v1/calls")).json()] == ["acme"]

        # another tenant's resources answer exactly like ones that do not exist
        for existing, missing in [
            ("/api/v1/tenants/default/extensions", "/api/v1/tenants/nosuch/extensions"),
            (
                "/api/v1/tenants/default/extensions/1000",
                "/api/v1/tenants/nosuch/extensions/1000",
            ),
            (
                "/api/v1/tenants/default/extensions/1000/forwarding",
                "/api/v1/tenants/nosuch/extensions/1000/forwarding",
            ),
        ]:
            a, b = await acme.get(existing), await acme.get(missing)
            assert a.status_code == b.status_code == 404
            assert a.json()["detail"] == b.json()["detail"].replace("nosuch", "default")
    acme = api.as_("acme-admin")
    default_alert = next(a["id"] for a in api.store.list_alerts() if a["tenant"] == "default")
    a, b = (
        await acme.post(f"/api/v1/alerts/{default_alert}/ack"),
        await acme.post("/api/v1/alerts/9999/ack"),
    )
    assert a.status_code == b.status_code == 404
    assert a.json()["detail"] == f"no alert {default_alert}"
    a, b = await acme.delete("/api/v1/calls/a1b2@192.0.2.1"), await acme.delete("/api/v1/calls/x")
    assert a.status_code == b.status_code == 404 and api.control.ended == []
    made = await acme.post("/api/v1/tenants/default/extensions", json={"number": "1010"})
    assert made.status_code == 404 and not api.store.extension_exists("default", "1010")
    assert (await acme.post("/api/v1/tenants/acme/extensions", json={"number": "2001"})).is_success
    refused = await acme.post("/api/v1/tenants", json={"name": "x", "realm": "x.example"})
    assert refused.status_code == 403 and "tenant-bound" in refused.json()["detail"]
    assert (await acme.get("/api/v1/bans")).status_code == 403
    assert (await acme.get("/metrics")).status_code == 403
    # admins and tokens it makes stay in its tenant
    other = await acme.post(
        "/api/v1/admins", json={"username": "mallory", "role": "admin", "tenant": "default"}
    )
    assert other.status_code == 404
    own = await acme.post("/api/v1/admins", json={"username": "acme-ops", "role": "operator"})
    assert own.status_code == 201 and own.json()["tenant"] == "acme"
    token = await acme.post("/api/v1/tokens", json={"name": "acme-ci", "scope": "operator"})
    assert token.status_code == 201 and token.json()["tenant"] == "acme"
    assert {a["tenant"] for a in (await acme.get("/api/v1/admins")).json()} == {"acme"}
    assert {t["tenant"] for t in (await acme.get("/api/v1/tokens")).json()} == {"acme"}
    root_token = api_token_id(api, "admin")
    assert (await acme.delete(f"/api/v1/tokens/{root_token}")).status_code == 404
    audit = (await acme.get("/api/v1/audit")).json()["items"]
    assert audit and {e["tenant"] for e in audit} == {"acme"}


# -- sessions --------------------------------------------------------------------------


async def test_login_session_cookie_and_csrf(api: Api) -> None:
    browser = api.client()
    response = await login(browser, "root", ROOT_PASSWORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["username"] == "root" and body["role"] == "admin" and body["csrf_token"]
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("pbxw_session=")
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # cookie_secure = false in these tests
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert len(session_id) >= 43  # 256 bits, URL-safe base64

    assert (await browser.get("/api/v1/auth/me")).json()["kind"] == "session"
    new_ext = {"number": "1020"}
    no_csrf = await browser.post("/api/v1/tenants/default/extensions", json=new_ext)
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["detail"]
    wrong = await browser.post(
        "/api/v1/tenants/default/extensions", json=new_ext, headers={"X-CSRF-Token": "guess"}
    )
    assert wrong.status_code == 403
    csrf = {"X-CSRF-Token": body["csrf_token"]}
    made = await browser.post("/api/v1/tenants/default/extensions", json=new_ext, headers=csrf)
    assert made.status_code == 201

    assert (await browser.post("/api/v1/auth/logout")).status_code == 403  # CSRF here too
    assert (await browser.post("/api/v1/auth/logout", headers=csrf)).status_code == 200
    stolen = api.client(cookies={"pbxw_session": session_id})
    assert (await stolen.get("/api/v1/auth/me")).status_code == 401


async def test_session_expires(api: Api) -> None:
    browser = api.client()
    assert (await login(browser, "root", ROOT_PASSWORD)).status_code == 200
    assert (await browser.get("/api/v1/tenants")).status_code == 200
    api.clock.advance(8 * 3600 + 1)
    assert (await browser.get("/api/v1/tenants")).status_code == 401


async def test_read_only_session_cannot_change_anything(api: Api) -> None:
    api.admins.add_admin("viewer", "orchid-basalt-tambourine-8", "read-only")
    browser = api.client()
    csrf = (await login(browser, "viewer", "orchid-basalt-tambourine-8")).json()["csrf_token"]
    response = await browser.post(
        "/api/v1/bans", json={"address": "203.0.113.5"}, headers={"X-CSRF-Token": csrf}
    )
    assert response.status_code == 403


async def test_secure_cookie_by_default(start_api: ApiFactory) -> None:
    api = await start_api(cookie_secure=True)
    response = await login(api.client(), "root", ROOT_PASSWORD)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-pbxw_session=") and "secure" in cookie.lower()


async def test_login_with_totp(api: Api) -> None:
    secret = api.admins.set_totp("root", True)
    assert secret is not None
    browser = api.client()
    assert (await login(browser, "root", ROOT_PASSWORD)).status_code == 401
    assert (await login(browser, "root", ROOT_PASSWORD, "000000")).status_code in (401,)
    code = pyotp.TOTP(secret).at(api.clock.now)
    ok = await login(browser, "root", ROOT_PASSWORD, code)
    assert ok.status_code == 200, ok.text
    replay = await login(api.client(), "root", ROOT_PASSWORD, code)
    assert replay.status_code == 401  # a code is good once
    api.clock.advance(30)
    assert (
        await login(api.client(), "root", ROOT_PASSWORD, pyotp.TOTP(secret).at(api.clock.now))
    ).is_success


# -- throttling ------------------------------------------------------------------------


async def test_login_lockout_per_user_name(start_api: ApiFactory) -> None:
    api = await start_api(login_failure_limit=3, lockout_seconds=600)
    client = api.client()
    wrong = [await login(client, "root", f"wrong-{i}") for i in range(3)]
    unknown = [await login(client, "nobody", f"wrong-{i}") for i in range(3)]
    assert [r.status_code for r in wrong + unknown] == [401] * 6
    # an unknown user and a wrong password are one and the same answer
    assert {r.json()["detail"] for r in wrong + unknown} == {"invalid user name, password or code"}
    locked = await login(client, "root", ROOT_PASSWORD)  # the right password, too late
    assert locked.status_code == 429
    assert 590 <= int(locked.headers["retry-after"]) <= 600
    assert_security_headers(locked)
    assert (await login(client, "nobody", "x")).status_code == 429  # same for unknown users
    assert (await login(client, "acme-boss", ACME_PASSWORD)).status_code == 200  # others: fine
    api.clock.advance(601)
    assert (await login(client, "root", ROOT_PASSWORD)).status_code == 200


async def test_login_lockout_per_source_address(start_api: ApiFactory) -> None:
    api = await start_api(login_failure_limit=50, login_source_failure_limit=4)
    client = api.client()
    for i in range(4):
        assert (await login(client, f"user{i}", "guess")).status_code == 401
    response = await login(client, "root", ROOT_PASSWORD)
    assert response.status_code == 429 and int(response.headers["retry-after"]) > 0


# -- network allow list and headers ----------------------------------------------------


async def test_admin_networks_refuse_other_addresses_first(start_api: ApiFactory) -> None:
    api = await start_api(admin_networks=["10.0.0.0/8", "2001:db8::/32"])
    for client, path in [
        (api.client(), "/healthz"),
        (api.client(), "/openapi.json"),
        (api.as_("admin"), "/api/v1/tenants"),
        (api.client(), "/api/v1/auth/login"),
    ]:
        response = await client.get(path)
        assert response.status_code == 403, path
        assert "may not use the admin API" in response.json()["detail"]
        assert_security_headers(response)
    response = await login(api.client(), "root", ROOT_PASSWORD)
    assert response.status_code == 403 and "set-cookie" not in response.headers


async def test_security_headers_on_every_answer(api: Api) -> None:
    admin = api.as_("admin")
    responses = [
        await admin.get("/api/v1/tenants"),
        await admin.get("/api/v1/tenants/nosuch/extensions"),
        await admin.post("/api/v1/tenants", json={"name": "BAD"}),
        await admin.get("/no/such/route"),
        await api.client().get("/healthz"),
        await admin.get("/metrics"),
        await admin.get("/api/v1/cdrs", params={"format": "csv"}),
    ]
    assert [r.status_code for r in responses] == [200, 404, 422, 404, 200, 200, 200]
    for response in responses:
        assert_security_headers(response)
        assert response.headers.get("server") is None


async def test_bad_input_is_4xx_with_a_readable_detail(api: Api) -> None:
    admin = api.as_("admin")
    cases = [
        await admin.post(
            "/api/v1/tenants", content=b"{not json", headers={"content-type": "application/json"}
        ),
        await admin.post("/api/v1/tenants", json={"name": "ok", "realm": "r.example", "extra": 1}),
        await admin.post("/api/v1/bans", json={"address": "203.0.113.1", "duration": 10**30}),
        await admin.get("/api/v1/cdrs", params={"limit": 10**20}),
        await admin.get("/api/v1/cdrs", params={"since": "nan"}),
        await admin.post("/api/v1/alerts/99999999999999999999999/ack"),
        await admin.post(
            "/api/v1/tenants",
            content=b"name=x",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        await admin.post("/api/v1/tenants", json={"name": "x", "realm": "x.example\x00"}),
        await admin.post("/api/v1/tenants/default/extensions", json={"number": "1000"}),
    ]
    assert [c.status_code for c in cases] == [422] * 8 + [409]
    for response in cases:
        assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    too_big = await admin.post(
        "/api/v1/tenants", content=b"x" * 100_000, headers={"content-type": "application/json"}
    )
    assert too_big.status_code == 413

    async def chunks(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield b" " * 1000
        yield b'{"name": "chunked", "realm": "chunked.example"}'

    chunked = {"content-type": "application/json"}
    assert (
        await admin.post("/api/v1/tenants", content=chunks(100), headers=chunked)
    ).status_code == 413
    assert (
        await admin.post("/api/v1/tenants", content=chunks(2), headers=chunked)
    ).status_code == 201


async def test_weak_admin_password_refused_with_the_reason(api: Api) -> None:
    admin = api.as_("admin")
    weak = await admin.post("/api/v1/admins", json={"username": "erin", "password": "password123"})
    assert weak.status_code == 400
    assert "too weak" in weak.json()["detail"] and "common" in weak.json()["detail"]
    assert api.admins.get_admin("erin") is None


# -- audit -----------------------------------------------------------------------------


async def test_changes_are_audited_with_before_after_and_no_secrets(api: Api) -> None:
    admin = api.as_("admin")
    secrets_seen = [ROOT_PASSWORD, *api.tokens.values()]
    browser = api.client()
    csrf = (await login(browser, "root", ROOT_PASSWORD)).json()["csrf_token"]
    made = await browser.post(
        "/api/v1/tenants/default/extensions",
        json={"number": "1030"},
        headers={"X-CSRF-Token": csrf},
    )
    secrets_seen += [made.json()["password"], csrf]
    rotated = await admin.post("/api/v1/tenants/default/extensions/1030/password")
    secrets_seen.append(rotated.json()["password"])
    await admin.put(
        "/api/v1/tenants/default/extensions/1030/networks", json={"networks": ["192.0.2.0/24"]}
    )
    await admin.put(
        "/api/v1/tenants/default/extensions/1030/forwarding/always", json={"target": "1000"}
    )
    new_admin = await admin.post(
        "/api/v1/admins", json={"username": "frank", "password": "saffron-glacier-piano-63"}
    )
    assert new_admin.status_code == 201
    secrets_seen.append("saffron-glacier-piano-63")
    generated = await admin.post("/api/v1/admins", json={"username": "grace"})
    secrets_seen.append(generated.json()["password"])
    token = await admin.post("/api/v1/tokens", json={"name": "backup", "scope": "operator"})
    secrets_seen.append(token.json()["token"])
    await login(api.client(), "root", "a-password-that-is-wrong-123")
    secrets_seen.append("a-password-that-is-wrong-123")

    entries = api.admins.list_audit(limit=100)
    by_action = {e["action"]: e for e in entries}
    assert {
        "auth.login",
        "extension.create",
        "extension.password",
        "extension.networks",
        "forwarding.set",
        "admin.create",
        "token.create",
    } <= set(by_action)
    assert by_action["extension.create"]["actor"] == "root"  # the session's admin
    assert by_action["extension.password"]["actor"] == "root/token:admin#1"
    assert by_action["extension.networks"]["before"] == {"networks": None}
    assert by_action["extension.networks"]["after"] == {"networks": "192.0.2.0/24"}
    assert by_action["forwarding.set"]["before"] == {"always": None}
    assert by_action["forwarding.set"]["after"]["always"] == "1000"
    assert by_action["token.create"]["after"]["name"] == "backup"
    assert all(e["source"] == "127.0.0.1" for e in entries)

    data = b"".join(
        p.read_bytes() for p in api.db_path.parent.glob(api.db_path.name + "*") if p.is_file()
    )
    for secret in secrets_seen:
        assert secret.encode() not in data, secret[:6]


async def test_a_change_that_skipped_auditing_still_leaves_an_entry(tmp_path: Path) -> None:
    """Belt and braces: a route that forgets to audit is caught by the front door."""
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    store.migrate()
    admins = AdminStore(store)
    tokens = seed(store, admins, time.time())
    app = create_app(store, Config.model_validate({"http": {"cookie_secure": False}}))

    @app.post("/api/v1/forgetful")
    def forgetful(principal: Admin) -> dict[str, bool]:
        return {"changed": True}

    handle = await start_http(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{handle.port}",
            headers={"Authorization": f"Bearer {tokens['admin']}"},
        ) as client:
            assert (await client.post("/api/v1/forgetful")).status_code == 200
    finally:
        await handle.stop()
    [entry] = admins.list_audit()
    assert entry["action"] == "POST /api/v1/forgetful"
    assert entry["actor"] == "root/token:admin#1" and entry["source"] == "127.0.0.1"
    store.close()
