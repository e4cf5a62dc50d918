"""The original ``stream_rpc`` API: packets, protocols and the connector.

Subclass :class:`Protocol`, define ``async def process_message(self,
message_packet)``, and run it with a :class:`Connector`, as with the
original; the packets are the JSON packets of ``docs/PROTOCOL.md``, so the
peer on the other side may be the Rust implementation.

Settings are module attributes, read from the environment at import
(``STREAM_RPC_HOST``, ``STREAM_RPC_PORT``, ``STREAM_RPC_LOG_LVL``,
``STREAM_RPC_LOG_PACKETS``, ``STREAM_RPC_MAX_CONNECTIONS_PER_IP``,
``STREAM_RPC_CONCURRENT_HANDLERS``) or set in code (``STREAM_RPC_TERM``,
``STREAM_RPC_CYPHER``, ``STREAM_RPC_LOG_FMT``); a connector reads them when
it is created.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import datetime
import json
import logging
import os
import time
import uuid
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Set, Tuple, Type, Union

from . import _meta, _replay, _streams, _wire
from ._errors import PermanentError, RemoteError
from ._meta import (
    MAX_META_BYTES,
    MAX_META_ENTRIES,
    MAX_META_KEY_BYTES,
    MAX_META_VALUE_BYTES,
    current_meta,
)
from ._streams import (
    MAX_CREDIT,
    MAX_STREAMS,
    STREAM_WINDOW,
    STREAM_WINDOW_BYTES,
    Incoming,
    Stream,
    StreamCancelled,
    StreamDisconnected,
    StreamError,
    StreamProtocolError,
    StreamTimeout,
    stream_method,
)
from ._wire import InvalidPacket, MessagePacket, ReplyTo
from .crypto import TOKEN_TTL, Cypher, TokenError

__all__ = [
    "Connector",
    "Incoming",
    "MAX_CREDIT",
    "MAX_META_BYTES",
    "MAX_META_ENTRIES",
    "MAX_META_KEY_BYTES",
    "MAX_META_VALUE_BYTES",
    "MAX_STREAMS",
    "MessagePacket",
    "PermanentError",
    "Protocol",
    "RemoteError",
    "ReplyTo",
    "STREAM_WINDOW",
    "STREAM_WINDOW_BYTES",
    "Stream",
    "StreamCancelled",
    "StreamDisconnected",
    "StreamError",
    "StreamProtocolError",
    "StreamTimeout",
    "CALL_CANCEL",
    "create_message_packet",
    "current_cancellation",
    "current_meta",
    "stream_method",
    "STREAM_RPC_CONCURRENT_HANDLERS",
    "STREAM_RPC_CYPHER",
    "STREAM_RPC_HOST",
    "STREAM_RPC_LOG_FMT",
    "STREAM_RPC_LOG_LVL",
    "STREAM_RPC_LOG_PACKETS",
    "STREAM_RPC_MAX_CONNECTIONS_PER_IP",
    "STREAM_RPC_PORT",
    "STREAM_RPC_TERM",
]

#: The address a server listens on.
STREAM_RPC_HOST: str = os.environ.get("STREAM_RPC_HOST", "0.0.0.0")
#: The port a server listens on and a client connects to (from ``STREAM_RPC_PORT``;
#: a value that is not a port is reported when a connector is created).
STREAM_RPC_PORT: Union[int, str] = os.environ.get("STREAM_RPC_PORT", "8888")
#: The log level, by name.
STREAM_RPC_LOG_LVL: str = os.environ.get("STREAM_RPC_LOG_LVL", "INFO")
#: What ends each frame (1 to 16 bytes, no letters, digits, ``-``, ``_`` or ``=``).
STREAM_RPC_TERM: bytes = b"\n"
#: The class that seals and opens tokens: :class:`~stream_rpc.crypto.Cypher`, a
#: subclass, or any class with ``encrypt(bytes)`` and ``decrypt(bytes)``.
STREAM_RPC_CYPHER: type = Cypher
#: The log format of the original.
STREAM_RPC_LOG_FMT: str = "%(asctime)-15s %(name)-5s\n  \\_ %(levelname)-8s %(message)s"
#: How much of each packet the ``Send:``/``Received:`` lines show: ``headers``
#: (method, id, peer, created_at, reply_to; the default), ``full`` (the
#: original's ``MessagePacket(...)``, payload included) or ``off``.
STREAM_RPC_LOG_PACKETS: str = os.environ.get("STREAM_RPC_LOG_PACKETS", "headers")
#: Connections a server serves at once from one address (beside the global
#: :data:`MAX_CONNECTIONS`); one more is closed at once.
STREAM_RPC_MAX_CONNECTIONS_PER_IP: Union[int, str] = os.environ.get(
    "STREAM_RPC_MAX_CONNECTIONS_PER_IP", "64"
)
#: Whether a connection's packets are handled concurrently (``1``, ``true``,
#: ``yes``, ``on``) instead of one at a time, in order (the default, as the
#: original did). A protocol class's ``concurrent_handlers`` overrides it.
STREAM_RPC_CONCURRENT_HANDLERS: str = os.environ.get("STREAM_RPC_CONCURRENT_HANDLERS", "")

if isinstance(STREAM_RPC_PORT, str) and STREAM_RPC_PORT.strip().isdigit():
    STREAM_RPC_PORT = int(STREAM_RPC_PORT)

#: The most bytes in a frame, not counting the terminator.
MAX_FRAME = 1 << 20
#: Connections a server serves at once; one more is closed at once (and logged).
MAX_CONNECTIONS = 1024
#: Calls waiting for their replies on one connection; more wait for a slot.
MAX_IN_FLIGHT_CALLS = 1024
#: Bad frames in a row that close a connection.
MAX_BAD_FRAMES = 3
#: Handlers running at once on one connection, or (handled one at a time)
#: packets waiting for or in their handler; more requests are answered ``busy``.
MAX_HANDLERS = 256
#: Seconds a client has, from when it connected, to send a server its first
#: frame that opens under the key (an absolute deadline: bytes, garbage and
#: frames under another key do not extend it).
FIRST_FRAME_TIMEOUT = 10.0
#: Seconds after the last frame that opened under the key (with nothing
#: running or awaited) that close a connection: an absolute deadline, which
#: bytes, garbage and frames under another key do not extend.
IDLE_TIMEOUT = 300.0
#: Packet lines (``Send:``, ``Received:`` and a packet's warnings) logged per
#: connection per second at most; the rest are counted, and one line says how
#: many were left out.
PACKET_LOG_LINES_PER_SECOND = 20
#: Seconds between two log lines of one kind of refusal (connections over a
#: limit); the refusals in between are counted, and the next line says how many.
REFUSAL_LOG_INTERVAL = 1.0
#: Characters of a method name (or other peer-given text) shown in a log line.
LOG_TEXT_CHARS = 200
#: Characters of a packet shown in a ``full`` packet line.
LOG_PACKET_CHARS = 1024
#: Seconds one write may take.
WRITE_TIMEOUT = 10.0
#: Seconds the handlers of a closing connection may go on.
SHUTDOWN_GRACE = 10.0
#: Seconds a call waits for its reply by default.
CALL_TIMEOUT = 30.0

_PACKET_LOG_MODES = ("off", "headers", "full")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")

# The request being answered by the running handler: what `send_message`
# addresses its packets to (None while handling a reply or an error packet).
_answering: contextvars.ContextVar[Optional[ReplyTo]] = contextvars.ContextVar(
    "stream_rpc_answering", default=None
)


# The cancellation of the request the running handler answers: set when its
# caller sends `call.cancel` (None outside a handler).
_cancellation: contextvars.ContextVar[Optional[asyncio.Event]] = contextvars.ContextVar(
    "stream_rpc_cancellation", default=None
)

#: The frame that cancels a call (PROTOCOL.md §"Cancelling a call"): payload
#: ``{"peer": P, "id": N}``, the request's own ``peer`` and ``id``; never answered.
CALL_CANCEL = "call.cancel"


def current_cancellation() -> asyncio.Event:
    """The cancellation of the request the running handler answers: an
    ``asyncio.Event`` set when its caller gave up on it (it sent
    ``call.cancel``: a cancelled or timed-out call, a task cancelled while
    it runs). Cooperative, as on the Rust side: the handler is not stopped;
    it may ``await`` the event (or check ``is_set()``) and return early. Its
    reply, if it sends one, is still sent. Outside a handler, an event
    never set."""
    event = _cancellation.get()
    return event if event is not None else asyncio.Event()


class _Missing:
    """The default of a payload not given."""

    def __repr__(self) -> str:
        return "{}"


_MISSING: Any = _Missing()


def create_message_packet(
    peer_id: str, request_number: int, method: str, payload: Any = _MISSING
) -> MessagePacket:
    """A packet created now, in UTC, with ``request_number`` as its id; a
    payload not given is ``{}`` (as in the original), ``None`` is ``null``."""
    return MessagePacket(
        peer=str(peer_id),
        id=request_number,
        created_at=datetime.datetime.now(datetime.timezone.utc),
        method=method,
        payload={} if payload is _MISSING else payload,
    )


def _shown(text: Any) -> str:
    """Peer-given text (a method name) as a log line shows it: JSON-quoted, so
    that control characters and line breaks are escaped, cut at
    :data:`LOG_TEXT_CHARS`."""
    text = str(text)
    if len(text) > LOG_TEXT_CHARS:
        return json.dumps(text[:LOG_TEXT_CHARS]) + "…"
    return json.dumps(text)


def _shown_packet(
    packet: MessagePacket, reply_to: Optional[ReplyTo], timeout_ms: Optional[int], full: bool
) -> str:
    """A packet as a packet line shows it: the original's ``MessagePacket(...)``
    (cut at :data:`LOG_PACKET_CHARS`) when ``full``, else its headers."""
    if full:
        text = repr(packet)
        if len(text) > LOG_PACKET_CHARS:
            text = text[:LOG_PACKET_CHARS] + "…"
        if reply_to is not None:
            text += f" reply_to={reply_to.peer}#{reply_to.id}"
        return text
    at = packet.created_at
    try:
        at = at.astimezone(datetime.timezone.utc)
        created = (
            f"{at.year:04d}" + at.strftime("-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
        )
    except (AttributeError, OverflowError, ValueError):
        created = _shown(at)
    text = (
        f"{{method: {_shown(packet.method)}, id: {packet.id}, peer: {_shown(packet.peer)[1:-1]}, "
        f"created_at: {created}"
    )
    if reply_to is not None:
        text += f", reply_to: {reply_to.peer}#{reply_to.id}"
    if timeout_ms is not None:
        text += f", timeout_ms: {timeout_ms}"
    if packet.meta:
        # The keys only: values may be tokens.
        text += f", meta: [{', '.join(_shown(key)[1:-1] for key in sorted(packet.meta))}]"
    if packet.stream is not None:
        fields = ", ".join(f"{name}: {value}" for name, value in packet.stream.items())
        text += f", stream: {{{fields}}}"
    return text + "}"


class _Throttle:
    """At most ``limit`` log lines of a kind per ``interval`` seconds; the lines
    left out are counted, and once the interval is over one line says how many."""

    def __init__(self, logger: logging.LoggerAdapter, limit: int, interval: float) -> None:
        self.logger = logger
        self.limit = limit
        self.interval = interval
        # kind -> [start of the interval, lines logged in it, lines left out]
        self._kinds: Dict[str, List[float]] = {}
        self._timers: Dict[str, asyncio.TimerHandle] = {}

    def allow(self, kind: str, level: int = logging.INFO) -> bool:
        """Whether a line of ``kind`` may be logged now (else it is counted)."""
        now = time.monotonic()
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.interval:
            if state is not None:
                self._report(kind, level)
            state = self._kinds[kind] = [now, 0, 0]
        if state[1] < self.limit:
            state[1] += 1
            return True
        state[2] += 1
        if kind not in self._timers:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
            delay = max(0.0, state[0] + self.interval - now)
            self._timers[kind] = loop.call_later(delay, self._report, kind, level)
        return False

    def _report(self, kind: str, level: int) -> None:
        timer = self._timers.pop(kind, None)
        if timer is not None:
            timer.cancel()
        state = self._kinds.get(kind)
        if state is None or not state[2]:
            return
        self.logger.log(
            level,
            "%d more %s in the last %.0f s, not logged one by one (at most %d a second are)",
            state[2],
            kind,
            self.interval,
            self.limit,
        )
        state[2] = 0

    def flush(self) -> None:
        """Says now how many lines were left out, kind by kind."""
        for kind in list(self._kinds):
            self._report(kind, logging.INFO)


class _Frames:
    """Splits a byte stream into frames (PROTOCOL.md §1), searching each byte
    for the terminator once: the search goes on where it stopped, never from
    the start of the buffer again."""

    def __init__(self, term: bytes, max_frame: int) -> None:
        self.term = term
        self.max_frame = max_frame
        self.buffer = bytearray()
        # Where the search for the terminator goes on.
        self._scan = 0
        # Discarding an over-long frame up to its terminator.
        self._skipping = False
        #: Bytes searched so far (a test reads it).
        self.scanned = 0

    def feed(self, chunk: bytes) -> None:
        """Appends what was read."""
        self.buffer += chunk

    def next_frame(self) -> Optional[bytes]:
        """The next whole frame (``\r`` before the terminator dropped, empty
        frames skipped), or ``None`` until more bytes come."""
        term = self.term
        while True:
            end = self.buffer.find(term, self._scan)
            if end < 0:
                resume = max(self._scan, len(self.buffer) - len(term) + 1)
                self.scanned += resume - self._scan
                self._scan = resume
                return None
            self.scanned += end + len(term) - self._scan
            frame = bytes(self.buffer[:end])
            del self.buffer[: end + len(term)]
            self._scan = 0
            if self._skipping:
                self._skipping = False
                continue
            if frame.endswith(b"\r"):
                frame = frame[:-1]
            if frame:
                return frame

    def over_long(self) -> bool:
        """Discards the bytes of a frame longer than the maximum; ``True`` the
        first time for each such frame (it counts as one bad frame)."""
        if len(self.buffer) <= self.max_frame + len(self.term):
            return False
        first = not self._skipping
        self._skipping = True
        keep = len(self.term) - 1
        del self.buffer[: len(self.buffer) - keep]
        self._scan = 0
        return first

    def partial(self) -> bool:
        """Whether part of a frame is buffered (not one being discarded)."""
        return bool(self.buffer) and not self._skipping


class _PeerAdapter(logging.LoggerAdapter):
    """Prefixes each message with the peer id, as the original's log lines."""

    def process(self, msg: Any, kwargs: Any) -> Tuple[Any, Any]:
        return f"[{self.extra['peer_id']}] {msg}", kwargs  # type: ignore[index]


