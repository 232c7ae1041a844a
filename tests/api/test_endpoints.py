"""Every admin API endpoint's happy path, over real HTTP to a real server on loopback."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from pbxwarden.api.app import create_app
from pbxwarden.config import Config
from pbxwarden.sip.digest import Algorithm, compute_ha1
from pbxwarden.store.db import Store
from tests.api.conftest import Api, ApiFactory

pytestmark = pytest.mark.timeout(20)


async def test_health_docs_and_openapi(api: Api) -> None:
    anon = api.client()
    health = await anon.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    schema = (await anon.get("/openapi.json")).json()
    assert "/api/v1/cdrs" in schema["paths"] and "/api/v1/auth/login" in schema["paths"]
    docs = await anon.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "cdn" not in docs.text and "unsafe" not in docs.headers["content-security-policy"]


async def test_tenants(api: Api) -> None:
    admin = api.as_("admin")
    listed = (await admin.get("/api/v1/tenants")).json()
    assert {t["tenant"] for t in listed} == {"default", "acme"}
    made = await admin.post(
        "/api/v1/tenants", json={"name": "globex", "realm": "sip.globex.example", "country": "DE"}
    )
    assert made.status_code == 201, made.text
    assert made.json() == {
        "tenant": "globex",
        "realm": "sip.globex.example",
        "country": "DE",
        "extensions": 0,
    }
    again = await admin.post("/api/v1/tenants", json={"name": "globex", "realm": "x.example"})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]


async def test_extensions_create_rotate_acl_suspend(api: Api) -> None:
    admin = api.as_("admin")
    made = await admin.post(
        "/api/v1/tenants/default/extensions", json={"number": "1002", "display_name": "Desk"}
    )
    assert made.status_code == 201, made.text
    password = made.json()["password"]
    assert len(password) >= 20
    auth = api.store.extension_auth("pbxwarden", "1002")
    assert auth is not None
    assert auth.ha1[Algorithm.MD5] == compute_ha1("1002", "pbxwarden", password, Algorithm.MD5)

    one = (await admin.get("/api/v1/tenants/default/extensions/1002")).json()
    assert one["display_name"] == "Desk" and "password" not in one
    listed = (await admin.get("/api/v1/tenants/default/extensions")).json()
    assert [e["number"] for e in listed] == ["1000", "1001", "1002"]
    flat = (await admin.get("/api/v1/extensions", params={"tenant": "acme"})).json()
    assert [e["number"] for e in flat] == ["2000"]

    rotated = await admin.post("/api/v1/tenants/default/extensions/1002/password")
    assert rotated.status_code == 200
    new = rotated.json()["password"]
    assert new != password
    auth = api.store.extension_auth("pbxwarden", "1002")
    assert auth is not None
    assert auth.ha1[Algorithm.SHA256] == compute_ha1("1002", "pbxwarden", new, Algorithm.SHA256)

    acl = await admin.put(
        "/api/v1/tenants/default/extensions/1002/networks",
        json={"networks": ["192.0.2.0/24", "2001:db8::/48"]},
    )
    assert acl.status_code == 200 and acl.json()["networks"] == "192.0.2.0/24, 2001:db8::/48"
    bad = await admin.put(
        "/api/v1/tenants/default/extensions/1002/networks", json={"networks": ["nonsense"]}
    )
    assert bad.status_code == 400 and "not a network" in bad.json()["detail"]

    operator = api.as_("operator")
    suspended = await operator.post(
        "/api/v1/tenants/default/extensions/1002/suspend", json={"reason": "fraud suspected"}
    )
    assert suspended.status_code == 200 and suspended.json()["suspended"] is True
    assert (
        await operator.post("/api/v1/tenants/default/extensions/1002/suspend")
    ).status_code == 409
    one = (await admin.get("/api/v1/tenants/default/extensions/1002")).json()
    assert one["suspended"].startswith("fraud suspected")
    resumed = await operator.post("/api/v1/tenants/default/extensions/1002/resume")
    assert resumed.status_code == 200 and resumed.json()["suspended"] is False
    missing = await admin.get("/api/v1/tenants/default/extensions/1999")
    assert (
        missing.status_code == 404
        and missing.json()["detail"] == "no extension 1999 in tenant default"
    )


async def test_trunks_and_dids(api: Api) -> None:
    admin = api.as_("admin")
    trunk = await admin.post(
        "/api/v1/tenants/default/trunks",
        json={"name": "carrier", "host": "198.51.100.10", "prefixes": ["+1"]},
    )
    assert trunk.status_code == 201, trunk.text
    assert trunk.json()["host"] == "198.51.100.10"
    assert [t["name"] for t in (await admin.get("/api/v1/trunks")).json()] == ["carrier"]
    bad = await admin.post(
        "/api/v1/tenants/default/trunks", json={"name": "x", "host": "carrier.example"}
    )
    assert bad.status_code == 400 and "IP address" in bad.json()["detail"]

    did = await admin.post(
        "/api/v1/tenants/default/dids", json={"number": "+12025550100", "extension": "1000"}
    )
    assert did.status_code == 201, did.text
    assert did.json() == {"number": "+12025550100", "tenant": "default", "extension": "1000"}
    assert (await admin.get("/api/v1/dids")).json() == [did.json()]
    dup = await admin.post(
        "/api/v1/tenants/default/dids", json={"number": "+12025550100", "extension": "1000"}
    )
    assert dup.status_code == 409


async def test_forwarding_set_list_clear(api: Api) -> None:
    operator = api.as_("operator")
    base = "/api/v1/tenants/default/extensions/1000/forwarding"
    assert (await operator.get(base)).json()["always"] is None
    set_ = await operator.put(f"{base}/busy", json={"target": "1001"})
    assert set_.status_code == 200, set_.text
    assert set_.json()["busy"] == "1001"
    set_ = await operator.put(f"{base}/noanswer", json={"target": "+12025550123", "ring_time": 15})
    assert set_.status_code == 200, set_.text
    assert set_.json()["noanswer"] == "+12025550123" and set_.json()["ring_time"] == 15
    # The attack pbxwarden exists to stop: a diversion to a premium-rate number.
    refused = await operator.put(f"{base}/always", json={"target": "+19005550199"})
    assert refused.status_code == 422 and "refused" in refused.json()["detail"]
    table = (await operator.get("/api/v1/forwarding")).json()
    assert table == [
        {
            "tenant": "default",
            "extension": "1000",
            "always": None,
            "busy": "1001",
            "noanswer": "+12025550123",
            "ring_time": 15.0,
        }
    ]
    history = (await operator.get("/api/v1/forwarding/changes")).json()
    assert [(h["kind"], h["actor"], bool(h["refused"])) for h in history] == [
        ("busy", "api", False),
        ("noanswer", "api", False),
        ("always", "api", True),  # the refused one left its trace: who, target, why
    ]
    assert history[2]["new"] == "+19005550199" and "premium" in history[2]["refused"]
    assert history[0]["source"] == "root/token:operator#2@127.0.0.1"
    cleared = await operator.delete(f"{base}/busy")
    assert cleared.status_code == 200 and cleared.json()["busy"] is None
    cleared = await operator.delete(f"{base}/all")
    assert cleared.json()["noanswer"] is None
    assert (await operator.get("/api/v1/forwarding")).json() == []


async def test_cdr_search_paging_and_csv(api: Api) -> None:
    reader = api.as_("reader")
    page = (await reader.get("/api/v1/cdrs")).json()
    assert [c["call_id"] for c in page["items"]] == ["cdr-3", "cdr-2", "cdr-1", "cdr-0"]
    assert page["next_offset"] is None
    filtered = (
        await reader.get("/api/v1/cdrs", params={"tenant": "default", "extension": "1000"})
    ).json()
    assert [c["call_id"] for c in filtered["items"]] == ["cdr-3", "cdr-0"]
    blocked = (await reader.get("/api/v1/cdrs", params={"disposition": "blocked"})).json()
    assert [c["call_id"] for c in blocked["items"]] == ["cdr-1"]
    start = page["items"][-1]["start_ts"]
    window = (
        await reader.get("/api/v1/cdrs", params={"since": start + 50, "until": start + 250})
    ).json()
    assert [c["call_id"] for c in window["items"]] == ["cdr-2", "cdr-1"]
    first = (await reader.get("/api/v1/cdrs", params={"limit": 3})).json()
    assert first["next_offset"] == 3 and len(first["items"]) == 3
    rest = (await reader.get("/api/v1/cdrs", params={"limit": 3, "offset": 3})).json()
    assert [c["call_id"] for c in rest["items"]] == ["cdr-0"] and rest["next_offset"] is None

    for response in (
        await reader.get("/api/v1/cdrs", params={"format": "csv"}),
        await reader.get("/api/v1/cdrs", headers={"Accept": "text/csv"}),
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [r["call_id"] for r in rows] == ["cdr-3", "cdr-2", "cdr-1", "cdr-0"]
        assert rows[0]["callee"].startswith("'=")  # no formula runs in a spreadsheet
        assert rows[1]["callee"] == "+12025550123"  # phone numbers stay numbers


async def test_live_calls_list_and_end(api: Api) -> None:
    operator = api.as_("operator")
    calls = (await operator.get("/api/v1/calls")).json()
    assert [c["call_id"] for c in calls] == ["a1b2@192.0.2.1", "acme/call-7"]
    ended = await operator.delete("/api/v1/calls/acme/call-7")
    assert ended.status_code == 200, ended.text
    assert ended.json()["call_id"] == "acme/call-7"
    assert api.control.ended == ["acme/call-7"]
    gone = await operator.delete("/api/v1/calls/acme/call-7")
    assert gone.status_code == 404 and "no call" in gone.json()["detail"]


async def test_live_calls_without_a_running_server(start_api: ApiFactory) -> None:
    api = await start_api(control=False)
    response = await api.as_("reader").get("/api/v1/calls")
    assert response.status_code == 503
    assert "SIP server is not running" in response.json()["detail"]


async def test_alerts_list_ack_resolve(api: Api) -> None:
    operator = api.as_("operator")
    alerts = (await operator.get("/api/v1/alerts", params={"status": "open"})).json()
    assert len(alerts) == 2
    alert_id = next(a["id"] for a in alerts if a["tenant"] == "default")
    acked = await operator.post(f"/api/v1/alerts/{alert_id}/ack")
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "acknowledged"
    assert acked.json()["acked_by"] == "root/token:operator#2"
    resolved = await operator.post(f"/api/v1/alerts/{alert_id}/resolve")
    assert resolved.json()["status"] == "resolved"
    again = await operator.post(f"/api/v1/alerts/{alert_id}/resolve")
    assert again.status_code == 409 and "already resolved" in again.json()["detail"]
    only_acme = (await operator.get("/api/v1/alerts", params={"tenant": "acme"})).json()
    assert [a["tenant"] for a in only_acme] == ["acme"]
    assert (await operator.post("/api/v1/alerts/999/ack")).status_code == 404


async def test_bans_add_list_remove(api: Api) -> None:
    operator = api.as_("operator")
    added = await operator.post(
        "/api/v1/bans", json={"address": "203.0.113.7", "duration": 600, "reason": "scanner"}
    )
    assert added.status_code == 201, added.text
    assert added.json()["reason"] == "scanner" and 0 < added.json()["expires_in"] <= 600
    listed = (await operator.get("/api/v1/bans")).json()
    assert [b["address"] for b in listed] == ["203.0.113.7"]
    bad = await operator.post("/api/v1/bans", json={"address": "1.2.3"})
    assert bad.status_code == 400 and "not an IP address" in bad.json()["detail"]
    removed = await operator.delete("/api/v1/bans/203.0.113.7")
    assert removed.status_code == 200
    assert (await operator.get("/api/v1/bans")).json() == []
    assert (await operator.delete("/api/v1/bans/203.0.113.7")).status_code == 404


async def test_admins_and_tokens_endpoints(api: Api) -> None:
    admin = api.as_("admin")
    made = await admin.post("/api/v1/admins", json={"username": "carol", "role": "operator"})
    assert made.status_code == 201, made.text
    generated = made.json()["password"]
    assert generated and made.json()["role"] == "operator"
    given = await admin.post(
        "/api/v1/admins",
        json={"username": "dave", "role": "read-only", "password": "tundra-pepper-galaxy-42"},
    )
    assert given.status_code == 201 and given.json()["password"] is None
    names = [a["username"] for a in (await admin.get("/api/v1/admins")).json()]
    assert names == ["acme-boss", "carol", "dave", "root"]

    created = await admin.post(
        "/api/v1/tokens", json={"name": "grafana", "scope": "read-only", "expires_days": 30}
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    assert token.startswith("pbxw_") and created.json()["owner"] == "root"
    me = (await api.client(token).get("/api/v1/auth/me")).json()
    assert me == {
        "name": f"root/token:grafana#{created.json()['id']}",
        "kind": "token",
        "role": "read-only",
        "tenant": None,
    }
    listed = (await admin.get("/api/v1/tokens")).json()
    assert "token" not in listed[0] and any(t["name"] == "grafana" for t in listed)
    revoked = await admin.delete(f"/api/v1/tokens/{created.json()['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await api.client(token).get("/api/v1/auth/me")).status_code == 401


async def test_metrics(api: Api) -> None:
    reader = api.as_("reader")
    await reader.get("/api/v1/tenants")
    await reader.get("/api/v1/tenants/nope/extensions")
    response = await reader.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert 'pbxwarden_extensions{tenant="default"} 2.0' in body
    assert 'pbxwarden_alerts_open{severity="critical"} 2.0' in body
    assert (
        'pbxwarden_http_requests_total{method="GET",route="/api/v1/tenants",status="200"} 1.0'
        in body
    )
    assert 'method="GET",route="/api/v1/tenants/{tenant}/extensions",status="404"' in body


def test_registry_is_open_to_other_collectors(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    store.migrate()
    try:
        app = create_app(store, Config())
        registry = app.state.registry
        assert isinstance(registry, CollectorRegistry)
        Counter("pbxwarden_sip_messages", "SIP messages", registry=registry).inc()
        assert b"pbxwarden_sip_messages_total 1.0" in generate_latest(registry)
    finally:
        store.close()


async def test_audit_endpoint_lists_changes_newest_first(api: Api) -> None:
    admin = api.as_("admin")
    await admin.post("/api/v1/tenants/default/extensions", json={"number": "1005"})
    await admin.post("/api/v1/bans", json={"address": "203.0.113.9"})
    page = (await admin.get("/api/v1/audit", params={"limit": 1})).json()
    assert [e["action"] for e in page["items"]] == ["ban.add"]
    older = (await admin.get("/api/v1/audit", params={"before": page["next_before"]})).json()
    assert [e["action"] for e in older["items"]] == ["extension.create"]
    assert older["items"][0]["actor"] == "root/token:admin#1"
    assert older["items"][0]["source"] == "127.0.0.1"


async def test_events_need_the_running_server(api: Api) -> None:
    response = await api.as_("admin").get("/api/v1/events")
    assert response.status_code == 503 and "not running" in response.json()["detail"]
    assert (await api.client().get("/api/v1/events")).status_code == 401


async def test_tenant_policy_read_replace_reset(api: Api) -> None:
    admin = api.as_("admin")
    current = await admin.get("/api/v1/tenants/default/policy")
    assert current.status_code == 200 and current.json()["source"] == "default"
    assert current.json()["policy"]["allow_special"] == []
    body = {
        "allow_countries": ["DE"],
        "spend_per_day": 40,
        "business_hours": ["mon-fri 08:00-18:00"],
    }
    put = await admin.put("/api/v1/tenants/default/policy", json=body)
    assert put.status_code == 200, put.text
    assert put.json()["source"] == "stored" and put.json()["policy"]["allow_countries"] == ["DE"]
    bad = await admin.put("/api/v1/tenants/default/policy", json={"timezone": "Mars/Base"})
    assert bad.status_code == 422 and "unknown time zone" in bad.text
    assert (await admin.get("/api/v1/tenants/default/policy")).json()["policy"][
        "spend_per_day"
    ] == 40  # the refused change stored nothing
    read_only = await api.as_("reader").put("/api/v1/tenants/default/policy", json=body)
    assert read_only.status_code == 403
    other = await api.as_("acme-admin").get("/api/v1/tenants/default/policy")
    assert other.status_code == 404
    log = (await admin.get("/api/v1/audit")).json()["items"]
    assert any(e["action"] == "policy.set" for e in log)
    reset = await admin.delete("/api/v1/tenants/default/policy")
    assert reset.status_code == 200 and reset.json()["source"] == "default"


async def test_a_tenant_admin_stays_within_the_provider_ceiling(api: Api) -> None:
    """acme's own admin may open its countries, not premium rate, high risk or huge caps;
    the provider's admin is not bounded by the ceiling."""
    acme = api.as_("acme-admin")
    base = "/api/v1/tenants/acme/policy"
    fine = await acme.put(base, json={"allow_countries": ["DE", "PH"], "spend_per_day": 200})
    assert fine.status_code == 200, fine.text
    for body, why in [
        ({"allow_special": ["premium-rate"]}, "premium-rate"),
        ({"allow_high_risk": True}, "high-risk"),
        ({"spend_per_hour": 5000}, "spend_per_hour"),
        ({"tenant_spend_per_day": 1e6}, "tenant_spend_per_day"),
        ({"extensions": {"2000": {"allow_special": ["premium-rate"]}}}, "extensions.2000"),
        ({"after_hours": {"spend_per_day": 9999}}, "after_hours.spend_per_day"),
        ({"report_only": ["anomaly"]}, "report_only"),
        ({"suspend_on_critical": False}, "suspend_on_critical"),
        ({"block_score": 100}, "block_score"),
    ]:
        refused = await acme.put(base, json=body)
        assert refused.status_code == 403 and why in refused.json()["detail"], refused.text
    kept = (await acme.get(base)).json()["policy"]
    assert kept["allow_countries"] == ["DE", "PH"] and kept["allow_special"] == []
    provider = await api.as_("admin").put(base, json={"allow_special": ["premium-rate"]})
    assert provider.status_code == 200, provider.text


async def test_trunks_are_the_providers(api: Api) -> None:
    trunk = {"name": "mine", "host": "192.0.2.50"}
    refused = await api.as_("acme-admin").post("/api/v1/tenants/acme/trunks", json=trunk)
    assert refused.status_code == 403 and "provider" in refused.json()["detail"]
    assert api.store.list_trunks() == []
    made = await api.as_("admin").post("/api/v1/tenants/acme/trunks", json=trunk)
    assert made.status_code == 201, made.text
