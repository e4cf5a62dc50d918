"""Typed tasks from Python: a worker of a small task set, and a producer that
puts tasks and awaits their results, through a queue server
(`stream-rpc serve`, or the Rust `server` example).

    export CRYPTO_KEY=...   # the server's key
    python examples/tasks.py worker        # runs until SIGTERM or Ctrl-C
    python examples/tasks.py put 20        # puts 20 tasks, prints a summary

`parse(article_id)` fails for good for ids divisible by 7, fails once then
succeeds for ids divisible by 5; `slow(seconds)` sleeps unless cancelled.
Settings: the server's `CRYPTO_KEY`, `STREAM_RPC_HOST`, `STREAM_RPC_PORT`
(or `STREAM_RPC_SERVERS` for the worker), `TASKS_CONCURRENCY` (4).
"""

import asyncio
import os
import sys

from stream_rpc.common import Connector, Protocol
from stream_rpc.tasks import PermanentError, TaskDead, Tasks, Worker, current_task, task


class Articles:
    def __init__(self):
        self.failed_once = set()

    @task
    async def parse(self, article_id):
        if article_id % 7 == 0:
            raise PermanentError(f"article {article_id} does not exist")
        if article_id % 5 == 0 and article_id not in self.failed_once:
            self.failed_once.add(article_id)
            raise RuntimeError("the site did not answer")  # retried after its backoff
        return {"article_id": article_id, "title": f"Article {article_id}"}

    @task
    async def slow(self, seconds):
        cancelled = current_task().cancelled
        try:
            await asyncio.wait_for(cancelled.wait(), seconds)
            return "cancelled"
        except asyncio.TimeoutError:
            return "slept"


async def work():
    concurrency = int(os.environ.get("TASKS_CONCURRENCY", "4"))
    report = await Worker(Articles(), concurrency=concurrency, grace=10).run()
    print(f"worker: {report}", flush=True)


async def put(count):
    tasks = Tasks(await Connector(Protocol).connect())
    handles = [await tasks.put("parse", n, backoff=(0.1, 1)) for n in range(1, count + 1)]
    done = dead = 0
    for handle in handles:
        try:
            await handle.result(timeout=60)
            done += 1
        except TaskDead:
            dead += 1
    print(f"put {count}, done {done}, dead {dead}", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "worker"
    if mode == "worker":
        asyncio.run(work())
    elif mode == "put":
        asyncio.run(put(int(sys.argv[2]) if len(sys.argv) > 2 else 10))
    else:
        sys.exit("usage: tasks.py worker | put [N]")