class _Waiting(NamedTuple):
    """A received packet waiting for its turn (packets handled one at a time)."""

    packet: MessagePacket
    reply_to: Optional[ReplyTo]
    timeout_ms: Optional[int]
    #: Where its answer goes (``None`` for a reply or an error packet).
    address: Optional[ReplyTo]
    #: The loop time its caller gives up at, if it said.
    limit: Optional[float]


class Protocol:
    """One side of one connection; subclass it and define :meth:`process_message`.

    Inside, as in the original: :meth:`create_message_packet`,
    :meth:`send_message`, ``self.logger``, ``self.peer_id`` and
    ``self.request_number`` (from 1, one up for each message this side
    sends on this connection: what the original's conversation logic keys
    on, as in ``self.request_number % 5``). A packet's ``id`` is not the
    request number: it is taken from the connector's one counter when the
    packet is created (PROTOCOL.md §4), so that no two packets of a peer
    share an id, over all its connections and handlers. Added: :meth:`call`
    (a request awaiting its reply), :meth:`notify` and :meth:`close`.

    Every received packet goes to ``process_message``, except replies that
    complete a :meth:`call` (they complete it at once, so a handler may call
    its peer). By default a connection's packets are handled one at a time,
    in order, as the original did; set ``concurrent_handlers = True`` on the
    class (or ``STREAM_RPC_CONCURRENT_HANDLERS=1``) to run them concurrently.
    Either way at most 256 are running or waiting per connection; more
    requests are answered ``busy``. A packet sent while handling a request
    is its reply (it carries ``reply_to``); a packet sent while handling a
    reply, or outside any handler, is a new request. An exception in
    ``process_message`` answers the request with an error packet:
    :class:`RemoteError` as it is, anything else as ``handler_error``
    "`method` failed" (the text goes to the log only).
    """

    #: Whether this protocol's packets are handled concurrently; ``None``
    #: follows the connector's setting (``STREAM_RPC_CONCURRENT_HANDLERS``,
    #: off by default: one at a time, in order).
    concurrent_handlers: Optional[bool] = None
    # The stream methods of the class, by wire name (marked with `stream_method`).
    _stream_methods: Dict[str, _streams.StreamSpec] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._stream_methods = _streams.collect_stream_methods(cls)

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.peer_id: str = connector.peer_id
        self.request_number = 1
        self.logger: logging.LoggerAdapter = _PeerAdapter(
            logging.getLogger(type(self).__name__), {"peer_id": self.peer_id}
        )
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._write_lock = asyncio.Lock()
        self._pending: Dict[int, asyncio.Future] = {}
        self._handlers: Set[asyncio.Task] = set()
        self._closed = asyncio.Event()
        self._loop_task: Optional[asyncio.Task] = None
        self._call_slots = asyncio.Semaphore(MAX_IN_FLIGHT_CALLS)
        chosen = type(self).concurrent_handlers
        self._concurrent = connector.concurrent_handlers if chosen is None else bool(chosen)
        # Handled one at a time: the packets waiting for their turn, each with
        # the address its answer goes to and the loop time its caller gives up.
        self._inbox: Deque[_Waiting] = collections.deque()
        self._inbox_task: Optional[asyncio.Task] = None
        self._log_mode = connector.log_packets
        self._lines = _Throttle(self.logger, PACKET_LOG_LINES_PER_SECOND, 1.0)
        self._streams = _streams.StreamTable(self)
        # The requests being handled (or waiting for their turn), by their
        # peer and id: what a `call.cancel` from the peer sets.
        self._served: Dict[Tuple[str, int], asyncio.Event] = {}
        # `call.cancel` frames being sent (kept until written).
        self._cancels: Set[asyncio.Task] = set()

    async def process_message(self, message_packet: MessagePacket) -> None:
        """Handles one received packet; the default logs and ignores it."""
        if self._lines.allow("packet lines", logging.WARNING):
            self.logger.warning("no process_message: %s ignored", _shown(message_packet.method))

    def create_message_packet(self, method: str, payload: Any = _MISSING) -> MessagePacket:
        """A packet of this side's peer id and the connector's next packet id,
        created now (a payload not given is ``{}``, as in the original;
        ``None`` is ``null``)."""
        return create_message_packet(self.peer_id, self.connector._take_id(), method, payload)

    async def send_message(self, message_packet: MessagePacket) -> None:
        """Sends a packet (a reply while handling a request) and counts the request number up.

        Returns once the packet is written; raises ``ValueError`` for a
        payload the peers would refuse and ``ConnectionError`` when the
        connection is closed.
        """
        await self._send(message_packet, _answering.get(), None)
        self.request_number += 1

    async def notify(
        self, method: str, payload: Any = None, *, meta: Optional[Dict[str, str]] = None
    ) -> None:
        """Sends a new request and waits for nothing (a typed service's method
        that returns nothing). ``None`` is sent as a JSON ``null``; ``meta``
        as for :meth:`call`."""
        packet = self.create_message_packet(method, payload)._replace(meta=_meta.outgoing(meta))
        self.request_number += 1
        await self._send(packet, None, None)

    async def call(
        self,
        method: str,
        payload: Any = None,
        timeout: Optional[float] = CALL_TIMEOUT,
        *,
        meta: Optional[Dict[str, str]] = None,
    ) -> MessagePacket:
        """Sends a request and returns its reply; raises :class:`RemoteError` for
        an error packet, ``asyncio.TimeoutError`` after ``timeout`` seconds and
        ``ConnectionError`` when the connection closes first. ``None`` (the
        default payload) is sent as a JSON ``null``.

        ``meta``: the call's metadata (string keys of ``a-z 0-9 - _ .`` to
        string values, within the limits of PROTOCOL.md; ``ValueError``
        beyond them). Made while handling a request that carried a W3C
        ``traceparent``, the call carries one of the same trace (unless
        ``meta`` gives its own)."""
        outgoing = _meta.outgoing(meta)
        async with self._call_slots:
            packet = self.create_message_packet(method, payload)._replace(meta=outgoing)
            self.request_number += 1
            future: asyncio.Future = asyncio.get_running_loop().create_future()
            self._pending[packet.id] = future
            sent = False
            try:
                timeout_ms = None if timeout is None else max(1, int(timeout * 1000))
                await self._send(packet, None, timeout_ms)
                sent = True
                reply: MessagePacket = await asyncio.wait_for(future, timeout)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                # Given up before the reply (wait_for cancels the future
                # it waited on): the peer may stop its handler.
                if sent and (future.cancelled() or not future.done()):
                    self._cancel_call(packet)
                raise
            finally:
                self._pending.pop(packet.id, None)
        if reply.method == "error":
            raise RemoteError.from_payload(reply.payload)
        return reply

    def _cancel_call(self, request: MessagePacket) -> None:
        """Sends ``call.cancel`` for ``request`` in the background (at most
        once per call; skipped when the connection is closed)."""
        if self._writer is None or self._writer.is_closing():
            return
        cancel = self.create_message_packet(CALL_CANCEL, {"peer": request.peer, "id": request.id})

        async def send() -> None:
            try:
                await self._send(cancel, None, None)
            except (ConnectionError, OSError, ValueError) as e:
                self.logger.debug("could not send call.cancel: %s", e)

        task = asyncio.get_running_loop().create_task(send())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    def _on_call_cancel(self, packet: MessagePacket, reply_to: Optional[ReplyTo]) -> bool:
        """A ``call.cancel`` frame: sets the cancellation of the request it
        names, if it is being handled; whether it was well formed (a
        malformed one counts as a bad frame, and is never answered)."""
        body = packet.payload
        target: Optional[Tuple[str, int]] = None
        plain = reply_to is None and packet.stream is None
        if plain and isinstance(body, dict) and set(body) == {"peer", "id"}:
            peer, ident = body.get("peer"), body.get("id")
            if isinstance(peer, str) and type(ident) is int and 0 <= ident < 2**64:
                try:
                    target = (_wire.parse_uuid(peer), ident)
                except ValueError:
                    target = None
        if target is None:
            if self._refused("malformed call.cancel frames"):
                self.logger.warning("dropped a malformed call.cancel")
            return False
        event = self._served.get(target)
        if event is None:
            self.logger.debug("call.cancel of %s#%d: no such call running", *target)
        else:
            self.logger.debug("call %s#%d cancelled by its caller", *target)
            event.set()
        return True

    def stream(
        self,
        method: str,
        payload: Any = None,
        *,
        window: int = STREAM_WINDOW,
        meta: Optional[Dict[str, str]] = None,
        input: Any = None,  # noqa: A002 (the design's name)
        timeout: Optional[float] = None,
        item_timeout: Optional[float] = None,
    ) -> Stream:
        """Opens a stream to the peer's stream method ``method`` (when first
        iterated): ``async for item in protocol.stream("watch_stats", {...})``.

        ``window``: output items granted at once (the peer sends no more until
        they are taken; 0 for a method that returns no stream). ``input``: an
        async (or plain) iterable whose items are sent as the input flow, as
        the peer grants credit, then the end of input. ``timeout``: seconds
        for the whole stream (default: no limit); ``item_timeout``: seconds
        at most waiting for the next item. ``meta`` as for :meth:`call`.
        See :class:`Stream` for its ends; ``aclose()`` (or ``async with``)
        cancels it."""
        return Stream(
            self,
            method,
            payload,
            window=window,
            meta=meta,
            input=input,
            timeout=timeout,
            item_timeout=item_timeout,
        )

    async def close(self) -> None:
        """Closes the connection. Outside a handler, waits until it has ended
        (running handlers may finish: 10 s at most); inside one, returns at once."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()
        if self._loop_task is None or asyncio.current_task() in self._handlers:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._loop_task), SHUTDOWN_GRACE + 1)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass

    async def wait_closed(self) -> None:
        """Waits until the connection has ended."""
        await self._closed.wait()

    # -- the connection --------------------------------------------------

    def _log_packet(
        self,
        what: str,
        packet: MessagePacket,
        reply_to: Optional[ReplyTo],
        timeout_ms: Optional[int],
    ) -> None:
        """A ``Send:`` or ``Received:`` line, as ``STREAM_RPC_LOG_PACKETS`` says,
        within the connection's packet lines a second."""
        if self._log_mode == "off" or not self.logger.isEnabledFor(logging.INFO):
            return
        if self._lines.allow("packet lines"):
            shown = _shown_packet(packet, reply_to, timeout_ms, self._log_mode == "full")
            self.logger.info("%s: %s", what, shown)

    async def _send(
        self,
        packet: MessagePacket,
        reply_to: Optional[ReplyTo],
        timeout_ms: Optional[int],
    ) -> None:
        plain = _wire.encode(packet, reply_to, timeout_ms)
        if len(plain) > MAX_FRAME:
            raise ValueError(f"the packet is longer than a frame may be ({MAX_FRAME} bytes)")
        if packet.peer == self.peer_id:
            self.connector._note_id(packet.id)
        token = self.connector._seal(plain)
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionError("the connection is closed")
        async with self._write_lock:
            self._log_packet("Send", packet, reply_to, timeout_ms)
            writer.write(token + self.connector.terminator)
            try:
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            except asyncio.TimeoutError:
                writer.close()
                raise ConnectionError("the peer does not read: write timed out") from None
            # A cancellation asyncio.wait_for swallowed (Python 3.11, when the
            # write completed at that moment) is not lost.
            cancelling = getattr(asyncio.current_task(), "cancelling", None)
            if cancelling is not None and cancelling():
                raise asyncio.CancelledError

    async def _send_stream(self, method: str, address: Dict[str, Any], payload: Any) -> None:
        """Sends a stream packet (``stream.item`` and the others)."""
        packet = self.create_message_packet(method, payload)._replace(stream=address)
        await self._send(packet, None, None)

    async def _send_error(self, error: RemoteError, reply_to: Optional[ReplyTo]) -> None:
        packet = self.create_message_packet("error", error.payload())
        self.request_number += 1
        try:
            await self._send(packet, reply_to, None)
        except (ConnectionError, ValueError) as e:
            self.logger.warning("could not send an error packet: %s", e)

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: bool):
        """Reads frames until the connection ends, then lets the handlers finish."""
        self._reader, self._writer = reader, writer
        try:
            await self._read_loop(reader, server)
        except (ConnectionError, OSError) as e:
            self.logger.info("connection lost: %s", e)
        finally:
            # Streams end at once: their handlers are dropped, not waited for.
            self._streams.close_all()
            if self._handlers:
                await asyncio.wait(set(self._handlers), timeout=SHUTDOWN_GRACE)
            for task in list(self._handlers):
                task.cancel()
            self._inbox.clear()
            self._served.clear()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection lost"))
            if not writer.is_closing():
                writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self._lines.flush()
            self._closed.set()

    def _refused(self, kind: str) -> bool:
        """Whether a refusal of ``kind`` may be logged now: at most one a
        second per kind for the whole connector, the rest counted (a flood of
        bad input on many connections cannot flood the log)."""
        return self.connector._refusals.allow(kind, logging.WARNING)

    def _bad_frame(self, bad_in_row: int) -> bool:
        """Whether ``bad_in_row`` bad frames close the connection (logged)."""
        if bad_in_row >= MAX_BAD_FRAMES:
            if self._refused("connections closed after bad frames"):
                self.logger.warning("closing after %d bad frames in a row", bad_in_row)
            return True
        return False

    async def _read_loop(self, reader: asyncio.StreamReader, server: bool) -> None:
        """Reads and handles frames. Both deadlines are absolute: a server's
        connection must bring a frame that opens under the key within
        ``FIRST_FRAME_TIMEOUT`` of its start, and any connection one within
        ``IDLE_TIMEOUT`` of the last (unless a handler runs or a call waits).
        Bytes that make no such frame (a byte at a time, garbage, frames under
        another key, replays) extend neither."""
        loop = asyncio.get_running_loop()
        frames = _Frames(self.connector.terminator, MAX_FRAME)
        bad_in_row = 0
        started = loop.time()
        first_deadline: Optional[float] = started + FIRST_FRAME_TIMEOUT if server else None
        idle_deadline = started + IDLE_TIMEOUT
        while True:
            # Whole frames in the buffer first.
            while True:
                frame = frames.next_frame()
                if frame is None:
                    break
                if await self._on_frame(frame):
                    bad_in_row = 0
                    first_deadline = None
                    idle_deadline = loop.time() + IDLE_TIMEOUT
                else:
                    bad_in_row += 1
                    if self._bad_frame(bad_in_row):
                        return
            if frames.over_long():
                # Counted once, then discarded up to the next terminator.
                if self._refused("frames over the length limit"):
                    self.logger.warning("dropped a frame longer than %d bytes", MAX_FRAME)
                bad_in_row += 1
                if self._bad_frame(bad_in_row):
                    return
            deadline = idle_deadline if first_deadline is None else first_deadline
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(reader.read(1 << 16), left)
            except asyncio.TimeoutError:
                if first_deadline is not None:
                    if self._refused("connections with no frame under the key in time"):
                        self.logger.warning(
                            "no frame that opens under the key within %.0f s; closing",
                            FIRST_FRAME_TIMEOUT,
                        )
                    return
                if self._handlers or self._pending or self._inbox or self._streams.busy():
                    idle_deadline = loop.time() + IDLE_TIMEOUT
                    continue
                self.logger.info("idle for %.0f s; closing", IDLE_TIMEOUT)
                return
            if not chunk:
                if frames.partial():
                    self.logger.warning("peer disconnected mid-frame")
                return
            frames.feed(chunk)

    async def _on_frame(self, frame: bytes) -> bool:
        """Handles one frame; whether it was a good frame (it opened under the
        key and passed the replay check)."""
        connector = self.connector
        try:
            plain, stamp = connector._open(frame)
        except TokenError as e:
            if self._refused("frames that failed to decrypt"):
                self.logger.warning("dropped a frame that failed to decrypt: %s", e.reason)
            return False
        refused = connector._replay.received(_replay.fingerprint(frame, connector._fernet), stamp)
        if refused is not None:
            if self._refused("frames refused by the replay check"):
                self.logger.warning("dropped %s", refused)
            return False
        try:
            packet, reply_to, timeout_ms = _wire.decode(plain)
        except InvalidPacket as e:
            if self._refused("invalid packets"):
                self.logger.warning("received an invalid packet: %s", e.reason)
            is_frame = e.method in _streams.PACKET_METHODS or e.method == CALL_CANCEL
            if not e.is_reply and not e.is_error and not is_frame:
                error = RemoteError("invalid_packet", e.reason, method=e.method)
                await self._send_error(error, e.reply_address)
            return e.method != CALL_CANCEL
        if packet.method == CALL_CANCEL:
            self._log_packet("Received", packet, reply_to, timeout_ms)
            return self._on_call_cancel(packet, reply_to)
        self._dispatch(packet, reply_to, timeout_ms, len(plain))
        return True

    def _dispatch(
        self,
        packet: MessagePacket,
        reply_to: Optional[ReplyTo],
        timeout_ms: Optional[int],
        size: int = 0,
    ) -> None:
        if reply_to is not None and reply_to.peer == self.peer_id:
            future = self._pending.get(reply_to.id)
            if future is not None and not future.done():
                self._log_packet("Received", packet, reply_to, timeout_ms)
                future.set_result(packet)
                return
            if self._streams.on_reply(packet, reply_to):
                self._log_packet("Received", packet, reply_to, timeout_ms)
                return
        answerable = reply_to is None and packet.method != "error"
        if answerable and self._stream_packet(packet, timeout_ms, size):
            return
        address = ReplyTo(packet.peer, packet.id) if answerable else None
        # Handled one at a time, the packet being handled stays first in the
        # inbox: the task that handles them in turn is not counted again.
        load = len(self._handlers) + len(self._inbox)
        if self._inbox_task is not None and self._inbox_task in self._handlers:
            load -= 1
        if load >= MAX_HANDLERS:
            self._log_packet("Received", packet, reply_to, timeout_ms)
            if self._lines.allow("packet lines", logging.WARNING):
                self.logger.warning(
                    "busy: %d handlers running or waiting; %s refused",
                    MAX_HANDLERS,
                    _shown(packet.method),
                )
            if answerable:
                busy = RemoteError(
                    "busy", f"{MAX_HANDLERS} handlers already running", method=packet.method
                )
                self._spawn(self._send_error(busy, address))
            return
        loop = asyncio.get_running_loop()
        # The caller's limit counts from when the request arrived.
        limit = loop.time() + timeout_ms / 1000 if (answerable and timeout_ms is not None) else None
        cancellation = asyncio.Event()
        if address is not None:
            self._served[(address.peer, address.id)] = cancellation
        if not self._concurrent:
            self._inbox.append(_Waiting(packet, reply_to, timeout_ms, address, limit))
            if self._inbox_task is None or self._inbox_task.done():
                self._inbox_task = loop.create_task(self._handle_in_turn())
                self._handlers.add(self._inbox_task)
                self._inbox_task.add_done_callback(self._handlers.discard)
            return
        self._log_packet("Received", packet, reply_to, timeout_ms)
        # The handler's task copies this context, in which `send_message`
        # finds the request it answers (and `current_meta` its metadata).
        context = contextvars.copy_context()
        context.run(_answering.set, address)
        context.run(_meta.set_current, packet.meta if answerable else None)
        context.run(_cancellation.set, cancellation)
        task = context.run(loop.create_task, self._handle(packet, address, limit))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _stream_packet(self, packet: MessagePacket, timeout_ms: Optional[int], size: int) -> bool:
        """A request that is a stream packet, a stream's open, or a plain call
        to a stream method (refused ``stream_required``): handled here, never
        by ``process_message``; whether it was one."""
        method = packet.method
        if method in _streams.PACKET_METHODS:
            self._log_packet("Received", packet, None, None)
            self._streams.on_stream_packet(packet, size)
            return True
        spec = self._stream_methods.get(method)
        if packet.stream is None and spec is None:
            return False
        self._log_packet("Received", packet, None, timeout_ms)
        address = ReplyTo(packet.peer, packet.id)
        if packet.stream is None:
            if self._refused("plain calls to stream methods"):
                self.logger.warning("%s is a stream method; a plain call refused", _shown(method))
            required = RemoteError(
                "stream_required", f"`{method}` is a stream method: open a stream", method=method
            )
            self._spawn(self._send_error(required, address))
            return True
        loop = asyncio.get_running_loop()
        limit = None if timeout_ms is None else loop.time() + timeout_ms / 1000
        # The handler's context: `send_message` sends new requests (the stream
        # ends with its own reply), `current_meta` gives the open's metadata.
        context = contextvars.copy_context()
        context.run(_answering.set, None)
        context.run(_meta.set_current, packet.meta)
        self._streams.on_open(packet, spec, limit, context)
        return True

    async def _handle_in_turn(self) -> None:
        """Handles the waiting packets one at a time, in order, until none is
        left (or this side closed the connection)."""
        while self._inbox:
            if self._writer is not None and self._writer.is_closing():
                self._inbox.clear()
                return
            waiting = self._inbox[0]
            # This task's own context: what `send_message` answers, for this packet.
            _answering.set(waiting.address)
            _meta.set_current(waiting.packet.meta if waiting.address is not None else None)
            address = waiting.address
            served = None if address is None else self._served.get((address.peer, address.id))
            _cancellation.set(served)
            self._log_packet("Received", waiting.packet, waiting.reply_to, waiting.timeout_ms)
            try:
                await self._handle(waiting.packet, waiting.address, waiting.limit)
            finally:
                if self._inbox and self._inbox[0] is waiting:
                    self._inbox.popleft()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(
        self, packet: MessagePacket, address: Optional[ReplyTo], limit: Optional[float]
    ) -> None:
        left = None if limit is None else limit - asyncio.get_running_loop().time()
        key = None if address is None else (address.peer, address.id)
        cancellation = None if key is None else self._served.get(key)
        try:
            if left is not None and left <= 0:
                raise asyncio.TimeoutError
            await asyncio.wait_for(self.process_message(packet), left)
        except asyncio.TimeoutError:
            if left is None:
                raise
            if self._lines.allow("packet lines", logging.WARNING):
                self.logger.warning(
                    "%s outlived its caller's timeout; dropped", _shown(packet.method)
                )
        except RemoteError as e:
            if address is not None:
                await self._send_error(e, address)
            else:
                self.logger.warning("%s: %s", _shown(packet.method), _shown(e))
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._lines.allow("packet lines", logging.WARNING):
                self.logger.exception("process_message failed on %s", _shown(packet.method))
            if address is not None:
                error = RemoteError(
                    "handler_error", f"`{packet.method}` failed", method=packet.method
                )
                await self._send_error(error, address)
        finally:
            if key is not None and self._served.get(key) is cancellation:
                del self._served[key]


