"""``GET /api/v1/security-audit`` over real HTTP: admins only, tenant-bound callers see
their tenant's findings and nothing server-wide; the API fingerprints the passwords it
sets when it has the install secret."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from pbxwarden.api.app import create_app
from pbxwarden.api.serve import start_http
from pbxwarden.config import Config
from pbxwarden.store.admin import AdminStore
from pbxwarden.store.credentials import trunk_credential_key
from pbxwarden.store.db import Store, password_fingerprint, password_fingerprint_key
from pbxwarden.store.models import Extension
from tests.api.conftest import Api, FakeClock, FakeControl, seed

pytestmark = pytest.mark.timeout(30)

SECRET = b"s" * 32
SHARED = "blue-horse-staple-42"


@pytest.fixture
async def keyed_api(tmp_path: Path) -> AsyncIterator[Api]:
    """Like the ``api`` fixture, with the install secret given to the app."""
    db_path = tmp_path / "keyed.db"
    store = Store(f"sqlite:///{db_path}")
    store.migrate()
    admins = AdminStore(store)
    clock = FakeClock()
    tokens = seed(store, admins, clock.now)
    config = Config.model_validate({"http": {"cookie_secure": False}})
    app = create_app(store, config, None, clock, secret=SECRET)
    handle = await start_http(app, "127.0.0.1", 0)
    api = Api(f"http://127.0.0.1:{handle.port}", store, admins, db_path, clock, FakeControl())
    api.tokens.update(tokens)
    try:
        yield api
    finally:
        for client in api.clients:
            await client.aclose()
        await handle.stop()
        store.close()


async def _findings(client: httpx.AsyncClient, **params: str) -> list[dict[str, str]]:
    response = await client.get("/api/v1/security-audit", params=params)
    assert response.status_code == 200, response.text
    body: list[dict[str, str]] = response.json()
    return body


async def test_global_admin_sees_everything(api: Api) -> None:
    findings = await _findings(api.as_("admin"))
    keys = {(f["id"], f["tenant"], f["subject"]) for f in findings}
    assert {
        ("admin-no-totp", None, "admin root"),
        ("admin-no-totp", "acme", "admin acme-boss"),
        ("extension-no-acl", "default", "extension 1000"),
        ("extension-no-acl", "acme", "extension 2000"),
        ("alerts-no-channel", None, "[alerts]"),
        ("sip-digest-md5-only", None, "sip.digest_algorithms"),
    } <= keys
    # the seeded passwords were set without fingerprints: reuse cannot be judged
    assert ("sip-password-reuse-unknown", "default", "extensions 1000, 1001") in keys
    high = await _findings(api.as_("admin"), min_severity="high")
    assert high and all(f["severity"] in ("critical", "high") for f in high)
    assert {f["subject"] for f in high} == {"admin root", "admin acme-boss"}


async def test_tenant_bound_admin_sees_only_its_tenant(api: Api) -> None:
    findings = await _findings(api.as_("acme-admin"))
    assert findings and {f["tenant"] for f in findings} == {"acme"}
    subjects = {(f["id"], f["subject"]) for f in findings}
    assert ("extension-no-acl", "extension 2000") in subjects
    assert ("admin-no-totp", "admin acme-boss") in subjects


async def test_only_admins(api: Api) -> None:
    for name in ("reader", "operator", "acme-reader"):
        response = await api.as_(name).get("/api/v1/security-audit")
        assert response.status_code == 403, (name, response.text)
    assert (await api.client().get("/api/v1/security-audit")).status_code == 401
    bad = await api.as_("admin").get("/api/v1/security-audit", params={"min_severity": "x"})
    assert bad.status_code == 422
    # the audit *log* keeps its address
    assert (await api.as_("admin").get("/api/v1/audit")).status_code == 200


def _fingerprint(store: Store, number: str) -> str | None:
    with store.engine.connect() as conn:
        value: str | None = conn.execute(
            select(Extension.password_fingerprint).where(Extension.number == number)
        ).scalar_one()
        return value


async def test_api_fingerprints_passwords_and_reuse_is_found(keyed_api: Api) -> None:
    key = password_fingerprint_key(SECRET)
    admin = keyed_api.as_("admin")
    made = await admin.post("/api/v1/tenants/default/extensions", json={"number": "1005"})
    assert made.status_code == 201, made.text
    assert _fingerprint(keyed_api.store, "1005") == password_fingerprint(
        key, made.json()["password"]
    )
    rotated = await admin.post("/api/v1/tenants/default/extensions/1005/password")
    assert rotated.status_code == 200, rotated.text
    assert _fingerprint(keyed_api.store, "1005") == password_fingerprint(
        key, rotated.json()["password"]
    )

    keyed_api.store.add_extensions([("1010", SHARED), ("1011", SHARED)], fingerprint_key=key)
    keyed_api.store.add_extensions([("2010", SHARED)], tenant="acme", fingerprint_key=key)
    findings = await _findings(admin)
    [reused] = [f for f in findings if f["id"] == "sip-password-reused"]
    assert reused["tenant"] is None and reused["severity"] == "high"
    assert reused["subject"] == "extensions acme/2010, default/1010, default/1011"
    assert SHARED not in str(findings) and password_fingerprint(key, SHARED) not in str(findings)
    # another tenant's password is none of acme's business
    acme = await _findings(keyed_api.as_("acme-admin"))
    assert not [f for f in acme if f["id"] == "sip-password-reused"]


async def test_without_the_secret_rotation_clears_the_fingerprint(api: Api) -> None:
    key = password_fingerprint_key(SECRET)
    api.store.add_extensions([("1010", SHARED)], fingerprint_key=key)
    rotated = await api.as_("admin").post("/api/v1/tenants/default/extensions/1010/password")
    assert rotated.status_code == 200, rotated.text
    assert _fingerprint(api.store, "1010") is None


async def test_trunk_credentials_sealed_never_returned(keyed_api: Api, api: Api) -> None:
    password = "carrier-digest-pass-77"
    body = {
        "name": "carrier",
        "host": "198.51.100.10",
        "username": "pbx1",
        "password": password,
        "keep_registered": True,
    }
    created = await keyed_api.as_("admin").post("/api/v1/tenants/default/trunks", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["credentials"] is True and created.json()["keep_registered"] is True
    listed = await keyed_api.as_("admin").get("/api/v1/trunks")
    assert password not in listed.text and password not in created.text
    assert password.encode() not in keyed_api.db_path.read_bytes()
    [trunk] = keyed_api.store.routing_snapshot(credential_key=trunk_credential_key(SECRET)).trunks
    assert trunk.password == password and trunk.username == "pbx1"
    # without the install secret the API cannot seal a password: it says so
    refused = await api.as_("admin").post("/api/v1/tenants/default/trunks", json=body)
    assert refused.status_code == 503 and "install secret" in refused.json()["detail"]
