"""The Python package and the Rust peers of this repository, both ways, each Rust
side a real process built from this repository on a free loopback port."""

from __future__ import annotations

import asyncio
import datetime
import sys
from pathlib import Path

import pytest
from conftest import REPO, run, rust_example, rust_server

from stream_rpc.common import Connector, MessagePacket, Protocol, RemoteError
from stream_rpc.crypto import Cypher

EXAMPLES = REPO / "python" / "examples"
sys.path.insert(0, str(EXAMPLES))


async def client(key, port) -> Protocol:
    return await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()


def test_a_python_peer_calls_the_rust_queue_server(key, processes):
    server, port = rust_server(processes, "server", key)

    async def scenario():
        worker = await client(key, port)
        pong = await worker.call("ping")
        assert (pong.method, pong.payload) == ("pong", None)
        task = worker.create_message_packet("parse_article", {"article_id": 3249})
        worker.request_number += 1
        put = await worker.call("put_in_queue", task)
        assert put.payload == {"queued": True}
        again = worker.create_message_packet("parse_article", {"article_id": 3249})
        # The same task under another name: a duplicate (the reason, where the
        # server gives one, says so).
        duplicate = (await worker.call("put_in_queue", again)).payload
        assert duplicate["queued"] is False
        assert duplicate.get("reason", "duplicate") == "duplicate"
        leased = await worker.call("get_task_from_queue")
        # The task comes back as the packet that was put, to the microsecond.
        assert isinstance(leased, MessagePacket)
        assert leased == task
        saved = await worker.call(
            "save_parsed_article",
            {"task": {"peer": task.peer, "id": task.id}, "article": {"title": "T"}},
        )
        assert saved.payload == {"saved": True}
        article = await worker.call("get_parsed_article", {"article_id": 3249})
        assert (article.method, article.payload) == ("get_parsed_article.reply", {"title": "T"})
        assert (await worker.call("get_task_from_queue")).method == "pong"
        with pytest.raises(RemoteError) as refused:
            await worker.call("no_such_method", [1, 2])
        assert refused.value.code == "unknown_method"
        answers = await asyncio.gather(*(worker.call("ping", n) for n in range(50)))
        assert [answer.method for answer in answers] == ["pong"] * 50
        await worker.close()

    run(scenario())
    assert 'Received: {method: "put_in_queue"' in server.output()


def test_the_python_worker_example_converses_with_the_rust_server(key, processes):
    _, port = rust_server(processes, "server", key)
    worker = processes(
        [sys.executable, EXAMPLES / "worker.py"],
        {
            "CRYPTO_KEY": key,
            "STREAM_RPC_PORT": str(port),
            "WORKER_MAX_REQUESTS": "12",
            "WORKER_REQUEST_DELAY_MS": "10",
            "WORKER_PARSE_DELAY_MS": "10",
            "STREAM_RPC_LOG_PACKETS": "full",
        },
    )
    assert worker.wait_exit() == 0, worker.output()
    output = worker.output()
    assert "Done: 12 requests made" in output
    # The original's packet lines (the first of them: at most 20 a second).
    assert "Received: MessagePacket(" in output and "method='pong'" in output
    assert "Finished parsing article: " in output
    assert "The server saved a parsed article" in output
    # The original's log shape: time and logger name, then the indented line.
    assert "\n  \\_ INFO     [" in output


async def python_queue_server(key):
    from server import QueueServer  # python/examples/server.py

    connector = Connector(QueueServer, "127.0.0.1", 0, cypher=Cypher(key))
    server = await connector.start_server()
    return server, server.sockets[0].getsockname()[1]


