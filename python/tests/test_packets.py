"""Packets as PROTOCOL.md §4 spells them: the same tables the Rust tests use."""

import datetime
import json

import pytest

from stream_rpc import _wire
from stream_rpc.common import MessagePacket, create_message_packet

PEER = "67e55044-10b1-426f-9247-bb680e5fe0c8"
WRITTEN = "2026-11-24T04:34:14.507123456Z"


def packet_text(payload: str, peer: str = PEER, created_at: str = WRITTEN) -> bytes:
    return (
        f'{{"peer":"{peer}","id":1,"created_at":"{created_at}","method":"m","payload":{payload}}}'
    ).encode()


def test_a_packet_is_the_originals_named_tuple():
    at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    packet = MessagePacket(PEER, 4, at, "parse_article", {"article_id": 3249})
    assert repr(packet) == (
        f"MessagePacket(peer='{PEER}', id=4, created_at=datetime.datetime(2026, 1, 2, 3, 4, 5, "
        "tzinfo=datetime.timezone.utc), method='parse_article', payload={'article_id': 3249})"
    )
    made = create_message_packet(PEER, 7, "ping")
    assert made.payload == {} and made.id == 7 and made.peer == PEER
    assert made.created_at.tzinfo is datetime.timezone.utc


def test_packets_round_trip_with_a_nested_packet_and_reply_to():
    task = create_message_packet(PEER, 3, "parse_article", {"article_id": 4242})
    put = create_message_packet(PEER, 4, "put_in_queue", task)
    plain = _wire.encode(put, _wire.ReplyTo(PEER, 9), 1500)
    obj = json.loads(plain)
    assert list(obj) == ["peer", "id", "created_at", "method", "payload", "reply_to", "timeout_ms"]
    assert obj["created_at"].endswith("000Z") and len(obj["created_at"]) == 30
    back, reply_to, timeout_ms = _wire.decode(plain)
    assert back == put
    assert isinstance(back.payload, MessagePacket)
    assert reply_to == (PEER, 9) and timeout_ms == 1500


@pytest.mark.parametrize(
    "payload",
    [
        "1180591620717411303425",
        "18446744073709551616",
        "-9223372036854775809",
        '{"task":{"n":[1,99999999999999999999]}}',
    ],
)
def test_integers_beyond_64_bits_are_refused_not_rounded(payload):
    with pytest.raises(_wire.InvalidPacket, match="2\\^64"):
        _wire.decode(packet_text(payload))
    with pytest.raises(ValueError, match="2\\^64"):
        _wire.encode(create_message_packet(PEER, 1, "m", json.loads(payload)))


@pytest.mark.parametrize(
    "payload, value",
    [
        ("18446744073709551615", 2**64 - 1),
        ("-9223372036854775808", -(2**63)),
        ("1.1805916207174113e21", 1.1805916207174113e21),
        ('"12345678901234567890123"', "12345678901234567890123"),
    ],
)
def test_numbers_in_range_are_kept(payload, value):
    assert _wire.decode(packet_text(payload))[0].payload == value


def test_nan_and_infinity_are_not_json():
    for payload in ["NaN", "Infinity", "-Infinity"]:
        with pytest.raises(_wire.InvalidPacket):
            _wire.decode(packet_text(payload))
    with pytest.raises(ValueError):
        _wire.encode(create_message_packet(PEER, 1, "m", float("nan")))


def test_nesting_is_limited_to_127_levels_counting_the_packet():
    def nested(levels):
        return "[" * levels + "]" * levels

    _wire.decode(packet_text(nested(126)))
    for levels in (127, 10_000):
        with pytest.raises(_wire.InvalidPacket, match="nested deeper"):
            _wire.decode(packet_text(nested(levels)))
    _wire.decode(packet_text('["' + "[" * 500 + '"]'))


@pytest.mark.parametrize(
    "spelling",
    [
        "67E55044-10B1-426F-9247-BB680E5FE0C8",
        "67e5504410b1426f9247bb680e5fe0c8",
        "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
        "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        "URN:UUID:67e55044-10b1-426f-9247-bb680e5fe0c8",
    ],
)
def test_uuids_are_read_in_four_spellings_and_written_in_one(spelling):
    packet = _wire.decode(packet_text("null", peer=spelling))[0]
    assert packet.peer == PEER
    assert PEER.encode() in _wire.encode(packet)


@pytest.mark.parametrize(
    "spelling",
    [
        "{67e5504410b1426f9247bb680e5fe0c8}",
        "67e55044-10b1426f-9247-bb680e5fe0c8-",
        "67e55044-10b1-426f-9247-bb680e5fe0c",
        "uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
        " 67e55044-10b1-426f-9247-bb680e5fe0c8",
    ],
)
def test_other_uuid_spellings_are_not_packets(spelling):
    with pytest.raises(_wire.InvalidPacket):
        _wire.decode(packet_text("null", peer=spelling))


