"""`call.cancel` (PROTOCOL.md §"Cancelling a call") on the Python side, both
ways: a call given up (cancelled, or past its timeout) sends it; a served
handler sees it through `current_cancellation()`; a malformed one is a bad
frame, never answered."""

from __future__ import annotations

import asyncio

from conftest import run
from test_server import Raw, serving

from stream_rpc.common import Connector, Protocol, current_cancellation
from stream_rpc.crypto import Cypher


class Waiter(Protocol):
    concurrent_handlers = True
    #: Set by the tests: what the handler saw.
    seen: asyncio.Queue

    async def process_message(self, message_packet):
        if message_packet.method == "echo":
            await self.send_message(self.create_message_packet("echo.reply", "echo"))
        if message_packet.method != "wait":
            return
        cancellation = current_cancellation()
        await self.seen.put(("started", message_packet.payload))
        await cancellation.wait()
        await self.seen.put(("cancelled", message_packet.payload))
        await self.send_message(self.create_message_packet("wait.reply", "stopped"))

    def _on_call_cancel(self, packet, reply_to):
        body = packet.payload
        self.seen.put_nowait(("call.cancel", body.get("id") if isinstance(body, dict) else body))
        return super()._on_call_cancel(packet, reply_to)


def test_a_call_given_up_cancels_the_peers_handler(key):
    async def main():
        seen: asyncio.Queue = asyncio.Queue()
        server, port = await serving(key, type("W", (Waiter,), {"seen": seen}))
        client = await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()
        # Past its own timeout (the server drops the handler at that time too).
        try:
            await client.call("wait", "timed out", timeout=0.5)
        except asyncio.TimeoutError:
            pass
        assert await asyncio.wait_for(seen.get(), 5) == ("started", "timed out")
        assert await asyncio.wait_for(seen.get(), 5) == ("call.cancel", 0)
        # A call answered sends none (else it would come before the next start).
        assert (await client.call("echo")).payload == "echo"
        # Cancelled by its caller.
        call = asyncio.ensure_future(client.call("wait", "dropped"))
        assert await asyncio.wait_for(seen.get(), 5) == ("started", "dropped")
        call.cancel()
        assert await asyncio.wait_for(seen.get(), 5) == ("call.cancel", 3)
        assert await asyncio.wait_for(seen.get(), 5) == ("cancelled", "dropped")
        # Outside a handler there is no cancellation.
        assert not current_cancellation().is_set()
        await client.close()
        server.close()

    run(main())


def test_call_cancel_frames_are_never_answered_and_a_malformed_one_is_a_bad_frame(key):
    async def main():
        seen: asyncio.Queue = asyncio.Queue()
        server, port = await serving(key, type("W", (Waiter,), {"seen": seen}))
        raw = await Raw.connect(port, key)
        ident = await raw.request("wait", "raw")
        assert await asyncio.wait_for(seen.get(), 5) == ("started", "raw")
        # Unknown calls: dropped quietly (a good frame each).
        for _ in range(4):
            await raw.request("call.cancel", {"peer": raw.peer, "id": 999})
        await raw.request("call.cancel", {"peer": raw.peer, "id": ident})
        for _ in range(4):
            assert await asyncio.wait_for(seen.get(), 5) == ("call.cancel", 999)
        assert await asyncio.wait_for(seen.get(), 5) == ("call.cancel", ident)
        # The handler saw it; its reply is still sent.
        assert await asyncio.wait_for(seen.get(), 5) == ("cancelled", "raw")
        packet, reply_to = await raw.recv()
        assert packet.method == "wait.reply" and reply_to.id == ident
        # Three malformed ones in a row close the connection, unanswered.
        for bad in ({"peer": raw.peer}, {"peer": "x", "id": 1}, [1, 2]):
            await raw.request("call.cancel", bad)
        assert await raw.recv() is None
        server.close()

    run(main())
