"""The queue server of the original, on this package: ``ping``, ``put_in_queue``,
``get_task_from_queue``, plus ``save_parsed_article`` and ``get_parsed_article``
as the Rust example server answers them (docs/PROTOCOL.md, "The example queue
server"). The queue lives in this process's memory.

    CRYPTO_KEY=... python examples/server.py
"""

import asyncio
import collections
import json
import time

from stream_rpc.common import Connector, Protocol, RemoteError

LEASE_SECONDS = 30.0


class TaskQueue:
    """Tasks in order, leased to one peer at a time; duplicates refused."""

    def __init__(self):
        self.queued = collections.deque()
        self.leased = {}  # (peer, id) -> (task, holder, lease end)
        self.names = set()  # method + canonical payload of every task held
        self.articles = {}  # canonical payload of a done task -> article

    @staticmethod
    def name(task):
        return task.method + json.dumps(task.payload, sort_keys=True, separators=(",", ":"))

    def put(self, task):
        name = self.name(task)
        if name in self.names:
            return False
        self.names.add(name)
        self.queued.append(task)
        return True

    def lease(self, holder):
        now = time.monotonic()
        for key, (task, _, end) in list(self.leased.items()):
            if end <= now:
                del self.leased[key]
                self.queued.appendleft(task)
        if not self.queued:
            return None
        task = self.queued.popleft()
        self.leased[(task.peer, task.id)] = (task, holder, now + LEASE_SECONDS)
        return task

    def save(self, peer, ident, holder, article):
        entry = self.leased.get((peer, ident))
        if entry is None or entry[1] != holder or entry[2] <= time.monotonic():
            return False
        del self.leased[(peer, ident)]
        self.articles[json.dumps(entry[0].payload, sort_keys=True)] = article
        return True


QUEUE = TaskQueue()


class QueueServer(Protocol):
    async def process_message(self, message_packet):
        method, payload = message_packet.method, message_packet.payload
        if method == "ping":
            await self.send_message(self.create_message_packet("pong", None))
        elif method == "put_in_queue":
            queued = QUEUE.put(payload)
            await self.send_message(self.create_message_packet("pong", {"queued": queued}))
        elif method == "get_task_from_queue":
            task = QUEUE.lease(message_packet.peer)
            if task is None:
                await self.send_message(self.create_message_packet("pong", None))
            else:
                await self.send_message(task)
        elif method == "save_parsed_article":
            task = payload["task"]
            saved = QUEUE.save(task["peer"], task["id"], message_packet.peer, payload["article"])
            await self.send_message(self.create_message_packet("pong", {"saved": saved}))
        elif method == "get_parsed_article":
            article = QUEUE.articles.get(json.dumps(payload, sort_keys=True))
            await self.send_message(self.create_message_packet("get_parsed_article.reply", article))
        else:
            raise RemoteError("unknown_method", f"unknown method `{method}`", method=method)


if __name__ == "__main__":
    try:
        asyncio.run(Connector(QueueServer).run_server())
    except KeyboardInterrupt:
        pass
