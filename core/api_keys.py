"""API keys: random tokens, stored only as SHA-256 digests (``radsearch keys``, the API's checks)."""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["hash_api_key", "new_api_key"]


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest stored in settings. Keys are 256-bit random tokens, so a fast hash is
    enough (nothing to brute-force, unlike passwords)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh random key (``rs_`` + 43 URL-safe characters, 256 bits)."""
    return "rs_" + secrets.token_urlsafe(32)
