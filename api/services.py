"""What one API process holds: settings, the client that enqueues (the CLI's own), the map store,
the rate limiter, and the lock that lets one figure be drawn at a time."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import text

from api.ratelimit import RateLimiter
from core.mapstore import MapStore
from workers.client import Client
from workers.settings import Settings


def rate_limit_redis_url(settings: Settings) -> str | None:
    """The Redis that counts requests: ``api_redis_url``, else the broker when it is Redis."""
    if settings.api_redis_url is not None:
        return settings.api_redis_url.get_secret_value()
    broker = settings.broker_url.get_secret_value()
    return broker if broker.startswith(("redis://", "rediss://")) else None


@dataclass
class Services:
    settings: Settings
    client: Client
    maps: MapStore
    limiter: RateLimiter
    # Drawing matches takes a core for a second or so: one at a time keeps the API responsive.
    figure_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: Settings) -> Services:
        return cls(
            settings=settings,
            client=Client(settings),
            maps=MapStore(settings.maps_dir),
            limiter=RateLimiter(rate_limit_redis_url(settings), settings.api_rate_limit),
        )

    def database_ok(self) -> bool:
        try:
            with self.client.db.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:  # any failure means "not ready"; the reason is not for the caller
            return False
        return True

    def broker_ok(self) -> bool:
        """The broker's Redis answers (other brokers: a connection can be made)."""
        try:
            with self.client.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
        except Exception:  # kombu raises many kinds; any of them means "not ready"
            return False
        return True


def services(request: Request) -> Services:
    return request.app.state.services


Svc = Annotated[Services, Depends(services)]
