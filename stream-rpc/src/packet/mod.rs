//! The message packet: what two peers exchange, one per frame.
//!
//! On the wire a packet is one UTF-8 JSON object, sealed into a Fernet token
//! (see `docs/PROTOCOL.md`). The field names are the ones of the Python
//! `stream_rpc` original (`peer`, `id`, `created_at`, `method`, `payload`),
//! plus the optional `reply_to` that correlates a reply with its request.

use std::fmt;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::metadata::Metadata;

/// The method name of an error packet. An error packet that completes no
/// pending call goes to the protocol's handler of this name, if it has one;
/// it is never answered with another error packet.
pub const ERROR_METHOD: &str = "error";

/// One message between two peers.
///
/// `payload` is any JSON value, including another packet: the queue example
/// stores a whole task packet as the payload of `put_in_queue`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Packet {
    /// The UUID of the peer that created the packet.
    pub peer: Uuid,
    /// The sender's request number: each peer numbers the packets it creates.
    pub id: u64,
    /// When the packet was created, in UTC (RFC 3339 with `Z` on the wire).
    #[serde(with = "time")]
    pub created_at: DateTime<Utc>,
    /// What the packet asks for; selects the handler on the receiving side.
    pub method: String,
    /// The method's data; `null` when the sender gave none.
    #[serde(default)]
    pub payload: Value,
    /// Set on a reply: the packet this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    /// Set on a call: how many milliseconds the caller waits for the
    /// answer, counted from when it sent the request. The receiver may drop
    /// the work once that long has passed since the request arrived: its
    /// caller has given up (PROTOCOL.md §5). Relative, not a time of day,
    /// so that the peers' clocks need not agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Per-call metadata (auth tokens, tenant ids, trace context) on a
    /// request: the `meta` field, absent when `None` or empty, and read
    /// as `None` when absent, `null` or `{}`. A `meta` that breaks a limit
    /// of [`Metadata`] makes the packet invalid. Handlers read it through
    /// [`Context::meta`](crate::Context::meta).
    #[serde(
        default,
        skip_serializing_if = "crate::metadata::is_absent",
        deserialize_with = "crate::metadata::read_option"
    )]
    pub meta: Option<Metadata>,
    /// Set on the packets of a stream only (PROTOCOL.md, "Streams"): the
    /// open (with the credit it grants) and the frames `stream.item`,
    /// `stream.credit`, `stream.end` and `stream.cancel` (naming the stream).
    /// Absent on every other packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamHeader>,
}

/// The `stream` field of a stream packet (PROTOCOL.md, "Streams").
///
/// On an open only [`credit`](Self::credit) is set (the output items the
/// opener grants at once); on the frames of a stream, `peer` and `id` name
/// the stream (its open packet's `peer` and `id`), with `seq` on
/// `stream.item` and `stream.end` and `credit` on `stream.credit`. Fields
/// that are `None` are left out of the JSON.
///
/// ```
/// use stream_rpc::StreamHeader;
///
/// let open = StreamHeader::open(32);
/// assert_eq!(open.credit, Some(32));
/// assert!(open.peer.is_none());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamHeader {
    /// The peer that opened the stream (its open packet's `peer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Uuid>,
    /// The open packet's `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The item's number in its flow, from 1 (`stream.item`); the number of
    /// items sent (`stream.end`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Items granted: on an open, the output items the opener takes at
    /// once; on `stream.credit`, how many more (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<u64>,
}

impl StreamHeader {
    /// The field of an open packet granting `credit` output items.
    pub fn open(credit: u64) -> Self {
        StreamHeader {
            credit: Some(credit),
            ..StreamHeader::default()
        }
    }

    /// The field of a frame of the stream opened by `stream` (the open's
    /// `peer` and `id`), without `seq` or `credit`: `stream.cancel`.
    pub fn frame(stream: ReplyTo) -> Self {
        StreamHeader {
            peer: Some(stream.peer),
            id: Some(stream.id),
            ..StreamHeader::default()
        }
    }

    /// [`frame`](Self::frame) with `seq` set: `stream.item`, `stream.end`.
    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }

    /// [`frame`](Self::frame) with `credit` set: `stream.credit`.
    pub fn with_credit(mut self, credit: u64) -> Self {
        self.credit = Some(credit);
        self
    }

    /// The stream this frame belongs to, when it names one (an open does
    /// not: it is named by its own `peer` and `id`).
    pub fn stream(&self) -> Option<ReplyTo> {
        Some(ReplyTo {
            peer: self.peer?,
            id: self.id?,
        })
    }
}

