"""Typed tasks between the Python package and the Rust `stream-rpc serve` (the
real queue server, a process on a free loopback port): a Rust producer (the
command's `queue put --wait`) to a Python worker; a Python producer to the
Rust example worker (classic: it asks with `get_task_from_queue` and acks
with `save_parsed_article`, on the same queue) and to the typed Rust workers
of the `tasks` example (results, a typed error, a retry, a cancel while
running, its drain on SIGTERM); a Python producer whose
running task, on a Python worker, is cancelled through the Rust server
(`call.cancel` from Rust); a Python worker's drain giving back what outlives
its grace; the Python tasks example (worker and producer, as processes)
and its worker's drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest
from conftest import REPO, run, rust_example
from test_interop_streams import client, command, serve

from stream_rpc.common import PermanentError, RemoteError
from stream_rpc.crypto import Cypher
from stream_rpc.tasks import (
    Backoff,
    TaskCancelled,
    TaskDead,
    Tasks,
    Worker,
    current_task,
    task,
)


class Articles:
    def __init__(self) -> None:
        self.started: asyncio.Queue = asyncio.Queue()
        self.release = asyncio.Event()

    @task
    async def parse(self, article_id):
        if article_id % 7 == 0:
            raise PermanentError(f"article {article_id} does not exist")
        return {"article_id": article_id, "title": f"Article {article_id}", "by": "python"}

    @task
    async def slow(self, n):
        await self.started.put((n, current_task()))
        cancelled = asyncio.ensure_future(current_task().cancelled.wait())
        released = asyncio.ensure_future(self.release.wait())
        await asyncio.wait({cancelled, released}, return_when=asyncio.FIRST_COMPLETED)
        cancelled.cancel()
        released.cancel()
        return "stopped" if current_task().is_cancelled() else n


async def serves_tasks(key, port) -> bool:
    """Whether this `stream-rpc serve` serves the task methods."""
    peer = await client(key, port)
    try:
        await peer.call("task.stats", None, 10)
        return True
    except RemoteError as e:
        if e.code == "unknown_method":
            return False
        raise
    finally:
        await peer.close()


def tasks_server(processes, key):
    server, port = serve(processes, key)
    if not run(serves_tasks(key, port)):
        pytest.fail(
            "this stream-rpc serve has no task.* methods: "
            "rebuild it (cargo build -p stream-rpc-cli)"
        )
    return server, port


def worker_for(articles, key, port, **options) -> Worker:
    return Worker(articles, host="127.0.0.1", port=port, cypher=Cypher(key), **options)


async def rust_put(key, port, method, payload):
    """Puts a task with the Rust command and waits for its result: (exit
    status, the result or the error text)."""
    code, out, err = await command(
        key, port, "queue", "put", method, json.dumps(payload), "--wait", "30s"
    )
    return code, (json.loads(out) if code == 0 else err)


def test_a_rust_producer_gets_results_from_a_python_worker(key, processes):
    _, port = tasks_server(processes, key)

    async def scenario():
        articles = Articles()
        worker = worker_for(articles, key, port, concurrency=2)
        stop = asyncio.Event()
        running = asyncio.ensure_future(worker.run(stop.wait()))
        await asyncio.wait_for(worker.wait_subscribed(), 10)
        code, result = await rust_put(key, port, "parse", 3)
        assert code == 0 and result == {"article_id": 3, "title": "Article 3", "by": "python"}
        # A permanent error: dead at once, its error on stderr.
        code, error = await rust_put(key, port, "parse", 14)
        assert code == 1 and "article 14 does not exist" in error
        stop.set()
        report = await asyncio.wait_for(running, 10)
        assert report.done == 1 and report.failed == 1

    run(scenario())


def test_a_python_producer_cancels_a_python_task_through_the_rust_server(key, processes):
    _, port = tasks_server(processes, key)

    async def scenario():
        articles = Articles()
        worker = worker_for(articles, key, port)
        stop = asyncio.Event()
        running = asyncio.ensure_future(worker.run(stop.wait()))
        await asyncio.wait_for(worker.wait_subscribed(), 10)
        tasks = Tasks(await client(key, port))
        handle = await tasks.put("slow", 1)
        n, context = await asyncio.wait_for(articles.started.get(), 10)
        assert n == 1 and context.id == handle.id and context.attempt == 1
        assert (await handle.cancel()).outcome == "requested"
        # The server dropped its call: call.cancel reached the handler.
        await asyncio.wait_for(context.cancelled.wait(), 10)
        with pytest.raises(TaskCancelled):
            await handle.result(timeout=10)
        dead = await tasks.put("parse", 7)
        with pytest.raises(TaskDead) as failed:
            await dead.result(timeout=10)
        assert failed.value.attempts == 1 and failed.value.error.retry is False
        stop.set()
        report = await asyncio.wait_for(running, 10)
        assert report.cancelled == 1

    run(scenario())


def test_a_draining_python_worker_gives_back_what_outlives_its_grace(key, processes):
    _, port = tasks_server(processes, key)

    async def scenario():
        first = Articles()
        worker = worker_for(first, key, port, grace=0.1)
        stop = asyncio.Event()
        running = asyncio.ensure_future(worker.run(stop.wait()))
        await asyncio.wait_for(worker.wait_subscribed(), 10)
        tasks = Tasks(await client(key, port))
        handle = await tasks.put("slow", 5)
        await asyncio.wait_for(first.started.get(), 10)
        stop.set()
        report = await asyncio.wait_for(running, 10)
        assert report.given_back == 1 and report.done == 0
        # Nothing lost: the next worker runs it.
        second = Articles()
        second.release.set()
        again = worker_for(second, key, port)
        stop_again = asyncio.Event()
        running_again = asyncio.ensure_future(again.run(stop_again.wait()))
        assert await handle.result(timeout=20) == 5
        info = await handle.state()
        assert info.attempts == 2 and info.state == "done"
        stop_again.set()
        await asyncio.wait_for(running_again, 10)

    run(scenario())


def test_a_python_producer_gets_results_from_the_rust_worker(key, processes):
    """The seed's Rust worker (classic, on the same queue) runs a task put by
    the Python producer; its saved article is the task's result."""
    _, port = tasks_server(processes, key)

    async def scenario():
        tasks = Tasks(await client(key, port))
        handles = [await tasks.put("parse_article", {"article_id": n}) for n in (101, 102)]
        worker = processes(
            [rust_example("worker")],
            {
                "CRYPTO_KEY": key,
                "STREAM_RPC_PORT": str(port),
                "WORKER_REQUEST_DELAY_MS": "1",
                "WORKER_PARSE_DELAY_MS": "1",
            },
        )
        for handle, n in zip(handles, (101, 102)):
            result = await handle.result(timeout=30)
            assert result["article_id"] == n, worker.output()
            assert result["title"] == f"Article {n}" and result["parsed_by"]
            info = await handle.state()
            assert info.state == "done" and info.attempts == 1 and info.worker

    run(scenario())


