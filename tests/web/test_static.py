"""The dashboard's files over real HTTP: what is served, with which headers, to whom."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from pbxwarden.web import STATIC
from tests.api.conftest import Api, ApiFactory
from tests.api.test_security import assert_security_headers

pytestmark = pytest.mark.timeout(20)

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
OTHER_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}


async def test_page_is_served_with_its_csp_and_the_security_headers(api: Api) -> None:
    response = await api.client().get("/ui/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == PAGE_CSP
    for name, value in OTHER_HEADERS.items():
        assert response.headers[name] == value, name
    assert '<script src="/ui/app.js"' in response.text


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/ui/app.js", "javascript"), ("/ui/app.css", "text/css"), ("/ui/index.html", "text/html")],
)
async def test_static_files_have_the_right_content_type(
    api: Api, path: str, content_type: str
) -> None:
    response = await api.client().get(path)
    assert response.status_code == 200
    assert content_type in response.headers["content-type"]
    assert response.headers["x-content-type-options"] == "nosniff"  # the type must be right


async def test_unknown_files_are_404_and_root_redirects_to_the_dashboard(api: Api) -> None:
    client = api.client()
    missing = await client.get("/ui/nothing-here.js")
    assert missing.status_code == 404
    assert_security_headers(missing)
    for path in ("/", "/ui"):
        moved = await client.get(path)
        assert moved.status_code in (302, 303, 307), path
        assert moved.headers["location"].endswith("/ui/"), path
    followed = await client.get("/", follow_redirects=True)
    assert followed.status_code == 200 and str(followed.url).endswith("/ui/")


async def test_dashboard_is_refused_outside_admin_networks(start_api: ApiFactory) -> None:
    api = await start_api(admin_networks=["10.0.0.0/8"])
    for path in ("/", "/ui/", "/ui/app.js", "/ui/index.html"):
        response = await api.client().get(path)
        assert response.status_code == 403, path
        assert "may not use the admin API" in response.json()["detail"]
        assert_security_headers(response)


class _Inline(HTMLParser):
    """Collects what the page's CSP would refuse: inline scripts, styles and handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.scripts = 0
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self.scripts += 1
            if "src" not in names:
                self.found.append("script without src")
        if tag in ("script", "style"):
            self._in = tag
        self.found += [f"{tag} {name}=" for name in names if name == "style" or name[:2] == "on"]

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None and data.strip():
            self.found.append(f"inline <{self._in}> content")


def test_page_has_no_inline_script_or_style() -> None:
    parser = _Inline()
    parser.feed((STATIC / "index.html").read_text())
    assert parser.scripts == 1 and parser.found == []


def test_script_never_writes_html() -> None:
    """Alert texts and caller IDs come from attackers: they go in as text only."""
    script = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
