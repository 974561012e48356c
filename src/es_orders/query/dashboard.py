"""The dashboard at ``GET /``: static files of this package, no build step, nothing from
elsewhere. The page reads the service's own API: ``/orders`` and ``/changes`` for the
orders table, ``/orders/{id}/events`` for an order's history, ``/stats`` and ``/cluster``
for the figures."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def add_dashboard_routes(app: FastAPI) -> None:
    """``GET /`` (the page) and ``/static/…`` (its script and style), both outside the
    OpenAPI document: they are for browsers, not API clients."""

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
