"""The dashboard's fixtures: the real admin API (tests/api's fixtures) and a headless
Chromium (Debian's, driven by Playwright; skipped where it is not installed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from pbxwarden.api.app import create_app
from pbxwarden.api.serve import start_http
from pbxwarden.config import Config
from pbxwarden.events import EventBus
from pbxwarden.store.admin import AdminStore
from pbxwarden.store.db import Store
from tests.api import conftest as api_conftest
from tests.api.conftest import ROOT_PASSWORD, Api, FakeClock, FakeControl, seed

# the real admin API on loopback, as tests/api start it
start_api = api_conftest.start_api
api = api_conftest.api

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A fresh browser page; fails the test on a JavaScript error or a CSP violation."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package chromium)")
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if "Content Security" in msg.text else None,
            )
            yield page
        finally:
            await browser.close()
    assert not problems, problems


@pytest.fixture
async def live_api(tmp_path: Path) -> AsyncIterator[tuple[Api, EventBus]]:
    """The seeded admin API with a live event bus, as ``serve`` runs it next to the PBX."""
    db_path = tmp_path / "live.db"
    store = Store(f"sqlite:///{db_path}")
    store.migrate()
    admins, clock, control, bus = AdminStore(store), FakeClock(), FakeControl(), EventBus()
    tokens = seed(store, admins, clock.now)
    config = Config.model_validate({"http": {"cookie_secure": False}})
    handle = await start_http(create_app(store, config, control, clock, events=bus), "127.0.0.1", 0)
    yield (
        Api(f"http://127.0.0.1:{handle.port}", store, admins, db_path, clock, control, tokens),
        bus,
    )
    await handle.stop()
    store.close()


async def log_in(page: Page, api: Api, user: str = "root", password: str = ROOT_PASSWORD) -> None:
    """Open the dashboard, log in, and wait until the lists are loaded."""
    await page.goto(f"{api.base}/ui/")
    await page.fill("#username", user)
    await page.fill("#password", password)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#dash-view")).to_be_visible()
    await expect(page.locator("#updated")).to_contain_text("Updated")