def _check_terminator(term: bytes) -> bytes:
    term = bytes(term)
    if not 1 <= len(term) <= 16 or any(chr(b).isalnum() or chr(b) in "-_=" for b in term):
        raise ValueError(
            "STREAM_RPC_TERM must be 1 to 16 bytes without letters, digits, '-', '_' or '='"
        )
    return term


def _check_port(port: Union[int, str]) -> int:
    try:
        number = int(port)
    except (TypeError, ValueError):
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"STREAM_RPC_PORT must be a port number from 0 to 65535, got {port!r}")
    return number


def _check_per_ip(value: Union[int, str]) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(
            f"STREAM_RPC_MAX_CONNECTIONS_PER_IP must be a whole number from 1 up, got {value!r}"
        )
    return number


def _check_log_packets(value: str) -> str:
    mode = str(value).strip().lower()
    if mode not in _PACKET_LOG_MODES:
        raise ValueError(f"STREAM_RPC_LOG_PACKETS must be off, headers or full, got {value!r}")
    return mode


def _check_flag(name: str, value: str) -> bool:
    flag = str(value).strip().lower()
    if flag in _TRUE:
        return True
    if flag in _FALSE:
        return False
    raise ValueError(f"{name} must be 1, true, yes, on, 0, false, no or off, got {value!r}")


