"""The worker of typed tasks (PROTOCOL.md §"Tasks"): a client connection that
serves its tasks, says ``task.subscribe``, and is pushed each task as a call
(its reply is the task's ack); drains on SIGTERM and SIGINT.

Internal: the public names are in :mod:`stream_rpc.tasks`.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import signal
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Set,
    Tuple,
    Type,
    Union,
)

from . import common
from ._errors import RemoteError
from ._wire import MessagePacket, packet_object

#: The most tasks one worker runs at once (the handlers a connection runs).
MAX_CONCURRENCY = 256
#: The most methods one worker subscribes to.
MAX_METHODS = 256
#: Seconds ``task.subscribe`` and ``task.unsubscribe`` may take.
SUBSCRIBE_TIMEOUT = 10.0
#: Seconds a connection attempt may take.
CONNECT_TIMEOUT = 10.0
#: Seconds between reconnection attempts: the first wait, and the longest.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 5.0

_TASK_ATTRIBUTE = "__stream_rpc_task__"

_current: contextvars.ContextVar[Optional[TaskContext]] = contextvars.ContextVar(
    "stream_rpc_task", default=None
)

TaskFunction = Callable[..., Awaitable[Any]]


def task(function: Any = None, *, name: Optional[str] = None) -> Any:
    """Marks an ``async def`` as a task (its method name is the function's,
    or ``name``): ``@task`` or ``@task(name="parse")``, on a plain function
    or on a class's method. A :class:`Worker` given the function or an
    object of the class serves it."""

    def mark(fn: Any) -> Any:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"a task is an async def; {fn!r} is not")
        setattr(fn, _TASK_ATTRIBUTE, name or fn.__name__)
        return fn

    return mark if function is None else mark(function)


class TaskContext(NamedTuple):
    """The task a worker's handler runs: :func:`current_task` inside it."""

    #: The task's name, ``PEER:ID`` (metadata ``task-id``).
    id: str
    #: Its method.
    method: str
    #: Which attempt this is, from 1 (metadata ``task-attempt``).
    attempt: int
    #: The call's metadata.
    meta: Mapping[str, str]
    #: Set when the task is cancelled while it runs (the server sends
    #: ``call.cancel``): the handler should stop and return.
    cancelled: asyncio.Event

    def is_cancelled(self) -> bool:
        """Whether the task was cancelled while it runs."""
        return self.cancelled.is_set()


def current_task() -> Optional[TaskContext]:
    """The task the running handler works on (``None`` outside a task)."""
    return _current.get()


class WorkerReport(NamedTuple):
    """What a worker did, counted from its own replies."""

    #: Tasks answered with a result (their acks).
    done: int
    #: Tasks answered with an error.
    failed: int
    #: Tasks whose cancellation came while they ran.
    cancelled: int
    #: Tasks left unanswered: stopped at the end of the grace period (the
    #: server gives them back when the connection closes), dropped past
    #: their attempt's limit (the server counts a failed attempt), or whose
    #: answer could not be sent.
    given_back: int


def _collect(services: Iterable[Any]) -> Dict[str, TaskFunction]:
    """The tasks of ``services`` (functions marked or not, objects whose
    class marks methods with :func:`task`), by method name."""
    found: Dict[str, TaskFunction] = {}
    for service in services:
        if (
            callable(service)
            and not isinstance(service, type)
            and inspect.iscoroutinefunction(service)
        ):
            pairs = [(getattr(service, _TASK_ATTRIBUTE, service.__name__), service)]
        else:
            pairs = []
            for attribute in dir(type(service)):
                marked = getattr(getattr(type(service), attribute, None), _TASK_ATTRIBUTE, None)
                if marked is not None:
                    pairs.append((marked, getattr(service, attribute)))
            if not pairs:
                raise TypeError(f"{service!r} has no method marked @task")
        for method, function in pairs:
            if method in found:
                raise ValueError(f"two tasks are named {method!r}")
            found[method] = function
    return found


def _arguments(function: TaskFunction, method: str, payload: Any) -> Tuple[list, dict]:
    """The arguments of a task from its payload, as a typed service reads them:
    none (payload ignored), one (the whole payload), several (an object by
    name, a missing one ``None``). Raises ``invalid_payload``."""
    parameters = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if isinstance(payload, MessagePacket):  # a payload that looks like a packet
        payload = packet_object(payload)
    if not parameters:
        return [], {}
    if len(parameters) == 1:
        return [payload], {}
    if not isinstance(payload, dict):
        raise RemoteError(
            "invalid_payload", f"`{method}` takes an object of its arguments", method=method
        )
    # A missing key reads as null (as a typed service reads it), unless the
    # parameter has a default.
    args: Dict[str, Any] = {}
    for p in parameters:
        if p.name in payload:
            args[p.name] = payload[p.name]
        elif p.default is p.empty:
            args[p.name] = None
    return [], args


