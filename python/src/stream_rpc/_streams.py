"""Streams (PROTOCOL.md §"Streams"): the acceptor's side (its handler driver
and :class:`Incoming`) and the table of a connection's streams, both ways,
that takes their frames; what a peer's broken rule does. The opener's side
is in ``_opener``, what both share in ``_flow``.

Internal: the public names are in :mod:`stream_rpc.common`.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, Optional, Tuple

from ._errors import RemoteError
from ._flow import (
    CANCEL,
    CREDIT,
    END,
    ITEM,
    MAX_CREDIT,
    PACKET_METHODS,
    STREAM_WINDOW,
    STREAM_WINDOW_BYTES,
    StreamCancelled,
    StreamDisconnected,
    StreamError,
    StreamProtocolError,
    StreamSpec,
    StreamTimeout,
    _Window,
    collect_stream_methods,
    stream_method,
)
from ._opener import Stream, _Opened
from ._wire import MessagePacket, ReplyTo

if TYPE_CHECKING:  # pragma: no cover
    from .common import Protocol

__all__ = [
    "MAX_CREDIT",
    "MAX_STREAMS",
    "PACKET_METHODS",
    "STREAM_WINDOW",
    "STREAM_WINDOW_BYTES",
    "Incoming",
    "Stream",
    "StreamCancelled",
    "StreamDisconnected",
    "StreamError",
    "StreamProtocolError",
    "StreamSpec",
    "StreamTable",
    "StreamTimeout",
    "collect_stream_methods",
    "stream_method",
]

#: Streams one connection serves at once (opened by the peer); one more is refused ``busy``.
MAX_STREAMS = 256
#: Ended streams remembered per connection, so that their late frames are
#: dropped quietly (at DEBUG) rather than as refusals.
ENDED_STREAMS_KEPT = 1024

_Key = Tuple[str, int]


class Incoming:
    """The input items of a stream method (an async iterator). Taking items
    grants the opener more credit; :meth:`aclose` tells the opener to stop
    sending (``stream.cancel``), the call going on."""

    def __init__(self, accepted: _Accepted, window: int) -> None:
        self._accepted = accepted
        self._flow = _Window(window)
        self._closed = False

    def __aiter__(self) -> Incoming:
        return self

    async def __anext__(self) -> Any:
        flow = self._flow
        while not flow.buffer:
            if self._accepted.ended:
                raise asyncio.CancelledError
            if flow.ended or self._closed:
                raise StopAsyncIteration
            flow.changed.clear()
            await flow.changed.wait()
        item = flow.take()
        await self._grant(flow.to_grant())
        return item

    async def _grant(self, credit: int) -> None:
        if credit and not self._closed:
            self._flow.granted += credit
            address = self._accepted.address()
            await self._accepted.table.protocol._send_stream(
                CREDIT, dict(address, credit=credit), None
            )

    async def aclose(self) -> None:
        """Reads no more input: the opener is told to stop sending it."""
        if self._closed:
            return
        self._closed = True
        self._flow.buffer.clear()
        self._flow.changed.set()
        if not self._flow.ended and not self._accepted.ended:
            self._accepted.table.send_soon(CANCEL, self._accepted.address(), None)

    def on_item(self, seq: Any, item: Any, size: int) -> Optional[str]:
        if self._closed:  # sent before our cancel reached the opener
            return None
        return self._flow.receive(seq, item, size)

    def on_end(self, seq: Any) -> Optional[str]:
        flow = self._flow
        if flow.ended:
            return "`stream.end` twice"
        if seq != flow.received and not self._closed:
            return f"`stream.end` says {seq} items where {flow.received} came"
        flow.ended = True
        flow.changed.set()
        return None


class _Accepted:
    """A stream the peer opened to this side: the handler's task and its flows."""

    def __init__(
        self, table: StreamTable, packet: MessagePacket, spec: StreamSpec, credit: int
    ) -> None:
        self.table = table
        self.key: _Key = (packet.peer, packet.id)
        self.packet = packet
        self.spec = spec
        self.out_credit = credit
        self.out_sent = 0
        self.credit_changed = asyncio.Event()
        self.incoming = Incoming(self, STREAM_WINDOW) if spec.takes_input else None
        self.task: Optional[asyncio.Task] = None
        self.ended = False

    def address(self) -> Dict[str, Any]:
        return {"peer": self.key[0], "id": self.key[1]}

    def reply_to(self) -> ReplyTo:
        return ReplyTo(*self.key)

    def end(self) -> None:
        """Drops the handler (if running) and forgets the stream."""
        if self.ended:
            return
        self.ended = True
        # Woken too: a cancellation that asyncio.wait_for swallowed (Python
        # 3.11 and before, when what it waits for completes at that moment)
        # still stops the handler at its next wait.
        self.credit_changed.set()
        if self.incoming is not None:
            self.incoming._flow.changed.set()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.table.forget_accepted(self)

    def broken(self, reason: str) -> None:
        """The opener broke a rule: the handler is dropped, ``invalid_stream`` sent."""
        if self.ended:
            return
        self.table.refusal(f"stream `{self.packet.method}` broke a rule: {reason}")
        self.end()
        error = RemoteError("invalid_stream", reason, method=self.packet.method)
        self.table.protocol._spawn(self.table.protocol._send_error(error, self.reply_to()))

    def on_credit(self, credit: Any) -> None:
        if not self.spec.returns_output:
            self.broken(f"output credit for `{self.packet.method}`, which returns no stream")
            return
        if not isinstance(credit, int) or credit < 1:
            self.broken("`stream.credit` grants no credit")
            return
        self.out_credit += credit
        if self.out_credit - self.out_sent > MAX_CREDIT:
            self.broken(f"output credit beyond {MAX_CREDIT} items")
            return
        self.credit_changed.set()

    def on_item(self, seq: Any, item: Any, size: int) -> None:
        if self.incoming is None:
            self.broken(f"input items to `{self.packet.method}`, which takes none")
            return
        rule = self.incoming.on_item(seq, item, size)
        if rule is not None:
            self.broken(rule)

    def on_end(self, seq: Any) -> None:
        if self.incoming is None:
            if seq != 0:
                self.broken(f"input items to `{self.packet.method}`, which takes none")
            return
        rule = self.incoming.on_end(seq)
        if rule is not None:
            self.broken(rule)

    async def run(self, limit: Optional[float]) -> None:
        """Runs the handler: input credit, output items per credit, the reply."""
        protocol = self.table.protocol
        method = self.packet.method
        left = None if limit is None else limit - asyncio.get_running_loop().time()
        try:
            result = await asyncio.wait_for(self._serve(), left)
            reply = protocol.create_message_packet(f"{method}.reply", result)
            await protocol._send(reply, self.reply_to(), None)
        except asyncio.TimeoutError:
            if left is None:
                raise
            protocol.logger.warning(
                "stream `%s` outlived its caller's timeout; dropped", method[:64]
            )
        except RemoteError as e:
            await protocol._send_error(e, self.reply_to())
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            if protocol._lines.allow("packet lines", logging.WARNING):
                protocol.logger.exception("stream method `%s` failed", method[:64])
            error = RemoteError("handler_error", f"`{method}` failed", method=method)
            await protocol._send_error(error, self.reply_to())
        finally:
            self.ended = True
            self.table.forget_accepted(self)
            protocol.logger.debug("stream `%s` #%d ended", method[:64], self.key[1])

    async def _serve(self) -> Any:
        protocol = self.table.protocol
        function = getattr(protocol, self.spec.attribute)
        if self.incoming is not None:
            await self.incoming._grant(self.incoming._flow.window)
        if not self.spec.returns_output:
            return await function(self.packet, self.incoming)
        items: AsyncIterator[Any] = function(self.packet, self.incoming)
        try:
            while True:
                while self.out_sent >= self.out_credit and not self.ended:
                    self.credit_changed.clear()
                    await self.credit_changed.wait()
                if self.ended:
                    raise asyncio.CancelledError
                try:
                    item = await items.__anext__()
                except StopAsyncIteration:
                    return None
                self.out_sent += 1
                address = dict(self.address(), seq=self.out_sent)
                await protocol._send_stream(ITEM, address, item)
        finally:
            try:
                await items.aclose()  # type: ignore[attr-defined]
            except Exception:  # a generator that yields again when closed
                protocol.logger.warning("stream method `%s` did not close", method_name(self))


