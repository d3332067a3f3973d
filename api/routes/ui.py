"""The operator page: static HTML, CSS and JS shipped with the API, no CDN, no build step.

It reads the same public endpoints as the CLI (jobs, datasets) and writes only through them
(upload, activate), so it needs no server-side logic of its own.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

router = APIRouter()


@router.get("/ui", include_in_schema=False)
async def operator_page() -> RedirectResponse:
    # Relative links in the page ("../jobs") need the trailing slash.
    return RedirectResponse("ui/", status_code=307)


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/", StaticFiles(directory=UI_DIR, html=True), name="ui")
