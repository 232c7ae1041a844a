"""The OpenAPI pages at ``/docs``: Swagger UI from installed files, never from a CDN.

FastAPI's own page loads Swagger UI from a CDN, which a closed network blocks (and the
CSP had to open up for). The Swagger UI build (swagger-ui-dist) comes from the pinned
``fastapi-offline`` package, which ships it for exactly this; its FastAPI wrapper is
not used, since our app makes its own routes behind the front door. The page and its
starter script are ours, so the page has no inline script, and its CSP allows the four
files it loads and nothing else. There is no ReDoc page (``/redoc`` is 404): one
documentation page is enough, and ReDoc needs inline styles.

The CSP is two policies, both enforced (a browser loads what every policy allows):
one allows this origin only, the other only the asset paths, on whatever host and port
the browser reached. So a TLS proxy in front, which may rewrite ``Host``, changes
nothing, and still no other file of the origin may run.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.responses import Response

ASSET_PREFIX = "/docs/assets/"
_OWN = Path(__file__).parent / "static"


def _swagger_dist() -> Path | None:
    """Where fastapi-offline keeps the swagger-ui-dist files, None when not installed."""
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if folder.is_dir() else None


# name under ASSET_PREFIX -> (file, content type, CSP directive it is loaded under)
def _assets() -> dict[str, tuple[Path | None, str, str]]:
    dist = _swagger_dist()
    return {
        "swagger-ui.css": (dist and dist / "swagger-ui.css", "text/css; charset=utf-8", "style"),
        "swagger-ui-bundle.js": (
            dist and dist / "swagger-ui-bundle.js",
            "text/javascript; charset=utf-8",
            "script",
        ),
        "swagger-init.js": (_OWN / "swagger-init.js", "text/javascript; charset=utf-8", "script"),
        "favicon.png": (dist and dist / "favicon.png", "image/png", "img"),
    }


ASSETS = _assets()


def _sources(kind: str) -> str:
    return " ".join(f"*:*{ASSET_PREFIX}{name}" for name, a in ASSETS.items() if a[2] == kind)


DOCS_CSP = ", ".join(
    (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        f"script-src {_sources('script')}; style-src {_sources('style')}; "
        f"img-src {_sources('img')} data:",
    )
)

PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pbxwarden admin API</title>
<link rel="icon" type="image/png" href="{ASSET_PREFIX}favicon.png">
<link rel="stylesheet" href="{ASSET_PREFIX}swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSET_PREFIX}swagger-ui-bundle.js"></script>
<script src="{ASSET_PREFIX}swagger-init.js"></script>
</body>
</html>
"""

_MISSING = "Swagger UI files are not installed (pip install fastapi-offline)"


def mount(app: FastAPI) -> None:
    """``/docs`` and its files, as routes of ``app`` (so behind its front door)."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        if any(path is None or not path.is_file() for path, _, _ in ASSETS.values()):
            return JSONResponse({"detail": _MISSING}, status_code=503)
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": DOCS_CSP})

    @app.get(ASSET_PREFIX + "{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        found = ASSETS.get(name)
        if found is None:
            return JSONResponse({"detail": f"no file {name!r} here"}, status_code=404)
        path, content_type, _ = found
        if path is None or not path.is_file():
            return JSONResponse({"detail": _MISSING}, status_code=503)
        return FileResponse(path, media_type=content_type)
