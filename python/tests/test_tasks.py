"""The Python producer and worker of typed tasks (stream_rpc.tasks) against a
tiny in-test queue server (fake_queue.py): what goes on the wire, results,
errors and their `retry`, cancellation of a running task, drain, reconnection.
The real Rust server is in test_interop_tasks.py."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from conftest import free_port, run
from fake_queue import serve_fake

from stream_rpc import _wire
from stream_rpc.common import Connector, PermanentError, Protocol, RemoteError
from stream_rpc.crypto import Cypher
from stream_rpc.tasks import (
    Backoff,
    TaskCancelled,
    TaskDead,
    TaskRefused,
    Tasks,
    TaskTimeout,
    TaskUnknown,
    Worker,
    current_task,
    task,
)


class Articles:
    def __init__(self) -> None:
        self.seen = []
        self.flaky_failures = 0
        self.release = asyncio.Event()

    @task
    async def parse(self, article_id):
        context = current_task()
        self.seen.append((context.id, context.attempt))
        if article_id % 7 == 0:
            raise PermanentError(f"article {article_id} does not exist", data={"id": article_id})
        return {"article_id": article_id, "title": f"Article {article_id}"}

    @task(name="flaky")
    async def sometimes(self, article_id):
        if self.flaky_failures < 1:
            self.flaky_failures += 1
            raise RuntimeError("the site did not answer")
        return article_id

    @task
    async def broken(self):
        raise RuntimeError("always")

    @task
    async def slow(self, _payload):
        # Stops when cancelled, or when the test releases it.
        cancelled = asyncio.ensure_future(current_task().cancelled.wait())
        released = asyncio.ensure_future(self.release.wait())
        await asyncio.wait({cancelled, released}, return_when=asyncio.FIRST_COMPLETED)
        cancelled.cancel()
        released.cancel()
        return "stopped" if current_task().is_cancelled() else "finished"

    @task
    async def stuck(self, _payload):
        await asyncio.Event().wait()  # never finishes by itself


async def add(a, b=0):
    return a + b


async def setup(key, **worker_options):
    queue, server, port = await serve_fake(key)
    articles = Articles()
    worker = Worker(articles, host="127.0.0.1", port=port, cypher=Cypher(key), **worker_options)
    worker.register(add)
    stop = asyncio.Event()
    running = asyncio.ensure_future(worker.run(stop.wait()))
    await asyncio.wait_for(worker.wait_subscribed(), 5)
    producer = await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()
    return queue, server, articles, worker, stop, running, Tasks(producer)


def test_tasks_are_run_by_a_worker_and_their_results_awaited(key):
    async def main():
        queue, server, articles, worker, stop, running, tasks = await setup(key)
        handles = [await tasks.put("parse", n) for n in (1, 2)]
        summed = await tasks.put("add", {"a": 2, "b": 3})
        assert [await h.result(timeout=5) for h in handles] == [
            {"article_id": 1, "title": "Article 1"},
            {"article_id": 2, "title": "Article 2"},
        ]
        assert await summed.result(timeout=5) == 5
        # The handler saw the task's name and attempt from the metadata.
        assert sorted(articles.seen) == sorted((h.id, 1) for h in handles)
        assert queue.calls["task.subscribe"] == [
            {"methods": ["add", "broken", "flaky", "parse", "slow", "stuck"], "concurrency": 8}
        ]
        info = await handles[0].state()
        assert info.state == "done" and info.final and info.attempts == 1
        assert info.put_at is not None and info.put_at.tzinfo is not None
        stop.set()
        report = await asyncio.wait_for(running, 5)
        assert report.done == 3 and report.failed == 0
        server.close()

    run(main())


def test_put_options_go_on_the_wire_as_the_rust_types_read_them(key):
    async def main():
        queue, server, _, _, stop, running, tasks = await setup(key)
        await tasks.put(
            "parse",
            1,
            delay=2.5,
            priority="high",
            max_attempts=3,
            backoff=Backoff(0.1, 1),
            dedupe="article-1",
            timeout=5,
        )
        body = queue.calls["task.put"][-1]
        assert body["delay_ms"] == 2500
        assert body["options"] == {
            "priority": "high",
            "max_attempts": 3,
            "backoff": {"initial_ms": 100, "max_ms": 1000},
            "dedupe": "article-1",
            "timeout_ms": 5000,
        }
        assert body["task"]["method"] == "parse" and body["task"]["payload"] == 1
        at = datetime.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
        handle = await tasks.put("parse", 2, run_at=at)
        options = queue.calls["task.put"][-1]["options"]
        assert options == {"run_at": "2030-01-02T03:04:05.678000000Z"}
        assert _wire.parse_time(options["run_at"]) == at
        assert "delay_ms" not in queue.calls["task.put"][-1]
        # Defaults send no options at all.
        await tasks.put("parse", 3)
        assert "options" not in queue.calls["task.put"][-1]
        assert (await handle.state()).state == "scheduled"
        for bad in (
            {"delay": 1, "run_at": at},
            {"priority": "urgent"},
            {"max_attempts": 0},
            {"dedupe": ""},
            {"timeout": 0},
            {"delay": -1},
            {"run_at": datetime.datetime(2030, 1, 1)},
            {"backoff": Backoff(2, 1)},
        ):
            with pytest.raises(ValueError):
                await tasks.put("parse", 4, **bad)
        stop.set()
        await asyncio.wait_for(running, 5)
        server.close()

    run(main())


def test_errors_say_whether_to_retry(key):
    async def main():
        queue, server, _, _, stop, running, tasks = await setup(key)
        permanent = await tasks.put("parse", 7)
        with pytest.raises(TaskDead) as dead:
            await permanent.result(timeout=5)
        # Dead at its first attempt: the error said "retry": false.
        assert dead.value.attempts == 1
        assert dead.value.error.retry is False and dead.value.error.data == {"id": 7}
        assert queue.errors[0]["retry"] is False and queue.errors[0]["code"] == "handler_error"
        # Any other exception is retried by the task's policy.
        flaky = await tasks.put("flaky", 5)
        assert await flaky.result(timeout=5) == 5
        assert (await flaky.state()).attempts == 2
        assert "retry" not in queue.errors[1]
        broken = await tasks.put("broken", None, max_attempts=2)
        with pytest.raises(TaskDead) as dead:
            await broken.result(timeout=5)
        assert dead.value.attempts == 2 and dead.value.error.code == "handler_error"
        assert dead.value.error.message == "`broken` failed (RuntimeError)"
        stop.set()
        report = await asyncio.wait_for(running, 5)
        assert report.failed == 4 and report.done == 1
        server.close()

    run(main())


def test_waiting_refusals_and_unknown_tasks(key):
    async def main():
        queue, server, _, _, stop, running, tasks = await setup(key)
        later = await tasks.put("parse", 1, delay=60)
        with pytest.raises(TaskTimeout):
            await later.result(timeout=0.05)
        unknown = tasks.handle("00000000-0000-0000-0000-000000000001:9")
        with pytest.raises(TaskUnknown):
            await unknown.result(timeout=1)
        with pytest.raises(TaskUnknown):
            await unknown.state()
        # A put that finds its dedupe key held gets the holder's handle.
        queue.refuse = {"refused": "duplicate", "existing": queue.tasks[later.id]["task"]}
        again = await tasks.put("parse", 1, delay=60)
        assert again.id == later.id and again.deduplicated
        queue.refuse = {"refused": "full", "existing": None}
        with pytest.raises(TaskRefused) as refused:
            await tasks.put("parse", 2)
        assert refused.value.reason == "full"
        queue.refuse = None
        outcome = await later.cancel()
        assert outcome == ("cancelled", "cancelled")
        with pytest.raises(TaskCancelled):
            await later.result(timeout=1)
        assert (await later.cancel()).outcome == "finished"
        with pytest.raises(ValueError):
            tasks.handle("not a task")
        stop.set()
        await asyncio.wait_for(running, 5)
        server.close()

    run(main())


def test_a_running_task_sees_its_cancellation(key):
    async def main():
        queue, server, _, _, stop, running, tasks = await setup(key)
        handle = await tasks.put("slow", 1)
        await queue.until(lambda: handle.id in queue.pushes)
        # The server drops its call: the worker gets call.cancel, the handler
        # sees it through its context and stops.
        assert (await handle.cancel()).outcome == "requested"
        with pytest.raises(TaskCancelled):
            await handle.result(timeout=5)
        # Stopped now, the worker waits for the handler, which stops at call.cancel.
        stop.set()
        report = await asyncio.wait_for(running, 5)
        assert report.cancelled == 1 and report.done == 0
        server.close()

    run(main())


def test_the_worker_drains_on_stop_and_gives_back_what_outlives_the_grace(key):
    async def main():
        queue, server, articles, worker, stop, running, tasks = await setup(key, grace=0.2)
        finishing = await tasks.put("slow", 1)
        stuck = await tasks.put("stuck", 2)
        await queue.until(lambda: finishing.id in queue.pushes and stuck.id in queue.pushes)
        stop.set()
        # It says task.unsubscribe first; what runs may still finish.
        await queue.until(lambda: "task.unsubscribe" in queue.calls)
        articles.release.set()
        assert await finishing.result(timeout=5) == "finished"
        report = await asyncio.wait_for(running, 5)
        assert report.done == 1 and report.given_back == 1
        # The stuck task was given back (the connection closed under it).
        await queue.until(lambda: queue.tasks[stuck.id]["state"] == "queued")
        server.close()

    run(main())


def test_the_worker_fails_over_and_subscribes_again_on_every_connection(key):
    async def main():
        queue, server, port = await serve_fake(key)
        dead = free_port()
        servers = [f"127.0.0.1:{dead}", ("127.0.0.1", port)]
        worker = Worker(Articles(), servers=servers, cypher=Cypher(key), concurrency=2)
        stop = asyncio.Event()
        running = asyncio.ensure_future(worker.run(stop.wait()))
        await asyncio.wait_for(worker.wait_subscribed(), 10)
        (connection,) = list(queue.workers)
        connection._writer.close()  # the server drops the worker
        await asyncio.wait_for(worker.wait_subscribed(), 10)
        assert worker.subscriptions == 2
        assert len(queue.calls["task.subscribe"]) == 2
        assert queue.calls["task.subscribe"][1]["concurrency"] == 2
        stop.set()
        await asyncio.wait_for(running, 5)
        server.close()

    run(main())


def test_lists_stats_limits_and_schedules_on_the_wire(key):
    async def main():
        queue, server, _, _, stop, running, tasks = await setup(key)
        later = await tasks.put("parse", 1, delay=60)
        (listed,) = await tasks.list("scheduled", limit=5000)
        assert listed.task == later.id and listed.state == "scheduled"
        assert queue.calls["task.list"] == [{"state": "scheduled", "limit": 1000}]
        assert (await tasks.stats())["parse"]["queued"] == 1
        await tasks.set_limit("parse", concurrency=2, rate=(2, 1))
        assert queue.calls["task.limit"] == [
            {"method": "parse", "concurrency": 2, "rate": {"count": 2, "per_ms": 1000}}
        ]
        info = await tasks.put_schedule("tick", "parse", 3, every=60, priority="high")
        assert queue.calls["schedule.put"][-1] == {
            "name": "tick",
            "method": "parse",
            "payload": 3,
            "every_ms": 60000,
            "options": {"priority": "high"},
        }
        assert info["next_at"] == "2030-01-01T00:00:00Z"
        await tasks.put_schedule("nightly", "parse", 4, cron="0 0 3 * * *")
        assert queue.calls["schedule.put"][-1]["cron"] == "0 0 3 * * *"
        with pytest.raises(ValueError):
            await tasks.put_schedule("both", "parse", every=1, cron="* * * * *")
        assert [s["name"] for s in await tasks.schedules()] == ["tick", "nightly"]
        assert await tasks.remove_schedule("tick") is True
        assert await tasks.remove_schedule("tick") is False
        stop.set()
        await asyncio.wait_for(running, 5)
        server.close()

    run(main())


def test_remote_errors_carry_retry():
    error = RemoteError.from_payload({"code": "handler_error", "message": "m", "retry": False})
    assert error.retry is False and error.payload()["retry"] is False
    assert "retry" not in RemoteError("handler_error", "m").payload()
    assert RemoteError.from_payload({"code": "x", "retry": "no"}).retry is None
    assert PermanentError("gone").payload() == {
        "code": "handler_error",
        "message": "gone",
        "retry": False,
    }


class Small:
    """Tasks without events (Python 3.9 binds an Event to a loop when made)."""

    @task
    async def parse(self, article_id):
        return article_id

    @task
    async def other(self):
        return None


def test_worker_arguments_are_checked():
    with pytest.raises(TypeError):
        Worker(object())
    with pytest.raises(ValueError):
        Worker(Small(), concurrency=0)
    with pytest.raises(ValueError):
        Worker(Small(), Small())
    with pytest.raises(ValueError):
        Worker(Small(), methods=["parse", "nope"])
    assert Worker(Small(), methods=["parse"]).methods == ["parse"]
    with pytest.raises(TypeError):

        @task
        def plain():
            return 1
