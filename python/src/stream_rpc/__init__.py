"""stream-rpc for Python: the original ``stream_rpc`` API, speaking the JSON wire
of ``docs/PROTOCOL.md``, so Python and Rust peers talk to each other.

Import from :mod:`stream_rpc.common` and :mod:`stream_rpc.crypto` as with the
original; the main names are also here.

The names here are loaded when first used (PEP 562), so that importing the
package imports none of its modules: ``python -m stream_rpc.crypto`` then
runs the module once, as ``__main__``, without the warning of a module found
in ``sys.modules`` before it ran.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the type checkers see; at run time, __getattr__
    from .common import (
        Connector,
        Incoming,
        MessagePacket,
        PermanentError,
        Protocol,
        RemoteError,
        Stream,
        StreamCancelled,
        StreamDisconnected,
        StreamError,
        StreamProtocolError,
        StreamTimeout,
        create_message_packet,
        current_cancellation,
        current_meta,
        stream_method,
    )
    from .crypto import CryptoKeyError, Cypher, TokenError, generate_key
    from .tasks import (
        TaskCancelled,
        TaskContext,
        TaskDead,
        TaskError,
        TaskHandle,
        TaskRefused,
        Tasks,
        TaskTimeout,
        TaskUnknown,
        Worker,
        current_task,
        task,
    )

#: Each name of the package, and the module that defines it.
_WHERE = {
    "Connector": "common",
    "MessagePacket": "common",
    "PermanentError": "common",
    "Protocol": "common",
    "RemoteError": "common",
    "create_message_packet": "common",
    "Incoming": "common",
    "Stream": "common",
    "StreamCancelled": "common",
    "StreamDisconnected": "common",
    "StreamError": "common",
    "StreamProtocolError": "common",
    "StreamTimeout": "common",
    "current_cancellation": "common",
    "current_meta": "common",
    "stream_method": "common",
    "CryptoKeyError": "crypto",
    "Cypher": "crypto",
    "TokenError": "crypto",
    "generate_key": "crypto",
    "TaskCancelled": "tasks",
    "TaskContext": "tasks",
    "TaskDead": "tasks",
    "TaskError": "tasks",
    "TaskHandle": "tasks",
    "TaskRefused": "tasks",
    "Tasks": "tasks",
    "TaskTimeout": "tasks",
    "TaskUnknown": "tasks",
    "Worker": "tasks",
    "current_task": "tasks",
    "task": "tasks",
}

__all__ = [
    "Connector",
    "CryptoKeyError",
    "Cypher",
    "Incoming",
    "MessagePacket",
    "PermanentError",
    "Protocol",
    "RemoteError",
    "Stream",
    "StreamCancelled",
    "StreamDisconnected",
    "StreamError",
    "StreamProtocolError",
    "StreamTimeout",
    "TaskCancelled",
    "TaskContext",
    "TaskDead",
    "TaskError",
    "TaskHandle",
    "TaskRefused",
    "TaskTimeout",
    "TaskUnknown",
    "Tasks",
    "TokenError",
    "Worker",
    "create_message_packet",
    "current_cancellation",
    "current_meta",
    "current_task",
    "generate_key",
    "stream_method",
    "task",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'stream_rpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
