"""The OpenAPI pages at /docs work offline: Swagger UI from installed files, behind the
admin API's front door, under a CSP that allows exactly the files the page loads.

Over real HTTP to the real API on loopback, and in headless Chromium with every request
that would leave loopback refused (a closed network), where the operations must render
and one must run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Page, Request, Route, async_playwright, expect

from tests.api.conftest import Api, ApiFactory
from tests.api.test_security import assert_security_headers
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.timeout(60)

CDN_SCRIPT = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
TYPES = {"script": "javascript", "style": "text/css", "img": "image/png"}


class _Refs(HTMLParser):
    """What a page makes the browser load (by CSP directive), and anything inline."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.inline: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.refs.append(("script", str(a["src"])))
            self._in = "script"
        elif tag == "link" and a.get("href"):
            rel = str(a.get("rel", ""))
            self.refs.append(("style" if rel == "stylesheet" else "img", str(a["href"])))
        elif tag in ("img", "iframe", "object", "embed", "base", "form"):
            self.inline.append(f"<{tag}>")
        elif tag == "style":
            self._in = "style"
        self.inline += [f"{tag} {name}=" for name in a if name == "style" or name[:2] == "on"]

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None and data.strip():
            self.inline.append(f"inline <{self._in}>")


def _policies(header: str) -> list[dict[str, list[str]]]:
    """The CSP header's policies (comma-separated), each directive -> its sources."""
    policies = []
    for policy in header.split(","):
        directives: dict[str, list[str]] = {}
        for directive in policy.split(";"):
            words = directive.split()
            if words:
                directives[words[0]] = words[1:]
        policies.append(directives)
    return policies


def _source_allows(source: str, url: str, origin: str) -> bool:
    """CSP source matching for what the policies here use; anything else counts as
    allowing everything, so that a looser policy fails the test's refusals."""
    parts = urlsplit(url)
    same_origin = f"{parts.scheme}://{parts.netloc}" == origin
    if source == "'none'":
        return False
    if source == "'self'":
        return same_origin
    if source == "data:":
        return parts.scheme == "data"
    if source.startswith("*:*/"):  # any host and port (of the page's scheme), this path
        return parts.scheme in ("http", "https") and parts.path == source[3:]
    return True


def _allowed(policies: list[dict[str, list[str]]], kind: str, url: str, origin: str) -> bool:
    """Whether every policy lets the page load ``url`` under ``kind``-src."""
    for policy in policies:
        sources = policy.get(f"{kind}-src", policy.get("default-src"))
        if sources is not None and not any(_source_allows(s, url, origin) for s in sources):
            return False
    return True


async def test_docs_page_loads_only_local_assets_allowed_exactly_by_its_csp(api: Api) -> None:
    client = api.client()
    page = await client.get("/docs")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-content-type-options"] == "nosniff"
    parser = _Refs()
    parser.feed(page.text)
    assert parser.inline == []  # no inline script, style or handler for the CSP to allow
    kinds = {kind for kind, _ in parser.refs}
    assert kinds == {"script", "style", "img"}, parser.refs
    for kind, ref in parser.refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref  # this origin only
        asset = await client.get(ref)
        assert asset.status_code == 200, (ref, asset.text[:200])
        assert TYPES[kind] in asset.headers["content-type"], (ref, asset.headers)
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert len(asset.content) > 100, ref
    swagger = (await client.get(next(r for k, r in parser.refs if k == "script"))).text
    assert "SwaggerUIBundle" in swagger

    header = page.headers["content-security-policy"]
    assert "unsafe" not in header and "http" not in header, header
    policies = _policies(header)
    origin = api.base
    for kind, ref in parser.refs:
        assert _allowed(policies, kind, origin + ref, origin), (kind, ref, header)
    loaded = {origin + ref for _, ref in parser.refs}
    # exactly them: nothing else of this origin, nothing from elsewhere, no other kind
    for kind in ("script", "style", "img", "font", "frame", "object", "media", "worker"):
        for url in (
            f"{origin}/ui/app.js",
            f"{origin}/ui/app.css",
            f"{origin}/openapi.json",
            f"{origin}/docs",
            CDN_SCRIPT,
            "https://fastapi.tiangolo.com/img/favicon.png",
            *(u for u in loaded if kind not in ("script", "style", "img")),
        ):
            assert not _allowed(policies, kind, url, origin), (kind, url, header)
    assert _allowed(policies, "connect", f"{origin}/openapi.json", origin)  # the schema
    assert not _allowed(policies, "connect", "https://validator.swagger.io/validator", origin)
    for policy in policies[:1]:
        assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]