@pytest.mark.parametrize(
    "spelling, instant",
    [
        ("2026-11-24T05:34:14.507123456+01:00", WRITTEN),
        ("2026-11-24t04:34:14.507123456z", WRITTEN),
        ("2026-11-24T04:34:14Z", "2026-11-24T04:34:14.000000000Z"),
        ("2026-11-24T04:34:14.5-00:00", "2026-11-24T04:34:14.500000000Z"),
        ("2026-11-24 04:34:14Z", "2026-11-24T04:34:14.000000000Z"),
    ],
)
def test_created_at_takes_rfc_3339_with_any_offset(spelling, instant):
    packet = _wire.decode(packet_text("null", created_at=spelling))[0]
    assert _wire.format_time(packet.created_at) == instant


@pytest.mark.parametrize(
    "spelling",
    [
        "2026-11-24T04:34:14",
        "2026-11-24_04:34:14Z",
        "2026-11-24T04:34Z",
        "2026-11-24T04:34:14.Z",
        "20261124T043414Z",
        "2026-02-30T04:34:14Z",
    ],
)
def test_other_times_are_not_packets(spelling):
    with pytest.raises(_wire.InvalidPacket):
        _wire.decode(packet_text("null", created_at=spelling))


def test_a_forwarded_time_keeps_its_nanoseconds():
    packet = _wire.decode(packet_text("null"))[0]
    assert repr(packet.created_at).startswith("datetime.datetime(2026, 11, 24, 4, 34, 14, 507123")
    assert json.loads(_wire.encode(packet))["created_at"] == WRITTEN


@pytest.mark.parametrize(
    "text, reason",
    [
        (b"[1,2]", "object"),
        (b'{"peer":"x","id":1}', "missing field"),
        (b"\xff\xfe", "not JSON"),
        (b"{", "not JSON"),
        (packet_text("null").replace(b'"id":1', b'"id":-1'), "id"),
        (packet_text("null").replace(b'"id":1', b'"id":true'), "id"),
        (packet_text("null").replace(b'"method":"m"', b'"method":5'), "method"),
    ],
)
def test_what_is_not_a_packet_says_why(text, reason):
    with pytest.raises(_wire.InvalidPacket, match=reason):
        _wire.decode(text)


def test_a_missing_payload_is_none_and_unknown_fields_are_ignored():
    text = packet_text("null").replace(b',"payload":null', b',"extra":[1,2]')
    packet, reply_to, timeout_ms = _wire.decode(text)
    assert packet.payload is None and reply_to is None and timeout_ms is None


def test_a_field_given_twice_is_refused_but_a_payload_member_keeps_the_last():
    text = packet_text('{"k":1,"k":2}')
    assert _wire.decode(text)[0].payload == {"k": 2}
    for twice in [
        text.replace(b'"id":1,', b'"id":1,"id":2,'),
        text.replace(b'"method":"m"', b'"method":"m","method":"n"'),
        text.replace(
            b'"payload"', b'"reply_to":{"peer":"' + PEER.encode() + b'","id":1,"id":2},"payload"'
        ),
    ]:
        with pytest.raises(_wire.InvalidPacket, match="duplicate field"):
            _wire.decode(twice)
    _wire.decode(text.replace(b'"id":1,', b'"id":1,"x":1,"x":2,'))


@pytest.mark.parametrize(
    "spelling",
    [
        # Year 10000 in UTC: `astimezone` raises OverflowError, not ValueError.
        "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:59:59.999999999-00:01",
        # Year 0 in UTC (valid on the wire, but no Python datetime holds it).
        "0001-01-01T00:00:00+00:01",
        "0000-06-01T00:00:00Z",
        "+10000-01-01T00:59:59Z",
    ],
)
def test_times_outside_the_years_0000_to_9999_in_utc_are_not_packets(spelling):
    with pytest.raises(_wire.InvalidPacket, match="created_at|time"):
        _wire.decode(packet_text("null", created_at=spelling))
    # Inside a payload (a task), such a packet stays a plain object.
    task = packet_text("null", created_at=spelling).decode()
    assert isinstance(_wire.decode(packet_text(task))[0].payload, dict)


@pytest.mark.parametrize(
    "spelling, instant",
    [
        ("9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59.000000000Z"),
        ("0001-01-01T01:00:00+01:00", "0001-01-01T00:00:00.000000000Z"),
        ("0999-05-06T07:08:09Z", "0999-05-06T07:08:09.000000000Z"),
    ],
)
def test_the_edges_of_the_range_are_kept(spelling, instant):
    packet = _wire.decode(packet_text("null", created_at=spelling))[0]
    assert _wire.format_time(packet.created_at) == instant


def test_a_time_that_leaves_the_range_in_utc_is_not_sent():
    late = datetime.datetime(
        9999, 12, 31, 23, 59, tzinfo=datetime.timezone(-datetime.timedelta(hours=1))
    )
    packet = create_message_packet(PEER, 1, "m")._replace(created_at=late)
    with pytest.raises(ValueError, match="0000 to 9999"):
        _wire.encode(packet)
