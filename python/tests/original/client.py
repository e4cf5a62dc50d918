"""A reconstruction of the original ``stream_rpc``'s example client, run unchanged
on this package.

The original's programs are not in this repository: this is written from what
``python/README.md`` ("Coming from the original") says of them and from the
worker example (``python/examples/worker.py``), in the original's style, and
is not its text. After the hello it answers every message: it waits 2 s,
then asks for a task every fifth request, puts a ``parse_article`` task
every second one, and pings otherwise, keyed on ``self.request_number``; a
task it gets is parsed (5 s, the original's) before it goes on.

    CRYPTO_KEY=... STREAM_RPC_HOST=127.0.0.1 STREAM_RPC_PORT=8888 python tests/original/client.py
"""

import asyncio
import random

from stream_rpc.common import Connector, Protocol, create_message_packet


class Client(Protocol):
    async def process_message(self, message_packet):
        if message_packet.method == "parse_article":
            article_id = message_packet.payload["article_id"]
            self.logger.info("Start parsing article: %s", article_id)
            await asyncio.sleep(5)
            self.logger.info("Finished parsing article: %s", article_id)
        await asyncio.sleep(2)
        if self.request_number % 5 == 0:
            await self.send_message(self.create_message_packet("get_task_from_queue"))
        elif self.request_number % 2 == 0:
            article = {"article_id": random.randint(1, 10_000)}
            task = self.create_message_packet("parse_article", article)
            await self.send_message(self.create_message_packet("put_in_queue", task))
        else:
            await self.send_message(self.create_message_packet("ping"))


if __name__ == "__main__":
    connector = Connector(Client)
    asyncio.run(connector.run_client(create_message_packet(connector.peer_id, 0, "ping")))
