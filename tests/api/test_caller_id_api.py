"""Caller ID over the REST API: only a DID of the tenant can be presented, withholding,
the per-trunk P-Asserted-Identity switch for global admins; every change audited."""

from __future__ import annotations

from tests.api.conftest import Api

EXT = "/api/v1/tenants/default/extensions"


async def test_only_a_tenants_own_did_is_presented(api: Api) -> None:
    admin = api.as_("admin")
    api.store.add_did("+12025550100", "default", "1000")
    assert (await admin.get(f"{EXT}/1000")).json()["caller_id"] is None
    foreign = await admin.put(f"{EXT}/1000/caller-id", json={"number": "+12025550199"})
    assert foreign.status_code == 400 and "not a DID of tenant default" in foreign.text
    bad = await admin.put(f"{EXT}/1000/caller-id", json={"withhold": "sometimes"})
    assert bad.status_code == 422
    denied = await api.as_("operator").put(f"{EXT}/1000/caller-id", json={"withhold": True})
    assert denied.status_code == 403
    made = await admin.put(
        f"{EXT}/1000/caller-id", json={"number": "(202) 555-0100", "withhold": True}
    )
    assert made.status_code == 200, made.text
    assert (made.json()["caller_id"], made.json()["withhold_caller_id"]) == ("+12025550100", True)
    auth = api.store.extension_auth("pbxwarden", "1000")
    assert auth is not None and auth.caller_id == "+12025550100" and auth.withhold_caller_id
    back = await admin.put(f"{EXT}/1000/caller-id", json={"default": True, "withhold": False})
    assert (back.json()["caller_id"], back.json()["withhold_caller_id"]) == (None, False)
    missing = await admin.put(f"{EXT}/1999/caller-id", json={"withhold": True})
    assert missing.status_code == 404
    entries = (await admin.get("/api/v1/audit")).json()["items"]
    changes = [e for e in entries if e["action"] == "extension.caller_id"]
    assert len(changes) == 2
    assert {"caller_id": "+12025550100", "withhold_caller_id": True} in [
        c["after"] for c in changes
    ]
