//! The message packet: what two peers exchange, one per frame.
//!
//! On the wire a packet is one UTF-8 JSON object, sealed into a Fernet token
//! (see `docs/PROTOCOL.md`). The field names are the ones of the Python
//! `stream_rpc` original (`peer`, `id`, `created_at`, `method`, `payload`),
//! plus the optional `reply_to` that correlates a reply with its request.

use std::fmt;
use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

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
    #[serde(with = "rfc3339_utc")]
    pub created_at: DateTime<Utc>,
    /// What the packet asks for; selects the handler on the receiving side.
    pub method: String,
    /// The method's data; `null` when the sender gave none.
    #[serde(default)]
    pub payload: Value,
    /// Set on a reply: the packet this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
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
    /// Builds a packet stamped with the current time, like the seed's
    /// `create_message_packet(peer_id, request_number, method, payload)`.
    ///
    /// Inside a handler prefer [`Context::packet`](crate::Context::packet) or
    /// [`SessionHandle::packet`](crate::SessionHandle::packet), which fill in
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
        }
    }

    /// Whether this packet answers another one (it carries `reply_to`).
    pub fn is_reply(&self) -> bool {
        self.reply_to.is_some()
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
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        match canonical::read(bytes) {
            Some(packet) => Ok(packet),
            None => serde_json::from_slice(bytes),
        }
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
        json.extend_from_slice(b"{\"peer\":");
        push_uuid(json, &self.peer);
        json.extend_from_slice(b",\"id\":");
        push_u64(json, self.id);
        json.extend_from_slice(b",\"created_at\":");
        let mut stamp = [0u8; 30];
        match rfc3339_utc::write(&self.created_at, &mut stamp) {
            Some(text) => {
                json.push(b'"');
                json.extend_from_slice(text);
                json.push(b'"');
            }
            None => rfc3339_utc::serialize(
                &self.created_at,
                &mut serde_json::Serializer::new(&mut *json),
            )?,
        }
        json.extend_from_slice(b",\"method\":");
        serde_json::to_writer(&mut *json, &self.method)?;
        json.extend_from_slice(b",\"payload\":");
        serde_json::to_writer(&mut *json, &self.payload)?;
        if let Some(to) = &self.reply_to {
            json.extend_from_slice(b",\"reply_to\":{\"peer\":");
            push_uuid(json, &to.peer);
            json.extend_from_slice(b",\"id\":");
            push_u64(json, to.id);
            json.push(b'}');
        }
        json.push(b'}');
        Ok(())
    }
}

/// Reading the layout that [`Packet::to_json`] writes, without serde's
/// general machinery. Every step either matches exactly or gives up, and
/// the caller then lets serde decide, so this accepts a subset of what
/// serde accepts and decodes it to the same packet (checked by a property
/// test on random and mangled packets).
mod canonical {
    use serde_json::Value;
    use uuid::Uuid;

    use super::{Packet, ReplyTo, rfc3339_utc};

    pub(super) fn read(bytes: &[u8]) -> Option<Packet> {
        let mut input = Input(bytes);
        input.literal(b"{\"peer\":\"")?;
        let peer = input.uuid()?;
        input.literal(b"\",\"id\":")?;
        let id = input.number()?;
        input.literal(b",\"created_at\":\"")?;
        let created_at = rfc3339_utc::read(input.take(30)?)?;
        input.literal(b"\",\"method\":\"")?;
        let method = input.plain_string()?;
        input.literal(b",\"payload\":")?;
        let payload = input.value()?;
        let reply_to = if input.literal(b",\"reply_to\":{\"peer\":\"").is_some() {
            let peer = input.uuid()?;
            input.literal(b"\",\"id\":")?;
            let id = input.number()?;
            input.literal(b"}")?;
            Some(ReplyTo { peer, id })
        } else {
            None
        };
        input.literal(b"}")?;
        input.0.is_empty().then_some(Packet {
            peer,
            id,
            created_at,
            method,
            payload,
            reply_to,
        })
    }

