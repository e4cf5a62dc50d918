"""Typed tasks on a stream-rpc queue server (PROTOCOL.md §"Tasks"): put a task
from any program, await its result, cancel it, and run workers, on the same
wire as the Rust ``stream_rpc::tasks``.

The producer::

    protocol = await Connector(Protocol, "127.0.0.1", 8888).connect()
    tasks = Tasks(protocol)
    handle = await tasks.put("parse", {"article_id": 7}, delay=2, priority="high")
    print(await handle.result(timeout=30))

The worker: ``async def`` functions marked :func:`task` (on a class, or
plain functions), served on a connection to the queue server, which pushes
each task to it as a call::

    class Articles:
        @task
        async def parse(self, article_id):
            return {"article_id": article_id, "title": "..."}

    asyncio.run(Worker(Articles(), concurrency=4).run())

A task's arguments are read from its payload as a typed service's are
(PROTOCOL.md): none, the payload ignored; one, the whole payload; several, a
JSON object by argument name. Its return value is its result; an exception
fails the attempt (retried by the task's policy), :class:`PermanentError`
fails it for good.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, Dict, List, NamedTuple, Optional, Union

from . import _wire
from ._errors import PermanentError, RemoteError
from ._worker import (
    MAX_CONCURRENCY,
    TaskContext,
    Worker,
    WorkerReport,
    current_task,
    task,
)

__all__ = [
    "MAX_ATTEMPTS_LIMIT",
    "MAX_CONCURRENCY",
    "MAX_DEDUPE_BYTES",
    "PRIORITIES",
    "Backoff",
    "CancelOutcome",
    "PermanentError",
    "TaskCancelled",
    "TaskContext",
    "TaskDead",
    "TaskError",
    "TaskHandle",
    "TaskInfo",
    "TaskRefused",
    "TaskTimeout",
    "TaskUnknown",
    "Tasks",
    "Worker",
    "WorkerReport",
    "current_task",
    "task",
]

#: The priorities of a task, first handed out first.
PRIORITIES = ("high", "normal", "low")
#: The most attempts a task may be given.
MAX_ATTEMPTS_LIMIT = 100
#: The longest dedupe key, in bytes (UTF-8).
MAX_DEDUPE_BYTES = 256
#: The longest one ``task.wait`` asks the server to hold its answer, in ms.
WAIT_SLICE_MS = 60_000
#: Seconds a call to the queue server may take beyond what it was asked to wait.
CALL_MARGIN = 10.0
#: Seconds a call to the queue server (other than ``task.wait``) may take.
QUEUE_CALL_TIMEOUT = 30.0
#: Tasks a ``list`` returns at most.
MAX_LIST = 1000

_FINAL = ("done", "dead", "cancelled")


class TaskError(Exception):
    """What a task's producer is told instead of its result."""


class TaskCancelled(TaskError):
    """The task was cancelled (before it ran, or while it ran)."""

    def __init__(self, task: str) -> None:
        super().__init__(f"task {task} was cancelled")
        self.task = task


class TaskDead(TaskError):
    """The task failed for good: its error was final (``"retry": false``) or
    it was tried ``max_attempts`` times. ``error``: its last attempt's error
    packet, as a :class:`RemoteError` (``None`` if it has none, as a task
    whose leases ran out)."""

    def __init__(self, task: str, attempts: int, error: Optional[RemoteError]) -> None:
        why = f": {error}" if error is not None else ""
        super().__init__(f"task {task} failed for good after {attempts} attempt(s){why}")
        self.task = task
        self.attempts = attempts
        self.error = error


class TaskTimeout(TaskError):
    """:meth:`TaskHandle.result` gave up waiting after ``after`` seconds; the
    task goes on."""

    def __init__(self, task: str, after: float) -> None:
        super().__init__(f"task {task} did not finish within {after:g} s")
        self.task = task
        self.after = after


