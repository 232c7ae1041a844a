"""The web dashboard: static files served by the admin API for non-expert operators.

Plain files (vanilla JS, no build step, no CDN) served by the API's own app, so every
request passes the same front door (``http.admin_networks``, security headers) and the
page talks to the same endpoints with the same session cookie and CSRF token. The page's
CSP allows only its own script and style files: the script puts server text (caller IDs,
alert reasons, chosen by attackers) into the page as text, and nothing injected could run.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class _Static(StaticFiles):
    """The dashboard's files, with the page's CSP instead of the API's (which allows
    nothing, not even the page's own script)."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["content-security-policy"] = UI_CSP
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard at ``/ui/`` (``/ui`` and ``/`` redirect there)."""

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", _Static(directory=STATIC, html=True), name="ui")
