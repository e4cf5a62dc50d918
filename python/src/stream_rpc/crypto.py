"""Fernet tokens under the shared key, as `docs/PROTOCOL.md` §2 and §3 say.

``CRYPTO_KEY`` is read from the environment when this module is imported;
set ``stream_rpc.crypto.CRYPTO_KEY`` in code before a connector is created
to use another. It may hold several comma-separated keys: the first seals,
any of them opens (key rotation).

Run ``python -m stream_rpc.crypto`` to print a new key.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from typing import List, Optional, Tuple

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

#: The shared key (or keys, comma-separated), from the environment.
CRYPTO_KEY: Optional[str] = os.environ.get("CRYPTO_KEY")

#: Seconds a token lives (PROTOCOL.md §3); ``None`` turns the check off.
TOKEN_TTL: Optional[int] = 300

#: Seconds a token may be ahead of this clock (the Fernet clock-skew rule).
MAX_CLOCK_SKEW = 60

_HOW_TO_MAKE = (
    "make one with `python -m stream_rpc.crypto` "
    "(or `cargo run --example keygen`) and export it as CRYPTO_KEY"
)
_TOKEN = re.compile(rb"[A-Za-z0-9_-]+={0,2}")


class CryptoKeyError(ValueError):
    """The key is missing or is not a Fernet key; the message says how to make one."""


class TokenError(ValueError):
    """A token that does not open: malformed, another key, expired or from the future.

    ``reason`` is one of ``"malformed"``, ``"bad signature"``, ``"expired"``
    and ``"from the future"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def generate_key() -> str:
    """A new random key: 32 bytes as URL-safe base64 (44 characters)."""
    return Fernet.generate_key().decode("ascii")


def _parse_keys(text: Optional[str]) -> List[Fernet]:
    if text is None or not text.strip():
        raise CryptoKeyError(f"CRYPTO_KEY is not set: {_HOW_TO_MAKE}")
    keys = []
    for position, key in enumerate(text.split(","), start=1):
        key = key.strip()
        try:
            keys.append(Fernet(key))
        except (ValueError, binascii.Error):
            raise CryptoKeyError(
                f"CRYPTO_KEY key #{position} is not a Fernet key (32 bytes as URL-safe "
                f"base64, 44 characters): {_HOW_TO_MAKE}"
            ) from None
    return keys


class Cypher:
    """Seals bytes into Fernet tokens and opens them, under ``CRYPTO_KEY``.

    Replace it with a subclass, or any class with the same two methods, by
    setting ``stream_rpc.common.STREAM_RPC_CYPHER`` (or passing ``cypher=``
    to the connector). A replacement's tokens are fingerprinted whole by the
    replay check, and carry no time it can read.
    """

    def __init__(self, key: Optional[str] = None, ttl: Optional[int] = None) -> None:
        """Uses ``key``, or the module's ``CRYPTO_KEY`` now; ``ttl`` defaults to ``TOKEN_TTL``."""
        self._keys = _parse_keys(CRYPTO_KEY if key is None else key)
        self._fernet = MultiFernet(self._keys)
        self.ttl = TOKEN_TTL if ttl is None else ttl

    def encrypt(self, data: bytes) -> bytes:
        """A new token of ``data``, stamped now, under the first key."""
        return self._fernet.encrypt(data)

    def encrypt_at(self, data: bytes, at: int) -> bytes:
        """A new token of ``data`` stamped with ``at`` (seconds since the epoch)."""
        return self._keys[0].encrypt_at_time(data, at)

    def decrypt(self, token: bytes) -> bytes:
        """The plaintext of ``token``; raises :class:`TokenError` saying why not."""
        return self.open(token)[0]

    def open(self, token: bytes, now: Optional[int] = None) -> Tuple[bytes, int]:
        """The plaintext of ``token`` and its timestamp, checked against ``now``.

        Only the canonical spelling is accepted (padding present, no stray
        bits), the HMAC is checked before anything else, then the time, in
        whole seconds: expired when ``now - timestamp > ttl``, from the
        future when ``timestamp > now + 60``.
        """
        token = bytes(token)
        if not _TOKEN.fullmatch(token):
            raise TokenError("malformed")
        try:
            raw = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            raise TokenError("malformed") from None
        if base64.urlsafe_b64encode(raw) != token:
            raise TokenError("malformed")
        if len(raw) < 1 + 8 + 16 + 16 + 32 or raw[0] != 0x80 or (len(raw) - 57) % 16:
            raise TokenError("malformed")
        try:
            plain = self._fernet.decrypt(token)
        except InvalidToken:
            raise TokenError("bad signature") from None
        stamp = int.from_bytes(raw[1:9], "big")
        now = int(time.time()) if now is None else now
        if stamp > now + MAX_CLOCK_SKEW:
            raise TokenError("from the future")
        if self.ttl is not None and now - stamp > self.ttl:
            raise TokenError("expired")
        return plain, stamp


if __name__ == "__main__":
    print(generate_key())
