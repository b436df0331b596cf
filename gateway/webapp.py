"""The web app (web/, built into web/dist by set-up), served on the API's own origin.

Every page of the app has its address (`APP_PATHS`): the gateway answers each with the app's
index.html, and any other path outside the API with the same page and 404 (the app then shows
"Page not found"); paths under /v1 and /hooks stay the API's, answering problem+json. Bundles
under /assets/ carry a hash of their content in their names, so they are cached for a year;
index.html is never cached, so a new build is seen at once. Without a build (no Node.js at
set-up) the pages say how to get one, and the API works as ever.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.convertors import Convertor, register_url_convertor

ASSETS = "/assets"
# The app's own policy: its files only, no inline or evaluated script, no other origin, no
# framing; styles are the stylesheet's (the app sets none inline).
APP_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# The addresses of the app's pages (mails and redirects point at some of them; the end of an
# OAuth connect lands on /credentials/{id}).
APP_PATHS = re.compile(
    r"^/(|sign-in|sign-up|password-reset|unsubscribe|deletion-cancel"
    r"|connections|connections/new|connections/[^/]+|credentials|credentials/[^/]+"
    r"|activity|runs/[^/]+|webhook-log|notifications|account)/?$"
)
# Paths that are never the app's: the API answers them, with problem+json when it has nothing.
API_PREFIXES = ("/v1", "/hooks", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz")

_NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>leadmesh</title></head>
<body><h1>leadmesh</h1>
<p>The web app is not built on this machine: install Node.js 20 or newer and start again with
<code>make run</code>. The REST API works without it; its documentation is at
<a href="/docs">/docs</a>.</p></body></html>
"""


class _HashedAssets(StaticFiles):
    """Static files whose names change with their content: cached for a year, never revalidated."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        if response.status_code == 200:
            response.headers["cache-control"] = "public, max-age=31536000, immutable"
        return response


class _AppPath(Convertor):
    """Any path but the API's: the page route never matches them, so an unknown API path is
    404 and a wrong method on an API path 405, as they were before the app."""

    regex = "(?!(?:" + "|".join(re.escape(p.lstrip("/")) for p in API_PREFIXES) + ")(?:/|$)).*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("app_path", _AppPath())


def install(app: FastAPI, web_dir: Path) -> None:
    """The app's pages, its assets and its icon; call after every API route is added (the page
    route takes every path the routes before it did not)."""
    index = web_dir / "index.html"
    if (web_dir / "assets").is_dir():
        app.mount(ASSETS, _HashedAssets(directory=str(web_dir / "assets")), "web-assets")

    async def favicon() -> Response:
        icon = web_dir / "favicon.svg"
        if not icon.is_file():
            raise HTTPException(404)
        return FileResponse(
            icon, media_type="image/svg+xml", headers={"cache-control": "max-age=86400"}
        )

    async def page(request: Request, path: str = "") -> Response:
        address = "/" + path
        status = 200 if APP_PATHS.match(address) else 404
        if not index.is_file():
            return HTMLResponse(_NOT_BUILT, status_code=503 if status == 200 else 404)
        return FileResponse(index, status_code=status, media_type="text/html; charset=utf-8")

    app.add_api_route("/favicon.svg", favicon, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/{path:app_path}", page, methods=["GET", "HEAD"], include_in_schema=False)
