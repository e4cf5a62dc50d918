"""The queue server of the original, on this package: ``ping``, ``put_in_queue``,
``get_task_from_queue``, plus ``save_parsed_article`` and ``get_parsed_article``
as the Rust example server answers them (docs/PROTOCOL.md, "The example queue
server"). The queue lives in this process's memory, at most
``STREAM_RPC_QUEUE_MAX_TASKS`` tasks (100000); a put is answered
``{"queued": false, "reason": "duplicate" | "name_taken" | "full"}`` when refused.
``watch_stats`` (a stream, payload ``{"every_ms": N}``, N from 10, default 1000)
sends the queue's counts every N ms until the caller cancels it.

    CRYPTO_KEY=... python examples/server.py
"""

import asyncio
import collections
import json
import os
import time

from stream_rpc.common import Connector, MessagePacket, Protocol, RemoteError, stream_method

LEASE_SECONDS = 30.0
#: How long a done task's content is remembered, so that putting it again is a duplicate.
RETENTION_SECONDS = 3600.0
#: Tasks held at most (queued and leased); a put beyond it is refused ``full``.
MAX_TASKS = int(os.environ.get("STREAM_RPC_QUEUE_MAX_TASKS", "100000"))


class TaskQueue:
    """Tasks in order, leased to one peer at a time.

    A task is named by its own ``(peer, id)``, as ``save_parsed_article``
    names it. A put is refused, with the reason, when the same task (its
    method and canonical payload) is held or was done within the retention
    time (``duplicate``), when its name is held by a different task
    (``name_taken``: the first task's mapping is never overwritten), or when
    ``max_tasks`` tasks are held (``full``).
    """

    def __init__(self, max_tasks=MAX_TASKS):
        self.max_tasks = max_tasks
        self.queued = collections.deque()
        self.leased = {}  # (peer, id) -> (task, holder, lease end)
        self.held = {}  # (peer, id) -> content of every task queued or leased
        self.contents = set()  # content of every task queued or leased
        # Content of a done task -> when it was done (the retention time, and
        # at most max_tasks of them).
        self.done = collections.OrderedDict()
        # Canonical payload of a done task -> its article (at most max_tasks).
        self.articles = collections.OrderedDict()
        # Counts since the queue was created (what `watch_stats` reports).
        self.counts = collections.Counter()

    def stats(self):
        """The queue's counts, as the Rust queue server's ``watch_stats`` items."""
        return {
            "queued": len(self.queued),
            "leased": len(self.leased),
            "done": self.counts["done"],
            "dead": 0,  # tasks are never given up on here
            "duplicates": self.counts["duplicate"],
            "names_taken": self.counts["name_taken"],
            "full": self.counts["full"],
            "redeliveries": self.counts["redeliveries"],
        }

    @staticmethod
    def content(task):
        return task.method + json.dumps(task.payload, sort_keys=True, separators=(",", ":"))

    def _forget_done(self):
        now = time.monotonic()
        while self.done and (
            len(self.done) > self.max_tasks
            or next(iter(self.done.values())) + RETENTION_SECONDS <= now
        ):
            self.done.popitem(last=False)
        while len(self.articles) > self.max_tasks:
            self.articles.popitem(last=False)

    def put(self, task):
        """``None`` once queued, else why not: ``duplicate``, ``name_taken`` or ``full``."""
        self._forget_done()
        refused = self._refusal(task)
        if refused is not None:
            self.counts[refused] += 1
            return refused
        content = self.content(task)
        self.held[(task.peer, task.id)] = content
        self.contents.add(content)
        self.queued.append(task)
        return None

    def _refusal(self, task):
        content = self.content(task)
        if content in self.contents or content in self.done:
            return "duplicate"
        if (task.peer, task.id) in self.held:
            return "name_taken"
        if len(self.held) >= self.max_tasks:
            return "full"
        return None

    def lease(self, holder):
        now = time.monotonic()
        for key, (task, _, end) in list(self.leased.items()):
            if end <= now:
                del self.leased[key]
                self.queued.appendleft(task)
                self.counts["redeliveries"] += 1
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
        content = self.held.pop((peer, ident))
        self.contents.discard(content)
        self.done[content] = time.monotonic()
        self.counts["done"] += 1
        self.articles[json.dumps(entry[0].payload, sort_keys=True)] = article
        self._forget_done()
        return True


QUEUE = TaskQueue()

#: ``watch_stats``: milliseconds between two items by default, at least, at most.
WATCH_EVERY_MS = 1000
WATCH_EVERY_MS_MIN = 10
WATCH_EVERY_MS_MAX = 86_400_000


def watch_interval(payload):
    """Seconds between two ``watch_stats`` items, from ``{"every_ms": N}``
    (``null`` or ``{}``: the default); ``invalid_payload`` otherwise."""
    if payload is None:
        payload = {}
    every_ms = payload.get("every_ms") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or set(payload) - {"every_ms"}:
        raise RemoteError(
            "invalid_payload", 'watch_stats takes {"every_ms": N}', method="watch_stats"
        )
    if every_ms is None:
        every_ms = WATCH_EVERY_MS
    if type(every_ms) is not int or not WATCH_EVERY_MS_MIN <= every_ms <= WATCH_EVERY_MS_MAX:
        raise RemoteError(
            "invalid_payload",
            f"every_ms is {every_ms!r}: give {WATCH_EVERY_MS_MIN} to {WATCH_EVERY_MS_MAX} "
            "(milliseconds between two items)",
            method="watch_stats",
        )
    return every_ms / 1000


class QueueServer(Protocol):
    @stream_method
    async def watch_stats(self, packet, incoming):
        """A stream of the queue's counts, one item every ``every_ms`` ms until
        the caller cancels it."""
        every = watch_interval(packet.payload)
        while True:
            yield QUEUE.stats()
            await asyncio.sleep(every)

    async def process_message(self, message_packet):
        method, payload = message_packet.method, message_packet.payload
        if method == "ping":
            await self.send_message(self.create_message_packet("pong", None))
        elif method == "put_in_queue":
            if not isinstance(payload, MessagePacket):
                raise RemoteError(
                    "invalid_payload", "put_in_queue takes a task packet", method=method
                )
            refused = QUEUE.put(payload)
            answer = {"queued": True} if refused is None else {"queued": False, "reason": refused}
            await self.send_message(self.create_message_packet("pong", answer))
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
