"""The dashboard end to end: headless Chromium against the real admin API on loopback.

Every change is made by clicking, as an operator would, and then checked in the store.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from pbxwarden.events import EventBus
from tests.api.conftest import Api, ApiFactory
from tests.web.conftest import log_in

pytestmark = pytest.mark.timeout(60)

VIEWER_PASSWORD = "orbit-candle-mosaic-58"
# attacker-chosen text (a SIP caller ID, an alert reason): must show as text, never run
HOSTILE = '<img src=x onerror="window.pwned=1">'
SATELLITE = "12 calls to +8823 (satellite) in 3 minutes"


def seed_alert(api: Api, *reasons: str) -> int:
    """A critical alert of extension 1001; by default a real reason and a hostile one."""
    alert_id, _ = api.store.record_alert(
        {
            "tenant": "default",
            "extension": "1001",
            "severity": "critical",
            "rule": "destination",
            "summary": "A call from extension 1001 to +88234 was refused",
            "reasons": list(reasons or (SATELLITE, HOSTILE)),
            "dedupe_key": "test:satellite",
            "at": time.time() - 30,
        }
    )
    return alert_id


async def test_wrong_password_shows_the_error_then_the_lockout(
    start_api: ApiFactory, page: Page
) -> None:
    api = await start_api(login_failure_limit=2)
    await page.goto(f"{api.base}/ui/")
    error = page.locator("#login-error")
    for _ in range(2):
        await page.fill("#username", "root")
        await page.fill("#password", "not-the-password")
        await page.click("#login-form button[type=submit]")
        await expect(error).to_contain_text("invalid user name, password or code")
    await page.click("#login-form button[type=submit]")
    await expect(error).to_contain_text("too many failed logins")
    await expect(error).to_contain_text("Wait about")
    await expect(page.locator("#dash-view")).to_be_hidden()


async def test_default_secure_cookie_works_on_loopback(start_api: ApiFactory, page: Page) -> None:
    """``serve``'s default: a Secure ``__Host-`` cookie, which Chromium keeps on loopback."""
    api = await start_api(cookie_secure=True)
    await log_in(page, api)
    cookies = await page.context.cookies()
    assert [c["name"] for c in cookies] == ["__Host-pbxw_session"] and cookies[0]["secure"]
    await page.reload()  # the session survives: the tab kept its CSRF token
    await expect(page.locator("#updated")).to_contain_text("Updated")
    await page.get_by_role("button", name="Log out").click()
    await expect(page.locator("#login-info")).to_contain_text("logged out")
    assert await page.context.cookies() == []


async def test_admin_acknowledges_then_resolves_an_alert(api: Api, page: Page) -> None:
    alert_id = seed_alert(api)
    await log_in(page, api)
    row = page.locator(f'tr[data-alert-id="{alert_id}"]')
    await expect(row).to_contain_text(SATELLITE)
    await expect(row).to_contain_text(HOSTILE)  # shown as text ...
    assert await row.locator("img").count() == 0  # ... not turned into an element
    await expect(row.locator(".advice")).to_contain_text("give it a new one")
    await expect(row).to_contain_text("Open")

    await row.get_by_role("button", name="Acknowledge").click()
    await expect(row).to_contain_text("Acknowledged by root")
    await expect(page.locator("#notices")).to_contain_text(f"Alert {alert_id} acknowledged")
    assert (api.store.get_alert(alert_id) or {})["status"] == "acknowledged"

    await row.get_by_role("button", name="Resolve").click()
    await expect(row).to_contain_text("Resolved by root")
    await expect(row.get_by_role("button")).to_have_count(0)
    assert (api.store.get_alert(alert_id) or {})["status"] == "resolved"
    assert await page.evaluate("window.pwned") is None


