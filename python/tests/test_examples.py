"""The example queue server's answers to a put (PROTOCOL.md, "The example queue
server"): a name held by a different task is refused ``name_taken`` and never
overwritten, the same task ``duplicate``, beyond the maximum ``full``; and the
example worker's pace is the original's 2 s."""

from __future__ import annotations

import importlib
import sys

import pytest
from conftest import REPO, run

from stream_rpc.common import Connector, Protocol, RemoteError, create_message_packet
from stream_rpc.crypto import Cypher

EXAMPLES = REPO / "python" / "examples"
sys.path.insert(0, str(EXAMPLES))
PEER = "67e55044-10b1-426f-9247-bb680e5fe0c8"
OTHER = "0b5b6f3e-62a5-4a2b-8f54-3a9d3f6c1e11"


def task(ident, article_id, peer=PEER):
    return create_message_packet(peer, ident, "parse_article", {"article_id": article_id})


def test_a_name_held_by_another_task_is_refused_and_the_first_task_is_kept():
    import server

    queue = server.TaskQueue(max_tasks=3)
    first = task(1, 10)
    assert queue.put(first) is None
    # Another task under the same (peer, id): refused, the first untouched.
    assert queue.put(task(1, 11)) == "name_taken"
    # The same task under another name: a duplicate.
    assert queue.put(task(2, 10)) == "duplicate"
    assert queue.put(task(1, 10, peer=OTHER)) == "duplicate"
    assert queue.lease("worker") == first
    assert queue.put(task(1, 11)) == "name_taken"  # held while leased too
    assert queue.save(PEER, 1, "worker", {"title": "10"})
    # Done: the name is free again; the content stays a duplicate for a while.
    assert queue.put(task(1, 11)) is None
    assert queue.put(task(3, 10)) == "duplicate"
    assert queue.put(task(4, 12)) is None
    assert queue.put(task(5, 13)) is None
    assert queue.put(task(6, 14)) == "full"
    assert len(queue.queued) == 3


def test_the_example_server_answers_the_reason(key, monkeypatch):
    import server

    monkeypatch.setattr(server, "QUEUE", server.TaskQueue(max_tasks=2))

    async def scenario():
        connector = Connector(server.QueueServer, "127.0.0.1", 0, cypher=Cypher(key))
        listening = await connector.start_server()
        port = listening.sockets[0].getsockname()[1]
        peer = await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()
        answers = []
        for put in [task(1, 10), task(1, 11), task(2, 10), task(3, 12), task(4, 13)]:
            answers.append((await peer.call("put_in_queue", put)).payload)
        leased = await peer.call("get_task_from_queue")
        await peer.close()
        listening.close()
        return answers, leased

    answers, leased = run(scenario())
    assert answers == [
        {"queued": True},
        {"queued": False, "reason": "name_taken"},
        {"queued": False, "reason": "duplicate"},
        {"queued": True},
        {"queued": False, "reason": "full"},
    ]
    assert leased.payload == {"article_id": 10}


def test_the_example_worker_waits_the_originals_2_s_and_parses_5_s(monkeypatch):
    monkeypatch.delenv("WORKER_REQUEST_DELAY_MS", raising=False)
    monkeypatch.delenv("WORKER_PARSE_DELAY_MS", raising=False)
    import worker

    reloaded = importlib.reload(worker)
    # As the Rust example worker (examples/shared/worker.rs) and the original.
    assert (reloaded.DELAY, reloaded.PARSE_DELAY) == (2.0, 5.0)


def test_the_example_server_streams_its_stats(key):
    import server

    async def scenario():
        server.QUEUE = server.TaskQueue()
        connector = Connector(server.QueueServer, "127.0.0.1", 0, cypher=Cypher(key))
        listening = await connector.start_server()
        port = listening.sockets[0].getsockname()[1]
        peer = await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()
        await peer.call("put_in_queue", task(1, 10))
        await peer.call("put_in_queue", task(2, 10))
        async with peer.stream("watch_stats", {"every_ms": 10}) as stream:
            first, second = await stream.__anext__(), await stream.__anext__()
        assert first == second
        assert (first["queued"], first["duplicates"], first["leased"]) == (1, 1, 0)
        for bad in ({"every_ms": 9}, {"every_ms": "10"}, {"every": 10}, [10]):
            with pytest.raises(RemoteError) as refused:
                async for _ in peer.stream("watch_stats", bad):
                    pass
            assert refused.value.code == "invalid_payload"
        # The default interval: one item at once.
        async with peer.stream("watch_stats") as stream:
            assert (await stream.__anext__())["queued"] == 1
        await peer.close()
        listening.close()

    run(scenario())
