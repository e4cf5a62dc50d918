"""The Python hop of tests/opentelemetry/tests/trace.rs: a server whose
``hop`` handler reads the ``traceparent`` its request carried
(``stream_rpc.current_meta()``), calls ``back`` on the peer that called it
(that call carries the trace on, with a parent id of its own), and answers
with both. Prints ``PORT <n>`` once it listens (``STREAM_RPC_PORT=0``).
"""

import asyncio

import stream_rpc
from stream_rpc.common import Connector, Protocol, RemoteError


class Hop(Protocol):
    concurrent_handlers = True

    async def process_message(self, message_packet):
        if message_packet.method != "hop":
            raise RemoteError("unknown_method", "only `hop`", method=message_packet.method)
        meta = stream_rpc.current_meta() or {}
        back = await self.call("back", None)
        answer = {"seen": meta.get("traceparent"), "back": back.payload}
        await self.send_message(self.create_message_packet("hop.reply", answer))


async def main():
    server = await Connector(Hop).start_server()
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
