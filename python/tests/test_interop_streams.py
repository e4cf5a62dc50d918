"""Streams and metadata between the Python package and the Rust `stream-rpc`
command built from this repository, both ways, each Rust side a real process
on a free loopback port: the Rust queue server's `watch_stats` consumed and
cancelled from Python, Python stream methods consumed (and cancelled) by
`stream-rpc call --stream`, and metadata set by the Rust caller read by a
Python handler."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest
from conftest import REPO, run, target_dir

from stream_rpc import current_meta
from stream_rpc.common import (
    Connector,
    Protocol,
    RemoteError,
    StreamDisconnected,
    stream_method,
)
from stream_rpc.crypto import Cypher


def rust_command() -> str:
    """The `stream-rpc` command of this repository; fails saying how to build it."""
    path = target_dir() / "debug" / "stream-rpc"
    if not path.exists():
        pytest.fail(
            f"{path} is missing: build the command first (`cargo build -p stream-rpc-cli`; "
            "scripts/test's `cargo test --workspace` builds it)"
        )
    return str(path)


def command_env(key: str, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({"CRYPTO_KEY": key, "STREAM_RPC_HOST": "127.0.0.1", "STREAM_RPC_LOG_LVL": "INFO"})
    env.update(extra)
    return env


def serve(processes, key, *flags):
    """`stream-rpc serve` on a free port (its memory queue), and its port."""
    server = processes([rust_command(), "serve", "--port", "0", *flags], command_env(key))
    port = int(server.wait_for(r"Serving on 127\.0\.0\.1:(\d+)").group(1))
    return server, port


async def client(key, port) -> Protocol:
    return await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()


async def command(key, port, *argv, timeout=60.0):
    """Runs `stream-rpc` against ``port``: its exit status, stdout and stderr."""
    child = await asyncio.create_subprocess_exec(
        rust_command(),
        *argv,
        "--addr",
        f"127.0.0.1:{port}",
        env=command_env(key),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout)
    return child.returncode, out.decode(), err.decode()


def test_python_consumes_and_cancels_the_rust_servers_watch_stats(key, processes):
    server, port = serve(processes, key, "--log-level", "debug")

    async def scenario():
        peer = await client(key, port)
        task = peer.create_message_packet("parse_article", {"article_id": 1})
        assert (await peer.call("put_in_queue", task)).payload == {"queued": True}
        stream = peer.stream("watch_stats", {"every_ms": 10}, window=2)
        items = []
        async for stats in stream:
            items.append(stats)
            if len(items) == 3:
                break
        await stream.aclose()
        assert stream.last_seq == 3
        assert all(item["queued"] == 1 and "leased" in item and "dead" in item for item in items)
        # Below the minimum: refused, and the connection goes on.
        with pytest.raises(RemoteError) as refused:
            async for _ in peer.stream("watch_stats", {"every_ms": 5}):
                pass
        assert refused.value.code == "invalid_payload"
        # A plain call to it, and a stream to a plain method.
        with pytest.raises(RemoteError) as required:
            await peer.call("watch_stats", {"every_ms": 10})
        assert required.value.code == "stream_required"
        with pytest.raises(RemoteError) as plain:
            async for _ in peer.stream("ping"):
                pass
        assert plain.value.code == "not_a_stream"
        assert (await peer.call("ping")).method == "pong"
        await peer.close()
        # A later connection finds the server healthy.
        again = await client(key, port)
        assert (await again.call("ping")).method == "pong"
        await again.close()

    run(scenario())
    # The Rust server saw the cancel and dropped its producer.
    server.wait_for(r"watch_stats.*cancelled by its opener", timeout=10)


def test_the_rust_stream_ends_disconnected_when_the_server_dies(key, processes):
    server, port = serve(processes, key)

    async def scenario():
        peer = await client(key, port)
        stream = peer.stream("watch_stats", {"every_ms": 10}, window=1)
        assert "queued" in await stream.__anext__()
        server.stop()
        with pytest.raises(StreamDisconnected) as ended:
            async for _ in stream:
                pass
        assert ended.value.last_seq == stream.last_seq >= 1

    run(scenario())


class Producer(Protocol):
    """Stream methods for the Rust command to consume."""

    closed: asyncio.Event
    meta: dict = {}

    async def process_message(self, message_packet):
        if message_packet.method == "echo_meta":
            type(self).meta = dict(current_meta())
            await self.send_message(self.create_message_packet("echo_meta.reply", type(self).meta))

    @stream_method
    async def count(self, packet, incoming):
        for n in range(1, packet.payload["n"] + 1):
            yield {"n": n}

    @stream_method
    async def forever(self, packet, incoming):
        n = 0
        try:
            while True:
                n += 1
                yield n
        finally:
            type(self).closed.set()

    @stream_method
    async def fail(self, packet, incoming):
        yield 1
        raise RemoteError("handler_error", "it failed")


async def producing(key):
    Producer.closed = asyncio.Event()
    connector = Connector(Producer, "127.0.0.1", 0, cypher=Cypher(key))
    server = await connector.start_server()
    return server, server.sockets[0].getsockname()[1]


def test_the_rust_command_consumes_a_python_stream(key):
    async def scenario():
        server, port = await producing(key)
        code, out, err = await command(key, port, "call", "--stream", "count", '{"n": 3}')
        assert code == 0, err
        assert [json.loads(line) for line in out.splitlines()] == [{"n": n} for n in (1, 2, 3)]
        # The method failing: its items first, then exit status 1 with the code.
        code, out, err = await command(key, port, "call", "--stream", "fail")
        assert (code, out.splitlines()) == (1, ["1"]), err
        assert "handler_error" in err
        # A plain method: not a stream.
        code, _, err = await command(key, port, "call", "--stream", "echo_meta")
        assert code == 1 and "not_a_stream" in err
        server.close()

    run(scenario())


def test_the_rust_command_cancels_a_python_stream_after_max_items(key):
    async def scenario():
        server, port = await producing(key)
        argv = ("call", "--stream", "forever", "--max-items", "5", "--window", "2")
        code, out, err = await command(key, port, *argv)
        assert code == 0, err
        assert out.splitlines() == ["1", "2", "3", "4", "5"]
        # The Python generator was closed: the Rust side cancelled it.
        await asyncio.wait_for(Producer.closed.wait(), 10)
        server.close()

    run(scenario())


def test_a_python_handler_reads_the_meta_a_rust_caller_set(key):
    help_text = subprocess.run(
        [rust_command(), "call", "--help"], capture_output=True, text=True, check=False
    ).stdout
    assert "--meta" in help_text, "`stream-rpc call` has no --meta KEY=VALUE flag"

    async def scenario():
        server, port = await producing(key)
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        argv = (
            "call",
            "echo_meta",
            "--meta",
            "tenant=acme",
            "--meta",
            f"traceparent={traceparent}",
        )
        code, out, err = await command(key, port, *argv)
        assert code == 0, err
        expected = {"tenant": "acme", "traceparent": traceparent}
        assert json.loads(out) == expected and Producer.meta == expected
        server.close()

    run(scenario())


def test_the_rust_command_watches_the_python_example_servers_stats(key):
    import sys

    sys.path.insert(0, str(REPO / "python" / "examples"))
    import server  # python/examples/server.py

    async def scenario():
        server.QUEUE = server.TaskQueue()
        connector = Connector(server.QueueServer, "127.0.0.1", 0, cypher=Cypher(key))
        listening = await connector.start_server()
        port = listening.sockets[0].getsockname()[1]
        argv = ("call", "--stream", "watch_stats", '{"every_ms": 10}', "--max-items", "2")
        code, out, err = await command(key, port, *argv)
        assert code == 0, err
        items = [json.loads(line) for line in out.splitlines()]
        assert len(items) == 2 and all(item["queued"] == 0 for item in items)
        code, _, err = await command(
            key, port, "call", "--stream", "watch_stats", '{"every_ms": 1}'
        )
        assert code == 1 and "invalid_payload" in err
        listening.close()

    run(scenario())


def test_ctrl_c_on_the_rust_command_cancels_the_python_stream(key):
    import signal

    async def scenario():
        server, port = await producing(key)
        child = await asyncio.create_subprocess_exec(
            rust_command(),
            "call",
            "--stream",
            "forever",
            "--addr",
            f"127.0.0.1:{port}",
            env=command_env(key),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        first = await asyncio.wait_for(child.stdout.readline(), 30)
        assert first.strip() == b"1"
        child.send_signal(signal.SIGINT)
        await asyncio.wait_for(child.communicate(), 30)
        # Cancelled on the Python side (its generator closed), then the
        # command exits as interrupted.
        await asyncio.wait_for(Producer.closed.wait(), 10)
        assert child.returncode == 130
        server.close()

    run(scenario())
