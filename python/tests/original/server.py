"""A reconstruction of the original ``stream_rpc``'s example server, run unchanged
on this package.

The original's programs are not in this repository: this is written from what
``python/README.md`` ("Coming from the original") says of them, in the
original's style, and is not its text. As there, its ``ping`` branch calls
``send_message`` twice (in the original, ``send_message`` read and handled the
next message before it returned, so the second ``pong`` went out only when the
conversation ended); the queue is a list in this process's memory, from which
``get_task_from_queue`` pops the newest task.

    CRYPTO_KEY=... STREAM_RPC_PORT=8888 python tests/original/server.py
"""

import asyncio

from stream_rpc.common import Connector, Protocol

queue = []


class Server(Protocol):
    async def process_message(self, message_packet):
        if message_packet.method == "ping":
            await self.send_message(self.create_message_packet("pong"))
            await self.send_message(self.create_message_packet("pong"))
        elif message_packet.method == "put_in_queue":
            queue.append(message_packet.payload)
            await self.send_message(self.create_message_packet("pong"))
        elif message_packet.method == "get_task_from_queue":
            if queue:
                await self.send_message(queue.pop())
            else:
                await self.send_message(self.create_message_packet("pong"))


if __name__ == "__main__":
    asyncio.run(Connector(Server).run_server())
