"""Interactive API documentation, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served offline.

FastAPI's own pages load their JavaScript and CSS from a CDN, so they are blank on a machine
without internet access. These pages load them from the service itself: the files come from the
``fastapi-offline`` wheel (MIT; it bundles Swagger UI, Apache-2.0, and ReDoc, MIT, about 2.8 MB),
installed with the serving dependencies, and are served read-only under :data:`ASSETS`. Nothing is
downloaded at run time. The app is created with ``docs_url=None, redoc_url=None`` so FastAPI does
not add its CDN pages as well.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the bundled files are served.
ASSETS = "/docs/assets"
#: The folder of the wheel holding swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png.
STATIC_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
#: Swagger UI options: no validator badge (it would fetch validator.swagger.io), models collapsed.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "defaultModelsExpandDepth": 0, "tryItOutEnabled": False}

router = APIRouter(include_in_schema=False)
router.mount(ASSETS, StaticFiles(directory=STATIC_DIR), name="docs-assets")


def _root(request: Request) -> str:
    """The path prefix of a service behind a proxy (``root_path``), so the links work there too."""
    return str(request.scope.get("root_path") or "")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root, app = _root(request), request.app
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} API",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root, app = _root(request), request.app
    return get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} API",
        redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
        with_google_fonts=False,
    )
