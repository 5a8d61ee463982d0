"""The HTTP API: ``featureloc serve`` runs ``create_app`` under uvicorn.

Settings come from the environment, as for the workers and the CLI (``workers/settings.py``). The
schema is at ``/openapi.json``; the interactive docs at ``/docs`` and ``/redoc`` are served from
this process (fastapi-offline ships their assets), so they work without internet access.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api import figures, health, jobs, maps, pages
from api.accesslog import install_access_log_filter
from api.limits import FORM_OVERHEAD, BodyLimitMiddleware
from api.problems import install_problem_handlers
from api.services import Services
from core.photoset import MAX_PHOTOS
from workers.settings import get_settings

log = logging.getLogger(__name__)


def create_app() -> FastAPI:
    settings = get_settings()
    svc = Services.create(settings)
    install_access_log_filter()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not svc.limiter.enabled:
            log.warning("no rate limit: FEATURELOC_API_RATE_LIMIT is 0 or no Redis is configured")
        yield
        await svc.limiter.close()

    app = FastAPIOffline(
        title="featureloc",
        version="1",
        summary="Where was this photo taken: localise photos on maps of reference photos.",
        lifespan=lifespan,
    )
    app.state.services = svc
    install_problem_handlers(app)
    for module in (health, jobs, figures, maps, pages):
        app.include_router(module.router)
    # Room for a photo set's photos (core/photoset.py); each photo is held to its own limit.
    max_body = MAX_PHOTOS * settings.max_image_bytes + FORM_OVERHEAD
    app.add_middleware(BodyLimitMiddleware, max_body=max_body)
    return app
