"""The replay store's horizon (PROTOCOL.md §9): it fails closed when it
forgets early, and never lands far ahead of the clock."""

import time

from stream_rpc._replay import FRESH_SECONDS, ReplayStore


def test_a_flood_stamped_ahead_never_puts_the_horizon_ahead_of_the_clock() -> None:
    store = ReplayStore(window=360.0, capacity=64)
    ahead = int(time.time()) + 60
    for n in range(200):
        assert store.received(b"flood-%d" % n, ahead) is None
    now = int(time.time())
    assert store._horizon is None or store._horizon <= now + FRESH_SECONDS
    # A peer's token made now is still accepted, once.
    assert store.received(b"now", now) is None
    assert store.received(b"now", now) is not None


def test_a_token_stamped_ahead_and_forgotten_early_is_still_refused() -> None:
    store = ReplayStore(window=360.0, capacity=8)
    now = int(time.time())
    assert store.received(b"ahead", now + 30) is None
    for n in range(8):
        assert store.received(b"old-%d" % n, now - 10) is None
    # `ahead` left the window's order early, but is kept apart: a replay.
    assert store.received(b"ahead", now + 30) is not None
    assert store.received(b"old-0", now - 10) is not None


def test_forgetting_early_fails_closed() -> None:
    store = ReplayStore(window=360.0, capacity=4)
    now = int(time.time())
    for n in range(10):
        assert store.received(b"t-%d" % n, now - 20 + n) is None
    # The first ones were forgotten: refused as older than what it remembers.
    assert store.received(b"t-0", now - 20) is not None