async def test_a_would_have_refused_alert_promotes_its_rule(api: Api, page: Page) -> None:
    alert_id, _ = api.store.record_alert(
        {
            "tenant": "default",
            "extension": "1001",
            "severity": "warning",
            "rule": "report-only:drip",
            "summary": "Would have refused: a call from extension 1001 to +639175550101",
            "reasons": ["would have refused (drip, report-only): +639175550101 was first called"],
            "dedupe_key": "default/1001/report-only:drip",
            "at": time.time() - 30,
        }
    )
    await log_in(page, api)
    row = page.locator(f'tr[data-alert-id="{alert_id}"]')
    await expect(row).to_contain_text("would have refused")
    await expect(row.locator(".advice")).to_contain_text("Nothing was stopped")
    await row.get_by_role("button", name="Enforce this rule").click()
    await expect(page.locator("#notices")).to_contain_text("The drip rule now refuses")
    stored = api.store.policies()["default"]["policy"]
    assert stored["enforce"] == ["drip"]


async def test_read_only_session_gets_no_action_buttons(api: Api, page: Page) -> None:
    api.admins.add_admin("viewer", VIEWER_PASSWORD, "read-only", None, api.clock.now)
    api.store.save_bans([("203.0.113.9", time.time() + 3600, "password guessing", 1, time.time())])
    api.store.suspend_extension("default", "1001", "premium-rate: +1900 calls")
    seed_alert(api)
    await log_in(page, api, "viewer", VIEWER_PASSWORD)
    await expect(page.locator("#who")).to_contain_text("read-only")
    for section in ("#alerts", "#calls", "#bans", "#extensions"):
        await expect(page.locator(f"{section} tbody tr").first).to_be_visible()
    await expect(page.locator("#bans")).to_contain_text("203.0.113.9")
    await expect(page.locator("#extensions")).to_contain_text("Suspended")
    assert await page.locator("main button.action").count() == 0


async def test_banned_address_is_listed_and_removed(api: Api, page: Page) -> None:
    now = time.time()
    api.store.save_bans([("198.51.100.7", now + 3600, "scanner friendly-scanner", 2, now)])
    await log_in(page, api)
    row = page.locator('#bans tr[data-address="198.51.100.7"]')
    await expect(row).to_contain_text("scanner friendly-scanner")
    await expect(page.locator("#stat-bans .value")).to_have_text("1")
    await row.get_by_role("button", name="Remove").click()
    await expect(row).to_have_count(0)
    await expect(page.locator("#bans")).to_contain_text("No address is blocked")
    assert all(b[0] != "198.51.100.7" for b in api.store.load_bans(now, now))


async def test_hang_up_a_call_and_resume_a_suspended_extension(api: Api, page: Page) -> None:
    api.store.suspend_extension("default", "1001", "premium-rate: +1900 calls")
    await log_in(page, api)
    call = page.locator('#calls tr[data-call-id="a1b2@192.0.2.1"]')
    await call.get_by_role("button", name="Hang up").click()
    await expect(call).to_have_count(0)
    assert api.control.ended == ["a1b2@192.0.2.1"]

    ext = page.locator('#extensions tr[data-extension="default/1001"]')
    await expect(ext).to_contain_text("premium-rate: +1900 calls")
    await ext.get_by_role("button", name="New SIP password").click()
    await expect(page.locator("#notices")).to_contain_text("shown only this once")
    await ext.get_by_role("button", name="Resume").click()
    await expect(ext).to_contain_text("Active")
    await expect(page.locator("#notices")).to_contain_text("shown only this once")  # kept
    assert (
        next(e for e in api.store.list_extensions("default") if e["number"] == "1001")["suspended"]
        is None
    )


async def test_a_locked_extension_shows_why_and_a_new_password_lifts_the_lock(
    api: Api, page: Page
) -> None:
    from pbxwarden.firewall.locks import ExtensionLock
    from pbxwarden.store.locks import LockStore

    auth = api.store.extension_auth("pbxwarden", "1000")
    assert auth is not None
    made = time.time() - 5
    reason = "12 failed authentications from 6 addresses within 600 s"
    LockStore(api.store).save_locks(
        [ExtensionLock(auth.id, made + 3600, 1, made, reason, ("192.0.2.9",))]
    )
    await log_in(page, api)
    ext = page.locator('#extensions tr[data-extension="default/1000"]')
    await expect(ext).to_contain_text("Locked")
    await expect(ext).to_contain_text(reason)
    await expect(ext).to_contain_text("A new SIP password lifts the lock")
    await ext.get_by_role("button", name="New SIP password").click()
    await expect(page.locator("#notices")).to_contain_text("shown only this once")
    await expect(ext).not_to_contain_text("Locked")
    assert (
        next(e for e in api.store.list_extensions("default") if e["number"] == "1000")[
            "locked_until"
        ]
        is None
    )


