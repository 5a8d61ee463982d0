"""``/healthz`` (the process answers) and ``/readyz`` (the broker, the rate limit's Redis and the
database answer): for load balancers and orchestrators, so no key is needed and no detail beyond
"ok"/"unavailable" is given."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.schemas import Health
from api.services import Svc

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(svc: Svc) -> JSONResponse:
    checks = {
        "broker": await run_in_threadpool(svc.broker_ok),
        "rate_limit_redis": await svc.limiter.ping(),
        "database": await run_in_threadpool(svc.database_ok),
    }
    ready = all(checks.values())
    body = Health(
        status="ok" if ready else "unavailable",
        checks={k: "ok" if v else "unavailable" for k, v in checks.items()},
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
