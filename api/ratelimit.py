"""Per-key rate limit in Redis: a fixed one-minute window per key, shared by every API process.

``INCR`` and ``EXPIRE`` in one pipeline: the first request of a window creates its counter, and the
counter expires after the window, so Redis holds one small integer per active key. The counter is
named by the key's token *hash* (unique across deployments sharing a Redis, and no secret).
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.problems import Problem

WINDOW_SECONDS = 60
COUNTER_PREFIX = "featureloc:api:rate"


class RateLimiter:
    def __init__(self, redis_url: str | None, default_limit: int) -> None:
        # No Redis (the embedded demo broker): no limit, said once at start-up by the app.
        self.redis = aioredis.from_url(redis_url) if redis_url else None
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
            raise Problem(503, "the rate limit store (Redis) is unavailable") from None
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
