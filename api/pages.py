"""HTML for people: a login form that keeps the key in a cookie, the job page and a map's
report page.

The job page (``/jobs/{id}``) shows the job's numbers, its query photo beside the references it
counted with their verified inliers (``matches.png``), the map plot (``plot.svg``) and its
candidates. A job not finished yet reloads itself every few seconds; an unknown job is a page
saying so (404), not a problem document. The browser fetches both images with the cookie, so they
need no key in their URLs (see ``api/auth.py``).

The report page (``/maps/{name}/report``) is the file ``featureloc map report`` writes: one
self-contained page, its figures (core/mapfigures.py) embedded as PNG data URIs, so the file opens
offline and the page makes no further request.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from api.auth import COOKIE, lookup, page_key, require_map
from api.jobs import visible_job
from api.maps import load_report
from api.problems import Problem
from api.services import Svc
from core.angles import heading_text
from core.mapfigures import report_figures
from core.mapreport import MapReport
from core.mapstore import MapStore, validate_map_name
from db.models import ApiKey
from workers.figures import find_image

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
templates.env.filters["heading"] = heading_text

COOKIE_MAX_AGE = 8 * 3600
FIGURE_TOP = 3  # references beside the query on the page
CANDIDATE_ROWS = 15  # candidates listed on the page (the JSON has them all)
REFRESH_SECONDS = 3  # how often the page of an unfinished job reloads itself


def _safe_next(target: str | None) -> str:
    # Only paths on this site: "//host" or "https://..." would make the form an open redirect.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/login"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "login.html", {"next": _safe_next(next), "error": None}
    )


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    key: Annotated[str, Form()],
    svc: Svc,
    next: Annotated[str, Form()] = "/login",
) -> Response:
    target = _safe_next(next)
    if await run_in_threadpool(lookup, svc, key.strip()) is None:
        return templates.TemplateResponse(
            request,
            "login.html",
            {"next": target, "error": "That key is not valid or has been revoked."},
            status_code=401,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        key.strip(),
        max_age=COOKIE_MAX_AGE,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _sign_in_first(page: str) -> RedirectResponse:
    """To the login form, which sends the person back to ``page`` once signed in."""
    return RedirectResponse(f"/login?next={quote(page)}", status_code=303)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(
    request: Request,
    job_id: str,
    key: Annotated[ApiKey | None, Depends(page_key)],
    svc: Svc,
) -> Response:
    if key is None:
        return _sign_in_first(f"/jobs/{job_id}")
    try:
        job = await visible_job(svc, key, job_id)
    except Problem as problem:
        return templates.TemplateResponse(
            request, "missing.html", {"job_id": job_id}, status_code=problem.status_code
        )
    return templates.TemplateResponse(
        request,
        "job.html",
        {
            "job": job,
            "top": FIGURE_TOP,
            "rows": CANDIDATE_ROWS,
            "refresh": None if job.finished else REFRESH_SECONDS,
        },
    )


@router.get("/maps/{map_name}/report", response_class=HTMLResponse)
async def report_page(
    request: Request,
    map_name: str,
    key: Annotated[ApiKey | None, Depends(page_key)],
    svc: Svc,
    profile: Literal["fast", "accurate"] = "fast",
) -> Response:
    if key is None:
        return _sign_in_first(f"/maps/{map_name}/report")
    validate_map_name(map_name)
    require_map(key, map_name)

    def render() -> str:
        report = load_report(svc.maps, map_name, profile)
        return report_html(report, report_figures_of(svc.maps, map_name, report), signed_in=True)

    try:
        return HTMLResponse(await run_in_threadpool(render))
    except Problem as problem:  # unknown, or never measured: a page that says what to run
        return templates.TemplateResponse(
            request,
            "no_report.html",
            {"map_name": map_name, "reason": problem.detail},
            status_code=problem.status_code,
        )


def report_figures_of(maps: MapStore, map_name: str, report: MapReport) -> dict[str, bytes]:
    """The report's figures; the worst places' photos come from the folder the map records,
    a panel left blank where there is none."""
    folder = maps.images_dir(map_name)
    return report_figures(report, lambda rid: find_image(folder, rid) if folder else None)


def report_html(report: MapReport, figures: dict[str, bytes], signed_in: bool = False) -> str:
    """The report as one page, figures embedded."""
    encoded = {k: base64.b64encode(v).decode("ascii") for k, v in figures.items()}
    page = templates.get_template("map_report.html")
    return page.render(report=report, figures=encoded, signed_in=signed_in)
