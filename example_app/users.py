"""The demo's one model: a user whose saves are broadcast, and whose password never is."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets

from tornado_live import Document


# --8<-- [start:model]
class User(Document, name="user", public=("name", "email"), index=("email",)):
    """A user. Only ``id``, ``name`` and ``email`` ever leave the server."""

    async def set_password(self, password: str) -> None:
        self["password_hash"] = await hashed(password)
        # --8<-- [end:model]


# --8<-- [start:hash]
_N, _R, _P = 2**14, 8, 1  # scrypt cost: about 16 MiB and a few ms per hash


def hash_password(password: str) -> str:
    """``scrypt$<salt hex>$<hash hex>`` with a fresh random salt (standard library scrypt)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${salt.hex()}${digest.hex()}"


async def hashed(password: str) -> str:
    """`hash_password` in a thread: a hash takes milliseconds of CPU, which the event loop
    (every other client) must not wait for."""
    return await asyncio.to_thread(hash_password, password)
    # --8<-- [end:hash]


def check_password(password: str, stored: str) -> bool:
    """True if ``password`` is the one ``stored`` was made from."""
    scheme, salt, digest = stored.split("$")
    if scheme != "scrypt":
        return False
    attempt = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=_N, r=_R, p=_P)
    return hmac.compare_digest(attempt.hex(), digest)
