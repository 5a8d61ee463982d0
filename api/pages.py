"""HTML for people: a login form that keeps the key in a cookie, and the job page.

The job page (``/jobs/{id}``) shows the job's numbers, its query photo beside the references it
counted with their verified inliers (``matches.png``), the map plot (``plot.svg``) and its
candidates. A job not finished yet reloads itself every few seconds; an unknown job is a page
saying so (404), not a problem document. The browser fetches both images with the cookie, so they
need no key in their URLs (see ``api/auth.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from api.auth import COOKIE, lookup, page_key
from api.jobs import visible_job
from api.problems import Problem
from api.services import Svc
from db.models import ApiKey

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")

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


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(
    request: Request,
    job_id: str,
    key: Annotated[ApiKey | None, Depends(page_key)],
    svc: Svc,
) -> Response:
    if key is None:
        return RedirectResponse(f"/login?next={quote(f'/jobs/{job_id}')}", status_code=303)
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