def test_the_python_tasks_example_runs_and_drains_on_sigterm(key, processes):
    _, port = tasks_server(processes, key)
    example = REPO / "python" / "examples" / "tasks.py"
    env = {"CRYPTO_KEY": key, "STREAM_RPC_PORT": str(port)}
    worker = processes([sys.executable, example, "worker"], env)
    worker.wait_for(r"subscribed on 127\.0\.0\.1")
    producer = processes([sys.executable, example, "put", "10"], env)
    assert producer.wait_exit(60) == 0, producer.output() + worker.output()
    # 7 fails for good; 5 and 10 fail once, then succeed.
    producer.wait_for(r"put 10, done 9, dead 1")
    worker.child.send_signal(signal.SIGTERM)
    assert worker.wait_exit(30) == 0, worker.output()
    worker.wait_for(r"worker: WorkerReport\(done=9, failed=3, cancelled=0, given_back=0\)")


def test_a_python_producer_gets_typed_results_from_the_rust_tasks_worker(key, processes):
    _, port = tasks_server(processes, key)

    async def scenario():
        tasks = Tasks(await client(key, port))
        # High priority: handed out first, so it runs once the others are done.
        slow = await tasks.put("slow", 60_000, priority="high")
        ok = await tasks.put("parse", 3)
        flaky = await tasks.put("parse", 5, backoff=Backoff(0.05, 0.1))
        dead = await tasks.put("parse", 7)
        env = {"CRYPTO_KEY": key, "STREAM_RPC_PORT": str(port), "STREAM_RPC_LOG_LVL": "INFO"}
        worker = processes([rust_example("tasks"), "worker"], env)
        assert await ok.result(timeout=30) == {"article_id": 3, "words": 9}, worker.output()
        # A retryable typed error: tried again, then done.
        assert await flaky.result(timeout=30) == {"article_id": 5, "words": 15}
        assert (await flaky.state()).attempts == 2
        # A permanent typed error: dead at once, the error's data the Rust enum.
        with pytest.raises(TaskDead) as failed:
            await dead.result(timeout=30)
        assert failed.value.attempts == 1 and failed.value.error.retry is False
        assert failed.value.error.code == "handler_error"
        assert failed.value.error.data == {"Unreadable": 7}
        # Cancelled while it runs on the Rust worker (its context sees it).
        assert (await slow.state()).state == "leased"
        assert (await slow.cancel()).outcome == "requested"
        with pytest.raises(TaskCancelled):
            await slow.result(timeout=30)
        return worker

    worker = run(scenario())
    worker.child.send_signal(signal.SIGTERM)
    assert worker.wait_exit(30) == 0, worker.output()
    worker.wait_for(r"worker stopped: done \d+, failed 2, cancelled 1, given back 0")