def method_name(accepted: _Accepted) -> str:
    """The stream's method as a log line shows it (cut)."""
    return accepted.packet.method[:64]


class StreamTable:
    """The streams of one connection, both ways, and the frames they take."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.opened: Dict[int, _Opened] = {}
        self.accepted: Dict[_Key, _Accepted] = {}
        self._ended: collections.OrderedDict = collections.OrderedDict()
        #: What happened to the streams' frames, by kind (``broken``, ``unknown``,
        #: ``late``, ``refused``, ``opened``, ``accepted``): the counters tests read.
        self.counts: collections.Counter = collections.Counter()

    def busy(self) -> bool:
        return bool(self.opened or self.accepted)

    def refusal(self, text: str) -> None:
        self.counts["broken"] += 1
        if self.protocol._refused("broken stream rules"):
            self.protocol.logger.warning("%s", text)

    def send_soon(self, method: str, address: Dict[str, Any], payload: Any) -> None:
        self.protocol._spawn(self._send_quietly(method, address, payload))

    async def _send_quietly(self, method: str, address: Dict[str, Any], payload: Any) -> None:
        try:
            await self.protocol._send_stream(method, address, payload)
        except (ConnectionError, ValueError):
            pass

    def _remember(self, key: _Key) -> None:
        self._ended[key] = None
        while len(self._ended) > ENDED_STREAMS_KEPT:
            self._ended.popitem(last=False)

    def forget_opened(self, state: _Opened) -> None:
        if self.opened.get(state.id) is state:
            del self.opened[state.id]
            self._remember((self.protocol.peer_id, state.id))

    def forget_accepted(self, state: _Accepted) -> None:
        if self.accepted.get(state.key) is state:
            del self.accepted[state.key]
            self._remember(state.key)

    def ended_recently(self, key: _Key) -> bool:
        return key in self._ended

    def unknown(self, packet: MessagePacket, key: Optional[_Key]) -> None:
        """A frame of a stream not known here: dropped, never answered."""
        if key is not None and key in self._ended:
            self.counts["late"] += 1
            self.protocol.logger.debug(
                "dropped a late %s of an ended stream (%s#%s)", packet.method, *key
            )
            return
        self.counts["unknown"] += 1
        if self.protocol._refused("frames of unknown streams"):
            self.protocol.logger.warning("dropped a %s of an unknown stream", packet.method)

    def on_stream_packet(self, packet: MessagePacket, size: int) -> None:
        """A ``stream.*`` packet: to the stream it names, else dropped."""
        stream = packet.stream
        if stream is None or "peer" not in stream or "id" not in stream:
            self.unknown(packet, None)
            return
        key: _Key = (stream["peer"], stream["id"])
        opened = self.opened.get(key[1]) if key[0] == self.protocol.peer_id else None
        if opened is not None:
            if packet.method == ITEM:
                opened.on_item(packet, stream.get("seq"), size)
            elif packet.method == CREDIT:
                opened.on_credit(stream.get("credit"))
            elif packet.method == CANCEL:
                opened.stop_input()  # the acceptor reads no more input; the call goes on
            else:  # the acceptor sends no `stream.end`
                opened.broken("`stream.end` from the acceptor")
            return
        accepted = self.accepted.get(key)
        if accepted is None:
            self.unknown(packet, key)
            return
        if packet.method == ITEM:
            accepted.on_item(stream.get("seq"), packet.payload, size)
        elif packet.method == CREDIT:
            accepted.on_credit(stream.get("credit"))
        elif packet.method == END:
            accepted.on_end(stream.get("seq"))
        else:
            self.protocol.logger.debug(
                "stream `%s` cancelled by its opener", accepted.packet.method
            )
            accepted.end()

    def on_reply(self, packet: MessagePacket, reply_to: ReplyTo) -> bool:
        """A reply or error packet that ends a stream this side opened (or ended
        recently); whether it was one."""
        opened = self.opened.get(reply_to.id)
        if opened is not None:
            opened.on_reply(packet)
            return True
        if self.ended_recently((reply_to.peer, reply_to.id)):
            self.unknown(packet, (reply_to.peer, reply_to.id))
            return True
        return False

    def on_open(
        self,
        packet: MessagePacket,
        spec: Optional[StreamSpec],
        limit: Optional[float],
        context: contextvars.Context,
    ) -> None:
        """An open: refused (``not_a_stream``, ``busy``, ``invalid_stream``) or
        its handler started."""
        protocol = self.protocol
        address = ReplyTo(packet.peer, packet.id)
        credit = (packet.stream or {}).get("credit", 0)
        error = None
        if spec is None:
            error = RemoteError(
                "not_a_stream", f"`{packet.method}` is not a stream method", method=packet.method
            )
        elif len(self.accepted) >= MAX_STREAMS:
            error = RemoteError("busy", f"{MAX_STREAMS} streams already open", method=packet.method)
        elif credit > MAX_CREDIT:
            error = RemoteError(
                "invalid_stream", f"open credit beyond {MAX_CREDIT} items", method=packet.method
            )
        elif packet.peer == protocol.peer_id:
            # Frames naming this side's id are looked up among its own
            # opens: a peer's open can never carry it.
            error = RemoteError(
                "invalid_stream", "the open names this side's own stream", method=packet.method
            )
        elif (packet.peer, packet.id) in self.accepted:
            error = RemoteError(
                "invalid_stream", "this stream is open already", method=packet.method
            )
        if error is not None or spec is None:
            self.counts["refused"] += 1
            if protocol._refused("stream opens refused"):
                protocol.logger.warning("refused a stream open: %s", error)
            protocol._spawn(protocol._send_error(error, address))  # type: ignore[arg-type]
            return
        state = _Accepted(self, packet, spec, credit if spec.returns_output else 0)
        self.accepted[state.key] = state
        self.counts["accepted"] += 1
        protocol.logger.debug(
            "stream `%s` #%d from %s accepted", packet.method[:64], packet.id, packet.peer
        )
        loop = asyncio.get_running_loop()
        state.task = context.run(loop.create_task, state.run(limit))

    def close_all(self) -> None:
        """The connection closed: every stream ends at once."""
        for opened in list(self.opened.values()):
            opened.finish(StreamDisconnected(opened.out.received))
        for accepted in list(self.accepted.values()):
            accepted.end()