    /// What is left to read.
    struct Input<'a>(&'a [u8]);

    impl<'a> Input<'a> {
        fn take(&mut self, len: usize) -> Option<&'a [u8]> {
            let (taken, rest) = self.0.split_at_checked(len)?;
            self.0 = rest;
            Some(taken)
        }

        fn literal(&mut self, expected: &[u8]) -> Option<()> {
            let rest = self.0.strip_prefix(expected)?;
            self.0 = rest;
            Some(())
        }

        /// A hyphenated UUID (the closing quote is left).
        fn uuid(&mut self) -> Option<Uuid> {
            Uuid::try_parse_ascii(self.take(36)?).ok()
        }

        /// A JSON number that is a whole `u64`: digits, no leading zero.
        fn number(&mut self) -> Option<u64> {
            let digits = self
                .0
                .iter()
                .take_while(|byte| byte.is_ascii_digit())
                .count();
            let text = self.take(digits)?;
            if text.is_empty() || (text.len() > 1 && text[0] == b'0') {
                return None;
            }
            text.iter().try_fold(0u64, |value, &digit| {
                value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
            })
        }

        /// The rest of a string after its opening quote, when it has no
        /// escapes and no control characters; consumes the closing quote.
        fn plain_string(&mut self) -> Option<String> {
            let end = memchr::memchr(b'"', self.0)?;
            let text = &self.0[..end];
            if text.iter().any(|&byte| byte == b'\\' || byte < 0x20) {
                return None;
            }
            let text = std::str::from_utf8(text).ok()?.to_owned();
            self.0 = &self.0[end + 1..];
            Some(text)
        }

        /// One JSON value, by serde_json.
        fn value(&mut self) -> Option<Value> {
            // A value with spaces before it is not this layout.
            if self.0.first().is_some_and(u8::is_ascii_whitespace) {
                return None;
            }
            let mut values = serde_json::Deserializer::from_slice(self.0).into_iter::<Value>();
            let value = values.next()?.ok()?;
            self.0 = self.0.get(values.byte_offset()..)?;
            Some(value)
        }
    }
}

/// A UUID as a JSON string, hyphenated and lower case, as `uuid`'s serde
/// support writes it.
fn push_uuid(json: &mut Vec<u8>, uuid: &Uuid) {
    let mut text = Uuid::encode_buffer();
    json.push(b'"');
    json.extend_from_slice(uuid.hyphenated().encode_lower(&mut text).as_bytes());
    json.push(b'"');
}

/// A number in decimal, as JSON writes it.
fn push_u64(json: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    json.extend_from_slice(&digits[start..]);
}

/// The most payload bytes a log line shows before it is cut.
const LOG_PAYLOAD_BYTES: usize = 512;

/// Shows the packet readably for logs: method, id, peer, correlation, time
/// and payload. A long payload is cut while it is being rendered, so a log
/// line costs the same for a 1 MiB payload as for a small one.
impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{method: {:?}, id: {}, peer: {}, created_at: {}",
            self.method,
            self.id,
            self.peer,
            self.created_at.to_rfc3339_opts(SecondsFormat::Millis, true)
        )?;
        if let Some(to) = &self.reply_to {
            write!(f, ", reply_to: {}#{}", to.peer, to.id)?;
        }
        let mut shown = Capped {
            bytes: Vec::with_capacity(64),
            cap: LOG_PAYLOAD_BYTES,
        };
        let cut = serde_json::to_writer(&mut shown, &self.payload).is_err();
        let text = match std::str::from_utf8(&shown.bytes) {
            Ok(text) => text,
            // Cut inside a character: show up to the last whole one.
            Err(e) => std::str::from_utf8(&shown.bytes[..e.valid_up_to()]).unwrap_or_default(),
        };
        let more = if cut { "…" } else { "" };
        write!(f, ", payload: {text}{more}}}")
    }
}

/// A writer that keeps the first `cap` bytes and then fails, which stops the
/// serializer early.
struct Capped {
    bytes: Vec<u8>,
    cap: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.cap - self.bytes.len();
        if buf.len() > room {
            self.bytes.extend_from_slice(&buf[..room]);
            return Err(std::io::Error::other("log payload cut"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `created_at` as RFC 3339 in UTC with a `Z`; any RFC 3339 offset is
/// accepted on input and converted to UTC.
mod rfc3339_utc {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 30];
        match write(at, &mut buf).and_then(|text| std::str::from_utf8(text).ok()) {
            Some(text) => s.serialize_str(text),
            None => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Nanos, true)),
        }
    }

