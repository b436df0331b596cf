"""The API's documentation pages, `/docs` (Swagger UI) and `/redoc`, served whole by the gateway.

Their scripts and styles come from the `fastapi-offline` package and are served under
`/docs/assets/`; the pages start them without inline script, so they work offline and under the
strict Content-Security-Policy of `DOCS_CSP` (no other origin, no inline or evaluated script).
"""

from __future__ import annotations

import json
from html import escape
from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
DOCS_PATHS = ("/docs", "/docs/swagger-init.js", "/redoc")
# Swagger UI and ReDoc set styles on elements (style-src 'unsafe-inline'), show data: images and
# ReDoc runs its search in a blob: worker; scripts are this origin's files only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _swagger_page(title: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)} - Swagger UI</title>
<link rel="icon" type="image/png" href="{ASSETS}/favicon.png">
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-init.js"></script>
</body>
</html>
"""


def _swagger_init(openapi_url: str) -> str:
    # Same-origin requests carry the session cookie; the CSRF token is entered under "Authorize".
    return f"""window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{
    url: {json.dumps(openapi_url)},
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    persistAuthorization: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  }});
}});
"""


def _redoc_page(title: str, openapi_url: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)} - ReDoc</title>
<link rel="icon" type="image/png" href="{ASSETS}/favicon.png">
</head>
<body>
<redoc spec-url="{escape(openapi_url)}" hide-hostname="true"></redoc>
<script src="{ASSETS}/redoc.standalone.js"></script>
</body>
</html>
"""


def install(app: FastAPI) -> None:
    """Adds /docs, /redoc and their assets (the app is made with docs_url=redoc_url=None)."""
    openapi_url = app.openapi_url or "/openapi.json"
    swagger = _swagger_page(app.title)
    init = _swagger_init(openapi_url)
    redoc = _redoc_page(app.title, openapi_url)
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), "assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(swagger)

    @app.get("/docs/swagger-init.js", include_in_schema=False)
    async def swagger_ui_init() -> Response:
        return Response(init, media_type="text/javascript")

    @app.get("/redoc", include_in_schema=False)
    async def redoc_ui() -> HTMLResponse:
        return HTMLResponse(redoc)
