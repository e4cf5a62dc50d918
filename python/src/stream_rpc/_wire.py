"""Packets as JSON, exactly as `docs/PROTOCOL.md` §4 spells them.

Internal: the public names are in :mod:`stream_rpc.common`.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Any, Dict, NamedTuple, Optional, Tuple

from ._meta import check_meta

#: Arrays and objects may nest this deep, counting the packet object.
MAX_DEPTH = 127
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

_HEX = "[0-9A-Fa-f]"
_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
_UUID = re.compile(
    rf"(?:(?P<h>{_HYPHENATED})|(?P<s>{_HEX}{{32}})|\{{(?P<b>{_HYPHENATED})\}}"
    rf"|(?i:urn:uuid:)(?P<u>{_HYPHENATED}))"
)
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


class _WireTime(datetime.datetime):
    """A ``datetime`` that remembers the nanoseconds it was read with, so that a
    packet forwarded as it came keeps its ``created_at`` to the nanosecond.
    It shows, compares and computes as the ``datetime`` it is."""

    nanos: int = 0

    def __repr__(self) -> str:
        return repr(datetime.datetime.combine(self.date(), self.timetz()))


class MessagePacket(NamedTuple):
    """One message between two peers, as the original's named tuple.

    ``peer`` is the creator's UUID (a lower-case hyphenated string),
    ``id`` its request number, ``created_at`` an aware UTC ``datetime``,
    ``method`` what it asks for, and ``payload`` any JSON value or another
    :class:`MessagePacket` (a task carried by ``put_in_queue``).
    """

    peer: str
    id: int
    created_at: datetime.datetime
    method: str
    payload: Any = {}
    #: Per-call metadata (a dict of strings) on a request, or ``None``.
    meta: Optional[Dict[str, str]] = None
    #: The ``stream`` field of a stream packet or a stream's open, or ``None``.
    stream: Optional[Dict[str, Any]] = None

    def __repr__(self) -> str:
        # The original's five fields; the others only when set.
        text = (
            f"MessagePacket(peer={self.peer!r}, id={self.id!r}, created_at={self.created_at!r}, "
            f"method={self.method!r}, payload={self.payload!r}"
        )
        if self.meta is not None:
            text += f", meta={self.meta!r}"
        if self.stream is not None:
            text += f", stream={self.stream!r}"
        return text + ")"


class ReplyTo(NamedTuple):
    """The packet a reply answers: its creator and its ``id``."""

    peer: str
    id: int


class InvalidPacket(ValueError):
    """A plaintext that is not a packet (PROTOCOL.md §4), with what could be read of it."""

    def __init__(self, reason: str, fields: Any = None) -> None:
        super().__init__(reason)
        fields = fields if isinstance(fields, dict) else {}
        self.reason = reason
        peer, ident = fields.get("peer"), fields.get("id")
        self.reply_address: Optional[ReplyTo] = None
        if isinstance(peer, str) and _is_u64(ident):
            try:
                self.reply_address = ReplyTo(parse_uuid(peer), ident)
            except ValueError:
                pass
        method = fields.get("method")
        self.method: Optional[str] = method if isinstance(method, str) else None
        self.is_reply = fields.get("reply_to") is not None
        self.is_error = self.method == "error"


def _is_u64(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _INT_MAX


def parse_uuid(text: str) -> str:
    """A UUID in one of the four spellings of §4, as lower-case hyphenated text."""
    match = _UUID.fullmatch(text)
    if match is None:
        raise ValueError(f"not a UUID: {text[:60]!r}")
    found = next(group for group in match.groups() if group is not None)
    digits = found.replace("-", "").lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def format_time(at: datetime.datetime) -> str:
    """``created_at`` as written on the wire: UTC, 9 fraction digits, ``Z``."""
    if at.tzinfo is None:
        raise ValueError("created_at must be an aware datetime (use datetime.timezone.utc)")
    nanos = at.nanos if isinstance(at, _WireTime) else at.microsecond * 1000
    try:
        at = at.astimezone(datetime.timezone.utc)
    except (OverflowError, ValueError):
        raise ValueError("created_at is outside the years 0000 to 9999 in UTC") from None
    return f"{at.year:04d}" + at.strftime("-%m-%dT%H:%M:%S.") + f"{nanos:09d}Z"


def parse_time(text: str) -> datetime.datetime:
    """An RFC 3339 time as §4 allows it, as an aware UTC ``datetime`` (microseconds kept).

    Raises ``ValueError`` for anything else, a time whose UTC year falls
    outside 0000 to 9999 included (``9999-12-31T23:59:59-01:00`` is year
    10000 in UTC). Python's ``datetime`` starts at year 1, so a time in the
    year 0000 in UTC, valid on the wire, cannot be held here: it is refused
    too, as not a packet.
    """
    match = _TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text[:60]!r}")
    year, month, day, hour, minute, second, fraction, zulu, sign, oh, om = match.groups()
    nanos = int((fraction or "0").ljust(9, "0"))
    micros = nanos // 1000
    try:
        if zulu:
            zone = datetime.timezone.utc
        else:
            offset = datetime.timedelta(hours=int(oh), minutes=int(om))
            zone = datetime.timezone(-offset if sign == "-" else offset)
        at = datetime.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, zone
        ).astimezone(datetime.timezone.utc)
    except Exception as e:  # OverflowError past year 9999, ValueError, or any other
        raise ValueError(
            f"not a time in the years 0000 to 9999 in UTC: {text[:60]!r} ({type(e).__name__})"
        ) from None
    if nanos % 1000 == 0:
        return at
    exact = _WireTime.combine(at.date(), at.timetz())
    exact.nanos = nanos
    return exact


def check_value(value: Any, depth: int = 1) -> None:
    """Refuses what §4 refuses: integers beyond 64 bits, NaN and infinities, nesting
    beyond 127 levels (``depth`` is the level ``value`` sits at), non-JSON types."""
    stack = [(value, depth)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                raise ValueError("an integer outside -2^63 ..= 2^64-1")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("NaN and infinities are not JSON")
        elif isinstance(item, (dict, list, tuple)):
            if level > MAX_DEPTH:
                raise ValueError("nested deeper than 127 levels, counting the packet object")
            if isinstance(item, dict):
                for key, inner in item.items():
                    if not isinstance(key, str):
                        raise ValueError(f"object keys must be strings, not {type(key).__name__}")
                    stack.append((inner, level + 1))
            elif isinstance(item, MessagePacket):
                stack.append((item.payload, level + 1))
            else:
                stack.extend((inner, level + 1) for inner in item)
        else:
            raise ValueError(f"{type(item).__name__} is not a JSON value")


def _jsonable(value: Any) -> Any:
    """``value`` with every :class:`MessagePacket` in it turned into its JSON object."""
    if isinstance(value, MessagePacket):
        return packet_object(value)
    if isinstance(value, dict):
        return {key: _jsonable(inner) for key, inner in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(inner) for inner in value]
    return value


def packet_object(
    packet: MessagePacket,
    reply_to: Optional[ReplyTo] = None,
    timeout_ms: Optional[int] = None,
) -> dict:
    """The JSON object of a packet, its fields in the order the Rust peer writes them."""
    peer = parse_uuid(packet.peer)
    if not _is_u64(packet.id):
        raise ValueError(f"a packet id is an integer from 0 to 2^64-1, not {packet.id!r}")
    if not isinstance(packet.method, str):
        raise ValueError("a packet's method is a string")
    obj = {
        "peer": peer,
        "id": packet.id,
        "created_at": format_time(packet.created_at),
        "method": packet.method,
        "payload": _jsonable(packet.payload),
    }
    if reply_to is not None:
        obj["reply_to"] = {"peer": parse_uuid(reply_to.peer), "id": reply_to.id}
    if timeout_ms is not None:
        obj["timeout_ms"] = timeout_ms
    meta = check_meta(packet.meta)
    if meta:
        obj["meta"] = dict(sorted(meta.items()))
    if packet.stream is not None:
        obj["stream"] = check_stream(packet.stream)
    return obj


def encode(
    packet: MessagePacket,
    reply_to: Optional[ReplyTo] = None,
    timeout_ms: Optional[int] = None,
) -> bytes:
    """The plaintext of a packet: compact UTF-8 JSON. Raises ``ValueError`` for a
    payload the peers would refuse (§4)."""
    obj = packet_object(packet, reply_to, timeout_ms)
    check_value(obj)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class _Object(dict):
    """A JSON object that remembers the names it held more than once (the last
    value is kept, as for a payload; a packet's own fields may not repeat)."""

    repeated: frozenset = frozenset()


def _object(pairs: Any) -> dict:
    """A plain dict, or an :class:`_Object` when a name repeats (rare)."""
    plain = dict(pairs)
    if len(plain) == len(pairs):
        return plain
    seen: set = set()
    repeated = set()
    for name, _ in pairs:
        if name in seen:
            repeated.add(name)
        seen.add(name)
    obj = _Object(plain)
    obj.repeated = frozenset(repeated)
    return obj


_REPLY_FIELDS = {"peer", "id"}


def _refuse_repeated(obj: Any, fields: Any, where: str) -> None:
    repeated = sorted(getattr(obj, "repeated", frozenset()) & fields)
    if repeated:
        raise ValueError(f"duplicate field `{repeated[0]}`{where}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_PACKET_FIELDS = {"peer", "id", "created_at", "method", "payload"}
#: The fields of a packet carried in a payload (a task): the five, and its metadata.
_TASK_FIELDS = _PACKET_FIELDS | {"meta"}
#: The fields of a `stream` object, each an integer from 0 to 2^64-1 but `peer`.
_STREAM_NUMBERS = ("id", "seq", "credit")


def check_stream(stream: Any) -> Dict[str, Any]:
    """A packet's ``stream`` object checked (its known fields typed: ``peer`` a
    UUID, ``id``, ``seq`` and ``credit`` integers from 0 to 2^64-1) and
    normalized to those fields; raises ``ValueError``."""
    if not isinstance(stream, dict):
        raise ValueError("`stream` is not an object")
    _refuse_repeated(stream, {"peer", *_STREAM_NUMBERS}, " in `stream`")
    checked: Dict[str, Any] = {}
    if "peer" in stream:
        if not isinstance(stream["peer"], str):
            raise ValueError("`stream.peer` is not a string")
        checked["peer"] = parse_uuid(stream["peer"])
    for name in _STREAM_NUMBERS:
        if name in stream:
            if not _is_u64(stream[name]):
                raise ValueError(f"`stream.{name}` is not an integer from 0 to 2^64-1")
            checked[name] = stream[name]
    return checked


def _packet_from(obj: Any) -> MessagePacket:
    """The packet of a decoded JSON object, checked field by field."""
    if not isinstance(obj, dict):
        raise ValueError("a packet is a JSON object")
    for field in ("peer", "id", "created_at", "method"):
        if field not in obj:
            raise ValueError(f"missing field `{field}`")
    if not isinstance(obj["peer"], str):
        raise ValueError("`peer` is not a string")
    peer = parse_uuid(obj["peer"])
    if not _is_u64(obj["id"]):
        raise ValueError("`id` is not an integer from 0 to 2^64-1")
    if not isinstance(obj["created_at"], str):
        raise ValueError("`created_at` is not a string")
    created_at = parse_time(obj["created_at"])
    if not isinstance(obj["method"], str):
        raise ValueError("`method` is not a string")
    meta = check_meta(obj.get("meta"))
    return MessagePacket(peer, obj["id"], created_at, obj["method"], obj.get("payload"), meta)


def _as_packet(payload: Any) -> Any:
    """A payload that is a packet's object (a task) as a :class:`MessagePacket`, as
    the original's users find it; anything else as it is."""
    if (
        isinstance(payload, dict)
        and {"peer", "id", "created_at", "method"} <= payload.keys()
        and payload.keys() <= _TASK_FIELDS
    ):
        try:
            return _packet_from(payload)
        except ValueError:
            return payload
    return payload


def decode(plain: bytes) -> Tuple[MessagePacket, Optional[ReplyTo], Optional[int]]:
    """A packet (its ``meta`` and ``stream`` checked), its ``reply_to`` and
    ``timeout_ms`` from a plaintext; raises :class:`InvalidPacket` with the reason."""
    try:
        obj = json.loads(
            plain.decode("utf-8"), parse_constant=_no_constants, object_pairs_hook=_object
        )
    except RecursionError:
        raise InvalidPacket("nested deeper than 127 levels, counting the packet object") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidPacket(f"not JSON: {e}") from None
    try:
        check_value(obj)
        _refuse_repeated(obj, _PACKET_FIELDS | {"reply_to", "timeout_ms", "meta", "stream"}, "")
        packet = _packet_from(obj)
        stream = obj.get("stream")
        if stream is not None:
            packet = packet._replace(stream=check_stream(stream))
        reply_to = obj.get("reply_to")
        address = None
        if reply_to is not None:
            if not isinstance(reply_to, dict) or not isinstance(reply_to.get("peer"), str):
                raise ValueError("`reply_to` is not {peer, id}")
            _refuse_repeated(reply_to, _REPLY_FIELDS, " in `reply_to`")
            if not _is_u64(reply_to.get("id")):
                raise ValueError("`reply_to.id` is not an integer from 0 to 2^64-1")
            address = ReplyTo(parse_uuid(reply_to["peer"]), reply_to["id"])
        timeout_ms = obj.get("timeout_ms")
        if timeout_ms is not None and not _is_u64(timeout_ms):
            raise ValueError("`timeout_ms` is not an integer from 0 to 2^64-1")
    except ValueError as e:
        raise InvalidPacket(f"packet is not valid: {e}", obj) from None
    return packet._replace(payload=_as_packet(packet.payload)), address, timeout_ms
