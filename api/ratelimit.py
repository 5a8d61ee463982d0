"""Per-key rate limit in Redis: a fixed one-minute window per key, shared by every API process.

``INCR`` and ``EXPIRE`` in one pipeline: the first request of a window creates its counter, and the
counter expires after the window, so Redis holds one small integer per active key. The counter is
named by the key's token *hash* (unique across deployments sharing a Redis, and no secret).

A restart of Redis leaves every pooled connection dead. redis-py retries nothing unless told to
(``Retry(NoBackoff(), 0)`` on a pool made by ``from_url``), so each dead connection would fail one
request; a retry on ``ConnectionError``/``TimeoutError`` with a short backoff reconnects instead,
and a health check pings a connection idle for a while before using it (as redis.io recommends:
https://redis.io/docs/latest/develop/clients/redis-py/produsage/, "Retries", "Health checks").
While Redis is really down, requests get ``503`` with ``Retry-After`` after the few retries.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.problems import Problem, unavailable

WINDOW_SECONDS = 60
COUNTER_PREFIX = "featureloc:api:rate"
# 3 retries 0.1, 0.2, 0.4 s apart: a restarted Redis is back at once, a dead one costs a request
# well under a second before its 503.
RETRIES = 3
# A connection idle this long is pinged before use (seconds).
HEALTH_CHECK_INTERVAL = 10
# A Redis that does not answer must not hold a request for long (seconds).
SOCKET_TIMEOUT = 5


def connect(redis_url: str) -> aioredis.Redis:
    """An asyncio client that reconnects by itself after a restart of Redis."""
    return aioredis.from_url(
        redis_url,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=HEALTH_CHECK_INTERVAL,
        socket_connect_timeout=SOCKET_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
    )


class RateLimiter:
    def __init__(self, redis_url: str | None, default_limit: int) -> None:
        # No Redis (the embedded demo broker): no limit, said once at start-up by the app.
        self.redis = connect(redis_url) if redis_url else None
        self.default_limit = default_limit

    @property
    def enabled(self) -> bool:
        return self.redis is not None and self.default_limit > 0

    async def hit(self, token_hash: str, key_limit: int | None) -> None:
        """Count one request of a key; raises Problem 429 past its limit, 503 without Redis."""
        limit = self.default_limit if key_limit is None else key_limit  # a key's 0: no limit
        if self.redis is None or limit <= 0:
            return
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        counter = f"{COUNTER_PREFIX}:{token_hash[:32]}:{window}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(counter)
                pipe.expire(counter, 2 * WINDOW_SECONDS)
                count, _ = await pipe.execute()
        except (RedisError, OSError):
            raise unavailable("the rate limit store (Redis)") from None
        if count > limit:
            retry = max(1, int((window + 1) * WINDOW_SECONDS - now))
            raise Problem(
                429,
                f"rate limit of {limit} requests per minute exceeded",
                headers={"Retry-After": str(retry)},
            )

    async def ping(self) -> bool:
        if self.redis is None:
            return True
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
