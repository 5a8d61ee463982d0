"""Queries on the HTTP API's keys (``api_keys``). Same conventions as ``db/queries.py``: a session
first, no commit.

A token is ``flk_`` + 43 URL-safe characters (256 random bits); only its SHA-256 is stored. A
fast hash is enough for a token that long (nothing to brute-force, unlike a password), and it lets
a request find its key with one indexed look-up.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import API_KEY_NAME_LENGTH, ApiKey
from db.types import utcnow

TOKEN_PREFIX = "flk_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(
    s: Session,
    name: str,
    maps: Sequence[str] | None = None,
    rate_limit: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its token; the token is returned only here and never stored.

    ``rate_limit``: requests per minute, 0 for none, None for the server's default.
    Raises ValueError for a name already taken or not 1-64 characters, or a negative rate limit.
    """
    if not 0 < len(name) <= API_KEY_NAME_LENGTH:
        raise ValueError(f"key name must be 1-{API_KEY_NAME_LENGTH} characters")
    if rate_limit is not None and rate_limit < 0:
        raise ValueError("rate limit must be 0 (no limit) or more requests per minute")
    if s.scalars(select(ApiKey).where(ApiKey.name == name)).first() is not None:
        raise ValueError(f"an API key named {name!r} exists already")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        token_hash=hash_token(token),
        maps=sorted(set(maps)) if maps else None,
        rate_limit=rate_limit,
        created_at=utcnow(),
    )
    s.add(key)
    s.flush()
    return key, token


def find_key(s: Session, token: str) -> ApiKey | None:
    """The key whose token this is (revoked or not), or None."""
    return s.scalars(select(ApiKey).where(ApiKey.token_hash == hash_token(token))).one_or_none()


def list_keys(s: Session) -> list[ApiKey]:
    return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(s: Session, name: str) -> ApiKey | None:
    """Revoke the key called ``name`` (idempotent); None when there is no such key."""
    key = s.scalars(select(ApiKey).where(ApiKey.name == name)).one_or_none()
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
        s.flush()
    return key
