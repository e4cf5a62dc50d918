"""The original ``stream_rpc`` API: packets, protocols and the connector.

Subclass :class:`Protocol`, define ``async def process_message(self,
message_packet)``, and run it with a :class:`Connector`, as with the
original; the packets are the JSON packets of ``docs/PROTOCOL.md``, so the
peer on the other side may be the Rust implementation.

Settings are module attributes, read from the environment at import
(``STREAM_RPC_HOST``, ``STREAM_RPC_PORT``, ``STREAM_RPC_LOG_LVL``) or set in
code (``STREAM_RPC_TERM``, ``STREAM_RPC_CYPHER``, ``STREAM_RPC_LOG_FMT``);
a connector reads them when it is created.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import logging
import os
import time
import uuid
from typing import Any, Dict, Optional, Set, Tuple, Type, Union

from . import _replay, _wire
from ._wire import InvalidPacket, MessagePacket, ReplyTo
from .crypto import TOKEN_TTL, Cypher, TokenError

__all__ = [
    "Connector",
    "MessagePacket",
    "Protocol",
    "RemoteError",
    "ReplyTo",
    "create_message_packet",
    "STREAM_RPC_CYPHER",
    "STREAM_RPC_HOST",
    "STREAM_RPC_LOG_FMT",
    "STREAM_RPC_LOG_LVL",
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
#: Handlers running at once on one connection.
MAX_HANDLERS = 256
#: Seconds a client has to send its first frame to a server.
FIRST_FRAME_TIMEOUT = 10.0
#: Seconds without a frame (and with nothing running or awaited) that close a connection.
IDLE_TIMEOUT = 300.0
#: Seconds one write may take.
WRITE_TIMEOUT = 10.0
#: Seconds the handlers of a closing connection may go on.
SHUTDOWN_GRACE = 10.0
#: Seconds a call waits for its reply by default.
CALL_TIMEOUT = 30.0

# The request being answered by the running handler: what `send_message`
# addresses its packets to (None while handling a reply or an error packet).
_answering: contextvars.ContextVar[Optional[ReplyTo]] = contextvars.ContextVar(
    "stream_rpc_answering", default=None
)


def create_message_packet(
    peer_id: str, request_number: int, method: str, payload: Any = None
) -> MessagePacket:
    """A packet created now, in UTC; a missing payload is ``{}``."""
    return MessagePacket(
        peer=str(peer_id),
        id=request_number,
        created_at=datetime.datetime.now(datetime.timezone.utc),
        method=method,
        payload={} if payload is None else payload,
    )


class RemoteError(Exception):
    """An error packet (PROTOCOL.md §6).

    Raised by :meth:`Protocol.call` when the answer is one; raise it in
    ``process_message`` to answer the request being handled with one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        data: Any = None,
        method: Optional[str] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data
        self.method = method

    def payload(self) -> Dict[str, Any]:
        """The error packet's payload."""
        body: Dict[str, Any] = {"code": self.code, "message": self.message}
        if self.method is not None:
            body["method"] = self.method
        if self.data is not None:
            body["data"] = self.data
        return body


class _PeerAdapter(logging.LoggerAdapter):
    """Prefixes each message with the peer id, as the original's log lines."""

    def process(self, msg: Any, kwargs: Any) -> Tuple[Any, Any]:
        return f"[{self.extra['peer_id']}] {msg}", kwargs  # type: ignore[index]


