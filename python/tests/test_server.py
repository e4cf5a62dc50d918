"""A Python server written with this package, driven by a raw peer: what it does
with each kind of bad input (PROTOCOL.md §1, §6, §7, §8), and its answers."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from conftest import run

from stream_rpc import _wire, common
from stream_rpc.common import Connector, Protocol, RemoteError, create_message_packet
from stream_rpc.crypto import Cypher, generate_key


class Echo(Protocol):
    async def process_message(self, message_packet):
        method, payload = message_packet.method, message_packet.payload
        if method == "ping":
            await self.send_message(self.create_message_packet("pong", payload))
        elif method == "slow":
            await asyncio.sleep(payload)
            await self.send_message(self.create_message_packet("done", payload))
        elif method == "boom":
            raise RuntimeError("cannot open /etc/secret")
        elif method == "refuse":
            raise RemoteError("handler_error", "refused", data={"why": 1})


class Raw:
    """A peer that writes frames by hand."""

    def __init__(self, reader, writer, key):
        self.reader, self.writer = reader, writer
        self.cypher = Cypher(key)
        self.peer = str(uuid.uuid4())
        self.next_id = 1

    @classmethod
    async def connect(cls, port, key):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, key)

    def token(self, method, payload=None, **extra):
        packet = create_message_packet(self.peer, self.next_id, method, payload)
        self.next_id += 1
        obj = _wire.packet_object(packet)
        obj.update(extra)
        return self.cypher.encrypt(json.dumps(obj).encode()), packet.id

    async def send(self, line: bytes):
        self.writer.write(line)
        await self.writer.drain()

    async def request(self, method, payload=None, **extra):
        token, ident = self.token(method, payload, **extra)
        await self.send(token + b"\n")
        return ident

    async def recv(self, timeout=5.0):
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            return None
        packet, reply_to, _ = _wire.decode(self.cypher.decrypt(line.rstrip(b"\n")))
        return packet, reply_to

    async def closed(self, timeout=5.0):
        return await asyncio.wait_for(self.reader.read(), timeout) == b""


async def serving(key, protocol=Echo):
    connector = Connector(protocol, "127.0.0.1", 0, cypher=Cypher(key))
    server = await connector.start_server()
    return server, server.sockets[0].getsockname()[1]


def test_bad_input_is_dropped_and_the_server_answers_the_others(key, monkeypatch):
    monkeypatch.setattr(common, "MAX_FRAME", 4096)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        other = await Raw.connect(port, key)
        foreign = Cypher(generate_key())
        token, ident = raw.token("ping", "once")
        bad_lines = [
            b"garbage that is no token\n",
            foreign.encrypt(b'{"x":1}') + b"\n",
            b"B" * 10_000 + b"\n",
            token + b"\n",  # the second time: a replay
        ]
        await raw.send(token + b"\n")
        assert (await raw.recv())[1] == (raw.peer, ident)
        for line in bad_lines:
            await raw.send(line)
            ident = await raw.request("ping", len(line))
            packet, reply_to = await raw.recv()
            assert (packet.method, packet.payload, reply_to.id) == ("pong", len(line), ident)
        ident = await other.request("ping", "other")
        assert (await other.recv())[0].payload == "other"
        server.close()

    run(scenario())


def test_three_bad_frames_in_a_row_close_the_connection(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        await raw.send(b"bad\n" * 3)
        assert await raw.closed()
        server.close()

    run(scenario())


def test_empty_lines_and_crlf(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        await raw.send(b"\n\r\n\n" * 5)
        token, _ = raw.token("ping", "crlf")
        await raw.send(token + b"\r\n")
        assert (await raw.recv())[0].payload == "crlf"
        server.close()

    run(scenario())


def test_what_is_not_a_packet_is_answered_invalid_packet_unless_a_reply(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        wide = {"peer": raw.peer, "id": 77, "method": "m", "created_at": "nope"}
        await raw.send(raw.cypher.encrypt(json.dumps(wide).encode()) + b"\n")
        packet, reply_to = await raw.recv()
        assert packet.method == "error" and reply_to == (raw.peer, 77)
        assert packet.payload["code"] == "invalid_packet"
        as_reply = dict(wide, reply_to={"peer": raw.peer, "id": 1})
        await raw.send(raw.cypher.encrypt(json.dumps(as_reply).encode()) + b"\n")
        await raw.request("ping", "next")
        assert (await raw.recv())[0].payload == "next"
        server.close()

    run(scenario())


def test_a_time_past_the_year_9999_in_utc_is_answered_invalid_packet(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        late = {
            "peer": raw.peer,
            "id": 78,
            "method": "ping",
            "created_at": "9999-12-31T23:59:59-01:00",
        }
        await raw.send(raw.cypher.encrypt(json.dumps(late).encode()) + b"\n")
        packet, reply_to = await raw.recv()
        assert packet.method == "error" and reply_to == (raw.peer, 78)
        assert packet.payload["code"] == "invalid_packet"
        # A task carrying such a time: the packet is read, its task stays an object.
        task = dict(late, method="parse_article", id=79)
        await raw.request("ping", task)
        assert (await raw.recv())[0].payload == task
        await raw.request("ping", "after")
        assert (await raw.recv())[0].payload == "after"
        server.close()

    run(scenario())


def test_handler_errors_are_error_packets_without_internals(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        ident = await raw.request("boom")
        packet, reply_to = await raw.recv()
        assert reply_to.id == ident
        assert packet.payload == {
            "code": "handler_error",
            "message": "`boom` failed",
            "method": "boom",
        }
        await raw.request("refuse")
        packet, _ = await raw.recv()
        assert packet.payload["data"] == {"why": 1}
        server.close()

    run(scenario())


def test_a_client_that_sends_nothing_is_closed_after_the_first_frame_deadline(key, monkeypatch):
    monkeypatch.setattr(common, "FIRST_FRAME_TIMEOUT", 0.3)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        assert await raw.closed()
        server.close()

    run(scenario())


def test_a_half_closed_client_still_gets_its_answers(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        await raw.request("slow", 0.2)
        raw.writer.write_eof()
        packet, _ = await raw.recv()
        assert packet.method == "done"
        assert await raw.closed()
        server.close()

    run(scenario())


def test_a_token_the_server_sent_is_refused_when_reflected(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        await raw.request("ping", "first")
        line = await raw.reader.readline()
        await raw.send(line)  # the server's own token, sent back
        await raw.request("ping", "second")
        packet, _ = await raw.recv()
        assert packet.payload == "second"
        server.close()

    run(scenario())


def test_at_the_handler_limit_a_request_is_answered_busy(key, monkeypatch):
    monkeypatch.setattr(common, "MAX_HANDLERS", 2)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        for _ in range(2):
            await raw.request("slow", 0.5)
        ident = await raw.request("ping")
        packet, reply_to = await raw.recv()
        assert packet.payload["code"] == "busy" and reply_to.id == ident
        server.close()

    run(scenario())


def test_work_past_the_callers_timeout_is_dropped(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        await raw.request("slow", 0.5, timeout_ms=50)
        await asyncio.sleep(0.7)
        await raw.request("ping", "after")
        packet, _ = await raw.recv()
        assert packet.payload == "after"
        server.close()

    run(scenario())


def test_the_originals_ping_handler_sends_two_pongs(key):
    class Original(Protocol):
        async def process_message(self, message_packet):
            if message_packet.method == "ping":
                await self.send_message(self.create_message_packet("pong"))
                await self.send_message(self.create_message_packet("pong"))

    async def scenario():
        server, port = await serving(key, Original)
        raw = await Raw.connect(port, key)
        ident = await raw.request("ping")
        first, second = await raw.recv(), await raw.recv()
        assert first[1].id == ident and second[1].id == ident
        assert first[0].id + 1 == second[0].id
        server.close()

    run(scenario())


def test_settings_are_read_when_the_connector_is_created(monkeypatch, key):
    monkeypatch.setattr(common, "STREAM_RPC_PORT", "not a port")
    with pytest.raises(ValueError, match="STREAM_RPC_PORT"):
        Connector(Echo, cypher=Cypher(key))
    monkeypatch.setattr(common, "STREAM_RPC_PORT", 9999)
    monkeypatch.setattr(common, "STREAM_RPC_TERM", b"\r\n\r\n")
    connector = Connector(Echo, cypher=Cypher(key))
    assert (connector.port, connector.terminator) == (9999, b"\r\n\r\n")
    monkeypatch.setattr(common, "STREAM_RPC_TERM", b"x")
    with pytest.raises(ValueError, match="STREAM_RPC_TERM"):
        Connector(Echo, cypher=Cypher(key))


def test_an_unreachable_server_raises_connection_refused(key):
    from conftest import free_port

    connector = Connector(Echo, "127.0.0.1", free_port(), cypher=Cypher(key))
    hello = create_message_packet(connector.peer_id, 0, "ping")
    with pytest.raises(ConnectionRefusedError):
        run(connector.run_client(hello))


def test_what_a_handler_sends_for_a_reply_is_a_new_request(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        # A reply that completes no call of the server's goes to
        # process_message; its answer carries no reply_to (PROTOCOL.md §5).
        await raw.request("ping", "as a reply", reply_to={"peer": raw.peer, "id": 5})
        packet, reply_to = await raw.recv()
        assert packet.payload == "as a reply" and reply_to is None
        ident = await raw.request("ping", "as a request")
        packet, reply_to = await raw.recv()
        assert reply_to == (raw.peer, ident)
        server.close()

    run(scenario())


def test_a_replacement_cipher_set_in_the_settings_is_used(monkeypatch):
    import base64

    class Reversed:
        """Not encryption: a stand-in with the two methods of a cipher."""

        def encrypt(self, data: bytes) -> bytes:
            return base64.urlsafe_b64encode(data[::-1])

        def decrypt(self, token: bytes) -> bytes:
            return base64.urlsafe_b64decode(token)[::-1]

    monkeypatch.setattr(common, "STREAM_RPC_CYPHER", Reversed)

    async def scenario():
        connector = Connector(Echo, "127.0.0.1", 0)
        server = await connector.start_server()
        port = server.sockets[0].getsockname()[1]
        peer = await Connector(Protocol, "127.0.0.1", port).connect()
        assert (await peer.call("ping", "reversed")).payload == "reversed"
        await peer.close()
        server.close()

    run(scenario())


def test_at_the_handler_limit_a_reply_is_dropped_not_answered(key, monkeypatch):
    monkeypatch.setattr(common, "MAX_HANDLERS", 1)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        await raw.request("slow", 0.3)
        await raw.request("ping", "a reply", reply_to={"peer": raw.peer, "id": 1})
        first, _ = await raw.recv()
        assert first.method == "done"
        await raw.request("ping", "after")
        second, _ = await raw.recv()
        assert second.payload == "after"
        server.close()

    run(scenario())


def test_a_connection_beyond_the_limit_is_closed_at_once(key, monkeypatch):
    monkeypatch.setattr(common, "MAX_CONNECTIONS", 2)

    async def scenario():
        server, port = await serving(key)
        first, second = await Raw.connect(port, key), await Raw.connect(port, key)
        third = await Raw.connect(port, key)
        assert await third.closed()
        for raw in (first, second):
            await raw.request("ping", "served")
            assert (await raw.recv())[0].payload == "served"
        server.close()

    run(scenario())


def test_packets_are_handled_one_at_a_time_in_order_by_default(key):
    order = []

    class InOrder(Protocol):
        async def process_message(self, message_packet):
            order.append(("start", message_packet.payload))
            await asyncio.sleep(0.05 if message_packet.payload == 0 else 0)
            order.append(("end", message_packet.payload))
            await self.send_message(self.create_message_packet("done", message_packet.payload))

    async def scenario():
        server, port = await serving(key, InOrder)
        raw = await Raw.connect(port, key)
        for n in range(3):
            await raw.request("work", n)
        answers = [(await raw.recv())[0].payload for _ in range(3)]
        server.close()
        return answers

    assert run(scenario()) == [0, 1, 2]
    assert order == [("start", 0), ("end", 0), ("start", 1), ("end", 1), ("start", 2), ("end", 2)]


def test_a_handler_may_call_its_peer_while_packets_are_handled_in_order(key):
    class Asker(Protocol):
        async def process_message(self, message_packet):
            if message_packet.method == "ask":
                # The reply completes this call at once: it does not wait for
                # this handler's turn to end.
                answer = await self.call("whoami", None, timeout=5)
                await self.send_message(self.create_message_packet("asked", answer.payload))

    class Answerer(Protocol):
        async def process_message(self, message_packet):
            if message_packet.method == "whoami":
                await self.send_message(self.create_message_packet("whoami.reply", "client"))

    async def scenario():
        server, port = await serving(key, Asker)
        client = await Connector(Answerer, "127.0.0.1", port, cypher=Cypher(key)).connect()
        reply = await client.call("ask", None, timeout=5)
        await client.close()
        server.close()
        return reply

    assert run(scenario()).payload == "client"


def test_concurrent_handlers_are_an_opt_in(key, monkeypatch):
    order = []

    class Slow(Protocol):
        release: asyncio.Event

        async def process_message(self, message_packet):
            order.append(("start", message_packet.payload))
            if message_packet.payload == 0:
                # Concurrently, the second request ends this wait; one at a
                # time, it cannot, and the wait ends by its bound.
                try:
                    await asyncio.wait_for(Slow.release.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
            else:
                Slow.release.set()
            order.append(("end", message_packet.payload))
            await self.send_message(self.create_message_packet("done", message_packet.payload))

    async def scenario():
        Slow.release = asyncio.Event()
        server, port = await serving(key, Slow)
        raw = await Raw.connect(port, key)
        for n in range(2):
            await raw.request("work", n)
        answers = [(await raw.recv())[0].payload for _ in range(2)]
        server.close()
        return answers

    monkeypatch.setattr(common, "STREAM_RPC_CONCURRENT_HANDLERS", "1")
    assert run(scenario()) == [1, 0]
    assert order[:2] == [("start", 0), ("start", 1)]
    # The class attribute wins over the environment.
    order.clear()
    monkeypatch.setattr(Slow, "concurrent_handlers", False, raising=False)
    assert run(scenario()) == [0, 1]
    monkeypatch.setattr(common, "STREAM_RPC_CONCURRENT_HANDLERS", "maybe")
    with pytest.raises(ValueError, match="STREAM_RPC_CONCURRENT_HANDLERS"):
        Connector(Slow, cypher=Cypher(key))
