"""A tiny in-test queue server speaking the task.* methods (PROTOCOL.md
§"Tasks") for the unit tests of the Python producer and worker: tasks in a
dict, pushed as calls to subscribed workers, retried at once on a retryable
error, cancelled by dropping the push. The real server is Rust (`stream-rpc
serve`), tested against in test_interop_tasks.py."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional

from stream_rpc.common import Connector, Protocol, RemoteError
from stream_rpc.crypto import Cypher

FINAL = ("done", "dead", "cancelled")


class FakeQueue:
    def __init__(self) -> None:
        self.tasks: Dict[str, Dict[str, Any]] = {}
        self.order: List[str] = []
        #: Every request body received, by method.
        self.calls: Dict[str, List[Any]] = {}
        #: Subscribed connections: protocol -> [methods, concurrency, in flight].
        self.workers: Dict[Any, List[Any]] = {}
        self.pushes: Dict[str, asyncio.Task] = {}
        self.changed = asyncio.Condition()
        #: What the next task.put answers instead of taking the task.
        self.refuse: Optional[Dict[str, Any]] = None
        #: The error payloads workers answered with.
        self.errors: List[Any] = []
        self.schedules: Dict[str, Dict[str, Any]] = {}

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, check, timeout: float = 5.0) -> None:
        """Waits (bounded) until ``check()`` is true."""

        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(check)

        await asyncio.wait_for(wait(), timeout)

    def put(self, body: Dict[str, Any]) -> Dict[str, Any]:
        packet = body["task"]
        ref = f"{packet['peer']}:{packet['id']}"
        options = body.get("options", {})
        delayed = "delay_ms" in body or "run_at" in options
        self.tasks[ref] = {
            "task": {"peer": packet["peer"], "id": packet["id"]},
            "method": packet["method"],
            "payload": packet["payload"],
            "state": "scheduled" if delayed else "queued",
            "priority": options.get("priority", "normal"),
            "attempts": 0,
            "max_attempts": options.get("max_attempts", 3),
            "put_at": packet["created_at"],
        }
        self.order.append(ref)
        return {"task": self.tasks[ref]["task"], "state": self.tasks[ref]["state"]}

    def pump(self) -> None:
        """Pushes queued tasks to subscribed workers with a free slot."""
        for ref in self.order:
            info = self.tasks[ref]
            if info["state"] != "queued":
                continue
            for worker, (methods, concurrency, flight) in self.workers.items():
                closing = worker._writer is None or worker._writer.is_closing()
                if info["method"] in methods and flight < concurrency and not closing:
                    self.workers[worker][2] += 1
                    info["state"] = "leased"
                    info["attempts"] += 1
                    loop = asyncio.get_running_loop()
                    self.pushes[ref] = loop.create_task(self.push(worker, ref))
                    break

    async def push(self, worker: Protocol, ref: str) -> None:
        info = self.tasks[ref]
        meta = {"task-id": ref, "task-attempt": str(info["attempts"])}
        try:
            reply = await worker.call(info["method"], info["payload"], 10.0, meta=meta)
            info["state"], info["result"] = "done", reply.payload
        except RemoteError as e:
            self.errors.append(e.payload())
            info["error"] = e.payload()
            again = e.retry is not False and info["attempts"] < info["max_attempts"]
            info["state"] = "queued" if again else "dead"
        except (ConnectionError, asyncio.TimeoutError):
            info["state"] = "queued"  # nack: the worker is gone
            self.workers.pop(worker, None)
        except asyncio.CancelledError:
            info["state"] = "cancelled"
        finally:
            if worker in self.workers:
                self.workers[worker][2] -= 1
            self.pushes.pop(ref, None)
            self.pump()
            await self.notify()

    async def wait(self, ref: str, timeout_ms: int) -> Any:
        if ref not in self.tasks:
            return None
        try:
            await self.until(lambda: self.tasks[ref]["state"] in FINAL, timeout_ms / 1000)
        except asyncio.TimeoutError:
            pass
        return self.tasks[ref]


class FakeServer(Protocol):
    concurrent_handlers = True
    queue: FakeQueue

    async def process_message(self, message_packet):
        method, body = message_packet.method, message_packet.payload
        queue = self.queue
        queue.calls.setdefault(method, []).append(body)
        answer: Any = None
        if method == "task.put":
            answer = queue.refuse or queue.put(body)
            queue.pump()
        elif method in ("task.show", "task.wait"):
            ref = f"{body['task']['peer']}:{body['task']['id']}"
            if method == "task.show":
                answer = queue.tasks.get(ref)
            else:
                answer = await queue.wait(ref, body["timeout_ms"])
        elif method == "task.cancel":
            ref = f"{body['task']['peer']}:{body['task']['id']}"
            info = queue.tasks.get(ref)
            if info is None:
                answer = {"outcome": "unknown", "state": None}
            elif info["state"] in FINAL:
                answer = {"outcome": "finished", "state": info["state"]}
            elif ref in queue.pushes:
                info["cancel_requested"] = True
                queue.pushes[ref].cancel()
                answer = {"outcome": "requested", "state": "leased"}
            else:
                info["state"] = "cancelled"
                answer = {"outcome": "cancelled", "state": "cancelled"}
        elif method == "task.subscribe":
            queue.workers[self] = [set(body["methods"]), body["concurrency"], 0]
            queue.pump()
            answer = {"subscribed": True}
        elif method == "task.unsubscribe":
            flight = queue.workers.pop(self, [None, None, 0])[2]
            answer = {"running": flight}
        elif method == "task.list":
            found = [t for t in queue.tasks.values() if t["state"] == body["state"]]
            answer = {"tasks": found[: body["limit"]]}
        elif method == "task.stats":
            answer = {"methods": {"parse": {"queued": len(queue.tasks)}}}
        elif method == "task.limit":
            answer = {"limits": {body["method"]: {"concurrency": body["concurrency"]}}}
        elif method == "schedule.put":
            queue.schedules[body["name"]] = dict(body, next_at="2030-01-01T00:00:00Z", fired=0)
            answer = queue.schedules[body["name"]]
        elif method == "schedule.remove":
            answer = {"removed": queue.schedules.pop(body["name"], None) is not None}
        elif method == "schedule.list":
            answer = {"schedules": list(queue.schedules.values())}
        else:
            raise RemoteError("unknown_method", method)
        await self.send_message(self.create_message_packet(f"{method}.reply", answer))
        await queue.notify()


async def serve_fake(key: str):
    """A fake queue server on a free loopback port: (queue, server, port)."""
    queue = FakeQueue()
    protocol = type("FakeQueueServer", (FakeServer,), {"queue": queue})
    connector = Connector(protocol, "127.0.0.1", 0, cypher=Cypher(key))
    server = await connector.start_server()
    return queue, server, server.sockets[0].getsockname()[1]
