"""The opener's side of a stream (PROTOCOL.md §"Streams"): :class:`Stream`, what
``Protocol.stream`` returns, its output flow, its input pump, and its ends.

Internal: the public names are in :mod:`stream_rpc.common`.
"""

from __future__ import annotations

import asyncio
import collections.abc
from typing import TYPE_CHECKING, Any, Dict, Optional

from . import _meta
from ._errors import RemoteError
from ._flow import (
    CANCEL,
    CREDIT,
    END,
    ITEM,
    MAX_CREDIT,
    StreamCancelled,
    StreamDisconnected,
    StreamProtocolError,
    StreamTimeout,
    _Window,
)
from ._wire import MessagePacket

if TYPE_CHECKING:  # pragma: no cover
    from ._streams import StreamTable
    from .common import Protocol


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
