"""Per-call metadata (PROTOCOL.md §"Metadata"): on the wire, its limits on read
and on send, ``current_meta()`` in handlers, and W3C trace context carried
from a request being handled to the calls and streams its handler makes."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run
from test_server import Raw

from stream_rpc import _wire, current_meta
from stream_rpc.common import (
    MAX_META_BYTES,
    MAX_META_ENTRIES,
    Connector,
    Protocol,
    create_message_packet,
    stream_method,
)
from stream_rpc.crypto import Cypher

PEER = "3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
_CHILD = re.compile(rf"00-{TRACE}-([0-9a-f]{{16}})-01")


def test_meta_and_stream_are_written_after_timeout_ms_keys_sorted():
    packet = create_message_packet(PEER, 4, "m", None)._replace(
        meta={"tenant": "t1", "auth": "x"}, stream={"credit": 5}
    )
    plain = _wire.encode(packet, None, 1500)
    obj = json.loads(plain)
    assert list(obj) == [
        "peer",
        "id",
        "created_at",
        "method",
        "payload",
        "timeout_ms",
        "meta",
        "stream",
    ]
    assert plain.endswith(
        b',"timeout_ms":1500,"meta":{"auth":"x","tenant":"t1"},"stream":{"credit":5}}'
    )
    back, _, timeout_ms = _wire.decode(plain)
    assert back == packet and timeout_ms == 1500
    # Empty metadata is not written; `null` and `{}` read as none.
    assert b"meta" not in _wire.encode(packet._replace(meta={}, stream=None))
    for empty in (b'"meta":null', b'"meta":{}'):
        text = plain.replace(b'"meta":{"auth":"x","tenant":"t1"}', empty)
        assert _wire.decode(text)[0].meta is None
    # The original's repr, unless they are set.
    assert "meta" not in repr(packet._replace(meta=None, stream=None))


def with_meta(meta_json: str) -> bytes:
    return (
        f'{{"peer":"{PEER}","id":1,"created_at":"2026-01-02T03:04:05Z","method":"m",'
        f'"payload":null,"meta":{meta_json}}}'
    ).encode()


@pytest.mark.parametrize(
    "meta, reason",
    [
        ('"x"', "not an object of strings"),
        ('{"a":1}', "not an object of strings"),
        ('{"a":null}', "not an object of strings"),
        ('{"A":"v"}', "a-z 0-9"),
        ('{"":"v"}', "a-z 0-9"),
        ('{"a b":"v"}', "a-z 0-9"),
        ('{"é":"v"}', "a-z 0-9"),
        (json.dumps({"k" * 65: "v"}), "a-z 0-9"),
        (json.dumps({"k": "v" * 1025}), "at most 1024"),
        (json.dumps({f"k{n}": "v" for n in range(MAX_META_ENTRIES + 1)}), "at most 32"),
        (json.dumps({f"k{n}": "v" * 1000 for n in range(9)}), f"at most {MAX_META_BYTES}"),
        ('{"a":"1","a":"2"}', "twice"),
    ],
)
def test_meta_breaking_a_limit_is_not_a_packet(meta, reason):
    with pytest.raises(_wire.InvalidPacket, match=reason):
        _wire.decode(with_meta(meta))


def test_meta_at_its_limits_is_a_packet():
    edge = {"k" * 64: "v" * 1024}
    edge.update({f"k{n}": "" for n in range(MAX_META_ENTRIES - 1)})
    assert _wire.decode(with_meta(json.dumps(edge)))[0].meta == edge
    full = {f"k{n}": "v" * (MAX_META_BYTES // 8 - 2) for n in range(8)}
    assert sum(len(k) + len(v) for k, v in full.items()) == MAX_META_BYTES
    assert _wire.decode(with_meta(json.dumps(full)))[0].meta == full
    # Multi-byte values count in bytes.
    with pytest.raises(_wire.InvalidPacket, match="at most 1024"):
        _wire.decode(with_meta(json.dumps({"k": "é" * 513}, ensure_ascii=False)))


class Relay(Protocol):
    """Answers with the metadata it saw; `relay` calls `next_port`'s `echo`
    (and opens its `echo_stream`) and answers with what that one saw."""

    next_port = 0
    key = ""

    async def process_message(self, message_packet):
        seen = dict(current_meta())
        if message_packet.method == "echo":
            reply = self.create_message_packet("echo.reply", seen)
        elif message_packet.method == "relay":
            onward = await Connector(
                Protocol, "127.0.0.1", type(self).next_port, cypher=Cypher(type(self).key)
            ).connect()
            called = (await onward.call("echo", meta=message_packet.payload)).payload
            streamed = [item async for item in onward.stream("echo_stream")]
            await onward.close()
            reply = self.create_message_packet(
                "relay.reply", {"seen": seen, "called": called, "streamed": streamed[0]}
            )
        else:
            return
        await self.send_message(reply)

    @stream_method
    async def echo_stream(self, packet, incoming):
        yield dict(current_meta())


async def serving(key, protocol=Relay):
    connector = Connector(protocol, "127.0.0.1", 0, cypher=Cypher(key))
    server = await connector.start_server()
    return server, server.sockets[0].getsockname()[1]


def test_a_handler_sees_the_meta_a_caller_set(key):
    async def scenario():
        server, port = await serving(key)
        peer = await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()
        meta = {"tenant": "acme", "auth-token": "s3cret"}
        assert (await peer.call("echo", meta=meta)).payload == meta
        assert (await peer.call("echo")).payload == {}
        assert [item async for item in peer.stream("echo_stream", meta=meta)] == [meta]
        # Outside a handler there is none.
        assert dict(current_meta()) == {}
        # Metadata breaking a limit is never sent.
        with pytest.raises(ValueError, match="a-z 0-9"):
            await peer.call("echo", meta={"Upper": "v"})
        with pytest.raises(ValueError, match="at most 1024"):
            await peer.notify("echo", meta={"k": "v" * 1025})
        await peer.close()
        server.close()

    run(scenario())


def test_a_raw_packet_with_bad_meta_is_answered_invalid_packet(key):
    async def scenario():
        server, port = await serving(key)
        raw = await Raw.connect(port, key)
        ident = await raw.request("echo", None, meta={"Bad Key": "v"})
        packet, reply_to = await raw.recv()
        assert packet.payload["code"] == "invalid_packet" and reply_to.id == ident
        assert "a-z 0-9" in packet.payload["message"]
        ident = await raw.request("echo", None, meta={"ok": "v"})
        packet, reply_to = await raw.recv()
        assert (packet.payload, reply_to.id) == ({"ok": "v"}, ident)
        server.close()

    run(scenario())


def test_trace_context_goes_on_with_the_same_trace_and_a_fresh_parent(key):
    async def scenario():
        last, last_port = await serving(key)
        Relay.next_port, Relay.key = last_port, key
        first, port = await serving(key)
        peer = await Connector(Protocol, "127.0.0.1", port, cypher=Cypher(key)).connect()
        meta = {"traceparent": PARENT, "tracestate": "vendor=1", "tenant": "t"}
        got = (await peer.call("relay", None, meta=meta)).payload
        assert got["seen"] == meta
        # The relay's call and stream: the same trace id and flags, a fresh
        # parent id each, the trace state; not the other keys.
        parents = set()
        for onward in (got["called"], got["streamed"]):
            assert set(onward) == {"traceparent", "tracestate"}
            child = _CHILD.fullmatch(onward["traceparent"])
            assert child and child.group(1) not in ("00f067aa0ba902b7", "0" * 16)
            parents.add(child.group(1))
            assert onward["tracestate"] == "vendor=1"
        assert len(parents) == 2
        # A call's own traceparent wins over the one carried on.
        own = f"00-{'1' * 32}-{'2' * 16}-00"
        got = (await peer.call("relay", {"traceparent": own}, meta=meta)).payload
        assert got["called"] == {"traceparent": own}
        # No (or no valid) trace context: none carried on.
        for bad in ({}, {"traceparent": "00-xyz"}, {"traceparent": f"00-{'0' * 32}-{'2' * 16}-01"}):
            assert (await peer.call("relay", None, meta=bad)).payload["called"] == {}
        await peer.close()
        first.close()
        last.close()

    run(scenario())


def test_the_packet_line_shows_meta_keys_never_values_and_the_stream_field():
    from stream_rpc.common import _shown_packet

    packet = create_message_packet(PEER, 4, "m", None)._replace(
        meta={"authorization": "s3cret", "tenant": "t"},
        stream={"peer": PEER, "id": 3, "seq": 1},
    )
    line = _shown_packet(packet, None, None, full=False)
    assert "meta: [authorization, tenant]" in line and "s3cret" not in line
    assert f"stream: {{peer: {PEER}, id: 3, seq: 1}}" in line
