"""Replay and reflection protection (PROTOCOL.md §9), in this process's memory.

Internal: a :class:`~stream_rpc.common.Connector` keeps one for all its
connections.
"""

from __future__ import annotations

import collections
import heapq
import logging
import time
from typing import Deque, Dict, List, Optional, Tuple

#: Fingerprints kept at most (about 150 MB of Python objects at most; the
#: whole 6-minute window up to about 1,400 tokens a second); beyond it the
#: oldest are forgotten and the store fails closed (refuses tokens as old as
#: the newest one forgotten).
DEFAULT_CAPACITY = 500_000


def fingerprint(token: bytes, fernet: bool) -> bytes:
    """What identifies a token: the 48 characters spelling a Fernet token's HMAC,
    or a custom cipher's whole token."""
    return bytes(token[-48:]) if fernet else bytes(token)


#: A token stamped up to this many seconds ahead of this clock counts like
#: any other for the horizon (a peer whose clock is a second fast); one
#: stamped further ahead never sets it, or every peer's tokens would be
#: refused until the clock caught up.
FRESH_SECONDS = 2


class ReplayStore:
    """Remembers the tokens this endpoint sent and accepted for the TTL plus 60 s.

    Beyond its capacity it forgets the oldest early and fails closed: tokens
    stamped at or before the newest one forgotten are refused. The horizon
    never lands more than :data:`FRESH_SECONDS` ahead of the wall clock: an
    entry stamped further ahead, forgotten early, is kept apart until its
    stamp is near (at most a quarter of the capacity of them; beyond that the
    oldest are forgotten, logged once).
    """

    def __init__(self, window: float, capacity: int = DEFAULT_CAPACITY) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: Dict[bytes, float] = {}
        self._order: Deque[Tuple[float, bytes, Optional[int]]] = collections.deque()
        # Tokens stamped at or before this were forgotten early: refused.
        self._horizon: Optional[int] = None
        # Entries forgotten early while stamped ahead of the clock, by stamp.
        self._ahead: List[Tuple[int, bytes]] = []
        self._ahead_keys: Dict[bytes, int] = {}
        self._warned_ahead = False

    def _raise_horizon(self, stamp: int) -> None:
        self._horizon = stamp if self._horizon is None else max(self._horizon, stamp)

    def _keep_ahead(self, key: bytes, stamp: int) -> None:
        if len(self._ahead) >= max(1, self.capacity // 4):
            _, dropped = heapq.heappop(self._ahead)
            self._ahead_keys.pop(dropped, None)
            if not self._warned_ahead:
                self._warned_ahead = True
                logging.getLogger(__name__).warning(
                    "the replay store forgot tokens stamped ahead of this clock before "
                    "their stamps passed (a flood of tokens stamped ahead): those could "
                    "be accepted once more"
                )
        heapq.heappush(self._ahead, (stamp, key))
        self._ahead_keys[key] = stamp

    def _expire(self, now: float) -> None:
        wall = int(time.time())
        while self._order and (self._order[0][0] <= now or len(self._order) > self.capacity):
            expiry, key, stamp = self._order.popleft()
            if self._seen.get(key) == expiry:
                del self._seen[key]
            if expiry > now and stamp is not None:
                if stamp > wall + FRESH_SECONDS:
                    self._keep_ahead(key, stamp)
                else:
                    self._raise_horizon(stamp)
        # Entries kept apart whose stamps are near now set the horizon.
        while self._ahead and self._ahead[0][0] <= wall + FRESH_SECONDS:
            stamp, key = heapq.heappop(self._ahead)
            if self._ahead_keys.get(key) == stamp:
                del self._ahead_keys[key]
            self._raise_horizon(stamp)

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
        if key in self._seen or key in self._ahead_keys:
            return "a replayed or reflected token"
        if self._horizon is not None and stamp is not None and stamp <= self._horizon:
            return "a token older than the replay store remembers"
        self._remember(key, stamp, now)
        return None
