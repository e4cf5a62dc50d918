"""Only the key opens the door: absolute first-frame and idle deadlines that
only frames opening under the key meet, an incremental terminator search, and
the per-address connection cap (PROTOCOL.md §1, §7)."""

from __future__ import annotations

import asyncio
import logging
import re

from conftest import run
from test_server import Raw, serving

from stream_rpc import common
from stream_rpc.common import _Frames
from stream_rpc.crypto import Cypher, generate_key

#: Longest a test waits for the server to close a connection.
BOUND = 5.0


async def dribble(raw: Raw, pieces, every: float) -> None:
    """Writes the pieces one by one, one every ``every`` seconds, until the
    server closes the connection (or the pieces run out)."""
    try:
        for piece in pieces:
            await raw.send(piece)
            await asyncio.sleep(every)
    except (ConnectionError, OSError):
        pass


async def closed_while(raw: Raw, pieces, every: float) -> float:
    """Seconds until the server closes the connection while ``pieces`` are
    dribbled to it (fails after :data:`BOUND`)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    sender = loop.create_task(dribble(raw, pieces, every))
    try:
        assert await raw.closed(BOUND)
    finally:
        sender.cancel()
    return loop.time() - started


def test_a_byte_at_a_time_does_not_hold_a_slot_past_the_first_frame_deadline(key, monkeypatch):
    monkeypatch.setattr(common, "FIRST_FRAME_TIMEOUT", 0.5)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        token, _ = raw.token("ping")
        # Each byte comes well within the deadline; the token never ends.
        took = await closed_while(raw, [bytes([b]) for b in token], 0.05)
        server.close()
        return took

    assert run(scenario()) < BOUND


def test_garbage_lines_do_not_meet_the_first_frame_deadline(key, monkeypatch):
    monkeypatch.setattr(common, "FIRST_FRAME_TIMEOUT", 0.5)
    monkeypatch.setattr(common, "MAX_BAD_FRAMES", 10_000)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        foreign = Cypher(generate_key()).encrypt(b"{}") + b"\n"
        await closed_while(raw, [b"garbage\n", foreign] * 1000, 0.05)
        server.close()

    run(scenario())


def test_garbage_lines_do_not_reset_the_idle_deadline(key, monkeypatch):
    monkeypatch.setattr(common, "IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(common, "MAX_BAD_FRAMES", 10_000)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        await raw.request("ping", "in")
        assert (await raw.recv())[0].payload == "in"
        foreign = Cypher(generate_key()).encrypt(b"{}") + b"\n"
        await closed_while(raw, [b"garbage\n", foreign, b"x"] * 1000, 0.05)
        server.close()

    run(scenario())


def test_good_frames_keep_a_connection_open_past_the_idle_time(key, monkeypatch):
    monkeypatch.setattr(common, "IDLE_TIMEOUT", 0.4)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        for n in range(8):  # 8 × 0.1 s: twice the idle time
            await raw.request("ping", n)
            assert (await raw.recv())[0].payload == n
            await asyncio.sleep(0.1)
        assert await raw.closed(BOUND)
        server.close()

    run(scenario())


def test_the_terminator_search_goes_on_where_it_stopped():
    frames = _Frames(b"\r\n\r\n", 1 << 20)
    body = b"A" * ((1 << 20) - 10)
    for start in range(0, len(body), 1000):
        frames.feed(body[start : start + 1000])
        assert frames.next_frame() is None
        assert not frames.over_long()
    frames.feed(b"\r\n\r")
    assert frames.next_frame() is None
    frames.feed(b"\nB\r\n\r\n")
    assert frames.next_frame() == body
    assert frames.next_frame() == b"B"
    # Each byte searched about once (a search from the start of the buffer
    # on every chunk would search about 500 times as much).
    assert frames.scanned <= len(body) + 3 * 1100


def test_an_over_long_frame_is_counted_once_and_skipped():
    frames = _Frames(b"\n", 100)
    frames.feed(b"x" * 150)
    assert frames.next_frame() is None
    assert frames.over_long()
    frames.feed(b"y" * 150)
    assert frames.next_frame() is None and not frames.over_long()
    frames.feed(b"z\nok\n")
    assert frames.next_frame() == b"ok"


def test_the_65th_connection_from_one_address_is_closed(key, caplog):
    caplog.set_level(logging.WARNING)

    async def scenario():
        server, port = await serving(key)
        held = [await Raw.connect(port, key) for _ in range(64)]
        # The server counts a connection once it runs it: the last of them
        # answering shows all 64 are counted.
        await held[-1].request("ping", "64th")
        assert (await held[-1].recv())[0].payload == "64th"
        extra = [await Raw.connect(port, key) for _ in range(3)]
        for raw in extra:
            assert await raw.closed(BOUND)
        # Another address is not held back by this one's cap.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        other = Raw(reader, writer, key)
        await other.request("ping", "other address")
        assert (await other.recv())[0].payload == "other address"
        # One closed: one more from the first address is served.
        held.pop().writer.close()
        for _ in range(int(BOUND / 0.05)):
            again = await Raw.connect(port, key)
            try:
                await again.request("ping", "again")
                if (await again.recv(1.0))[0].payload == "again":
                    break
            except (asyncio.TimeoutError, TypeError, ConnectionError, OSError):
                pass  # refused: the closed one is not counted out yet
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no connection served after one closed")
        # Three refusals, logged once (the others counted, said within a second).
        for _ in range(int(BOUND / 0.05)):
            if "more connections refused (per-address cap)" in caplog.text:
                break
            await asyncio.sleep(0.05)
        server.close()

    run(scenario())
    refusals = [r for r in caplog.records if "from 127.0.0.1 already served" in r.getMessage()]
    assert len(refusals) == 1
    counted = re.search(
        r"(\d+) more connections refused \(per-address cap\) in the last 1 s", caplog.text
    )
    assert counted and int(counted.group(1)) >= 2, caplog.text


def test_the_per_address_cap_is_a_setting(key, monkeypatch):
    monkeypatch.setattr(common, "STREAM_RPC_MAX_CONNECTIONS_PER_IP", "2")

    async def scenario():
        server, port = await serving(key)
        first, second = await Raw.connect(port, key), await Raw.connect(port, key)
        await second.request("ping", "second")
        assert (await second.recv())[0].payload == "second"
        third = await Raw.connect(port, key)
        assert await third.closed(BOUND)
        await first.request("ping", "first")
        assert (await first.recv())[0].payload == "first"
        server.close()

    run(scenario())
    import pytest

    monkeypatch.setattr(common, "STREAM_RPC_MAX_CONNECTIONS_PER_IP", "none")
    with pytest.raises(ValueError, match="STREAM_RPC_MAX_CONNECTIONS_PER_IP"):
        common.Connector(common.Protocol, cypher=Cypher(key))


def test_bad_input_on_many_connections_is_logged_once_a_second_per_kind(key, caplog):
    caplog.set_level(logging.WARNING)
    wrong = Cypher(generate_key())

    async def scenario():
        server, port = await serving(key)
        for _ in range(15):
            raw = await Raw.connect(port, key)
            for n in range(3):
                await raw.send(wrong.encrypt(b"not under the key %d" % n) + b"\n")
            assert await raw.closed(BOUND)
        # The counts are said once the second is over.
        for _ in range(int(BOUND / 0.05)):
            if "more connections closed after bad frames" in caplog.text:
                break
            await asyncio.sleep(0.05)
        server.close()

    run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    undecryptable = [m for m in messages if "dropped a frame that failed to decrypt" in m]
    closing = [m for m in messages if "closing after 3 bad frames in a row" in m]
    assert 1 <= len(undecryptable) <= 2, undecryptable
    assert 1 <= len(closing) <= 2, closing
    counted = sum(
        int(n)
        for n in re.findall(
            r"(\d+) more frames that failed to decrypt in the last 1 s", caplog.text
        )
    )
    assert counted + len(undecryptable) == 45, caplog.text
