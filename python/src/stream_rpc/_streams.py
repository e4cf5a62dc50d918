"""Streams (PROTOCOL.md §"Streams"): the opener's :class:`Stream`, the
acceptor's :class:`Incoming` and handler driver, credit, ends, cancellation,
and what a peer's broken rule does.

Internal: the public names are in :mod:`stream_rpc.common`.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextvars
import inspect
import logging
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Callable,
    Deque,
    Dict,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from . import _meta
from ._errors import RemoteError
from ._wire import MessagePacket, ReplyTo

if TYPE_CHECKING:  # pragma: no cover
    from .common import Protocol

#: Streams one connection serves at once (opened by the peer); one more is refused ``busy``.
MAX_STREAMS = 256
#: Output items an opener grants at once, and input items an acceptor grants.
STREAM_WINDOW = 32
#: Bytes of received items not yet taken at which a receiver stops granting credit.
STREAM_WINDOW_BYTES = 1 << 20
#: Outstanding credit (granted minus items received) at most, by the rules.
MAX_CREDIT = 65_536
#: Ended streams remembered per connection, so that their late frames are
#: dropped quietly (at DEBUG) rather than as refusals.
ENDED_STREAMS_KEPT = 1024

ITEM = "stream.item"
CREDIT = "stream.credit"
END = "stream.end"
CANCEL = "stream.cancel"
#: The methods of stream packets (never requests, never answered).
PACKET_METHODS = frozenset({ITEM, CREDIT, END, CANCEL})

_Key = Tuple[str, int]
_F = TypeVar("_F", bound=Callable[..., Any])


class StreamError(Exception):
    """Why a stream ended other than cleanly (a clean end stops the iteration)."""


class StreamCancelled(StreamError, RemoteError):
    """The stream was cancelled: by the other side, an error packet of code
    ``cancelled`` (so it is a :class:`RemoteError` too), or by this side."""

    def __init__(self, message: str = "the stream was cancelled", method: Optional[str] = None):
        RemoteError.__init__(self, "cancelled", message, None, method)


class StreamDisconnected(StreamError, ConnectionError):
    """The connection closed before the stream ended; ``last_seq`` output items
    were received (and handed out) before it did."""

    def __init__(self, last_seq: int) -> None:
        super().__init__(f"the connection closed after {last_seq} stream items")
        self.last_seq = last_seq


class StreamTimeout(StreamError, asyncio.TimeoutError):
    """The whole stream's ``timeout`` or the ``item_timeout`` passed; the stream
    was cancelled."""


class StreamProtocolError(StreamError):
    """The peer broke a rule of the stream (an item beyond credit, out of order,
    credit beyond the limit, ...); the stream was cancelled ``invalid_stream``."""


def stream_method(name: Union[str, _F, None] = None, *, input: bool = False) -> Any:  # noqa: A002 (the design's name)
    """Marks a :class:`~stream_rpc.common.Protocol` method as a stream method
    served under ``name`` (default: its own name).

    The method is called as ``method(self, packet, incoming)``, ``packet`` the
    open (``packet.payload`` the arguments), ``incoming`` an async iterator of
    the input items when ``input=True`` (the method takes a stream), else
    ``None``. An **async generator** yields the output items (a stream back to
    the opener; the final reply's payload is ``null``); a **coroutine
    function** returns the final reply's payload (an input-only method).
    """

    def mark(function: _F) -> _F:
        if not (inspect.isasyncgenfunction(function) or inspect.iscoroutinefunction(function)):
            raise TypeError("a stream method is an async generator or an async def function")
        wire = name if isinstance(name, str) else function.__name__
        function._stream_rpc_method = (wire, bool(input))  # type: ignore[attr-defined]
        return function

    if callable(name):
        return mark(name)
    return mark


class StreamSpec:
    """A registered stream method: its attribute, and its flows."""

    def __init__(self, attribute: str, takes_input: bool, returns_output: bool) -> None:
        self.attribute = attribute
        self.takes_input = takes_input
        self.returns_output = returns_output


def collect_stream_methods(cls: type) -> Dict[str, StreamSpec]:
    """The stream methods of a protocol class, by wire name."""
    found: Dict[str, StreamSpec] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            marked = getattr(value, "_stream_rpc_method", None)
            if marked is not None:
                wire, takes_input = marked
                found[wire] = StreamSpec(attribute, takes_input, inspect.isasyncgenfunction(value))
    return found


class _Window:
    """One receiving flow's buffer and credit: items received, taken, granted."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.buffer: Deque[Tuple[Any, int]] = collections.deque()
        self.bytes = 0
        self.received = 0
        self.taken = 0
        self.granted = 0
        self.ended = False
        self.changed = asyncio.Event()

    def receive(self, seq: Any, item: Any, size: int) -> Optional[str]:
        """Keeps an item; the rule it breaks, if any."""
        if self.ended:
            return "an item after the end of the flow"
        if seq != self.received + 1:
            return f"item seq {seq} where {self.received + 1} was due"
        if self.received >= self.granted:
            return f"an item beyond the credit granted ({self.granted})"
        self.received += 1
        self.buffer.append((item, size))
        self.bytes += size
        self.changed.set()
        return None

    def take(self) -> Any:
        item, size = self.buffer.popleft()
        self.bytes -= size
        self.taken += 1
        return item

    def to_grant(self) -> int:
        """Credit to grant now: the window refilled once half of it was taken,
        unless the bytes held reach :data:`STREAM_WINDOW_BYTES`."""
        if self.ended or self.bytes >= STREAM_WINDOW_BYTES:
            return 0
        free = self.window - (self.granted - self.taken)
        return free if free >= max(1, self.window // 2) else 0


class _Opened:
    """A stream this side opened: its output items and how it ended."""

    def __init__(self, table: StreamTable, ident: int, method: str, window: int) -> None:
        self.table = table
        self.id = ident
        self.method = method
        self.out = _Window(window)
        self.out.granted = window
        self.outcome: Optional[BaseException] = None
        self.result: Any = None
        self.ended = False
        self.has_input = False
        self.input_credit = 0
        self.input_sent = 0
        self.input_changed = asyncio.Event()
        self.input_stopped = False
        self.pump: Optional[asyncio.Task] = None

    def address(self) -> Dict[str, Any]:
        return {"peer": self.table.protocol.peer_id, "id": self.id}

    def finish(self, outcome: Optional[BaseException], result: Any = None) -> None:
        """Ends the stream (once): forgotten by the table, the input stopped."""
        if self.ended:
            return
        self.ended = True
        self.outcome = outcome
        self.result = result
        self.out.ended = True
        self.out.changed.set()
        self.stop_input()
        self.table.forget_opened(self)

    def stop_input(self) -> None:
        self.input_stopped = True
        self.input_changed.set()
        pump = self.pump
        if pump is not None and not pump.done() and pump is not asyncio.current_task():
            pump.cancel()

    def broken(self, reason: str) -> None:
        """The acceptor broke a rule: cancel it ``invalid_stream``, end with an error."""
        self.table.refusal(f"stream `{self.method}` broke a rule: {reason}")
        body = {"code": "invalid_stream", "message": reason}
        self.table.send_soon(CANCEL, self.address(), body)
        self.finish(StreamProtocolError(reason))

    def on_item(self, packet: MessagePacket, seq: Any, size: int) -> None:
        rule = self.out.receive(seq, packet.payload, size)
        if rule is not None:
            self.broken(rule)

    def on_credit(self, credit: Any) -> None:
        if not self.has_input:
            # Credit is also the sign the open was accepted: no input from here.
            if not self.input_stopped:
                self.input_stopped = True
                self.table.send_soon(END, dict(self.address(), seq=0), None)
            return
        if not isinstance(credit, int) or credit < 1:
            self.broken("`stream.credit` grants no credit")
            return
        self.input_credit += credit
        if self.input_credit - self.input_sent > MAX_CREDIT:
            self.broken(f"input credit beyond {MAX_CREDIT} items")
            return
        self.input_changed.set()

    def on_reply(self, packet: MessagePacket) -> None:
        if packet.method == "error":
            body = packet.payload if isinstance(packet.payload, dict) else {}
            code, message = str(body.get("code", "unknown")), str(body.get("message", ""))
            if code == "cancelled":
                self.finish(StreamCancelled(message or "the acceptor cancelled it", self.method))
            else:
                self.finish(RemoteError(code, message, body.get("data"), body.get("method")))
        else:
            self.finish(None, packet.payload)

    async def send_input(self, source: Any) -> None:
        """Sends the input flow: an item per credit, then ``stream.end``."""
        protocol = self.table.protocol
        iterator = source.__aiter__() if hasattr(source, "__aiter__") else iter(source)
        try:
            while True:
                while self.input_sent >= self.input_credit and not self.input_stopped:
                    self.input_changed.clear()
                    await self.input_changed.wait()
                if self.input_stopped:
                    return
                try:
                    if isinstance(iterator, collections.abc.AsyncIterator):
                        item = await iterator.__anext__()
                    else:
                        item = next(iterator)
                except (StopAsyncIteration, StopIteration):
                    break
                if self.input_stopped:
                    return
                self.input_sent += 1
                await protocol._send_stream(ITEM, dict(self.address(), seq=self.input_sent), item)
            self.input_stopped = True
            await protocol._send_stream(END, dict(self.address(), seq=self.input_sent), None)
        except ConnectionError:
            return
        except Exception as e:  # the input source failed, or an item is not JSON
            protocol.logger.warning("stream `%s`: its input failed: %r", self.method, e)
            if not self.ended:
                self.table.send_soon(CANCEL, self.address(), None)
                self.finish(e)
        finally:
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:  # its own cleanup failing changes nothing here
                    pass


class Stream:
    """A stream opened with :meth:`Protocol.stream`: iterate it (``async for``)
    for the output items. Its end: the iteration stops (then :attr:`result`
    holds the final reply's payload), or raises :class:`RemoteError` (an error
    packet: a refused open, the method's failure), :class:`StreamCancelled`,
    :class:`StreamDisconnected`, :class:`StreamTimeout` or
    :class:`StreamProtocolError`. :meth:`aclose` (or leaving ``async with``)
    cancels it."""

    def __init__(
        self,
        protocol: Protocol,
        method: str,
        payload: Any,
        *,
        window: int,
        meta: Optional[Dict[str, str]],
        input: Any,
        timeout: Optional[float],
        item_timeout: Optional[float],
    ) -> None:
        if not isinstance(window, int) or not 0 <= window <= MAX_CREDIT:
            raise ValueError(f"window must be an integer from 0 to {MAX_CREDIT}")
        self._protocol = protocol
        self._method = method
        self._payload = payload
        self._window = window
        # Taken now: in the caller's context (the request it handles, if any).
        self._meta = _meta.outgoing(meta)
        self._input = input
        self._timeout = timeout
        self._item_timeout = item_timeout
        self._state: Optional[_Opened] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._deadline: Optional[float] = None
        self._closed = False

    @property
    def last_seq(self) -> int:
        """The sequence number of the last output item handed out (0: none)."""
        return 0 if self._state is None else self._state.out.taken

    @property
    def result(self) -> Any:
        """The final reply's payload, once the stream ended cleanly."""
        state = self._state
        if state is None or not state.ended or state.outcome is not None:
            raise RuntimeError("the stream has not ended cleanly (yet)")
        return state.result

    async def _open(self) -> _Opened:
        protocol = self._protocol
        table = protocol._streams
        packet = protocol.create_message_packet(self._method, self._payload)._replace(
            meta=self._meta, stream={"credit": self._window}
        )
        state = _Opened(table, packet.id, self._method, self._window)
        state.has_input = self._input is not None
        table.opened[packet.id] = state
        self._state = state
        loop = self._loop = asyncio.get_running_loop()
        timeout_ms = None
        if self._timeout is not None:
            timeout_ms = max(1, int(self._timeout * 1000))
            self._deadline = loop.time() + self._timeout
        try:
            await protocol._send(packet, None, timeout_ms)
        except BaseException as e:
            state.ended = True
            table.opened.pop(packet.id, None)
            if isinstance(e, ConnectionError):
                raise StreamDisconnected(0) from e
            raise
        if self._input is not None:
            state.pump = loop.create_task(state.send_input(self._input))
        return state

    def __aiter__(self) -> Stream:
        return self

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        state = self._state if self._state is not None else await self._open()
        out = state.out
        loop = asyncio.get_running_loop()
        if self._deadline is not None and loop.time() >= self._deadline and not state.ended:
            self._cancel(state)
            state.outcome = StreamTimeout(f"stream `{self._method}` passed its timeout")
            out.buffer.clear()
        while not out.buffer:
            if state.ended:
                if state.outcome is not None:
                    raise state.outcome
                raise StopAsyncIteration
            out.changed.clear()
            limits = [self._item_timeout]
            if self._deadline is not None:
                limits.append(self._deadline - loop.time())
            left = min((x for x in limits if x is not None), default=None)
            try:
                if left is not None and left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(out.changed.wait(), left)
            except asyncio.TimeoutError:
                if out.buffer or state.ended:
                    continue
                self._cancel(state)
                state.outcome = StreamTimeout(f"stream `{self._method}` timed out")
                raise state.outcome from None
        item = out.take()
        grant = 0 if state.ended else out.to_grant()
        if grant:
            out.granted += grant
            try:
                await self._protocol._send_stream(CREDIT, dict(state.address(), credit=grant), None)
            except ConnectionError:
                pass
        return item

    def _cancel(self, state: _Opened) -> None:
        if not state.ended:
            state.table.send_soon(CANCEL, state.address(), None)
            state.finish(StreamCancelled("cancelled by this side"))

    async def aclose(self) -> None:
        """Cancels the stream (``stream.cancel``: the acceptor drops its handler);
        nothing if it already ended. Items not yet taken are dropped."""
        self._closed = True
        state = self._state
        if state is not None and not state.ended:
            state.finish(StreamCancelled("cancelled by this side"))
            try:  # written before this returns: what is sent next comes after it
                await self._protocol._send_stream(CANCEL, state.address(), None)
            except (ConnectionError, ValueError):
                pass
        if state is not None:
            state.out.buffer.clear()

    async def finish(self) -> Any:
        """Waits for the end, dropping the items not yet taken, and returns the
        final reply's payload (what an input-only method returned)."""
        async for _ in self:
            pass
        return self.result

    def __del__(self) -> None:
        state = self._state
        if state is not None and not state.ended and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._cancel, state)
            except RuntimeError:  # the loop is closed: so is the connection
                pass


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