class TaskRefused(TaskError):
    """The queue did not take the task: ``reason`` is ``full``,
    ``name_taken`` (a task of the same name is held) or ``duplicate`` (one
    with the same dedupe key is held, and the server did not say which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the queue refused the task: {reason}")
        self.reason = reason


class TaskUnknown(TaskError):
    """The queue does not know the task: never put, or forgotten after its
    retention window."""

    def __init__(self, task: str) -> None:
        super().__init__(f"the queue does not know task {task}")
        self.task = task


class Backoff(NamedTuple):
    """The wait between a failed attempt and the next: ``initial`` seconds
    after the first failure, doubled after each one, at most ``max``."""

    initial: float
    max: float


class CancelOutcome(NamedTuple):
    """What :meth:`TaskHandle.cancel` did: ``outcome`` is ``cancelled`` (it
    had not run), ``requested`` (it runs: its worker is told), ``finished``
    (too late: ``state`` says how it ended) or ``unknown``."""

    outcome: str
    state: Optional[str]


class TaskInfo(NamedTuple):
    """What the queue knows of one task (``task.show``, ``task.wait``)."""

    #: Its name, ``PEER:ID``.
    task: str
    method: str
    payload: Any
    #: ``scheduled``, ``queued``, ``leased``, ``done``, ``dead`` or ``cancelled``.
    state: str
    priority: str
    attempts: int
    max_attempts: int
    put_at: Optional[datetime.datetime]
    run_at: Optional[datetime.datetime]
    worker: Optional[str]
    cancel_requested: bool
    finished_at: Optional[datetime.datetime]
    #: What its worker acknowledged it with (done).
    result: Any
    #: The error packet payload of its last failed attempt.
    error: Optional[Dict[str, Any]]

    @property
    def final(self) -> bool:
        """Whether nothing more happens to it (done, dead or cancelled)."""
        return self.state in _FINAL

    @classmethod
    def from_json(cls, obj: Any) -> TaskInfo:
        """Reads a ``TaskInfo`` object; raises ``ValueError`` if it is not one."""
        if not isinstance(obj, dict) or not isinstance(obj.get("state"), str):
            raise ValueError(f"not a TaskInfo: {str(obj)[:200]}")
        error = obj.get("error")
        return cls(
            task=ref_text(obj.get("task")),
            method=str(obj.get("method", "")),
            payload=obj.get("payload"),
            state=obj["state"],
            priority=str(obj.get("priority", "normal")),
            attempts=_count(obj.get("attempts")),
            max_attempts=_count(obj.get("max_attempts")),
            put_at=_time(obj.get("put_at")),
            run_at=_time(obj.get("run_at")),
            worker=obj.get("worker") if isinstance(obj.get("worker"), str) else None,
            cancel_requested=obj.get("cancel_requested") is True,
            finished_at=_time(obj.get("finished_at")),
            result=obj.get("result"),
            error=error if isinstance(error, dict) else None,
        )


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


def _time(value: Any) -> Optional[datetime.datetime]:
    if not isinstance(value, str):
        return None
    try:
        return _wire.parse_time(value)
    except ValueError:
        return None


def ref_text(obj: Any) -> str:
    """A task's name ``{"peer": P, "id": N}`` as ``P:N``; ``ValueError`` if it is not one."""
    if isinstance(obj, dict) and isinstance(obj.get("peer"), str) and type(obj.get("id")) is int:
        return f"{_wire.parse_uuid(obj['peer'])}:{obj['id']}"
    raise ValueError(f"not a task name: {str(obj)[:200]}")


def ref_object(text: str) -> Dict[str, Any]:
    """A task's name ``P:N`` as ``{"peer": P, "id": N}``; ``ValueError`` if it is not one."""
    peer, sep, ident = str(text).strip().rpartition(":")
    if not sep or not ident.isdigit():
        raise ValueError(f"{text!r} is not a task name: give PEER:ID")
    return {"peer": _wire.parse_uuid(peer), "id": int(ident)}


