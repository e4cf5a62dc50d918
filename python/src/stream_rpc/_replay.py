"""Replay and reflection protection (PROTOCOL.md §9), in this process's memory.

Internal: a :class:`~stream_rpc.common.Connector` keeps one for all its
connections.
"""

from __future__ import annotations

import collections
import time
from typing import Deque, Dict, Optional, Tuple

#: Fingerprints kept at most (about 150 MB of Python objects at most; the
#: whole 6-minute window up to about 1,400 tokens a second); beyond it the
#: oldest are forgotten and the store fails closed (refuses tokens as old as
#: the newest one forgotten).
DEFAULT_CAPACITY = 500_000


def fingerprint(token: bytes, fernet: bool) -> bytes:
    """What identifies a token: the 48 characters spelling a Fernet token's HMAC,
    or a custom cipher's whole token."""
    return bytes(token[-48:]) if fernet else bytes(token)


class ReplayStore:
    """Remembers the tokens this endpoint sent and accepted for the TTL plus 60 s."""

    def __init__(self, window: float, capacity: int = DEFAULT_CAPACITY) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: Dict[bytes, float] = {}
        self._order: Deque[Tuple[float, bytes, Optional[int]]] = collections.deque()
        # Tokens stamped at or before this were forgotten early: refused.
        self._horizon: Optional[int] = None

    def _expire(self, now: float) -> None:
        while self._order and (self._order[0][0] <= now or len(self._order) > self.capacity):
            expiry, key, stamp = self._order.popleft()
            if self._seen.get(key) == expiry:
                del self._seen[key]
            if expiry > now and stamp is not None:
                self._horizon = stamp if self._horizon is None else max(self._horizon, stamp)

    def _remember(self, key: bytes, stamp: Optional[int], now: float) -> None:
        expiry = now + self.window
        self._seen[key] = expiry
        self._order.append((expiry, key, stamp))
        self._expire(now)

    def sent(self, key: bytes, stamp: Optional[int]) -> None:
        """Notes a token this endpoint sent, so that it is refused if sent back."""
        self._remember(key, stamp, time.monotonic())

    def received(self, key: bytes, stamp: Optional[int]) -> Optional[str]:
        """``None`` for a new token (now remembered), else why it is refused."""
        now = time.monotonic()
        self._expire(now)
        if key in self._seen:
            return "a replayed or reflected token"
        if self._horizon is not None and stamp is not None and stamp <= self._horizon:
            return "a token older than the replay store remembers"
        self._remember(key, stamp, now)
        return None