class Protocol:
    """One side of one connection; subclass it and define :meth:`process_message`.

    Inside, as in the original: :meth:`create_message_packet`,
    :meth:`send_message`, ``self.logger``, ``self.peer_id`` and
    ``self.request_number`` (from 1, one up for each message this side
    sends). Added: :meth:`call` (a request awaiting its reply), :meth:`notify`
    and :meth:`close`.

    Every received packet goes to ``process_message``, except replies that
    complete a :meth:`call`. A packet sent while handling a request is its
    reply (it carries ``reply_to``); a packet sent while handling a reply,
    or outside any handler, is a new request. Handlers run concurrently (up
    to 256 per connection; more are answered ``busy``). An exception in
    ``process_message`` answers the request with an error packet:
    :class:`RemoteError` as it is, anything else as ``handler_error``
    "`method` failed" (the text goes to the log only).
    """

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

    async def process_message(self, message_packet: MessagePacket) -> None:
        """Handles one received packet; the default logs and ignores it."""
        self.logger.warning("no process_message: %s ignored", message_packet.method)

    def create_message_packet(self, method: str, payload: Any = None) -> MessagePacket:
        """A packet of this side's peer id and current request number."""
        return create_message_packet(self.peer_id, self.request_number, method, payload)

    async def send_message(self, message_packet: MessagePacket) -> None:
        """Sends a packet (a reply while handling a request) and counts the request number up.

        Returns once the packet is written; raises ``ValueError`` for a
        payload the peers would refuse and ``ConnectionError`` when the
        connection is closed.
        """
        await self._send(message_packet, _answering.get(), None)
        self.request_number += 1

    async def notify(self, method: str, payload: Any = None) -> None:
        """Sends a new request and waits for nothing (a typed service's method
        that returns nothing)."""
        packet = self.create_message_packet(method, payload)
        self.request_number += 1
        await self._send(packet, None, None)

    async def call(
        self, method: str, payload: Any = None, timeout: Optional[float] = CALL_TIMEOUT
    ) -> MessagePacket:
        """Sends a request and returns its reply; raises :class:`RemoteError` for
        an error packet, ``asyncio.TimeoutError`` after ``timeout`` seconds and
        ``ConnectionError`` when the connection closes first."""
        async with self._call_slots:
            packet = self.create_message_packet(method, payload)
            self.request_number += 1
            future: asyncio.Future = asyncio.get_running_loop().create_future()
            self._pending[packet.id] = future
            try:
                timeout_ms = None if timeout is None else max(1, int(timeout * 1000))
                await self._send(packet, None, timeout_ms)
                reply: MessagePacket = await asyncio.wait_for(future, timeout)
            finally:
                self._pending.pop(packet.id, None)
        if reply.method == "error":
            body = reply.payload if isinstance(reply.payload, dict) else {}
            raise RemoteError(
                str(body.get("code", "unknown")),
                str(body.get("message", "")),
                body.get("data"),
                body.get("method"),
            )
        return reply

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

    async def _send(
        self,
        packet: MessagePacket,
        reply_to: Optional[ReplyTo],
        timeout_ms: Optional[int],
    ) -> None:
        plain = _wire.encode(packet, reply_to, timeout_ms)
        if len(plain) > MAX_FRAME:
            raise ValueError(f"the packet is longer than a frame may be ({MAX_FRAME} bytes)")
        token = self.connector._seal(plain)
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectionError("the connection is closed")
        async with self._write_lock:
            self.logger.info("Send: %s", packet)
            writer.write(token + self.connector.terminator)
            try:
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            except asyncio.TimeoutError:
                writer.close()
                raise ConnectionError("the peer does not read: write timed out") from None

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
            if self._handlers:
                await asyncio.wait(set(self._handlers), timeout=SHUTDOWN_GRACE)
            for task in list(self._handlers):
                task.cancel()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection lost"))
            if not writer.is_closing():
                writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self._closed.set()

    async def _read_loop(self, reader: asyncio.StreamReader, server: bool) -> None:
        term = self.connector.terminator
        buffer = bytearray()
        skipping = False
        bad_in_row = 0
        first = server
        while True:
            # Whole frames in the buffer first.
            while True:
                end = buffer.find(term)
                if end < 0:
                    break
                frame = bytes(buffer[:end])
                del buffer[: end + len(term)]
                if skipping:
                    skipping = False
                    continue
                if frame.endswith(b"\r"):
                    frame = frame[:-1]
                if not frame:
                    continue
                first = False
                if await self._on_frame(frame):
                    bad_in_row = 0
                else:
                    bad_in_row += 1
                    if bad_in_row >= MAX_BAD_FRAMES:
                        self.logger.warning("closing after %d bad frames in a row", bad_in_row)
                        return
            if len(buffer) > MAX_FRAME + len(term):
                # Over-long: counted once, then discarded up to the next terminator.
                if not skipping:
                    self.logger.warning("dropped a frame longer than %d bytes", MAX_FRAME)
                    bad_in_row += 1
                    if bad_in_row >= MAX_BAD_FRAMES:
                        self.logger.warning("closing after %d bad frames in a row", bad_in_row)
                        return
                skipping = True
                del buffer[: len(buffer) - (len(term) - 1)]
            wait = FIRST_FRAME_TIMEOUT if first else IDLE_TIMEOUT
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 16), wait)
            except asyncio.TimeoutError:
                if first:
                    self.logger.warning("no frame within %.0f s; closing", wait)
                    return
                if self._handlers or self._pending:
                    continue
                self.logger.info("idle for %.0f s; closing", wait)
                return
            if not chunk:
                if buffer and not skipping:
                    self.logger.warning("peer disconnected mid-frame")
                return
            buffer += chunk

    async def _on_frame(self, frame: bytes) -> bool:
        """Handles one frame; whether it was a good frame."""
        connector = self.connector
        try:
            plain, stamp = connector._open(frame)
        except TokenError as e:
            self.logger.warning("dropped a frame that failed to decrypt: %s", e.reason)
            return False
        refused = connector._replay.received(_replay.fingerprint(frame, connector._fernet), stamp)
        if refused is not None:
            self.logger.warning("dropped %s", refused)
            return False
        try:
            packet, reply_to, timeout_ms = _wire.decode(plain)
        except InvalidPacket as e:
            self.logger.warning("received an invalid packet: %s", e.reason)
            if not e.is_reply and not e.is_error:
                error = RemoteError("invalid_packet", e.reason, method=e.method)
                await self._send_error(error, e.reply_address)
            return True
        self._dispatch(packet, reply_to, timeout_ms)
        return True

    def _dispatch(
        self, packet: MessagePacket, reply_to: Optional[ReplyTo], timeout_ms: Optional[int]
    ) -> None:
        if reply_to is not None and reply_to.peer == self.peer_id:
            future = self._pending.get(reply_to.id)
            if future is not None and not future.done():
                self.logger.info("Received: %s", packet)
                future.set_result(packet)
                return
        self.logger.info("Received: %s", packet)
        answerable = reply_to is None and packet.method != "error"
        address = ReplyTo(packet.peer, packet.id) if answerable else None
        if len(self._handlers) >= MAX_HANDLERS:
            self.logger.warning(
                "busy: %d handlers running; %s refused", MAX_HANDLERS, packet.method
            )
            if answerable:
                busy = RemoteError(
                    "busy", f"{MAX_HANDLERS} handlers already running", method=packet.method
                )
                self._spawn(self._send_error(busy, address))
            return
        limit = timeout_ms / 1000 if (answerable and timeout_ms is not None) else None
        # The handler's task copies this context, in which `send_message`
        # finds the request it answers.
        context = contextvars.copy_context()
        context.run(_answering.set, address)
        loop = asyncio.get_running_loop()
        task = context.run(loop.create_task, self._handle(packet, address, limit))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(
        self, packet: MessagePacket, address: Optional[ReplyTo], limit: Optional[float]
    ) -> None:
        try:
            await asyncio.wait_for(self.process_message(packet), limit)
        except asyncio.TimeoutError:
            if limit is None:
                raise
            self.logger.warning("%s outlived its caller's %.3f s; dropped", packet.method, limit)
        except RemoteError as e:
            if address is not None:
                await self._send_error(e, address)
            else:
                self.logger.warning("%s: %s", packet.method, e)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.logger.exception("process_message failed on %s", packet.method)
            if address is not None:
                error = RemoteError(
                    "handler_error", f"`{packet.method}` failed", method=packet.method
                )
                await self._send_error(error, address)


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


class Connector:
    """Runs a protocol as a server or as a client, as the original's connector.

    ``Connector(Worker)`` reads the module's settings now; ``.peer_id`` is
    this endpoint's UUID (every connection it opens or accepts uses it),
    ``.logger`` its logger. :meth:`run_server` listens; :meth:`run_client`
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
        self.server: Optional[asyncio.AbstractServer] = None
        self._connections = 0

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
        if self._connections >= MAX_CONNECTIONS:
            self.logger.warning(
                "%d connections already served; one from %s closed",
                MAX_CONNECTIONS,
                writer.get_extra_info("peername"),
            )
            writer.close()
            return
        self._connections += 1
        try:
            protocol = self.protocol_class(self)
            await protocol._run(reader, writer, server=True)
        finally:
            self._connections -= 1

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
        ``process_message`` until the connection ends."""
        protocol = await self.connect()
        await protocol.send_message(hello_packet)
        await protocol._closed.wait()