def _seconds_ms(name: str, value: Union[float, datetime.timedelta]) -> int:
    seconds = value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds from 0 up, not {value!r}")
    return int(round(seconds * 1000))


def task_options(
    *,
    run_at: Optional[datetime.datetime] = None,
    priority: str = "normal",
    max_attempts: Optional[int] = None,
    backoff: Optional[Backoff] = None,
    dedupe: Optional[str] = None,
    timeout: Optional[float] = None,
) -> Dict[str, Any]:
    """The ``options`` object of ``task.put`` (the fields given, as the Rust
    ``TaskOptions`` reads them); ``ValueError`` for a value it refuses."""
    options: Dict[str, Any] = {}
    if run_at is not None:
        if run_at.tzinfo is None:
            raise ValueError("run_at must be an aware datetime (use datetime.timezone.utc)")
        options["run_at"] = _wire.format_time(run_at)
    if priority not in PRIORITIES:
        raise ValueError(f"{priority!r} is not a priority: give high, normal or low")
    if priority != "normal":
        options["priority"] = priority
    if max_attempts is not None:
        if type(max_attempts) is not int or not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"max_attempts is {max_attempts!r}: give 1 to {MAX_ATTEMPTS_LIMIT}")
        options["max_attempts"] = max_attempts
    if backoff is not None:
        initial, most = Backoff(*backoff)
        initial_ms, max_ms = _seconds_ms("backoff", initial), _seconds_ms("backoff", most)
        if initial_ms < 1 or initial_ms > max_ms:
            raise ValueError("backoff: initial must be at least 1 ms and at most max")
        options["backoff"] = {"initial_ms": initial_ms, "max_ms": max_ms}
    if dedupe is not None:
        if not 1 <= len(dedupe.encode()) <= MAX_DEDUPE_BYTES:
            raise ValueError(f"dedupe must be 1 to {MAX_DEDUPE_BYTES} bytes")
        options["dedupe"] = dedupe
    if timeout is not None:
        timeout_ms = _seconds_ms("timeout", timeout)
        if timeout_ms < 1:
            raise ValueError("timeout must be at least 1 ms")
        options["timeout_ms"] = timeout_ms
    return options