async def test_without_the_pbx_the_event_feed_says_so(api: Api, page: Page) -> None:
    await log_in(page, api)
    await expect(page.locator("#events-status")).to_contain_text("need the running PBX")


async def test_live_events_appear_as_text(live_api: tuple[Api, EventBus], page: Page) -> None:
    api, bus = live_api
    await log_in(page, api)
    await expect(page.locator("#events-status")).to_contain_text("Connected")
    bus.publish(
        "call.start",
        {
            "tenant": "default",
            "caller": HOSTILE,
            "callee": "+88234",
            "decision": "deny",
            "reasons": ["satellite numbers are not allowed"],
        },
    )
    bus.publish("ban", {"tenant": "provider", "address": "192.0.2.66", "reason": "flood"})
    feed = page.locator("#feed")
    await expect(feed).to_contain_text(f"Call from {HOSTILE} to +88234: deny")
    await expect(feed).to_contain_text("Blocked 192.0.2.66: flood")
    assert await feed.locator("img").count() == 0


async def test_dashboard_screenshot(
    live_api: tuple[Api, EventBus], page: Page, tmp_path: Path
) -> None:
    """The logged-in dashboard with data; PBXWARDEN_SCREENSHOT=docs/dashboard.png keeps it."""
    api, bus = live_api
    now = time.time()
    seed_alert(api, SATELLITE, "+88234 is a high-risk destination for revenue-share fraud")
    api.store.save_bans([("198.51.100.7", now + 3 * 3600, "10 failed authentications", 2, now)])
    api.store.suspend_extension(
        "default", "1001", "destination: +88234 is a high-risk destination for revenue-share fraud"
    )
    await log_in(page, api)
    await expect(page.locator("#alerts tbody tr")).to_have_count(3)
    await page.locator("#alerts tbody tr").nth(1).get_by_role("button", name="Acknowledge").click()
    await expect(page.locator("#alerts")).to_contain_text("Acknowledged by root")
    await page.locator("#notices button").click()
    await expect(page.locator("#events-status")).to_contain_text("Connected")
    for kind, event in [
        (
            "call.start",
            {"caller": "1000", "callee": "1001", "decision": "allow", "reasons": ["internal call"]},
        ),
        (
            "call.start",
            {
                "caller": "1001",
                "callee": "+88234",
                "decision": "deny",
                "reasons": ["+88234 is a high-risk destination"],
            },
        ),
        (
            "alert",
            {
                "severity": "critical",
                "summary": "A call from extension 1001 to +88234 "
                "was refused; extension 1001 is suspended until an admin resumes it",
            },
        ),
        ("ban", {"address": "198.51.100.7", "reason": "10 failed authentications"}),
    ]:
        bus.publish(kind, {"tenant": "default", **event})
    await expect(page.locator("#feed li")).to_have_count(4)
    target = Path(os.environ.get("PBXWARDEN_SCREENSHOT", tmp_path / "dashboard.png"))
    await page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000


async def test_resume_after_fraud_needs_a_new_password_or_a_reason(api: Api, page: Page) -> None:
    """The guard suspended 1001 for fraud: Resume is refused and says to change the
    password; a forced resume asks why and records it."""
    api.store.suspend_extension("default", "1001", "anomaly: diverted to +1900", by="guard")
    await log_in(page, api)
    ext = page.locator('#extensions tr[data-extension="default/1001"]')
    page.once("dialog", lambda dialog: dialog.dismiss())
    await ext.get_by_role("button", name="Resume").click()
    await expect(page.locator("#notices")).to_contain_text("give it a new SIP password first")
    await expect(ext).to_contain_text("Suspended")
    page.once("dialog", lambda dialog: dialog.accept("the user is travelling, confirmed by phone"))
    await ext.get_by_role("button", name="Resume").click()
    await expect(ext).to_contain_text("Active")
    [forced] = [e for e in api.admins.list_audit() if e["action"] == "extension.resume.forced"]
    assert forced["after"]["reason"] == "the user is travelling, confirmed by phone"
    assert forced["actor"].startswith("root")