def _servers(servers: Any, host: Optional[str], port: Any) -> List[Tuple[str, Any]]:
    """The servers a worker connects to, in failover order: ``servers`` (a list
    of ``host:port`` or ``(host, port)``), else ``STREAM_RPC_SERVERS``
    (``host:port,host:port``), else ``host`` and ``port`` as a connector's."""
    if servers is None and host is None and port is None:
        text = os.environ.get("STREAM_RPC_SERVERS", "").strip()
        servers = [part.strip() for part in text.split(",") if part.strip()] or None
    if servers is None:
        return [(host if host is not None else common.STREAM_RPC_HOST, port)]
    found: List[Tuple[str, Any]] = []
    for server in servers:
        if isinstance(server, str):
            name, sep, number = server.rpartition(":")
            if not sep:
                raise ValueError(f"{server!r} is not host:port")
            found.append((name.strip("[]"), number))
        else:
            name, number = server
            found.append((name, number))
    if not found:
        raise ValueError("a worker needs at least one server")
    return found


class _Serving(common.Protocol):
    """A worker's connection: every request is a task pushed by the server."""

    concurrent_handlers = True
    worker: Worker

    async def process_message(self, message_packet: MessagePacket) -> None:
        if common._answering.get() is None:
            self.logger.debug("ignored %s: not a task", message_packet.method[:64])
            return
        await self.worker._run_task(self, message_packet)


