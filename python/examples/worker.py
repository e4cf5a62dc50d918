"""The worker of the original, on this package: after the hello it puts a
``parse_article`` task every second request, asks for a task every fifth, and
pings otherwise; a task it gets is parsed and saved with ``save_parsed_article``.
It waits ``WORKER_REQUEST_DELAY_MS`` (2000, the original's 2 s) before each
request and ``WORKER_PARSE_DELAY_MS`` (5000, the original's 5 s) to parse an
article, as the Rust example worker does.

    CRYPTO_KEY=... STREAM_RPC_HOST=127.0.0.1 python examples/worker.py
"""

import asyncio
import os
import random

from stream_rpc.common import Connector, Protocol, create_message_packet

MAX_REQUESTS = int(os.environ.get("WORKER_MAX_REQUESTS", "0")) or None
#: Seconds between requests: the original's 2 s.
DELAY = float(os.environ.get("WORKER_REQUEST_DELAY_MS", "2000")) / 1000
#: Seconds to parse an article: the original's 5 s.
PARSE_DELAY = float(os.environ.get("WORKER_PARSE_DELAY_MS", "5000")) / 1000


class Worker(Protocol):
    async def process_message(self, message_packet):
        if message_packet.method == "parse_article":
            article_id = message_packet.payload["article_id"]
            self.logger.info("Start parsing article: %r", article_id)
            await asyncio.sleep(PARSE_DELAY)
            self.logger.info("Finished parsing article: %r", article_id)
            article = {"article_id": article_id, "title": f"Article {article_id}"}
            task = {"peer": message_packet.peer, "id": message_packet.id}
            payload = {"task": task, "article": article}
            await self.send_message(self.create_message_packet("save_parsed_article", payload))
            return
        answer = message_packet.payload
        if isinstance(answer, dict) and answer.get("saved") is True:
            self.logger.info("The server saved a parsed article")
        if message_packet.method == "error":
            body = message_packet.payload if isinstance(message_packet.payload, dict) else {}
            self.logger.warning("The server refused a request: %r", body.get("code"))
        await asyncio.sleep(DELAY)
        if MAX_REQUESTS is not None and self.request_number > MAX_REQUESTS:
            self.logger.info("Done: %d requests made", self.request_number - 1)
            await self.close()
        elif self.request_number % 5 == 0:
            await self.send_message(self.create_message_packet("get_task_from_queue"))
        elif self.request_number % 2 == 0:
            article = {"article_id": random.randint(1, 10_000)}
            task = self.create_message_packet("parse_article", article)
            await self.send_message(self.create_message_packet("put_in_queue", task))
        else:
            await self.send_message(self.create_message_packet("ping"))


if __name__ == "__main__":
    connector = Connector(Worker)
    hello = create_message_packet(connector.peer_id, 0, "ping")
    try:
        asyncio.run(connector.run_client(hello))
    except KeyboardInterrupt:
        pass