/// Names the packet a reply answers: its creator and its request number.
///
/// A receiver completes one of its own pending calls only when `peer` is its
/// own id, so a reply can never be mistaken for the answer to another peer's
/// packet (for example a task forwarded from a queue keeps its creator's id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The peer that created the answered packet.
    pub peer: Uuid,
    /// The answered packet's `id`.
    pub id: u64,
}

impl Packet {
    /// Builds a packet stamped with the current time, like the Python package's
    /// `create_message_packet(peer_id, request_number, method, payload)`.
    ///
    /// Inside a handler prefer [`Context::packet`](crate::Context::packet) or
    /// [`Connection::packet`](crate::Connection::packet), which fill in
    /// the session's own peer id and next request number.
    pub fn new(peer: Uuid, id: u64, method: impl Into<String>, payload: Value) -> Self {
        Packet::new_at(peer, id, method, payload, SystemTime::now())
    }

    /// [`Packet::new`] with the time already read, which the session also
    /// stamps the packet's token with.
    pub(crate) fn new_at(
        peer: Uuid,
        id: u64,
        method: impl Into<String>,
        payload: Value,
        now: SystemTime,
    ) -> Self {
        Packet {
            peer,
            id,
            created_at: DateTime::<Utc>::from(now),
            method: method.into(),
            payload,
            reply_to: None,
            timeout_ms: None,
            meta: None,
            stream: None,
        }
    }

    /// Whether this packet answers another one (it carries `reply_to`).
    pub fn is_reply(&self) -> bool {
        self.reply_to.is_some()
    }

    /// Whether this packet belongs to a stream (it carries `stream`): an
    /// open or a stream frame (PROTOCOL.md, "Streams").
    pub fn is_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// Whether this is an error packet (method [`ERROR_METHOD`]).
    pub fn is_error(&self) -> bool {
        self.method == ERROR_METHOD
    }

    /// The error this packet carries, if it is a well-formed error packet.
    pub fn error(&self) -> Option<ErrorPayload> {
        if !self.is_error() {
            return None;
        }
        ErrorPayload::deserialize(&self.payload).ok()
    }

    /// The [`ReplyTo`] that a reply to this packet carries.
    pub fn reply_address(&self) -> ReplyTo {
        ReplyTo {
            peer: self.peer,
            id: self.id,
        }
    }

    /// The payload as a typed value, e.g. a task packet carried by
    /// `put_in_queue`.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    /// Decodes a packet from the JSON plaintext of a token.
    ///
    /// The layout [`Packet::to_json`] writes (the fields in order, no
    /// spaces, no escapes in the fixed fields) is read directly; anything
    /// else goes through serde, which gives the same packet or the error.
    ///
    /// Beyond serde_json's checks, an integer that does not fit 64 bits
    /// (which serde_json would round to a float) and nesting deeper than
    /// 127 levels, counting the packet object, are errors (PROTOCOL.md §4).
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        if let Some(packet) = json::read(bytes) {
            return Ok(packet);
        }
        json::scan(bytes, json::MAX_DEPTH).map_err(|refusal| {
            <serde_json::Error as serde::de::Error>::custom(refusal.describe())
        })?;
        serde_json::from_slice(bytes)
    }

    /// Encodes the packet as the JSON plaintext of a token.
    ///
    /// The bytes are the same as `serde_json::to_vec(&packet)` gives; the
    /// fixed fields are written directly (a UUID, a number and a timestamp
    /// need no escaping), which halves the cost for a small packet.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        // Room for the fixed fields (peer, id, time, reply_to: about 200
        // bytes) so that a small packet is written without reallocating.
        let mut json = Vec::with_capacity(256 + self.method.len());
        self.write_json(&mut json)?;
        Ok(json)
    }

    /// [`to_json`](Self::to_json), appended to `json`.
    pub(crate) fn write_json(&self, json: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        json::write(self, json)
    }
}

/// The payload of an error packet: a stable machine-readable code and a
/// message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// A human-readable explanation, never a Rust debug dump.
    pub message: String,
    /// The method of the packet that failed, when it is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A typed service error, as the JSON of the method's error value
    /// (`docs/PROTOCOL.md`, typed services); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Whether trying the work again may succeed: `Some(false)` for an
    /// error that is final (a task failing with it goes dead at once,
    /// without its remaining attempts); absent (`None`) says nothing, and a
    /// task queue then retries by the task's policy (PROTOCOL.md, "Tasks").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<bool>,
}

