"""Streams between Python peers (PROTOCOL.md §"Streams"): every kind, credit,
cancellation both ways, ends, limits; and what each side does with a peer that
breaks the rules (crafted packets)."""

from __future__ import annotations

import asyncio
import gc

import pytest
from conftest import run
from test_server import Raw

from stream_rpc import _flow, _streams
from stream_rpc.common import (
    Connector,
    Protocol,
    RemoteError,
    StreamCancelled,
    StreamDisconnected,
    StreamProtocolError,
    StreamTimeout,
    stream_method,
)
from stream_rpc.crypto import Cypher


class Seen:
    """What the serving side did, as events the tests await (no sleeps)."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = asyncio.Event()
        self.reached = asyncio.Event()
        self.reach = 0
        self.read = 0
        self.protocols: list = []


class Streams(Protocol):
    seen: Seen

    def __init__(self, connector):
        super().__init__(connector)
        type(self).seen.protocols.append(self)

    async def process_message(self, message_packet):
        if message_packet.method == "ping":
            await self.send_message(self.create_message_packet("pong", message_packet.payload))

    @stream_method
    async def count(self, packet, incoming):
        assert incoming is None
        for n in range(1, packet.payload["n"] + 1):
            yield n

    @stream_method
    async def forever(self, packet, incoming):
        seen = type(self).seen
        try:
            while True:
                seen.produced += 1
                if seen.produced == seen.reach:
                    seen.reached.set()
                yield seen.produced
        finally:
            seen.closed.set()

    @stream_method(input=True)
    async def total(self, packet, incoming):
        sum_ = 0
        async for item in incoming:
            sum_ += item
        return sum_

    @stream_method(input=True)
    async def double(self, packet, incoming):
        async for item in incoming:
            yield item * 2

    @stream_method(input=True)
    async def stall(self, packet, incoming):
        # Takes input but never reads it, until cancelled.
        try:
            await asyncio.Event().wait()
        finally:
            type(self).seen.closed.set()

    @stream_method("take.two", input=True)
    async def take_two(self, packet, incoming):
        taken = [await incoming.__anext__(), await incoming.__anext__()]
        await incoming.aclose()
        return taken

    @stream_method
    async def fail(self, packet, incoming):
        yield 1
        raise RemoteError("handler_error", "it failed", data={"after": 1})

    @stream_method
    async def crash(self, packet, incoming):
        yield 1
        raise RuntimeError("internal detail")

    @stream_method
    async def cancel_me(self, packet, incoming):
        yield 1
        raise RemoteError("cancelled", "shutting down")


async def serving(key, protocol=Streams):
    protocol.seen = Seen()
    connector = Connector(protocol, "127.0.0.1", 0, cypher=Cypher(key))
    server = await connector.start_server()
    return server, server.sockets[0].getsockname()[1]


async def client(key, port, protocol=Protocol):
    return await Connector(protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()


async def settle(peer, rounds=3):
    """Round trips on the connection: what the server had to do with the
    frames sent before is done (it reads them in order)."""
    for n in range(rounds):
        assert (await peer.call("ping", n)).payload == n


def test_an_output_stream_delivers_every_item_in_order_then_ends(key):
    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        stream = peer.stream("count", {"n": 100}, window=4)
        assert [item async for item in stream] == list(range(1, 101))
        assert stream.last_seq == 100 and stream.result is None
        # An empty stream ends at once.
        assert [item async for item in peer.stream("count", {"n": 0})] == []
        assert not Streams.seen.protocols[0]._streams.accepted
        assert not peer._streams.opened
        await peer.close()
        server.close()

    run(scenario())


def test_a_slow_consumer_bounds_the_producer_to_its_window(key):
    async def scenario():
        server, port = await serving(key)
        Streams.seen.reach = 4
        peer = await client(key, port)
        stream = peer.stream("forever", window=4)
        assert await stream.__anext__() == 1
        await asyncio.wait_for(Streams.seen.reached.wait(), 5)
        await settle(peer)
        # Nothing more than the window was made: the producer waits for credit.
        assert Streams.seen.produced == 4
        assert len(peer._streams.opened[stream._state.id].out.buffer) == 3
        # Taking half the window grants it again: the producer goes on, by the window.
        Streams.seen.reached.clear()
        Streams.seen.reach = 6
        assert [await stream.__anext__(), await stream.__anext__()] == [2, 3]
        await asyncio.wait_for(Streams.seen.reached.wait(), 5)
        await settle(peer)
        # Half the window (2) was granted again once 2 of the 4 were taken.
        assert Streams.seen.produced == 6
        await stream.aclose()
        await asyncio.wait_for(Streams.seen.closed.wait(), 5)
        await peer.close()
        server.close()

    run(scenario())


def test_the_bytes_window_stops_credit_while_items_are_held(key, monkeypatch):
    async def scenario():
        server, port = await serving(key)
        Streams.seen.reach = 8
        peer = await client(key, port)
        stream = peer.stream("forever", window=8)
        await stream._open()
        await asyncio.wait_for(Streams.seen.reached.wait(), 5)
        await settle(peer)
        out = stream._state.out
        assert len(out.buffer) == 8 and out.granted == 8
        size = out.bytes / 8
        # Room for 3.5 items' bytes: while 4 are held, taking half the window
        # grants nothing; once 3 are, it grants the window again.
        monkeypatch.setattr(_flow, "STREAM_WINDOW_BYTES", int(size * 3.5))
        assert [await stream.__anext__() for _ in range(4)] == [1, 2, 3, 4]
        assert out.granted == 8
        assert await stream.__anext__() == 5
        assert out.granted == 13
        await stream.aclose()
        await peer.close()
        server.close()

    run(scenario())


def test_the_whole_streams_timeout_cuts_it_with_items_still_held(key):
    async def scenario():
        server, port = await serving(key)
        Streams.seen.reach = 4
        peer = await client(key, port)
        stream = peer.stream("forever", window=4, timeout=0.2)
        await stream._open()
        await asyncio.wait_for(Streams.seen.reached.wait(), 5)
        await settle(peer)
        assert len(stream._state.out.buffer) == 4
        await asyncio.sleep(0.25)  # the stream's limit passes (time, not a sync)
        with pytest.raises(StreamTimeout):
            await stream.__anext__()
        await asyncio.wait_for(Streams.seen.closed.wait(), 5)
        await peer.close()
        server.close()

    run(scenario())


def test_an_input_only_stream_returns_the_methods_value(key):
    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)

        async def numbers():
            for n in range(1000):
                yield n

        stream = peer.stream("total", input=numbers(), window=0)
        assert await stream.finish() == sum(range(1000))
        assert stream.result == sum(range(1000))
        # A plain iterable is input too.
        assert await peer.stream("total", input=[1, 2, 3], window=0).finish() == 6
        await peer.close()
        server.close()

    run(scenario())


def test_input_waits_for_the_acceptors_credit(key):
    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        pulled = 0
        closed = asyncio.Event()
        window_sent = asyncio.Event()

        async def numbers():
            nonlocal pulled
            try:
                while True:
                    pulled += 1
                    if pulled == _streams.STREAM_WINDOW:
                        window_sent.set()
                    yield pulled
            finally:
                closed.set()

        stream = peer.stream("stall", input=numbers(), window=0)
        opening = asyncio.ensure_future(stream.__anext__())
        await asyncio.wait_for(window_sent.wait(), 5)
        await settle(peer)
        state = stream._state
        # The window and no more: the next item is not even taken from the source.
        assert state.input_sent == _streams.STREAM_WINDOW and pulled == _streams.STREAM_WINDOW
        opening.cancel()
        await stream.aclose()
        await asyncio.wait_for(closed.wait(), 5)
        await asyncio.wait_for(Streams.seen.closed.wait(), 5)
        await peer.close()
        server.close()

    run(scenario())


def test_a_stream_both_ways(key):
    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        stream = peer.stream("double", input=range(200), window=3)
        assert [item async for item in stream] == [n * 2 for n in range(200)]
        await peer.close()
        server.close()

    run(scenario())


def test_the_acceptor_stops_the_input_and_the_call_goes_on(key):
    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        stopped = asyncio.Event()

        async def endless():
            n = 0
            try:
                while True:
                    n += 1
                    yield n
            finally:
                stopped.set()

        stream = peer.stream("take.two", input=endless(), window=0)
        assert await stream.finish() == [1, 2]
        await asyncio.wait_for(stopped.wait(), 5)
        await peer.close()
        server.close()

    run(scenario())


def test_cancelling_closes_the_producer_and_forgets_the_stream(key):
    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        async with peer.stream("forever", window=2) as stream:
            assert [await stream.__anext__() for _ in range(3)] == [1, 2, 3]
        await asyncio.wait_for(Streams.seen.closed.wait(), 5)
        # The iteration is over after aclose, and so is the result.
        assert [item async for item in stream] == []
        with pytest.raises(RuntimeError):
            _ = stream.result
        await settle(peer)
        assert not Streams.seen.protocols[0]._streams.accepted
        assert not peer._streams.opened
        # Leaving an `async for` and dropping the stream cancels it too.
        Streams.seen.closed.clear()
        taken = 0
        async for _ in peer.stream("forever"):
            taken += 1
            if taken == 2:
                break
        gc.collect()
        await settle(peer)
        assert not peer._streams.opened, gc.get_referrers(*peer._streams.opened.values())
        await asyncio.wait_for(Streams.seen.closed.wait(), 5)
        await peer.close()
        server.close()

    run(scenario())


def test_ends_failed_crashed_cancelled(key):
    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        got = []
        with pytest.raises(RemoteError) as failed:
            async for item in peer.stream("fail"):
                got.append(item)
        assert got == [1]
        assert (failed.value.code, failed.value.data) == ("handler_error", {"after": 1})
        with pytest.raises(RemoteError) as crashed:
            async for _ in peer.stream("crash"):
                pass
        assert crashed.value.code == "handler_error"
        assert "internal" not in crashed.value.message
        with pytest.raises(StreamCancelled) as cancelled:
            async for _ in peer.stream("cancel_me"):
                pass
        # An error packet too, as the Rust side reads it.
        assert isinstance(cancelled.value, RemoteError)
        assert (cancelled.value.code, cancelled.value.message) == ("cancelled", "shutting down")
        await peer.close()
        server.close()

    run(scenario())


def test_the_connection_closing_ends_streams_both_ways(key):
    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        stream = peer.stream("forever", window=5)
        assert await stream.__anext__() == 1
        await settle(peer)
        for protocol in Streams.seen.protocols:
            await protocol.close()
        got = []
        with pytest.raises(StreamDisconnected) as ended:
            async for item in stream:
                got.append(item)
        # The items received before are handed out first; last_seq counts them.
        assert got == [2, 3, 4, 5] and ended.value.last_seq == 5 == stream.last_seq
        # A stream opened on the closed connection: disconnected, nothing received.
        await peer.wait_closed()
        with pytest.raises(StreamDisconnected) as late:
            await peer.stream("count", {"n": 1}).__anext__()
        assert late.value.last_seq == 0
        await asyncio.wait_for(Streams.seen.closed.wait(), 5)
        # The opener going away drops the acceptor's handler too.
        Streams.seen.closed.clear()
        Streams.seen.produced = 0
        peer = await client(key, port)
        other = peer.stream("forever", window=1)
        assert await other.__anext__() == 1
        await peer.close()
        await asyncio.wait_for(Streams.seen.closed.wait(), 5)
        server.close()

    run(scenario())


def test_refusals_not_a_stream_stream_required_busy(key, monkeypatch):
    monkeypatch.setattr(_streams, "MAX_STREAMS", 3)

    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        with pytest.raises(RemoteError) as refused:
            async for _ in peer.stream("ping"):
                pass
        assert refused.value.code == "not_a_stream"
        with pytest.raises(RemoteError) as required:
            await peer.call("count", {"n": 1})
        assert required.value.code == "stream_required"
        held = [peer.stream("forever", window=0) for _ in range(3)]
        for stream in held:
            await stream._open()
        await settle(peer)
        with pytest.raises(RemoteError) as busy:
            async for _ in peer.stream("count", {"n": 1}):
                pass
        assert busy.value.code == "busy"
        for stream in held:
            await stream.aclose()
        await settle(peer)
        assert [n async for n in peer.stream("count", {"n": 2})] == [1, 2]
        assert not peer._streams.opened
        await peer.close()
        server.close()

    run(scenario())


def test_timeouts_cancel_the_stream(key):
    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        # No credit: no item ever comes within the item timeout.
        stream = peer.stream("forever", window=0, item_timeout=0.2)
        with pytest.raises(StreamTimeout):
            await stream.__anext__()
        await settle(peer)
        assert not Streams.seen.protocols[0]._streams.accepted
        # The whole stream's limit cuts it while items still flow.
        whole = peer.stream("forever", window=1, timeout=0.3)
        with pytest.raises(StreamTimeout):
            async for _ in whole:
                pass
        assert whole.last_seq >= 1
        await peer.close()
        server.close()

    run(scenario())


# -- crafted packets: an opener that breaks the rules --------------------


async def open_raw(raw, method, credit, payload=None):
    ident = await raw.request(method, payload, stream={"credit": credit})
    return {"peer": raw.peer, "id": ident}


async def expect_error(raw, code, ident):
    packet, reply_to = await raw.recv()
    while packet.method == "stream.item":
        packet, reply_to = await raw.recv()
    assert packet.method == "error" and packet.payload["code"] == code, packet
    assert reply_to.id == ident
    return packet


@pytest.mark.parametrize(
    "method, credit, frames, reason",
    [
        ("total", 0, [("stream.item", {"seq": 2}, 1)], "seq 2"),
        ("total", 0, [("stream.item", {"seq": 1}, 1)] * 40, "beyond the credit"),
        ("total", 0, [("stream.end", {"seq": 0}, None), ("stream.item", {"seq": 1}, 1)], "after"),
        ("total", 0, [("stream.end", {"seq": 3}, None)], "says 3"),
        ("forever", 0, [("stream.item", {"seq": 1}, 1)], "takes none"),
        ("total", 0, [("stream.credit", {"credit": 1}, None)], "returns no stream"),
        ("forever", 0, [("stream.credit", {"credit": 65_537}, None)], "beyond 65536"),
        ("forever", 0, [("stream.credit", {"credit": 0}, None)], "no credit"),
        ("forever", 65_537, [], "open credit"),
    ],
)
def test_an_opener_breaking_a_rule_gets_invalid_stream(key, method, credit, frames, reason):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        address = await open_raw(raw, method, credit)
        if method == "total" and credit == 0:
            granted, _ = await raw.recv()  # the input credit: the open accepted
            assert granted.method == "stream.credit" and granted.stream["credit"] == 32
        for n, (kind, fields, payload) in enumerate(frames):
            if kind == "stream.item" and len(frames) > 1 and frames[0] == frames[-1]:
                fields = {"seq": n + 1}
            await raw.request(kind, payload, stream=dict(address, **fields))
        error = await expect_error(raw, "invalid_stream", address["id"])
        assert reason in error.payload["message"]
        protocol = Streams.seen.protocols[0]
        await asyncio.wait_for(raw_ping(raw), 5)
        assert not protocol._streams.accepted
        server.close()

    run(scenario())


async def raw_ping(raw):
    """A ping answered: the first packet that comes is its pong (nothing else
    was sent before it)."""
    ident = await raw.request("ping", "after")
    packet, reply_to = await raw.recv()
    assert (packet.method, reply_to.id) == ("pong", ident), packet


def test_frames_of_unknown_streams_are_dropped_unanswered(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        unknown = {"peer": raw.peer, "id": 999_999}
        for kind in ("stream.item", "stream.credit", "stream.end", "stream.cancel"):
            await raw.request(kind, None, stream=dict(unknown, seq=1, credit=1))
        # A stream packet whose `stream` is not one, or is missing: never answered.
        await raw.request("stream.item", None, stream="nope")
        await raw.request("stream.credit", None)
        # Ended streams' late frames are dropped too.
        address = await open_raw(raw, "count", 5, {"n": 1})
        for _ in range(2):
            packet, _ = await raw.recv()
        assert packet.method == "count.reply"
        await raw.request("stream.credit", None, stream=dict(address, credit=1))
        # The first answer is the ping's: nothing came for the frames above.
        await raw_ping(raw)
        counts = Streams.seen.protocols[0]._streams.counts
        assert counts["unknown"] == 5 and counts["late"] == 1
        server.close()

    run(scenario())


def test_an_open_that_claims_the_acceptors_own_id_is_refused(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        await raw.request("ping", None)
        pong, _ = await raw.recv()
        own, raw.peer = raw.peer, pong.peer
        forged = await raw.request("forever", None, stream={"credit": 1})
        raw.peer = own
        packet, reply_to = await raw.recv()
        assert packet.method == "error" and packet.payload["code"] == "invalid_stream", packet
        assert (reply_to.peer, reply_to.id) == (pong.peer, forged)
        assert not Streams.seen.protocols[0]._streams.accepted
        server.close()

    run(scenario())


def test_a_stream_open_with_a_bad_stream_field_is_invalid_packet(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        ident = await raw.request("count", {"n": 1}, stream={"credit": -1})
        packet, reply_to = await raw.recv()
        assert packet.payload["code"] == "invalid_packet" and reply_to.id == ident
        server.close()

    run(scenario())


# -- crafted packets: an acceptor that breaks the rules ------------------


class RawAcceptor:
    """A server written by hand: it answers an open with the frames a test gives."""

    def __init__(self, key, frames):
        self.key = key
        self.frames = frames
        self.received: asyncio.Queue = asyncio.Queue()

    async def serve(self, reader, writer):
        raw = Raw(reader, writer, self.key)
        packet, _ = await raw.recv()
        address = {"peer": packet.peer, "id": packet.id}
        for kind, fields, payload in self.frames:
            if kind == "reply":
                token, _ = raw.token(f"{packet.method}.reply", payload, reply_to=address, **fields)
                await raw.send(token + b"\n")
            else:
                await raw.request(kind, payload, stream=dict(address, **fields))
        while True:
            got = await raw.recv(30)
            if got is None:
                return
            await self.received.put(got[0])


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([("stream.item", {"seq": 1}, "a"), ("stream.item", {"seq": 3}, "b")], "seq 3"),
        ([("stream.item", {"seq": n}, n) for n in range(1, 4)], "beyond the credit"),
        ([("stream.end", {"seq": 0}, None)], "from the acceptor"),
        ([("stream.credit", {"credit": 0}, None)], "no credit"),
    ],
)
def test_an_acceptor_breaking_a_rule_is_cancelled_invalid_stream(key, frames, reason):
    async def scenario():
        acceptor = RawAcceptor(key, frames)
        server = await asyncio.start_server(acceptor.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        peer = await client(key, port)
        has_input = "credit" in frames[0][1]
        stream = peer.stream("m", window=2, input=[1] if has_input else None)
        with pytest.raises(StreamProtocolError, match=reason):
            async for _ in stream:
                pass
        cancel = await asyncio.wait_for(acceptor.received.get(), 5)
        while cancel.method != "stream.cancel":
            cancel = await asyncio.wait_for(acceptor.received.get(), 5)
        assert cancel.payload["code"] == "invalid_stream"
        assert not peer._streams.opened
        await peer.close()
        server.close()

    run(scenario())


def test_input_credit_beyond_the_limit_is_a_broken_rule(key):
    async def scenario():
        frames = [
            ("stream.credit", {"credit": 65_536}, None),
            ("stream.credit", {"credit": 1}, None),
        ]
        acceptor = RawAcceptor(key, frames)
        server = await asyncio.start_server(acceptor.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        peer = await client(key, port)
        gate = asyncio.Event()

        async def held():
            await gate.wait()
            yield 1

        with pytest.raises(StreamProtocolError, match="beyond 65536"):
            async for _ in peer.stream("m", input=held()):
                pass
        await peer.close()
        server.close()

    run(scenario())


def test_the_opens_timeout_ms_drops_the_handler_and_sends_nothing(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        ident = await raw.request("stall", None, stream={"credit": 0}, timeout_ms=100)
        granted, _ = await raw.recv()
        assert granted.method == "stream.credit"
        await asyncio.wait_for(Streams.seen.closed.wait(), 5)
        # The next packet is the ping's answer: nothing came for the stream.
        ping = await raw.request("ping", "after")
        packet, reply_to = await raw.recv()
        assert (packet.method, reply_to.id) == ("pong", ping)
        protocol = Streams.seen.protocols[0]
        assert not protocol._streams.accepted
        assert (raw.peer, ident) in protocol._streams._ended
        server.close()

    run(scenario())


class Puller(Protocol):
    """Answers `pull` by opening a stream back to its caller (either side opens)."""

    concurrent_handlers = True

    async def process_message(self, message_packet):
        if message_packet.method == "pull":
            items = [item async for item in self.stream("numbers", {"n": message_packet.payload})]
            await self.send_message(self.create_message_packet("pull.reply", items))


class Numbers(Protocol):
    @stream_method
    async def numbers(self, packet, incoming):
        for n in range(packet.payload["n"]):
            yield n


def test_the_accepting_side_opens_a_stream_back(key):
    async def scenario():
        server, port = await serving(key, Puller)
        peer = await client(key, port, Numbers)
        assert (await peer.call("pull", 5)).payload == [0, 1, 2, 3, 4]
        await peer.close()
        server.close()

    run(scenario())


def test_a_quiet_stream_keeps_its_connection_from_the_idle_timer(key, monkeypatch):
    from stream_rpc import common

    monkeypatch.setattr(common, "IDLE_TIMEOUT", 0.2)

    async def scenario():
        server, port = await serving(key)
        peer = await client(key, port)
        stream = peer.stream("stall", window=0)
        await stream._open()
        await settle(peer, 1)
        await asyncio.sleep(0.7)  # more than three idle limits without a frame
        assert not peer._writer.is_closing()
        await settle(peer, 1)
        assert Streams.seen.protocols[0]._streams.accepted
        await stream.aclose()
        await asyncio.wait_for(Streams.seen.closed.wait(), 5)
        # With no stream left, the idle limit closes the connection.
        await asyncio.wait_for(peer.wait_closed(), 5)
        server.close()

    run(scenario())