class Connector:
    """Runs a protocol as a server or as a client, as the original's connector.

    ``Connector(Worker)`` reads the module's settings now; ``.peer_id`` is
    this endpoint's UUID (every connection it opens or accepts uses it),
    ``.logger`` its logger. It numbers the packets its protocols create with
    one counter, from 0, over all its connections. :meth:`run_server` listens; :meth:`run_client`
    connects, says hello and hands every packet to the protocol;
    :meth:`connect` gives a connected protocol to make calls with.
    """

    def __init__(
        self,
        protocol_class: Type[Protocol],
        stream_rpc_host: Optional[str] = None,
        stream_rpc_port: Optional[Union[int, str]] = None,
        *,
        cypher: Any = None,
        terminator: Optional[bytes] = None,
    ) -> None:
        self.protocol_class = protocol_class
        self.host = STREAM_RPC_HOST if stream_rpc_host is None else stream_rpc_host
        self.port = _check_port(STREAM_RPC_PORT if stream_rpc_port is None else stream_rpc_port)
        self.terminator = _check_terminator(STREAM_RPC_TERM if terminator is None else terminator)
        self._cypher = cypher if cypher is not None else STREAM_RPC_CYPHER()
        self._fernet = isinstance(self._cypher, Cypher)
        ttl = self._cypher.ttl if self._fernet else TOKEN_TTL
        window = (ttl if ttl is not None else 3600) + 60
        self._replay = _replay.ReplayStore(window)
        self.peer_id = str(uuid.uuid4())
        level = logging.getLevelName(str(STREAM_RPC_LOG_LVL).upper())
        if not isinstance(level, int):
            raise ValueError(f"STREAM_RPC_LOG_LVL is not a log level: {STREAM_RPC_LOG_LVL!r}")
        logging.basicConfig(format=STREAM_RPC_LOG_FMT, level=level)
        self.logger: logging.LoggerAdapter = _PeerAdapter(
            logging.getLogger(protocol_class.__name__), {"peer_id": self.peer_id}
        )
        self.log_packets = _check_log_packets(STREAM_RPC_LOG_PACKETS)
        self.concurrent_handlers = _check_flag(
            "STREAM_RPC_CONCURRENT_HANDLERS", STREAM_RPC_CONCURRENT_HANDLERS
        )
        self.max_connections_per_ip = _check_per_ip(STREAM_RPC_MAX_CONNECTIONS_PER_IP)
        self.server: Optional[asyncio.AbstractServer] = None
        self._connections = 0
        self._by_address: Dict[str, int] = {}
        self._refusals = _Throttle(self.logger, 1, REFUSAL_LOG_INTERVAL)
        # The id of the next packet this endpoint creates (PROTOCOL.md §4).
        self._next_id = 0

    def _take_id(self) -> int:
        """The next packet id, taken at once (nothing awaits in between)."""
        ident = self._next_id
        self._next_id += 1
        return ident

    def _note_id(self, ident: int) -> None:
        """An id this endpoint sends in a packet of its own it numbered itself
        (with the module's ``create_message_packet``): never taken again."""
        if type(ident) is int and ident >= self._next_id:
            self._next_id = ident + 1

    def _seal(self, plain: bytes) -> bytes:
        """A token of ``plain``, remembered as sent (so that it is refused if
        reflected back)."""
        if self._fernet:
            now = int(time.time())
            token: bytes = self._cypher.encrypt_at(plain, now)
            self._replay.sent(_replay.fingerprint(token, True), now)
        else:
            token = self._cypher.encrypt(plain)
            self._replay.sent(_replay.fingerprint(token, False), None)
        return token

    def _open(self, token: bytes) -> Tuple[bytes, Optional[int]]:
        if self._fernet:
            plain, stamp = self._cypher.open(token)
            return plain, stamp
        try:
            return self._cypher.decrypt(token), None
        except Exception as e:  # a replacement cipher's own error
            raise TokenError(f"the cipher refused it: {e}") from None

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else str(peer)
        if self._connections >= MAX_CONNECTIONS:
            if self._refusals.allow("connections refused (server full)", logging.WARNING):
                self.logger.warning(
                    "%d connections already served; one from %s closed", MAX_CONNECTIONS, address
                )
            writer.close()
            return
        if self._by_address.get(address, 0) >= self.max_connections_per_ip:
            if self._refusals.allow("connections refused (per-address cap)", logging.WARNING):
                self.logger.warning(
                    "%d connections from %s already served (STREAM_RPC_MAX_CONNECTIONS_PER_IP); "
                    "one more closed",
                    self.max_connections_per_ip,
                    address,
                )
            writer.close()
            return
        self._connections += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        try:
            protocol = self.protocol_class(self)
            await protocol._run(reader, writer, server=True)
        finally:
            self._connections -= 1
            left = self._by_address.pop(address, 1) - 1
            if left > 0:
                self._by_address[address] = left

    async def start_server(self) -> asyncio.AbstractServer:
        """Listens on the host and port, and returns the server (``.sockets`` tells
        the port when it was 0); every connection gets its own protocol."""
        self.server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, limit=1 << 16
        )
        port = self.server.sockets[0].getsockname()[1]
        self.logger.info("Start Stream-RPC server, listen on %s:%s", self.host, port)
        return self.server

    async def run_server(self) -> None:
        """Listens and serves until cancelled."""
        server = await self.start_server()
        async with server:
            await server.serve_forever()

    async def connect(self) -> Protocol:
        """Connects and returns the protocol, its packets handled in the background.

        Raises ``ConnectionRefusedError`` when nobody listens.
        """
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 16)
        protocol = self.protocol_class(self)
        protocol._reader, protocol._writer = reader, writer
        loop = asyncio.get_running_loop()
        protocol._loop_task = loop.create_task(protocol._run(reader, writer, server=False))
        return protocol

    async def run_client(self, hello_packet: MessagePacket) -> None:
        """Connects, sends ``hello_packet``, then hands every packet received to
        ``process_message`` until the connection ends.

        A hello of this connector's own peer id whose id was already taken
        (the original's ``create_message_packet(connector.peer_id, 0, "ping")``
        on a second connection) is sent with the next id instead."""
        taken = isinstance(hello_packet.id, int) and hello_packet.id < self._next_id
        if hello_packet.peer == self.peer_id and taken:
            hello_packet = hello_packet._replace(id=self._take_id())
        protocol = await self.connect()
        await protocol.send_message(hello_packet)
        await protocol._closed.wait()