/// The stable codes of error packets (`snake_case` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No handler takes the packet's method.
    UnknownMethod,
    /// The payload does not fit the handler's argument types.
    InvalidPayload,
    /// The plaintext decrypted but is not a valid packet.
    InvalidPacket,
    /// The handler ran and returned an error.
    HandlerError,
    /// The handler panicked; the connection goes on.
    HandlerPanicked,
    /// Too many handlers are already running on this connection.
    Busy,
    /// The token could not be checked against replays (a shared replay
    /// store's Redis is away): nothing was run; try again later, or on
    /// another server.
    Unavailable,
    /// A stream was opened to a method that is not a stream method: nothing
    /// was run.
    NotAStream,
    /// A plain call (no `stream` field) was made to a stream method: nothing
    /// was run.
    StreamRequired,
    /// A stream broke a rule of the protocol (an item beyond credit or after
    /// the end, a `seq` out of order, credit beyond the limit, ...): the
    /// stream ended.
    InvalidStream,
    /// The work was cancelled before it finished.
    Cancelled,
    /// The request carried no valid credentials: nothing was run.
    Unauthenticated,
    /// The request's credentials do not allow it: nothing was run.
    PermissionDenied,
    /// A code this version does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::InvalidPacket => "invalid_packet",
            ErrorCode::HandlerError => "handler_error",
            ErrorCode::HandlerPanicked => "handler_panicked",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotAStream => "not_a_stream",
            ErrorCode::StreamRequired => "stream_required",
            ErrorCode::InvalidStream => "invalid_stream",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// Whether an error packet with this code says that the request was
    /// not run: no handler took it (`unknown_method`), its payload or
    /// packet was refused before any handler ran (`invalid_payload`,
    /// `invalid_packet`), or the peer had no room or could not check it
    /// (`busy`, `unavailable`), it was a stream opened to a plain method or
    /// a plain call to a stream method (`not_a_stream`, `stream_required`),
    /// or its credentials were refused (`unauthenticated`,
    /// `permission_denied`). Such a request is safe to send again (the last
    /// two once the credentials are fixed). Every other code
    /// (`handler_error`, `handler_panicked`, `invalid_stream`, `cancelled`,
    /// and `unknown`, a code of a newer peer) may come from a handler that
    /// ran.
    ///
    /// ```
    /// use stream_rpc::ErrorCode;
    ///
    /// assert!(ErrorCode::Busy.did_not_run());
    /// assert!(!ErrorCode::HandlerError.did_not_run());
    /// ```
    pub fn did_not_run(self) -> bool {
        match self {
            ErrorCode::UnknownMethod
            | ErrorCode::InvalidPayload
            | ErrorCode::InvalidPacket
            | ErrorCode::Busy
            | ErrorCode::Unavailable
            | ErrorCode::NotAStream
            | ErrorCode::StreamRequired
            | ErrorCode::Unauthenticated
            | ErrorCode::PermissionDenied => true,
            ErrorCode::HandlerError
            | ErrorCode::HandlerPanicked
            | ErrorCode::InvalidStream
            | ErrorCode::Cancelled
            | ErrorCode::Unknown => false,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

mod json;
pub(crate) mod time;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SecondsFormat;
    use serde_json::json;

    fn sample() -> Packet {
        Packet::new(Uuid::new_v4(), 7, "ping", json!({"n": 1}))
    }

    #[test]
    fn wire_form_has_exactly_the_original_fields_and_a_z_timestamp() {
        let packet = sample();
        let value: Value = serde_json::from_slice(&packet.to_json().unwrap()).unwrap();
        let object = value.as_object().unwrap();
        let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["created_at", "id", "method", "payload", "peer"]);
        assert!(object["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(object["id"], json!(7));
    }

    #[test]
    fn round_trips_including_a_nested_packet_and_reply_to() {
        let inner = sample();
        let mut outer = Packet::new(
            Uuid::new_v4(),
            1,
            "put_in_queue",
            serde_json::to_value(&inner).unwrap(),
        );
        outer.reply_to = Some(inner.reply_address());
        let back = Packet::from_json(&outer.to_json().unwrap()).unwrap();
        assert_eq!(back, outer);
        let carried: Packet = serde_json::from_value(back.payload).unwrap();
        assert_eq!(carried, inner);
    }

    #[test]
    fn strings_are_escaped_as_serde_escapes_them_at_every_alignment() {
        let mut texts: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        let all: String = (0u8..0x80).map(char::from).collect();
        for shift in 0..9 {
            let pad = "p".repeat(shift);
            texts.push(format!("{pad}{all}é✓\u{7f}\u{10ffff}{pad}"));
            texts.push(format!("{pad}\"{pad}\\{pad}\n"));
            texts.push("x".repeat(1000 + shift));
        }
        for text in texts {
            let payload =
                json!({ text.clone(): [text.clone(), {"k": text.clone()}, 1.5, -2, null, true] });
            let packet = Packet::new(Uuid::nil(), 1, text.clone(), payload);
            let ours = packet.to_json().unwrap();
            assert_eq!(ours, serde_json::to_vec(&packet).unwrap(), "{text:?}");
            assert_eq!(Packet::from_json(&ours).unwrap(), packet);
        }
    }

    #[test]
    fn to_json_writes_what_serde_writes() {
        let inner = sample();
        let mut packets = vec![
            sample(),
            Packet::new(Uuid::nil(), 0, "", Value::Null),
            Packet::new(Uuid::max(), u64::MAX, "quote\" \\ \n é ✓", json!("\u{1}")),
            Packet::new(
                Uuid::new_v4(),
                10,
                "put_in_queue",
                serde_json::to_value(&inner).unwrap(),
            ),
        ];
        let mut reply = sample();
        reply.reply_to = Some(inner.reply_address());
        packets.push(reply);
        for id in [1, 9, 10, 99, 100, 12_345_678_901] {
            packets.push(Packet::new(Uuid::new_v4(), id, "n", json!(id)));
        }
        for packet in packets {
            let ours = packet.to_json().unwrap();
            assert_eq!(
                String::from_utf8(ours.clone()).unwrap(),
                serde_json::to_string(&packet).unwrap()
            );
            assert_eq!(Packet::from_json(&ours).unwrap(), packet);
            // Read directly, without serde, unless the method needs escapes.
            let plain = packet
                .method
                .bytes()
                .all(|b| b >= 0x20 && b != b'"' && b != b'\\');
            assert_eq!(json::read(&ours).is_some(), plain, "{packet:?}");
        }
    }

    #[test]
    fn the_stream_field_is_written_as_serde_writes_it_and_read_directly() {
        let peer = Uuid::new_v4();
        let stream = ReplyTo { peer, id: 9 };
        let headers = [
            StreamHeader::open(0),
            StreamHeader::open(32),
            StreamHeader::frame(stream).with_seq(1),
            StreamHeader::frame(stream).with_credit(65_536),
            StreamHeader::frame(stream),
            StreamHeader::default(),
            StreamHeader::frame(stream)
                .with_seq(u64::MAX)
                .with_credit(1),
        ];
        for header in headers {
            let mut packet = sample();
            packet.stream = Some(header);
            packet.timeout_ms = Some(5);
            let ours = packet.to_json().unwrap();
            assert_eq!(ours, serde_json::to_vec(&packet).unwrap(), "{header:?}");
            assert_eq!(json::read(&ours), Some(packet.clone()), "{header:?}");
            assert_eq!(Packet::from_json(&ours).unwrap(), packet);
        }
        // Other orders and spellings go through serde, to the same packet.
        let mut packet = sample();
        packet.stream = Some(StreamHeader::frame(stream).with_seq(3));
        let written = String::from_utf8(packet.to_json().unwrap()).unwrap();
        let reordered = written.replace(
            &format!(r#""stream":{{"peer":"{peer}","id":9,"seq":3}}"#),
            &format!(r#""stream":{{"seq":3,"id":9,"peer":"{peer}"}}"#),
        );
        assert_ne!(reordered, written);
        assert!(json::read(reordered.as_bytes()).is_none());
        assert_eq!(Packet::from_json(reordered.as_bytes()).unwrap(), packet);
        // Not a number: not a packet.
        let bad = written.replace(r#""seq":3"#, r#""seq":"3""#);
        assert!(Packet::from_json(bad.as_bytes()).is_err());
        assert!(!sample().is_stream() && packet.is_stream());
    }

    #[test]
    fn a_time_outside_the_four_digit_years_in_utc_is_no_packet_and_never_written() {
        let packet = sample();
        let written = String::from_utf8(packet.to_json().unwrap()).unwrap();
        let stamp = packet
            .created_at
            .to_rfc3339_opts(SecondsFormat::Nanos, true);
        assert!(written.contains(&stamp));
        // The slow path (an offset), the fast path's layout with year 9999
        // (in range), and the edges on either side.
        for (time, ok) in [
            ("9999-12-31T23:59:59-01:00", false),
            ("0000-01-01T00:00:00+00:01", false),
            ("9999-12-31T23:59:59.999999999Z", true),
            ("9999-12-31T23:59:59+01:00", true),
            ("0000-01-01T00:00:00.000000000Z", true),
        ] {
            let edited = written.replacen(&stamp, time, 1);
            let read = Packet::from_json(edited.as_bytes());
            assert_eq!(read.is_ok(), ok, "{time}: {read:?}");
            if let Err(e) = read {
                assert!(e.to_string().contains("0000 to 9999"), "{e}");
            }
        }
        // Built in code: the encoder refuses it rather than write `+10000-...`.
        use chrono::Datelike;
        let mut far = sample();
        far.created_at = "+10000-01-01T00:59:59Z".parse().unwrap();
        assert_eq!(far.created_at.year(), 10000);
        assert!(far.to_json().is_err());
        assert!(serde_json::to_vec(&far).is_err());
    }

    #[test]
    fn near_misses_of_the_written_layout_decode_as_serde_decodes_them() {
        let mut packet = Packet::new(
            "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap(),
            42,
            "ping",
            json!([1, {"k": "v"}]),
        );
        packet.created_at = "2026-11-24T04:34:14.507123456Z".parse().unwrap();
        packet.reply_to = Some(packet.reply_address());
        let written = String::from_utf8(packet.to_json().unwrap()).unwrap();
        assert!(json::read(written.as_bytes()).is_some());
        let edits: &[(&str, &str)] = &[
            ("\"id\":42", "\"id\":042"),
            ("\"id\":42", "\"id\":18446744073709551616"),
            ("\"id\":42", "\"id\":18446744073709551615"),
            ("\"id\":42", "\"id\":42.0"),
            ("\"id\":42", "\"id\":-0"),
            ("\"id\":42", "\"id\": 42"),
            ("\"id\":42", "\"id\":"),
            ("67e55044-10b1", "67E55044-10B1"),
            (
                "67e55044-10b1-426f-9247-bb680e5fe0c8\",\"id\":42,\"created",
                "67e5504410b1426f9247bb680e5fe0c8\",\"id\":42,\"created",
            ),
            ("\"ping\"", "\"pi\\ng\""),
            ("\"ping\"", "\"pi\\u006eg\""),
            ("\"ping\"", "\"pi\u{1}ng\""),
            ("\"ping\"", "\"pi\u{e9}ng\""),
            ("\"ping\"", "\"\""),
            ("\"ping\"", "null"),
            ("\"payload\":[", "\"payload\": ["),
            ("\"payload\":[1,{\"k\":\"v\"}]", "\"payload\":1e400"),
            ("\"payload\":[1,{\"k\":\"v\"}]", "\"payload\":7"),
            ("\"payload\":[1,{\"k\":\"v\"}]", "\"payload\":[1,"),
            ("\"payload\":[1,{\"k\":\"v\"}],", ""),
            ("T04:34:14.507123456Z", "T04:34:14.5Z"),
            ("T04:34:14.507123456Z", "T04:34:14.507123456+00:00"),
            ("2026-11-24T", "2026-02-30T"),
            (",\"reply_to\":{", ",\"reply_to\":null,\"x\":{"),
            ("}}", "}} "),
            ("}}", "}}x"),
            ("}}", "},\"peer\":\"67e55044-10b1-426f-9247-bb680e5fe0c8\"}"),
            ("{\"peer\"", " {\"peer\""),
        ];
        for (from, to) in edits {
            assert!(written.contains(from), "{from}");
            let edited = written.replacen(from, to, 1);
            // The same packet, or both refuse (with their own words: an
            // integer beyond 64 bits is named as such).
            let ours = Packet::from_json(edited.as_bytes()).ok();
            let serde = serde_json::from_str::<Packet>(&edited).ok();
            assert_eq!(ours, serde, "{edited}");
        }
    }

    /// A packet's JSON with `payload` as given, in the layout this crate
    /// writes and in another (spaces), so that both readers are tried.
    fn both_layouts(payload: &str) -> [String; 2] {
        let canonical = format!(
            r#"{{"peer":"67e55044-10b1-426f-9247-bb680e5fe0c8","id":1,"created_at":"2026-11-24T04:34:14.507123456Z","method":"m","payload":{payload}}}"#
        );
        let spaced = canonical.replace(r#","id":1"#, r#", "id": 1"#);
        [canonical, spaced]
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_not_rounded() {
        let refused = [
            "1180591620717411303425",
            "18446744073709551616",
            "-9223372036854775809",
            r#"{"task":{"n":[1,99999999999999999999]}}"#,
        ];
        for payload in refused {
            for text in both_layouts(payload) {
                let err = Packet::from_json(text.as_bytes()).unwrap_err();
                assert!(err.to_string().contains("2^64"), "{text}: {err}");
            }
        }
        let kept = [
            ("18446744073709551615", json!(u64::MAX)),
            ("-9223372036854775808", json!(i64::MIN)),
            ("1.1805916207174113e21", json!(1.1805916207174113e21)),
            ("100000000000000000000.0", json!(1e20)),
            (
                r#""12345678901234567890123""#,
                json!("12345678901234567890123"),
            ),
            (
                r#"["\"",123456789012345678]"#,
                json!(["\"", 123_456_789_012_345_678u64]),
            ),
        ];
        for (payload, value) in kept {
            for text in both_layouts(payload) {
                let packet = Packet::from_json(text.as_bytes()).unwrap();
                assert_eq!(packet.payload, value, "{text}");
            }
        }
    }

    #[test]
    fn nesting_is_limited_to_127_levels_counting_the_packet() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        for text in both_layouts(&nested(126)) {
            Packet::from_json(text.as_bytes()).unwrap();
        }
        for text in both_layouts(&nested(127)) {
            assert!(Packet::from_json(text.as_bytes()).is_err(), "{text}");
        }
        // Brackets inside strings are text, not nesting.
        let in_string = format!("[\"{}\"]", "[".repeat(500));
        for text in both_layouts(&in_string) {
            Packet::from_json(text.as_bytes()).unwrap();
        }
    }

    #[test]
    fn uuids_are_read_in_four_spellings_and_written_in_one() {
        let hyphenated = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        let [canonical, _] = both_layouts("null");
        for spelling in [
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "URN:UUID:67e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            let text = canonical.replace(hyphenated, spelling);
            let packet = Packet::from_json(text.as_bytes()).unwrap();
            assert_eq!(packet.peer.to_string(), hyphenated, "{spelling}");
            let written = String::from_utf8(packet.to_json().unwrap()).unwrap();
            assert!(written.contains(hyphenated), "{written}");
        }
        for spelling in [
            "{67e5504410b1426f9247bb680e5fe0c8}",
            "67e55044-10b1426f-9247-bb680e5fe0c8-",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
            "uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            " 67e55044-10b1-426f-9247-bb680e5fe0c8",
        ] {
            let text = canonical.replace(hyphenated, spelling);
            assert!(Packet::from_json(text.as_bytes()).is_err(), "{spelling}");
        }
    }

    #[test]
    fn created_at_takes_rfc_3339_with_any_offset() {
        let [canonical, _] = both_layouts("null");
        let written = "2026-11-24T04:34:14.507123456Z";
        for (spelling, instant) in [
            ("2026-11-24T05:34:14.507123456+01:00", written),
            ("2026-11-24t04:34:14.507123456z", written),
            ("2026-11-24T04:34:14Z", "2026-11-24T04:34:14.000000000Z"),
            (
                "2026-11-24T04:34:14.5-00:00",
                "2026-11-24T04:34:14.500000000Z",
            ),
            ("2026-11-24 04:34:14Z", "2026-11-24T04:34:14.000000000Z"),
        ] {
            let text = canonical.replace(written, spelling);
            let packet = Packet::from_json(text.as_bytes()).unwrap();
            let mut buf = [0u8; 30];
            assert_eq!(
                time::write(&packet.created_at, &mut buf).unwrap(),
                instant.as_bytes(),
                "{spelling}"
            );
        }
        for spelling in [
            "2026-11-24T04:34:14",
            "2026-11-24_04:34:14Z",
            "2026-11-24T04:34Z",
            "2026-11-24T04:34:14.Z",
            "20261124T043414Z",
        ] {
            let text = canonical.replace(written, spelling);
            assert!(Packet::from_json(text.as_bytes()).is_err(), "{spelling}");
        }
    }

    #[test]
    fn a_field_given_twice_is_refused_but_a_payload_member_keeps_the_last() {
        let [canonical, _] = both_layouts(r#"{"k":1,"k":2}"#);
        let packet = Packet::from_json(canonical.as_bytes()).unwrap();
        assert_eq!(packet.payload, json!({"k": 2}));
        for twice in [
            canonical.replace(r#""id":1,"#, r#""id":1,"id":2,"#),
            canonical.replace(r#""method":"m""#, r#""method":"m","method":"n""#),
            canonical.replace(
                r#""payload""#,
                r#""reply_to":{"peer":"67e55044-10b1-426f-9247-bb680e5fe0c8","id":1,"id":2},"payload""#,
            ),
        ] {
            let err = Packet::from_json(twice.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("duplicate field"), "{twice}: {err}");
        }
        // An unknown field given twice is ignored, like any unknown field.
        let extra = canonical.replace(r#""id":1,"#, r#""id":1,"x":1,"x":2,"#);
        Packet::from_json(extra.as_bytes()).unwrap();
    }

    #[test]
    fn unknown_fields_are_ignored_and_a_missing_payload_is_null() {
        let text = r#"{"peer":"67e55044-10b1-426f-9247-bb680e5fe0c8","id":3,
            "created_at":"2024-01-02T03:04:05+01:00","method":"ping","extra":[1,2]}"#;
        let packet = Packet::from_json(text.as_bytes()).unwrap();
        assert_eq!(packet.payload, Value::Null);
        assert_eq!(packet.created_at.to_rfc3339(), "2024-01-02T02:04:05+00:00");
    }

    #[test]
    fn missing_or_mistyped_fields_are_errors() {
        for text in [
            r#"{"id":3,"created_at":"2024-01-02T03:04:05Z","method":"ping"}"#,
            r#"{"peer":"not-a-uuid","id":3,"created_at":"2024-01-02T03:04:05Z","method":"ping"}"#,
            r#"{"peer":"67e55044-10b1-426f-9247-bb680e5fe0c8","id":-1,"created_at":"2024-01-02T03:04:05Z","method":"ping"}"#,
            r#"{"peer":"67e55044-10b1-426f-9247-bb680e5fe0c8","id":3,"created_at":"yesterday","method":"ping"}"#,
            r#"{"peer":"67e55044-10b1-426f-9247-bb680e5fe0c8","id":3,"created_at":"2024-01-02T03:04:05Z","method":5}"#,
            r#"[1,2,3]"#,
        ] {
            assert!(Packet::from_json(text.as_bytes()).is_err(), "{text}");
        }
    }

    #[test]
    fn display_cuts_long_payloads_on_a_character_boundary() {
        let mut packet = sample();
        packet.payload = Value::String("é".repeat(2000));
        let shown = packet.to_string();
        assert!(shown.contains("ping"));
        assert!(shown.len() < 700, "{}", shown.len());
        assert!(shown.ends_with("é…}"), "{shown}");
        packet.payload = json!({"short": true});
        assert!(packet.to_string().ends_with(r#"payload: {"short":true}}"#));
    }

    #[test]
    fn timestamps_are_written_like_chrono_writes_them() {
        for text in [
            "2026-11-24T04:34:14.507123456Z",
            "2024-02-29T23:59:59.000000000Z",
            "0001-01-01T00:00:00.000000001Z",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            let at: DateTime<Utc> = text.parse().unwrap();
            let mut buf = [0u8; 30];
            let ours = std::str::from_utf8(time::write(&at, &mut buf).unwrap()).unwrap();
            assert_eq!(ours, at.to_rfc3339_opts(SecondsFormat::Nanos, true));
            assert_eq!(ours, text);
        }
        for text in [
            "2026-11-24T04:34:14.507123456Z",
            "2024-02-29T23:59:59.000000000Z",
            "0001-01-01T00:00:00.000000001Z",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            let at: DateTime<Utc> = text.parse().unwrap();
            assert_eq!(time::read(text.as_bytes()), Some(at), "{text}");
        }
        // Anything else is left to chrono, which accepts or refuses it.
        for text in [
            "2026-11-24T04:34:14.507Z",
            "2026-11-24T04:34:14.507123456+00:00",
            "2023-02-29T00:00:00.000000000Z",
            "2026-13-01T00:00:00.000000000Z",
            "2026-11-24T24:00:00.000000000Z",
            "2026-11-24T04:34:60.000000000Z",
            "2026-11-24 04:34:14.507123456Z",
            "2026-11-24T04:34:14.50712345xZ",
            "+026-11-24T04:34:14.507123456Z",
        ] {
            assert_eq!(time::read(text.as_bytes()), None, "{text}");
        }
        let now = Utc::now();
        let mut buf = [0u8; 30];
        assert_eq!(
            time::write(&now, &mut buf).unwrap(),
            now.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes()
        );
    }

    #[test]
    fn meta_is_written_after_timeout_ms_in_key_order_and_read_by_both_paths() {
        let mut packet = sample();
        packet.timeout_ms = Some(5);
        let mut meta = Metadata::new();
        meta.insert("tenant", "acme \"quoted\" \n é").unwrap();
        meta.insert("authorization", "t").unwrap();
        packet.meta = Some(meta);
        let ours = String::from_utf8(packet.to_json().unwrap()).unwrap();
        assert_eq!(ours, serde_json::to_string(&packet).unwrap());
        assert!(
            ours.ends_with(
                r#""timeout_ms":5,"meta":{"authorization":"t","tenant":"acme \"quoted\" \n é"}}"#
            ),
            "{ours}"
        );
        // Read directly, and through serde when the layout differs.
        assert_eq!(json::read(ours.as_bytes()), Some(packet.clone()));
        let spaced = ours.replace(r#""meta":{"#, r#""meta": {"#);
        assert_eq!(json::read(spaced.as_bytes()), None);
        assert_eq!(Packet::from_json(spaced.as_bytes()).unwrap(), packet);
        // Empty or none: not written; `{}` and `null` read as none.
        packet.meta = Some(Metadata::new());
        let empty = String::from_utf8(packet.to_json().unwrap()).unwrap();
        assert!(!empty.contains("meta"), "{empty}");
        for absent in [r#","meta":{}}"#, r#","meta":null}"#] {
            let text = format!("{}{absent}", &empty[..empty.len() - 1]);
            assert_eq!(
                Packet::from_json(text.as_bytes()).unwrap().meta,
                None,
                "{text}"
            );
        }
    }

    #[test]
    fn a_meta_that_breaks_a_limit_is_no_packet_and_the_error_says_why() {
        let [canonical, _] = both_layouts("null");
        let with_meta =
            |meta: &str| format!("{},\"meta\":{meta}}}", &canonical[..canonical.len() - 1]);
        let many: Vec<String> = (0..33).map(|i| format!(r#""k{i}":"v""#)).collect();
        let big: Vec<String> = (0..9)
            .map(|i| format!(r#""k{i}":"{}""#, "x".repeat(1000)))
            .collect();
        for (meta, reason) in [
            (r#"{"Upper":"v"}"#.to_owned(), "is not 1 to 64 bytes"),
            (
                format!(r#"{{"{}":"v"}}"#, "k".repeat(65)),
                "is not 1 to 64 bytes",
            ),
            (
                format!(r#"{{"k":"{}"}}"#, "x".repeat(1025)),
                "more than 1024",
            ),
            (format!("{{{}}}", many.join(",")), "more than 32 entries"),
            (format!("{{{}}}", big.join(",")), "more than 8192"),
            (r#"{"k":1}"#.to_owned(), "expected a string"),
            (r#""k""#.to_owned(), "an object of strings"),
            (r#"{"k":"a","k":"b"}"#.to_owned(), "given twice"),
        ] {
            let text = with_meta(&meta);
            let err = Packet::from_json(text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(reason), "{meta}: {err}");
        }
        // At the limits: a packet.
        let at: Vec<String> = (0..32)
            .map(|i| format!(r#""k{i:02}":"{}""#, "x".repeat(250)))
            .collect();
        let text = with_meta(&format!("{{{}}}", at.join(",")));
        assert_eq!(
            Packet::from_json(text.as_bytes())
                .unwrap()
                .meta
                .unwrap()
                .len(),
            32
        );
    }

    #[test]
    fn error_codes_are_stable_snake_case_and_unknown_codes_parse() {
        let payload = ErrorPayload {
            code: ErrorCode::UnknownMethod,
            message: "no handler".into(),
            method: Some("nope".into()),
            data: None,
            retry: None,
        };
        let value = serde_json::to_value(&payload).unwrap();
        assert_eq!(value["code"], "unknown_method");
        assert!(value.get("retry").is_none(), "{value}");
        let permanent = ErrorPayload {
            retry: Some(false),
            ..payload.clone()
        };
        let value = serde_json::to_value(&permanent).unwrap();
        assert_eq!(value["retry"], false);
        assert_eq!(
            serde_json::from_value::<ErrorPayload>(value).unwrap(),
            permanent
        );
        let later: ErrorPayload =
            serde_json::from_value(json!({"code": "from_the_future", "message": "x"})).unwrap();
        assert_eq!(later.code, ErrorCode::Unknown);
        for code in [
            ErrorCode::UnknownMethod,
            ErrorCode::InvalidPayload,
            ErrorCode::InvalidPacket,
            ErrorCode::HandlerError,
            ErrorCode::HandlerPanicked,
            ErrorCode::Busy,
            ErrorCode::Unavailable,
            ErrorCode::NotAStream,
            ErrorCode::StreamRequired,
            ErrorCode::InvalidStream,
            ErrorCode::Cancelled,
            ErrorCode::Unauthenticated,
            ErrorCode::PermissionDenied,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