async def test_unknown_docs_files_and_redoc_are_404(api: Api) -> None:
    client = api.client()
    for path in (
        "/docs/assets/nothing.js",
        "/docs/assets/..%2F..%2Fapp.py",
        "/docs/assets/redoc.standalone.js",
        "/redoc",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert "detail" in response.json()
        assert_security_headers(response)


async def test_docs_are_refused_outside_admin_networks(start_api: ApiFactory) -> None:
    api = await start_api(admin_networks=["10.0.0.0/8"])
    for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-init.js"):
        response = await api.client().get(path)
        assert response.status_code == 403, path
        assert "may not use the admin API" in response.json()["detail"]
        assert_security_headers(response)


@asynccontextmanager
async def _offline_page() -> AsyncIterator[tuple[Page, list[str], list[str]]]:
    """A Chromium page on a closed network: every request off loopback is refused and
    kept. Also yields the CSP violations the page reports."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package chromium)")
    outside: list[str] = []
    violations: list[str] = []

    async def only_loopback(route: Route, request: Request) -> None:
        if urlsplit(request.url).hostname == "127.0.0.1" or request.url.startswith("data:"):
            await route.continue_()
        else:
            outside.append(request.url)
            await route.abort("internetdisconnected")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            await context.route("**/*", only_loopback)
            page = await context.new_page()
            page.set_default_timeout(15_000)
            page.on(
                "console",
                lambda m: violations.append(m.text) if "Content Security" in m.text else None,
            )
            yield page, outside, violations
        finally:
            await browser.close()


async def test_swagger_ui_renders_every_operation_offline(api: Api) -> None:
    schema = (await api.client().get("/openapi.json")).json()
    operations = [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) > 20
    async with _offline_page() as (page, outside, violations):
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{api.base}/docs")
        await expect(page.locator(".info .title")).to_contain_text("pbxwarden admin API")
        await expect(page.locator(".opblock")).to_have_count(len(operations))
        for method, path in (("GET", "/api/v1/cdrs"), ("POST", "/api/v1/auth/login")):
            block = page.locator(f".opblock-{method.lower()}").filter(
                has=page.locator(f'[data-path="{path}"]')
            )
            await expect(block).to_have_count(1)

        # one operation run from the page, against the API itself (connect-src)
        health = page.locator("#operations-health-healthz_healthz_get")
        await health.locator(".opblock-summary").click()
        await health.get_by_role("button", name="Try it out").click()
        await health.get_by_role("button", name="Execute").click()
        live = health.locator(".live-responses-table")
        await expect(live.locator("tbody .response-col_status")).to_have_text("200")
        await expect(live).to_contain_text('"status": "ok"')
        assert outside == [] and violations == [] and errors == [], (outside, violations, errors)


async def test_browser_enforces_the_docs_csp(api: Api) -> None:
    """Chromium itself refuses another script of the same origin, an inline script and
    the CDN: the page's CSP is enforced, not only written."""
    async with _offline_page() as (page, outside, violations):
        await page.goto(f"{api.base}/docs")
        await expect(page.locator(".opblock").first).to_be_visible()
        assert violations == []
        await page.evaluate(
            """(urls) => {
                window.seen = [];
                document.addEventListener("securitypolicyviolation", (e) => {
                    window.seen.push(e.effectiveDirective + " " + e.blockedURI);
                });
                for (const src of urls) {
                    const s = document.createElement("script");
                    s.src = src;
                    document.body.appendChild(s);
                }
                const inline = document.createElement("script");
                inline.textContent = "window.injected = 1";
                document.body.appendChild(inline);
            }""",
            ["/ui/app.js", CDN_SCRIPT],
        )
        await page.wait_for_function("window.seen.length >= 3")
        seen = set(await page.evaluate("window.seen"))  # once per policy refusing
        assert seen == (
            {
                f"script-src-elem {api.base}/ui/app.js",
                f"script-src-elem {CDN_SCRIPT}",
                "script-src-elem inline",
            }
        ), seen
        assert await page.evaluate("window.injected") is None
        assert outside == []  # refused by the CSP before any request was made


def test_docs_assets_ship_with_the_package() -> None:
    """The files come from an installed package, not a download at run time."""
    from pbxwarden.api.docs import ASSETS

    for name, (path, _, _) in ASSETS.items():
        assert path is not None and path.is_file() and path.stat().st_size > 100, name
