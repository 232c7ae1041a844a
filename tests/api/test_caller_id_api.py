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


async def test_a_trunks_transfer_switch_is_the_providers(api: Api) -> None:
    """Whether a carrier's REFERs are performed (and whether it gets P-Asserted-Identity):
    off by default, set by a global admin only (a tenant admin gets 403, even for its own
    tenant's trunk), audited."""
    api.store.add_trunk("acme", "carrier", "192.0.2.7", 5060, "udp", ["+1"])
    url = "/api/v1/tenants/acme/trunks/carrier/transfers"
    listed = (await api.as_("admin").get("/api/v1/trunks")).json()
    trunks = listed["items"] if isinstance(listed, dict) else listed
    assert [t["accept_transfers"] for t in trunks if t["name"] == "carrier"] == [False]
    tenant_admin = await api.as_("acme-admin").put(url, json={"accept": True})
    assert tenant_admin.status_code == 403, tenant_admin.text
    bad = await api.as_("admin").put(url, json={"accept": "maybe"})
    assert bad.status_code == 422
    made = await api.as_("admin").put(url, json={"accept": True})
    assert made.status_code == 200 and made.json()["accept_transfers"] is True, made.text
    assert api.store.routing_snapshot().trunk_named("acme", "carrier").accept_transfers
    missing = await api.as_("admin").put(
        "/api/v1/tenants/acme/trunks/nowhere/transfers", json={"accept": True}
    )
    assert missing.status_code == 404, missing.text
    identity = "/api/v1/tenants/acme/trunks/carrier/identity"
    assert (
        await api.as_("acme-admin").put(identity, json={"assert_identity": False})
    ).status_code == 403
    plain = await api.as_("admin").put(identity, json={"assert_identity": False})
    assert plain.status_code == 200 and plain.json()["assert_identity"] is False, plain.text
    assert plain.json()["accept_transfers"] is True  # one switch leaves the other alone
    entries = (await api.as_("admin").get("/api/v1/audit")).json()["items"]
    assert [e["after"] for e in entries if e["action"] == "trunk.identity"] == [
        {"assert_identity": False}
    ]
    [change] = [e for e in entries if e["action"] == "trunk.transfers"]
    assert (change["before"], change["after"]) == (
        {"accept_transfers": False},
        {"accept_transfers": True},
    )
