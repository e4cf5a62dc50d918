"""Packet ids (PROTOCOL.md §4): one counter per connector, over all its
connections, taken when a packet is created, so that no two packets of a peer
share an id, concurrent handlers included; ``request_number`` stays what the
original's conversation logic keys on."""

from __future__ import annotations

import asyncio
from collections import Counter

from conftest import run
from test_server import Raw, serving

from stream_rpc.common import Connector, Protocol, create_message_packet
from stream_rpc.crypto import Cypher


class Concurrent(Protocol):
    """Answers each request twice, after a pause, its handlers running at once."""

    concurrent_handlers = True

    async def process_message(self, message_packet):
        await asyncio.sleep(0.01)
        await self.send_message(self.create_message_packet("first"))
        await self.send_message(self.create_message_packet("second"))


def test_concurrent_handlers_on_several_connections_never_share_an_id(key):
    async def scenario():
        server, port = await serving(key, Concurrent)
        raws = [await Raw.connect(port, key) for _ in range(3)]
        for raw in raws:
            for n in range(10):
                await raw.request("go", n)
        answers = []
        for raw in raws:
            for _ in range(20):
                answers.append((await raw.recv())[0])
        server.close()
        return answers

    answers = run(scenario())
    ids = Counter((packet.peer, packet.id) for packet in answers)
    assert len(ids) == 60, [name for name, count in ids.items() if count > 1]
    # One counter from 0 over the connector's connections.
    assert sorted(packet.id for packet in answers) == list(range(60))


def test_calls_from_several_connections_of_one_connector_never_share_an_id(key):
    seen = []

    class Recorder(Protocol):
        concurrent_handlers = True

        async def process_message(self, message_packet):
            seen.append((message_packet.peer, message_packet.id))
            if message_packet.method == "ping":
                await self.send_message(self.create_message_packet("pong", None))

    async def scenario():
        server, port = await serving(key, Recorder)
        connector = Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key))
        peers = [await connector.connect() for _ in range(3)]
        await asyncio.gather(*(peer.call("ping", n) for peer in peers for n in range(10)))
        await asyncio.gather(*(peer.notify("note") for peer in peers))
        await asyncio.gather(*(peer.call("ping") for peer in peers))
        for peer in peers:
            await peer.close()
        server.close()

    run(scenario())
    assert len(seen) == 36 and len(set(seen)) == 36


def test_a_second_hello_of_the_originals_shape_gets_a_new_id(key):
    seen = []

    class Recorder(Protocol):
        async def process_message(self, message_packet):
            seen.append((message_packet.peer, message_packet.id))
            await self.close()

    class Hello(Protocol):
        async def process_message(self, message_packet):
            await self.close()

    async def scenario():
        server, port = await serving(key, Recorder)
        connector = Connector(Hello, "127.0.0.1", port, cypher=Cypher(key))
        for _ in range(2):
            # The original's hello: this peer's id and request number 0.
            await connector.run_client(create_message_packet(connector.peer_id, 0, "ping"))
        server.close()

    run(scenario())
    assert [ident for _, ident in seen] == [0, 1]


def test_request_number_counts_what_this_side_sent_from_1(key):
    async def scenario():
        server, port = await serving(key)
        peer = await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()
        assert peer.request_number == 1
        await peer.call("ping")
        await peer.send_message(peer.create_message_packet("ping"))
        assert peer.request_number == 3
        await peer.close()
        server.close()

    run(scenario())
