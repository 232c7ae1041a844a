"""Extension locks and SIP password strength through the real admin API."""

from __future__ import annotations

import time

from pbxwarden.firewall.locks import ExtensionLock
from pbxwarden.sip.digest import Algorithm, compute_ha1
from tests.api.conftest import Api

EXT = "/api/v1/tenants/default/extensions"


def ha1(api: Api, number: str) -> str:
    auth = api.store.extension_auth("pbxwarden", number)
    assert auth is not None
    return auth.ha1[Algorithm.MD5]


def lock(api: Api, number: str = "1000", made: float | None = None) -> None:
    from pbxwarden.store.locks import LockStore

    auth = api.store.extension_auth("pbxwarden", number)
    assert auth is not None
    now = time.time() if made is None else made
    LockStore(api.store).save_locks(
        [ExtensionLock(auth.id, now + 3600, 1, now, "12 failed authentications", ("192.0.2.9",))]
    )


async def test_weak_sip_passwords_are_refused_with_the_reason(api: Api) -> None:
    admin = api.as_("admin")
    for weak in ("password1234", "qwertyuiop12", "Zx9!"):
        made = await admin.post(EXT, json={"number": "1002", "password": weak})
        assert made.status_code == 400, made.text
        detail = made.json()["detail"]
        assert "too weak" in detail or "too short" in detail, detail
        assert weak not in detail
    assert api.store.extension_auth("pbxwarden", "1002") is None
    made = await admin.post(EXT, json={"number": "1002", "password": "Juniper-Quarry-6613"})
    assert made.status_code == 201 and made.json()["password"] is None  # not echoed
    assert ha1(api, "1002") == compute_ha1(
        "1002", "pbxwarden", "Juniper-Quarry-6613", Algorithm.MD5
    )
    before = ha1(api, "1000")
    weak = await admin.post(f"{EXT}/1000/password", json={"password": "password1234"})
    assert weak.status_code == 400 and "too weak" in weak.json()["detail"]
    assert ha1(api, "1000") == before  # nothing lost
    ok = await admin.post(f"{EXT}/1000/password", json={"password": "Orchid-Tundra-2291"})
    assert ok.status_code == 200 and ok.json()["password"] is None
    assert ha1(api, "1000") == compute_ha1("1000", "pbxwarden", "Orchid-Tundra-2291", Algorithm.MD5)
    log = (await admin.get("/api/v1/audit")).text
    assert "Juniper-Quarry-6613" not in log and "Orchid-Tundra-2291" not in log


async def test_a_lock_shows_on_the_extension_and_an_operator_lifts_it(api: Api) -> None:
    lock(api)
    reader = api.as_("reader")
    one = (await reader.get(f"{EXT}/1000")).json()
    assert one["locked_until"] > time.time() and "failed" in one["lock_reason"]
    assert (await reader.get(f"{EXT}/1001")).json()["locked_until"] is None
    assert (await reader.post(f"{EXT}/1000/unlock")).status_code == 403
    other = await api.as_("acme-reader").post(f"{EXT}/1000/unlock")
    assert other.status_code in (403, 404)
    operator = api.as_("operator")
    lifted = await operator.post(f"{EXT}/1000/unlock")
    assert lifted.status_code == 200 and lifted.json()["locked"] is False
    assert (await reader.get(f"{EXT}/1000")).json()["locked_until"] is None
    again = await operator.post(f"{EXT}/1000/unlock")
    assert again.status_code == 409 and "not locked" in again.json()["detail"]
    entries = (await api.as_("admin").get("/api/v1/audit")).json()["items"]
    assert any(e["action"] == "extension.unlock" for e in entries)


async def test_a_new_password_lifts_the_lock(api: Api) -> None:
    lock(api, made=time.time() - 10)
    admin = api.as_("admin")
    assert (await admin.get(f"{EXT}/1000")).json()["locked_until"] is not None
    assert (await admin.post(f"{EXT}/1000/password")).status_code == 200
    assert (await admin.get(f"{EXT}/1000")).json()["locked_until"] is None


async def test_trunk_access_is_off_by_default_and_set_by_an_admin(api: Api) -> None:
    admin = api.as_("admin")
    assert (await admin.get(f"{EXT}/1000")).json()["trunk_access"] is False
    denied = await api.as_("operator").put(f"{EXT}/1000/trunk-access", json={"allow": True})
    assert denied.status_code == 403
    bad = await admin.put(f"{EXT}/1000/trunk-access", json={"allow": "maybe"})
    assert bad.status_code == 422
    made = await admin.put(f"{EXT}/1000/trunk-access", json={"allow": True})
    assert made.status_code == 200 and made.json()["trunk_access"] is True
    auth = api.store.extension_auth("pbxwarden", "1000")
    assert auth is not None and auth.trunk_access
    missing = await admin.put(f"{EXT}/1999/trunk-access", json={"allow": True})
    assert missing.status_code == 404
    entries = (await admin.get("/api/v1/audit")).json()["items"]
    [entry] = [e for e in entries if e["action"] == "extension.trunk_access"]
    assert entry["before"] == {"trunk_access": False} and entry["after"] == {"trunk_access": True}