class Tasks:
    """A producer of tasks through a connection to a queue server:
    ``Tasks(await connector.connect())`` (any connected :class:`Protocol`,
    or an object with its ``call`` and ``create_message_packet``). Each task
    it puts is a packet of the connection's peer, numbered by its connector:
    its name, ``PEER:ID``, is unique."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    async def _call(self, method: str, payload: Any, timeout: float = QUEUE_CALL_TIMEOUT) -> Any:
        reply = await self.protocol.call(method, payload, timeout)
        return reply.payload

    async def put(
        self,
        method: str,
        payload: Any = None,
        *,
        delay: Optional[Union[float, datetime.timedelta]] = None,
        run_at: Optional[datetime.datetime] = None,
        priority: str = "normal",
        max_attempts: Optional[int] = None,
        backoff: Optional[Backoff] = None,
        dedupe: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> TaskHandle:
        """Puts a task of ``method`` with ``payload``; returns its handle.

        ``delay`` (seconds or a ``timedelta``, from the server's clock) or
        ``run_at`` (an aware ``datetime``): not before; ``priority``:
        ``high``, ``normal`` or ``low``; ``max_attempts`` (1 to 100; default
        the queue's); ``backoff``: :class:`Backoff` (seconds); ``dedupe``: the
        key that makes two puts one task (default: the method and the
        payload); ``timeout``: seconds one attempt may run on a worker.

        A put that finds its dedupe key held returns the handle of the task
        that holds it (``handle.deduplicated`` is true). Raises
        :class:`TaskRefused` (queue full, name taken), ``ValueError`` for an
        option it refuses, and what :meth:`Protocol.call` raises
        (:class:`RemoteError`, ``ConnectionError``, ``asyncio.TimeoutError``).
        """
        if delay is not None and run_at is not None:
            raise ValueError("give delay or run_at, not both")
        options = task_options(
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            backoff=backoff,
            dedupe=dedupe,
            timeout=timeout,
        )
        body: Dict[str, Any] = {"task": self.protocol.create_message_packet(method, payload)}
        if options:
            body["options"] = options
        if delay is not None:
            body["delay_ms"] = _seconds_ms("delay", delay)
        answer = await self._call("task.put", body)
        if not isinstance(answer, dict):
            raise RemoteError("invalid_reply", f"task.put answered {str(answer)[:200]}")
        refused = answer.get("refused")
        if refused is None:
            return TaskHandle(self, ref_text(answer.get("task")))
        existing = answer.get("existing")
        if refused == "duplicate" and existing is not None:
            return TaskHandle(self, ref_text(existing), deduplicated=True)
        raise TaskRefused(str(refused))

    def handle(self, task: str) -> TaskHandle:
        """The handle of a task put before (its name, ``PEER:ID``)."""
        ref_object(task)
        return TaskHandle(self, task)

    async def show(self, task: str) -> Optional[TaskInfo]:
        """What the queue knows of ``task``; ``None`` if it does not know it."""
        answer = await self._call("task.show", {"task": ref_object(task)})
        return None if answer is None else TaskInfo.from_json(answer)

    async def wait(self, task: str, timeout: float) -> Optional[TaskInfo]:
        """``task.wait``: the task once final, or its state after ``timeout``
        seconds (at most 60); ``None`` if the queue does not know it."""
        timeout_ms = max(1, min(WAIT_SLICE_MS, int(timeout * 1000)))
        body = {"task": ref_object(task), "timeout_ms": timeout_ms}
        answer = await self._call("task.wait", body, timeout_ms / 1000 + CALL_MARGIN)
        return None if answer is None else TaskInfo.from_json(answer)

    async def cancel(self, task: str) -> CancelOutcome:
        """Cancels ``task``: at once if it has not run; if it runs, its
        worker's handler is told (``call.cancel``)."""
        answer = await self._call("task.cancel", {"task": ref_object(task)})
        if not isinstance(answer, dict):
            raise RemoteError("invalid_reply", f"task.cancel answered {str(answer)[:200]}")
        state = answer.get("state")
        return CancelOutcome(str(answer.get("outcome")), state if isinstance(state, str) else None)

    async def list(self, state: str, limit: int = 100) -> List[TaskInfo]:
        """The tasks in ``state`` (at most ``limit``, up to 1000)."""
        body = {"state": state, "limit": max(1, min(MAX_LIST, limit))}
        answer = await self._call("task.list", body)
        items = answer.get("tasks") if isinstance(answer, dict) else None
        return [TaskInfo.from_json(item) for item in items or []]

    async def stats(self) -> Dict[str, Dict[str, int]]:
        """Counts per method (``task.stats``)."""
        answer = await self._call("task.stats", None)
        methods = answer.get("methods") if isinstance(answer, dict) else None
        return dict(methods) if isinstance(methods, dict) else {}

    async def set_limit(
        self,
        method: str,
        *,
        concurrency: Optional[int] = None,
        rate: Optional[tuple] = None,
    ) -> Dict[str, Any]:
        """Sets ``method``'s fleet-wide limits: at most ``concurrency``
        running, at most ``rate = (count, per_seconds)`` handed out; neither
        removes them. Returns every limit."""
        body: Dict[str, Any] = {"method": method, "concurrency": concurrency, "rate": None}
        if rate is not None:
            count, per = rate
            body["rate"] = {"count": int(count), "per_ms": _seconds_ms("rate", per)}
        answer = await self._call("task.limit", body)
        limits = answer.get("limits") if isinstance(answer, dict) else None
        return dict(limits) if isinstance(limits, dict) else {}

    async def put_schedule(
        self,
        name: str,
        method: str,
        payload: Any = None,
        *,
        every: Optional[Union[float, datetime.timedelta]] = None,
        cron: Optional[str] = None,
        **options: Any,
    ) -> Dict[str, Any]:
        """Puts (or replaces) the periodic task ``name``: ``method`` with
        ``payload`` put ``every`` so often (seconds or a ``timedelta``, at
        least 1 s) or at the times of ``cron`` (UTC, five fields or six with
        seconds), by exactly one server however many share the queue.
        ``options``: those of :meth:`put` but ``delay`` and ``run_at``.
        Returns the schedule as the queue keeps it (``next_at``, ``fired``)."""
        if (every is None) == (cron is None):
            raise ValueError("give every or cron, one of them")
        body: Dict[str, Any] = {"name": name, "method": method, "payload": payload}
        if every is not None:
            body["every_ms"] = _seconds_ms("every", every)
        else:
            body["cron"] = cron
        body["options"] = task_options(**options)
        answer = await self._call("schedule.put", body)
        return dict(answer) if isinstance(answer, dict) else {}

    async def remove_schedule(self, name: str) -> bool:
        """Removes the periodic task ``name``; whether there was one."""
        answer = await self._call("schedule.remove", {"name": name})
        return isinstance(answer, dict) and answer.get("removed") is True

    async def schedules(self) -> List[Dict[str, Any]]:
        """The periodic tasks, as the queue keeps them."""
        answer = await self._call("schedule.list", None)
        items = answer.get("schedules") if isinstance(answer, dict) else None
        return [dict(item) for item in items or [] if isinstance(item, dict)]


class TaskHandle:
    """A task put: its name (:attr:`id`, ``PEER:ID``), its result, its state,
    its cancellation."""

    def __init__(self, tasks: Tasks, task: str, deduplicated: bool = False) -> None:
        self.tasks = tasks
        #: Its name, ``PEER:ID``.
        self.id = task
        #: Whether the put found the same task held (its dedupe key): this
        #: handle is that task's.
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"TaskHandle({self.id!r})"

    async def result(self, timeout: Optional[float] = None) -> Any:
        """Waits for the task to finish and returns its result (what its
        worker returned); ``timeout``: seconds at most (default: as long as
        it takes).

        Raises :class:`TaskDead` (failed for good, with its error),
        :class:`TaskCancelled`, :class:`TaskTimeout` (the task goes on),
        :class:`TaskUnknown`, or what a call raises."""
        info = await self.wait(timeout)
        if info.state == "done":
            return info.result
        if info.state == "cancelled":
            raise TaskCancelled(self.id)
        if info.state == "dead":
            error = None if info.error is None else RemoteError.from_payload(info.error)
            raise TaskDead(self.id, info.attempts, error)
        raise TaskTimeout(self.id, 0.0 if timeout is None else timeout)

    async def wait(self, timeout: Optional[float] = None) -> TaskInfo:
        """Waits for the task to finish (``task.wait``, again and again) and
        returns what the queue knows of it then; raises :class:`TaskTimeout`
        after ``timeout`` seconds, :class:`TaskUnknown` if the queue does not
        know it."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = WAIT_SLICE_MS / 1000 if deadline is None else deadline - loop.time()
            if left <= 0:
                raise TaskTimeout(self.id, timeout or 0.0)
            info = await self.tasks.wait(self.id, left)
            if info is None:
                raise TaskUnknown(self.id)
            if info.final:
                return info

    async def state(self) -> TaskInfo:
        """What the queue knows of the task now; :class:`TaskUnknown` if nothing."""
        info = await self.tasks.show(self.id)
        if info is None:
            raise TaskUnknown(self.id)
        return info

    async def cancel(self) -> CancelOutcome:
        """Cancels the task (see :meth:`Tasks.cancel`)."""
        return await self.tasks.cancel(self.id)
