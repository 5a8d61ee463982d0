"""Who is calling: an API key, from a header (programs) or a cookie (the job page in a browser).

Programs send ``Authorization: Bearer <token>`` (or ``X-API-Key: <token>``). A browser cannot add
a header to ``<img>`` requests, and a key in the query string would end up in access logs and
browser history, so the page's ``/login`` form sets the key in a cookie: ``HttpOnly`` (no script
reads it), ``SameSite=Strict`` (no other site sends it), ``Secure`` when served over HTTPS. The
cookie is accepted for reading only (GET/HEAD): a cross-site form can never submit a job with it.

A missing, unknown or revoked key is a 401; a key used outside its maps gets 403. Every
authenticated request counts against the key's rate limit.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.problems import Problem
from api.services import Services, Svc
from db import api_keys
from db.models import ApiKey

COOKIE = "featureloc_key"
SAFE_METHODS = ("GET", "HEAD")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="featureloc"'}

# auto_error=False: we answer the 401 ourselves, as a problem document.
_bearer = HTTPBearer(auto_error=False, description="An API key: featureloc apikey create")
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def request_token(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None,
    header: str | None,
) -> str | None:
    if bearer is not None:
        return bearer.credentials
    if header:
        return header
    if request.method in SAFE_METHODS:
        return request.cookies.get(COOKIE)
    return None


def lookup(svc: Services, token: str) -> ApiKey | None:
    """The valid (not revoked) key of a token, or None."""
    with svc.client.db.session() as s:
        key = api_keys.find_key(s, token)
    return key if key is not None and not key.revoked else None


async def api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
    svc: Svc,
) -> ApiKey:
    """The caller's key (a dependency of every ``/v1`` route): 401 without a valid one."""
    return await authenticate(svc, request_token(request, bearer, header))


async def page_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
    svc: Svc,
) -> ApiKey | None:
    """The caller's key, or None where ``api_key`` says 401: pages send people to /login."""
    try:
        return await authenticate(svc, request_token(request, bearer, header))
    except Problem as exc:
        if exc.status_code == 401:
            return None
        raise


async def authenticate(svc: Services, token: str | None) -> ApiKey:
    if not token:
        raise Problem(401, "an API key is required (Authorization: Bearer <key>)", CHALLENGE)
    key = await run_in_threadpool(lookup, svc, token)
    if key is None:
        raise Problem(401, "the API key is not valid or has been revoked", CHALLENGE)
    await svc.limiter.hit(key.token_hash, key.rate_limit)
    return key


CallerKey = Annotated[ApiKey, Depends(api_key)]


def require_map(key: ApiKey, map_name: str) -> None:
    if not key.allows(map_name):
        raise Problem(403, f"this API key may not use map {map_name!r}")