class Worker:
    """Runs tasks pushed by a queue server: ``Worker(*services)``, each a
    function or an object whose class marks ``async def`` methods with
    :func:`task` (:meth:`register` adds more).

    ``concurrency``: tasks run at once (the server pushes no more; 1 to
    256, default 8). ``grace``: seconds running tasks may finish after the
    stop (default 30). ``methods``: a subset of the tasks to take.
    ``servers``, ``host``, ``port``, ``cypher``: where to connect (default:
    ``STREAM_RPC_SERVERS``, else ``STREAM_RPC_HOST``/``STREAM_RPC_PORT`` as a
    :class:`Connector`'s) and the key's cypher (default the module's).
    """

    def __init__(
        self,
        *services: Any,
        concurrency: int = 8,
        grace: float = 30.0,
        methods: Optional[Iterable[str]] = None,
        servers: Optional[Iterable[Union[str, Tuple[str, Any]]]] = None,
        host: Optional[str] = None,
        port: Optional[Union[int, str]] = None,
        cypher: Any = None,
    ) -> None:
        if type(concurrency) is not int or not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency is {concurrency!r}: give 1 to {MAX_CONCURRENCY}")
        if not grace >= 0:
            raise ValueError(f"grace is {grace!r}: give seconds from 0 up")
        self._tasks = _collect(services)
        self._only = None if methods is None else list(methods)
        unknown = sorted(set(self._only or ()) - set(self._tasks))
        if unknown:
            raise ValueError(f"no task named {unknown[0]!r} to take")
        self.concurrency = concurrency
        self.grace = float(grace)
        self._servers = _servers(servers, host, port)
        self._cypher = cypher
        self.logger = logging.getLogger("stream_rpc.tasks")
        self._counts = {"done": 0, "failed": 0, "cancelled": 0, "given_back": 0}
        self._running: Set[asyncio.Task] = set()
        self._subscribed: Optional[asyncio.Event] = None
        #: Times this worker subscribed (once per connection).
        self.subscriptions = 0

    def register(self, function: TaskFunction, name: Optional[str] = None) -> None:
        """Adds the task ``function`` (an ``async def``) as method ``name``
        (default: its mark or its name)."""
        method = name or getattr(function, _TASK_ATTRIBUTE, None) or function.__name__
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"a task is an async def; {function!r} is not")
        if method in self._tasks:
            raise ValueError(f"two tasks are named {method!r}")
        self._tasks[method] = function

    @property
    def methods(self) -> List[str]:
        """The methods this worker takes."""
        chosen = self._tasks if self._only is None else self._only
        return sorted(m for m in chosen if m in self._tasks)

    def report(self) -> WorkerReport:
        """What it did so far."""
        return WorkerReport(**self._counts)

    async def wait_subscribed(self) -> None:
        """Waits until the worker has subscribed (on a connection) since the
        last call."""
        if self._subscribed is None:
            self._subscribed = asyncio.Event()
        await self._subscribed.wait()
        self._subscribed.clear()

    async def _run_task(self, protocol: common.Protocol, packet: MessagePacket) -> None:
        method = packet.method
        function = self._tasks.get(method)
        if function is None or method not in self.methods:
            raise RemoteError("unknown_method", f"no task `{method}` here", method=method)
        args, kwargs = _arguments(function, method, packet.payload)
        meta = packet.meta or {}
        attempt = meta.get("task-attempt", "1")
        context = TaskContext(
            id=meta.get("task-id", f"{packet.peer}:{packet.id}"),
            method=method,
            attempt=int(attempt) if attempt.isdigit() else 1,
            meta=dict(meta),
            cancelled=common.current_cancellation(),
        )
        _current.set(context)
        running = asyncio.current_task()
        if running is not None:
            self._running.add(running)
        try:
            result = await function(*args, **kwargs)
        except asyncio.CancelledError:
            self._counts["given_back"] += 1
            raise
        except RemoteError as e:
            self._count_failed(context)
            if e.method is None:
                e.method = method
            raise
        except Exception as e:
            self._count_failed(context)
            self.logger.exception("task %s (%s) failed", context.id, method[:64])
            raise RemoteError(
                "handler_error", f"`{method}` failed ({type(e).__name__})", method=method
            ) from None
        finally:
            if running is not None:
                self._running.discard(running)
        try:
            await protocol.send_message(protocol.create_message_packet(f"{method}.reply", result))
        except (ConnectionError, OSError) as e:
            self._counts["given_back"] += 1
            self.logger.info("task %s: its result could not be sent (%s)", context.id, e)
            return
        self._counts["cancelled" if context.is_cancelled() else "done"] += 1

    def _count_failed(self, context: TaskContext) -> None:
        self._counts["cancelled" if context.is_cancelled() else "failed"] += 1

    async def run(self, stop: Optional[Awaitable[Any]] = None) -> WorkerReport:
        """Connects, subscribes and runs tasks until ``stop`` completes (by
        default: until SIGTERM or SIGINT), reconnecting (to the next server)
        whenever the connection ends; then drains: ``task.unsubscribe``, the
        running tasks get :attr:`grace` seconds, the connection closes and
        the server gives back what was still running.

        Raises :class:`RemoteError` if a server refuses the subscription
        (it serves no tasks, or the methods are refused)."""
        if not self.methods:
            raise ValueError("a worker needs at least one task")
        if len(self.methods) > MAX_METHODS:
            raise ValueError(f"a worker takes at most {MAX_METHODS} methods")
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        watcher = None
        signals: List[signal.Signals] = []
        if stop is not None:

            async def watch() -> None:
                try:
                    await stop
                finally:
                    stopping.set()

            watcher = loop.create_task(watch())
        else:
            for number in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(number, stopping.set)
                    signals.append(number)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        try:
            await self._serve(stopping)
        finally:
            for number in signals:
                loop.remove_signal_handler(number)
            if watcher is not None:
                watcher.cancel()
        return self.report()

    def _connector(self, host: str, port: Any) -> common.Connector:
        serving: Type[_Serving] = type("TaskWorker", (_Serving,), {"worker": self})
        return common.Connector(serving, host, port, cypher=self._cypher)

    async def _serve(self, stopping: asyncio.Event) -> None:
        connectors = [self._connector(host, port) for host, port in self._servers]
        which, pause = 0, RECONNECT_FIRST
        stop_wait = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                connector = connectors[which % len(connectors)]
                where = f"{connector.host}:{connector.port}"
                protocol = await self._subscribe(connector, where)
                if protocol is None:
                    which += 1
                    await asyncio.wait({stop_wait}, timeout=pause)
                    pause = min(RECONNECT_MAX, pause * 2)
                    continue
                pause = RECONNECT_FIRST
                closed = asyncio.ensure_future(protocol.wait_closed())
                await asyncio.wait({closed, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if stopping.is_set():
                    closed.cancel()
                    await self._drain(protocol)
                    return
                self.logger.info("the connection to %s ended; connecting again", where)
                which += 1
        finally:
            stop_wait.cancel()

    async def _subscribe(self, connector: common.Connector, where: str) -> Any:
        """A connection to ``connector``'s server, subscribed; ``None`` if it
        could not be made (logged)."""
        try:
            protocol = await asyncio.wait_for(connector.connect(), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:
            self.logger.warning("could not connect to %s: %s", where, e)
            return None
        body = {"methods": self.methods, "concurrency": self.concurrency}
        try:
            await protocol.call("task.subscribe", body, SUBSCRIBE_TIMEOUT)
        except RemoteError as e:
            await protocol.close()
            if e.code in ("busy", "unavailable"):
                self.logger.warning("%s refused the subscription for now: %s", where, e)
                return None
            raise
        except (ConnectionError, OSError, asyncio.TimeoutError) as e:
            self.logger.warning("could not subscribe on %s: %s", where, e)
            await protocol.close()
            return None
        self.subscriptions += 1
        if self._subscribed is None:
            self._subscribed = asyncio.Event()
        self._subscribed.set()
        self.logger.info(
            "subscribed on %s to %s (concurrency %d)",
            where,
            ", ".join(self.methods),
            self.concurrency,
        )
        return protocol

    async def _drain(self, protocol: common.Protocol) -> None:
        """No new task; those running get the grace period; the rest are given back."""
        try:
            await protocol.call("task.unsubscribe", None, SUBSCRIBE_TIMEOUT)
        except (RemoteError, ConnectionError, OSError, asyncio.TimeoutError) as e:
            self.logger.info("task.unsubscribe: %s", e)
        running = set(self._running)
        if running:
            self.logger.info(
                "stopping: %d task(s) running, %g s to finish", len(running), self.grace
            )
            await asyncio.wait(running, timeout=self.grace)
        left = [t for t in self._running if not t.done()]
        for running_task in left:
            running_task.cancel()
        if left:
            self.logger.info("stopping: %d task(s) given back", len(left))
            await asyncio.wait(left, timeout=CONNECT_TIMEOUT)
        await protocol.close()
