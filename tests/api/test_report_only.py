"""Report-only rules over HTTP: what they would have refused, and promoting one."""

from __future__ import annotations

import pytest

from pbxwarden.guard.engine import Guard, GuardConfig, TenantPolicy
from pbxwarden.pbx.numbers import classify
from pbxwarden.pbx.policy import CallAttempt
from tests.api.conftest import Api

pytestmark = pytest.mark.timeout(30)


def would_have_refused(api: Api) -> None:
    """A real guard in report-only for wangiri; its alert stored as the server does."""
    guard = Guard(
        GuardConfig(
            tenants={"default": TenantPolicy(allow_countries=["PH"], report_only=["wangiri"])}
        )
    )
    now = api.clock()
    bait = "+639209876543"
    for k in range(4):
        ring = CallAttempt(
            "default",
            str(1000 + k),
            bait,
            "+12025550100",
            "inbound",
            "sim",
            now - 3600 + k * 30,
            classify("+12025550100", "US"),
        )
        guard.on_call_start(ring, k + 1)
        guard.on_call_end(k + 1, ring.at + 10)
    back = CallAttempt(
        "default", "1000", "1000", bait, "external", "udp:192.0.2.1:5060", now, classify(bait, "US")
    )
    assert guard.authorize(back).allow
    [alert] = list(guard.outbox)
    api.store.record_alert(
        {
            "tenant": alert.tenant,
            "extension": alert.extension,
            "severity": alert.severity,
            "rule": alert.rule,
            "summary": alert.summary,
            "reasons": alert.reasons,
            "dedupe_key": alert.key,
            "at": alert.at,
        }
    )


async def test_report_only_rules_are_listed_and_promoted(api: Api) -> None:
    admin = api.as_("admin")
    put = await admin.put(
        "/api/v1/tenants/default/policy",
        json={"allow_countries": ["PH"], "report_only": ["wangiri"]},
    )
    assert put.status_code == 200, put.text
    would_have_refused(api)
    seen = await admin.get("/api/v1/tenants/default/policy/report-only")
    assert seen.status_code == 200, seen.text
    body = seen.json()
    modes = {r["rule"]: r for r in body["rules"]}
    assert modes["wangiri"]["mode"] == "report-only"
    assert modes["wangiri"]["why"] == "listed in report_only"
    assert modes["wangiri"]["would_have_refused"] == 1
    assert modes["anomaly"]["mode"] == "report-only"  # no costly call yet: still learning
    [alert] = body["alerts"]
    assert alert["rule"] == "report-only:wangiri"
    assert alert["summary"].startswith("Would have refused:")

    reader = await api.as_("reader").post("/api/v1/tenants/default/policy/enforce/wangiri")
    assert reader.status_code == 403
    bad = await admin.post("/api/v1/tenants/default/policy/enforce/teleport")
    assert bad.status_code == 422
    promoted = await admin.post("/api/v1/tenants/default/policy/enforce/wangiri")
    assert promoted.status_code == 200, promoted.text
    modes = {r["rule"]: r for r in promoted.json()["rules"]}
    assert modes["wangiri"]["mode"] == "enforcing"
    policy = (await admin.get("/api/v1/tenants/default/policy")).json()["policy"]
    assert policy["report_only"] == [] and policy["enforce"] == ["wangiri"]
    assert policy["allow_countries"] == ["PH"]  # the rest of the policy is kept
    log = (await admin.get("/api/v1/audit")).json()["items"]
    assert any(e["action"] == "policy.enforce" for e in log)
    other = await api.as_("acme-admin").get("/api/v1/tenants/default/policy/report-only")
    assert other.status_code == 404
