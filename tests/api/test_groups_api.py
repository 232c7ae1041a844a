"""Ring groups over the REST API: the store's checks (a free number, real members), the
tenant boundary, a DID pointing at a group, every change audited."""

from __future__ import annotations

from tests.api.conftest import Api

GROUPS = "/api/v1/tenants/default/groups"


async def test_groups_are_checked_scoped_and_audited(api: Api) -> None:
    admin = api.as_("admin")
    made = await admin.put(
        f"{GROUPS}/600",
        json={"members": ["1000", "(202) 555-0143"], "strategy": "hunt", "cid_prefix": "Sales: "},
    )
    assert made.status_code == 200, made.text
    assert made.json()["members"] == ["1000", "2025550143"]
    clash = await admin.put(f"{GROUPS}/1001", json={"members": ["1000"]})
    assert clash.status_code == 400 and "is an extension" in clash.text
    for bad, why in (
        ({"members": ["1000"], "strategy": "random"}, "is not one of"),
        ({"members": ["12"]}, "neither an extension"),
        ({"members": ["1000", "1000"]}, "listed twice"),
        ({"members": ["911"]}, "emergency"),
    ):
        answer = await admin.put(f"{GROUPS}/601", json=bad)
        assert answer.status_code == 400 and why in answer.text, (bad, answer.text)
    assert (await admin.put(f"{GROUPS}/601", json={"members": []})).status_code == 422
    # a DID may ring the group; the group cannot go while it does
    api.store.add_did("+12025550100", "default", "600")
    refused = await admin.delete(f"{GROUPS}/600")
    assert refused.status_code == 400 and "rings 600" in refused.text
    # another tenant's admin sees neither the group nor the tenant
    other = api.as_("acme-admin")
    assert (await other.get(f"{GROUPS}/600")).status_code == 404
    assert (await other.put(f"{GROUPS}/600", json={"members": ["2000"]})).status_code == 404
    assert (await other.get("/api/v1/groups")).json() == []
    assert [g["number"] for g in (await admin.get("/api/v1/groups")).json()] == ["600"]
    entries = (await admin.get("/api/v1/audit")).json()["items"]
    assert [e["action"] for e in entries if e["action"].startswith("group.")] == ["group.create"]


async def test_business_hours_are_checked_and_an_operator_may_close_them(api: Api) -> None:
    admin, operator = api.as_("admin"), api.as_("operator")
    url = "/api/v1/tenants/default/time-conditions/700"
    body = {"hours": "mon-fri 09:00-17:00", "open_to": "1000", "closed_to": "1001"}
    made = await admin.put(url, json={**body, "timezone": "Europe/Madrid"})
    assert made.status_code == 200, made.text
    assert made.json()["override"] is None and made.json()["timezone"] == "Europe/Madrid"
    for bad, why in (
        ({**body, "hours": "weekdays"}, "write them as"),
        ({**body, "timezone": "Mars/Olympus"}, "time zone"),
        ({**body, "holidays": ["25/12"]}, "a date"),
        ({**body, "closed_to": "12"}, "neither an extension"),
    ):
        answer = await admin.put(url, json=bad)
        assert answer.status_code in (400, 404) and why in answer.text, (bad, answer.text)
    assert (await operator.put(url, json=body)).status_code == 403  # admins configure
    closed = await operator.put(f"{url}/override", json={"override": "closed"})
    assert closed.status_code == 200 and closed.json()["override"] == "closed", closed.text
    again = await admin.put(url, json=body)  # replaced: the override stays
    assert again.json()["override"] == "closed"
    clash = await admin.put(f"{GROUPS}/700", json={"members": ["1000"]})
    assert clash.status_code == 400 and "time condition" in clash.text
    assert (await api.as_("acme-admin").get(url)).status_code == 404
    entries = (await admin.get("/api/v1/audit")).json()["items"]
    actions = [e["action"] for e in entries if e["action"].startswith("hours.")]
    assert sorted(actions) == ["hours.create", "hours.override", "hours.update"]
