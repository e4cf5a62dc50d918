"""Quiet by default: packet lines without payloads unless
``STREAM_RPC_LOG_PACKETS=full``, none with ``off``, at most so many a second
per connection, method names escaped; and ``call(method, None)`` sends ``null``."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from conftest import run
from test_server import Raw, serving

from stream_rpc import common
from stream_rpc.common import Connector, Protocol
from stream_rpc.crypto import Cypher

SECRET = "secret-payload-4242"


def converse(key, count=1, method="ping"):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        for _ in range(count):
            await raw.request(method, SECRET)
        for _ in range(count):
            await raw.recv()
        server.close()

    run(scenario())


def packet_lines(caplog):
    return [
        r.getMessage() for r in caplog.records if re.search(r"\] (Send|Received): ", r.getMessage())
    ]


def test_packet_lines_show_headers_and_no_payload_by_default(key, caplog):
    caplog.set_level(logging.INFO)
    converse(key)
    lines = packet_lines(caplog)
    assert len(lines) == 2, lines
    assert SECRET not in caplog.text
    received, sent = lines
    assert 'Received: {method: "ping", id: 1, peer: ' in received
    assert 'Send: {method: "pong", id: 0, peer: ' in sent and ", reply_to: " in sent


def test_full_shows_the_originals_lines_with_payloads(key, caplog, monkeypatch):
    monkeypatch.setattr(common, "STREAM_RPC_LOG_PACKETS", "full")
    caplog.set_level(logging.INFO)
    converse(key)
    lines = packet_lines(caplog)
    assert len(lines) == 2 and all(SECRET in line for line in lines), lines
    assert "Received: MessagePacket(peer=" in lines[0]


def test_off_shows_no_packet_lines(key, caplog, monkeypatch):
    monkeypatch.setattr(common, "STREAM_RPC_LOG_PACKETS", "off")
    caplog.set_level(logging.INFO)
    converse(key)
    assert packet_lines(caplog) == [] and SECRET not in caplog.text
    monkeypatch.setattr(common, "STREAM_RPC_LOG_PACKETS", "some")
    with pytest.raises(ValueError, match="STREAM_RPC_LOG_PACKETS"):
        Connector(Protocol, cypher=Cypher(key))


def test_method_names_are_escaped_in_log_lines(key, caplog):
    caplog.set_level(logging.INFO)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        await raw.request("ping\n2026-01-01 INFO forged line\x1b[31m")
        # Handled in order: once this is answered, the first was handled.
        await raw.request("ping", "after")
        assert (await raw.recv())[0].payload == "after"
        server.close()

    run(scenario())
    for record in caplog.records:
        assert "\n" not in record.getMessage() and "\x1b" not in record.getMessage()
    assert '"ping\\n2026-01-01 INFO forged line\\u001b[31m"' in caplog.text


def test_packet_lines_are_bounded_per_connection(key, caplog):
    caplog.set_level(logging.INFO)

    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(200):
            await raw.request("ping", n)
        for _ in range(200):
            await raw.recv()
        took = loop.time() - started
        # The count of the lines left out comes within a second.
        for _ in range(40):
            if "more packet lines in the last 1 s" in caplog.text:
                break
            await asyncio.sleep(0.05)
        server.close()
        return took

    took = run(scenario())
    lines = packet_lines(caplog)
    windows = int(took) + 2
    assert len(lines) <= common.PACKET_LOG_LINES_PER_SECOND * windows < 400, len(lines)
    left_out = [int(n) for n in re.findall(r"(\d+) more packet lines in the last 1 s", caplog.text)]
    assert left_out and len(lines) + sum(left_out) == 400


def test_a_call_without_a_payload_sends_null(key):
    async def scenario():
        server, port = await serving(key)
        peer = await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()
        assert (await peer.call("ping", None)).payload is None
        assert (await peer.call("ping")).payload is None
        assert (await peer.call("ping", {})).payload == {}
        await peer.close()
        server.close()

    run(scenario())