async def wait_process(argv, env, timeout=60.0):
    child = await asyncio.create_subprocess_exec(
        *map(str, argv),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(child.communicate(), timeout)
    return child.returncode, out.decode()


def rust_env(key, port, **extra):
    import os

    env = dict(os.environ)
    env.update({"CRYPTO_KEY": key, "STREAM_RPC_HOST": "127.0.0.1", "STREAM_RPC_PORT": str(port)})
    env.update(extra)
    return env


def test_the_rust_worker_converses_with_a_python_server(key):
    async def scenario():
        server, port = await python_queue_server(key)
        env = rust_env(
            key,
            port,
            WORKER_MAX_REQUESTS="12",
            WORKER_REQUEST_DELAY_MS="10",
            WORKER_PARSE_DELAY_MS="10",
        )
        code, output = await wait_process([rust_example("worker")], env)
        server.close()
        return code, output

    code, output = run(scenario())
    assert code == 0, output
    assert "Done: 12 requests made" in output
    assert "Queued article: " in output
    # A task it put came back through the Python queue exactly as it was
    # sent, nanoseconds included, and was saved.
    assert "came back unchanged" in output, output
    assert "came back changed" not in output
    assert "2 saved" in output or "1 saved" in output, output


class KvServer(Protocol):
    """The `Kv` trait of examples/kv-api, served from Python with plain packets."""

    values: dict = {}

    async def process_message(self, message_packet):
        method, payload = message_packet.method, message_packet.payload
        if method == "set":
            self.values[payload["key"]] = payload["value"]
        elif method == "get":
            await self.send_message(
                self.create_message_packet("get.reply", self.values.get(payload))
            )
        elif method == "kv.count":
            await self.send_message(self.create_message_packet("kv.count.reply", len(self.values)))
        elif method == "take":
            if payload not in self.values:
                raise RemoteError(
                    "handler_error",
                    f'`take` returned {{"Missing":"{payload}"}}',
                    data={"Missing": payload},
                    method="take",
                )
            value = self.values.pop(payload)
            await self.send_message(self.create_message_packet("take.reply", value))
        else:
            raise RemoteError("unknown_method", f"unknown method `{method}`", method=method)


def test_the_typed_rust_client_calls_a_python_server(key):
    async def scenario():
        KvServer.values = {}
        connector = Connector(KvServer, "127.0.0.1", 0, cypher=Cypher(key))
        server = await connector.start_server()
        port = server.sockets[0].getsockname()[1]
        code, output = await wait_process([rust_example("kv_client")], rust_env(key, port))
        server.close()
        return code, output

    code, output = run(scenario())
    assert code == 0, output
    assert 'get greeting: Some("hello")' in output
    assert "stored values: 1" in output
    assert 'take greeting: Ok("hello")' in output
    assert 'take greeting again: nothing under "greeting"' in output


def test_python_calls_a_typed_rust_service_with_several_arguments(key, processes):
    _, port = rust_server(processes, "kv_server", key)

    async def scenario():
        kv = await client(key, port)
        # `set(key, value)`: two arguments, so the payload is an object of
        # them; it returns nothing, so nothing comes back.
        await kv.notify("set", {"key": "a", "value": "hello"})
        assert (await kv.call("get", "a")).payload == "hello"
        assert (await kv.call("kv.count")).payload == 1
        taken = await kv.call("take", "a")
        assert (taken.method, taken.payload) == ("take.reply", "hello")
        with pytest.raises(RemoteError) as missing:
            await kv.call("take", "a")
        assert (missing.value.code, missing.value.data) == ("handler_error", {"Missing": "a"})
        with pytest.raises(RemoteError) as wrong:
            await kv.call("set", {"key": 5})
        assert wrong.value.code == "invalid_payload"
        await kv.close()

    run(scenario())


def test_a_call_times_out_and_the_connection_goes_on(key, processes):
    _, port = rust_server(processes, "kv_server", key)

    async def scenario():
        kv = await client(key, port)
        started = datetime.datetime.now()
        with pytest.raises(asyncio.TimeoutError):
            # A notification-only method never answers: the call times out.
            await kv.call("set", {"key": "k", "value": "v"}, timeout=0.3)
        assert (datetime.datetime.now() - started).total_seconds() < 5
        assert (await kv.call("get", "k")).payload == "v"
        await kv.close()

    run(scenario())


def test_the_rust_server_refuses_what_the_spec_refuses_from_python(key, processes):
    _, port = rust_server(processes, "server", key)

    async def scenario():
        peer = await client(key, port)
        # Python carries 2^70 + 1 exactly, but the wire refuses it: it is
        # never sent.
        with pytest.raises(ValueError, match="2\\^64"):
            await peer.call("ping", 2**70 + 1)
        assert (await peer.call("ping", 2**64 - 1)).method == "pong"
        await peer.close()

    run(scenario())


def test_examples_exist():
    assert Path(EXAMPLES / "server.py").exists() and Path(EXAMPLES / "worker.py").exists()