    /// Where `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` has its separators.
    const PUNCTUATION: [(usize, u8); 7] = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (29, b'Z'),
    ];

    /// Writes `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (ASCII) without allocating
    /// (it runs for every packet); `None` outside years 0 to 9999 or on a
    /// leap second, which the caller leaves to chrono.
    pub(super) fn write<'b>(at: &DateTime<Utc>, buf: &'b mut [u8; 30]) -> Option<&'b [u8; 30]> {
        use chrono::{Datelike, Timelike};
        // The UTC fields directly: `DateTime`'s own accessors apply the
        // (zero) offset again for each field.
        let at = at.naive_utc();
        let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
        let nanos = at.nanosecond();
        if nanos >= 1_000_000_000 {
            return None;
        }
        let mut put = |at: usize, value: u32, width: usize| {
            let mut value = value;
            for slot in buf[at..at + width].iter_mut().rev() {
                *slot = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, year, 4);
        put(5, at.month(), 2);
        put(8, at.day(), 2);
        put(11, at.hour(), 2);
        put(14, at.minute(), 2);
        put(17, at.second(), 2);
        put(20, nanos, 9);
        for (index, byte) in PUNCTUATION {
            buf[index] = byte;
        }
        Some(buf)
    }

    /// Reads the form [`write`] writes, the one every packet of this crate
    /// carries, without chrono's general parser; `None` for anything else.
    pub(super) fn read(text: &[u8]) -> Option<DateTime<Utc>> {
        use chrono::NaiveDate;
        let bytes: &[u8; 30] = text.try_into().ok()?;
        if PUNCTUATION.iter().any(|&(at, byte)| bytes[at] != byte) {
            return None;
        }
        let number = |at: usize, width: usize| -> Option<u32> {
            bytes[at..at + width].iter().try_fold(0u32, |value, &byte| {
                byte.is_ascii_digit()
                    .then(|| value * 10 + u32::from(byte - b'0'))
            })
        };
        let year = i32::try_from(number(0, 4)?).ok()?;
        let date = NaiveDate::from_ymd_opt(year, number(5, 2)?, number(8, 2)?)?;
        let second = number(17, 2)?;
        // A leap second (60) is left to chrono's parser.
        if second > 59 {
            return None;
        }
        let time = date.and_hms_nano_opt(number(11, 2)?, number(14, 2)?, second, number(20, 9)?)?;
        Some(time.and_utc())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if let Some(at) = read(text.as_bytes()) {
            return Ok(at);
        }
        DateTime::parse_from_rfc3339(&text)
            .map(|at| at.with_timezone(&Utc))
            .map_err(|e| D::Error::custom(format_args!("created_at is not RFC 3339: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Packet {
        Packet::new(Uuid::new_v4(), 7, "ping", json!({"n": 1}))
    }

    #[test]
    fn wire_form_has_exactly_the_seed_fields_and_a_z_timestamp() {
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
    fn to_json_writes_what_serde_writes() {
        use chrono::Datelike;
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
        let mut far = sample();
        far.created_at = "+12345-01-01T00:00:00Z".parse().unwrap();
        packets.push(far);
        for id in [1, 9, 10, 99, 100, 12_345_678_901] {
            packets.push(Packet::new(Uuid::new_v4(), id, "n", json!(id)));
        }
        for packet in packets {
            let ours = packet.to_json().unwrap();
            assert_eq!(
                String::from_utf8(ours.clone()).unwrap(),
                serde_json::to_string(&packet).unwrap()
            );
            // A year past 9999 is written (chrono's way) but is not RFC 3339.
            if packet.created_at.year() <= 9999 {
                assert_eq!(Packet::from_json(&ours).unwrap(), packet);
            }
            // Read directly, without serde, unless the method needs escapes.
            let plain = packet
                .method
                .bytes()
                .all(|b| b >= 0x20 && b != b'"' && b != b'\\');
            let direct = plain && packet.created_at.year() <= 9999;
            assert_eq!(canonical::read(&ours).is_some(), direct, "{packet:?}");
        }
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
        assert!(canonical::read(written.as_bytes()).is_some());
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
            let ours = Packet::from_json(edited.as_bytes()).map_err(|e| e.to_string());
            let serde = serde_json::from_str::<Packet>(&edited).map_err(|e| e.to_string());
            assert_eq!(ours, serde, "{edited}");
        }
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
            let ours = std::str::from_utf8(rfc3339_utc::write(&at, &mut buf).unwrap()).unwrap();
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
            assert_eq!(rfc3339_utc::read(text.as_bytes()), Some(at), "{text}");
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
            assert_eq!(rfc3339_utc::read(text.as_bytes()), None, "{text}");
        }
        let now = Utc::now();
        let mut buf = [0u8; 30];
        assert_eq!(
            rfc3339_utc::write(&now, &mut buf).unwrap(),
            now.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes()
        );
    }

    #[test]
    fn error_codes_are_stable_snake_case_and_unknown_codes_parse() {
        let payload = ErrorPayload {
            code: ErrorCode::UnknownMethod,
            message: "no handler".into(),
            method: Some("nope".into()),
            data: None,
        };
        let value = serde_json::to_value(&payload).unwrap();
        assert_eq!(value["code"], "unknown_method");
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
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
