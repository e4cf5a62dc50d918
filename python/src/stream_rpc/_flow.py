"""What both ends of a stream share (PROTOCOL.md §"Streams"): the limits, the
packet names, the exceptions, the ``stream_method`` mark, and a receiving
flow's window of credit.

Internal: the public names are in :mod:`stream_rpc.common`.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from typing import Any, Callable, Deque, Dict, Optional, Tuple, TypeVar, Union

from ._errors import RemoteError

#: Output items an opener grants at once, and input items an acceptor grants.
STREAM_WINDOW = 32
#: Bytes of received items not yet taken at which a receiver stops granting credit.
STREAM_WINDOW_BYTES = 1 << 20
#: Outstanding credit (granted minus items received) at most, by the rules.
MAX_CREDIT = 65_536

ITEM = "stream.item"
CREDIT = "stream.credit"
END = "stream.end"
CANCEL = "stream.cancel"
#: The methods of stream packets (never requests, never answered).
PACKET_METHODS = frozenset({ITEM, CREDIT, END, CANCEL})

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
