"""Per-call metadata (PROTOCOL.md §"Metadata"): its limits, checked on read and
on send, and W3C trace context (``traceparent``) carried from a request being
handled to the calls and streams its handler makes.

Internal: the public names are in :mod:`stream_rpc.common`.
"""

from __future__ import annotations

import contextvars
import re
import secrets
import types
from typing import Any, Dict, Mapping, Optional

#: Entries in one packet's ``meta`` at most.
MAX_META_ENTRIES = 32
#: Bytes of one key at most (keys are 1 or more bytes of ``a-z 0-9 - _ .``).
MAX_META_KEY_BYTES = 64
#: Bytes (UTF-8) of one value at most.
MAX_META_VALUE_BYTES = 1024
#: Bytes of all keys and values together at most.
MAX_META_BYTES = 8192
#: The W3C trace context keys (https://www.w3.org/TR/trace-context/).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_KEY = re.compile(r"[a-z0-9._-]+")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_EMPTY: Mapping[str, str] = types.MappingProxyType({})

# The metadata of the request the running handler answers (empty outside one).
_current: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "stream_rpc_meta", default=_EMPTY
)


def check_meta(meta: Any) -> Optional[Dict[str, str]]:
    """``meta`` checked against the limits: a dict of strings, or ``None`` when
    absent or empty. Raises ``ValueError`` saying which limit it breaks."""
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise ValueError("`meta` is not an object of strings")
    repeated = getattr(meta, "repeated", None)
    if repeated:
        raise ValueError(f"`meta` gives the key {sorted(repeated)[0]!r} twice")
    if len(meta) > MAX_META_ENTRIES:
        raise ValueError(f"`meta` has {len(meta)} entries; at most {MAX_META_ENTRIES}")
    total = 0
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("`meta` is not an object of strings")
        size = len(key.encode())
        if not 1 <= size <= MAX_META_KEY_BYTES or not _KEY.fullmatch(key):
            raise ValueError(
                f"`meta` key {key[:80]!r} is not 1 to {MAX_META_KEY_BYTES} bytes of a-z 0-9 - _ ."
            )
        try:
            value_size = len(value.encode())
        except UnicodeEncodeError:
            raise ValueError(f"`meta` value of {key!r} is not UTF-8 text") from None
        if value_size > MAX_META_VALUE_BYTES:
            raise ValueError(
                f"`meta` value of {key!r} has {value_size} bytes; at most {MAX_META_VALUE_BYTES}"
            )
        total += size + value_size
    if total > MAX_META_BYTES:
        raise ValueError(f"`meta` has {total} bytes of keys and values; at most {MAX_META_BYTES}")
    return dict(meta) if meta else None


def current_meta() -> Mapping[str, str]:
    """The metadata of the request being handled (read-only; empty outside a
    handler, or when the request carried none)."""
    return _current.get()


def set_current(meta: Optional[Dict[str, str]]) -> None:
    """Sets what :func:`current_meta` gives in this context."""
    _current.set(types.MappingProxyType(meta) if meta else _EMPTY)


def child_traceparent(parent: str) -> Optional[str]:
    """A ``traceparent`` for a call made under ``parent``: the same trace id and
    flags, a fresh parent id; ``None`` when ``parent`` is not a valid one."""
    match = _TRACEPARENT.fullmatch(parent)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    span = secrets.token_hex(8)
    while span == "0" * 16:  # an all-zero parent id is invalid
        span = secrets.token_hex(8)
    return f"00-{trace_id}-{span}-{flags}"


def outgoing(meta: Optional[Mapping[str, str]]) -> Optional[Dict[str, str]]:
    """The metadata a new call or stream carries: ``meta`` (checked), plus, made
    while handling a request that carried trace context and when ``meta``
    gives none, that context carried on (a child ``traceparent``, the same
    ``tracestate``)."""
    chosen = dict(meta) if meta else {}
    parent = _current.get()
    if TRACEPARENT not in chosen and TRACEPARENT in parent:
        child = child_traceparent(parent[TRACEPARENT])
        if child is not None:
            chosen[TRACEPARENT] = child
            if TRACESTATE in parent and TRACESTATE not in chosen:
                chosen[TRACESTATE] = parent[TRACESTATE]
    return check_meta(chosen)
