//! The packet's JSON: written directly (the fixed fields need no escaping),
//! and read directly when it has the layout written here, with serde
//! deciding everything else.

use uuid::Uuid;

use super::Packet;
use super::time;

/// Writes `packet` as the JSON plaintext of a token, appended to `json`:
/// the same bytes as `serde_json::to_vec(packet)`.
pub(super) fn write(packet: &Packet, json: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    json.extend_from_slice(b"{\"peer\":");
    push_uuid(json, &packet.peer);
    json.extend_from_slice(b",\"id\":");
    push_u64(json, packet.id);
    json.extend_from_slice(b",\"created_at\":");
    let mut stamp = [0u8; 30];
    match time::write(&packet.created_at, &mut stamp) {
        Some(text) => {
            json.push(b'"');
            json.extend_from_slice(text);
            json.push(b'"');
        }
        None => time::serialize(
            &packet.created_at,
            &mut serde_json::Serializer::new(&mut *json),
        )?,
    }
    json.extend_from_slice(b",\"method\":");
    push_str(json, &packet.method);
    json.extend_from_slice(b",\"payload\":");
    push_value(json, &packet.payload)?;
    if let Some(to) = &packet.reply_to {
        json.extend_from_slice(b",\"reply_to\":{\"peer\":");
        push_uuid(json, &to.peer);
        json.extend_from_slice(b",\"id\":");
        push_u64(json, to.id);
        json.push(b'}');
    }
    if let Some(timeout) = packet.timeout_ms {
        json.extend_from_slice(b",\"timeout_ms\":");
        push_u64(json, timeout);
    }
    // (`meta` goes here, before `stream`.)
    if let Some(stream) = &packet.stream {
        push_stream(json, stream);
    }
    json.push(b'}');
    Ok(())
}

/// Writes the `stream` field as serde writes it: the fields that are set,
/// in the order `peer`, `id`, `seq`, `credit`.
fn push_stream(json: &mut Vec<u8>, stream: &super::StreamHeader) {
    json.extend_from_slice(b",\"stream\":{");
    let mut first = true;
    let mut key = |json: &mut Vec<u8>, name: &[u8]| {
        if !first {
            json.push(b',');
        }
        first = false;
        json.push(b'"');
        json.extend_from_slice(name);
        json.extend_from_slice(b"\":");
    };
    if let Some(peer) = &stream.peer {
        key(json, b"peer");
        push_uuid(json, peer);
    }
    for (name, value) in [
        (&b"id"[..], stream.id),
        (b"seq", stream.seq),
        (b"credit", stream.credit),
    ] {
        if let Some(value) = value {
            key(json, name);
            push_u64(json, value);
        }
    }
    json.push(b'}');
}

/// Writes `value` as serde_json writes it (the same bytes), with strings
/// escaped by [`push_str`]: a payload is mostly strings, and serde_json
/// looks at their bytes one at a time.
fn push_value(json: &mut Vec<u8>, value: &serde_json::Value) -> Result<(), serde_json::Error> {
    use serde_json::Value;
    match value {
        Value::String(text) => push_str(json, text),
        Value::Array(items) => {
            json.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    json.push(b',');
                }
                push_value(json, item)?;
            }
            json.push(b']');
        }
        Value::Object(members) => {
            json.push(b'{');
            for (index, (key, item)) in members.iter().enumerate() {
                if index > 0 {
                    json.push(b',');
                }
                push_str(json, key);
                json.push(b':');
                push_value(json, item)?;
            }
            json.push(b'}');
        }
        // Numbers, booleans and null in serde_json's own spelling.
        other => serde_json::to_writer(&mut *json, other)?,
    }
    Ok(())
}

/// Writes `text` as a JSON string, escaped exactly as serde_json escapes
/// it (`\"`, `\\`, `\b \f \n \r \t`, other control characters as
/// `\u00xx`; nothing else). Eight bytes are looked at at once: a run with
/// nothing to escape is copied whole.
fn push_str(json: &mut Vec<u8>, text: &str) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    /// Whether any byte of `word` is a control character, `"` or `\`.
    fn needs_escape(word: u64) -> bool {
        let zero_in = |x: u64| x.wrapping_sub(ONES) & !x;
        let control = word.wrapping_sub(ONES * 0x20) & !word;
        let quote = zero_in(word ^ (ONES * u64::from(b'"')));
        let backslash = zero_in(word ^ (ONES * u64::from(b'\\')));
        (control | quote | backslash) & HIGHS != 0
    }
    let bytes = text.as_bytes();
    json.reserve(bytes.len() + 2);
    json.push(b'"');
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        if let Some(chunk) = bytes.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            if !needs_escape(word) {
                at += 8;
                continue;
            }
        }
        let end = (at + 8).min(bytes.len());
        for index in at..end {
            let byte = bytes[index];
            let short = match byte {
                b'"' => b'"',
                b'\\' => b'\\',
                0x08 => b'b',
                0x0c => b'f',
                b'\n' => b'n',
                b'\r' => b'r',
                b'\t' => b't',
                0x00..=0x1f => b'u',
                _ => continue,
            };
            json.extend_from_slice(&bytes[copied..index]);
            copied = index + 1;
            json.push(b'\\');
            json.push(short);
            if short == b'u' {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                json.extend_from_slice(b"00");
                json.push(HEX[usize::from(byte >> 4)]);
                json.push(HEX[usize::from(byte & 0xf)]);
            }
        }
        at = end;
    }
    json.extend_from_slice(&bytes[copied..]);
    json.push(b'"');
}

/// Reads the layout [`write`] writes; `None` for anything else.
pub(super) fn read(bytes: &[u8]) -> Option<Packet> {
    canonical::read(bytes)
}

/// How deep a packet's JSON may nest arrays and objects, counting the
/// packet object itself (PROTOCOL.md §4): serde_json's own limit, which
/// refuses the 128th level.
pub(super) const MAX_DEPTH: usize = 127;

/// What [`scan`] refuses in JSON text that serde_json would take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// An integer literal outside `-2^63 ..= 2^64 - 1`, which serde_json
    /// would read as an inexact float (2^70 + 1 as 1.1805916207174113e21).
    WideInteger,
    /// Arrays and objects nested deeper than allowed.
    TooDeep,
}

impl Refusal {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Refusal::WideInteger => {
                "an integer outside -2^63 ..= 2^64-1 (such numbers are refused, not rounded)"
            }
            Refusal::TooDeep => "nested deeper than 127 levels, counting the packet object",
        }
    }
}

/// Scans JSON text for what the protocol refuses beyond serde_json's own
/// checks: integers that do not fit 64 bits, and arrays and objects nested
/// more than `max_depth` deep. Text that is not JSON passes (serde_json
/// then says what is wrong with it). Strings are skipped whole, so a long
/// string costs a search for its closing quote, not a look at each byte.
pub(super) fn scan(bytes: &[u8], max_depth: usize) -> Result<(), Refusal> {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' => {
                at += 1;
                loop {
                    let Some(found) = memchr::memchr2(b'"', b'\\', &bytes[at..]) else {
                        return Ok(());
                    };
                    at += found;
                    if bytes[at] == b'"' {
                        at += 1;
                        break;
                    }
                    // An escape: skip the backslash and the escaped byte.
                    at += 2;
                    if at > bytes.len() {
                        return Ok(());
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(Refusal::TooDeep);
                }
                at += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                at += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = at;
                at += 1;
                while bytes
                    .get(at)
                    .is_some_and(|b| matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
                {
                    at += 1;
                }
                let literal = &bytes[start..at];
                // Every integer of up to 18 digits fits; longer ones are
                // checked (u64::MAX has 20 digits, i64::MIN 19 and a sign).
                if literal.len() > 18 && !literal.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                    let text = std::str::from_utf8(literal).unwrap_or_default();
                    let fits = if literal[0] == b'-' {
                        text.parse::<i64>().is_ok()
                    } else {
                        text.parse::<u64>().is_ok()
                    };
                    if !fits {
                        return Err(Refusal::WideInteger);
                    }
                }
            }
            _ => at += 1,
        }
    }
    Ok(())
}

/// Reading the layout that [`Packet::to_json`] writes, without serde's
/// general machinery. Every step either matches exactly or gives up, and
/// the caller then lets serde decide, so this accepts a subset of what
/// serde accepts and decodes it to the same packet (checked by a property
/// test on random and mangled packets).
mod canonical {
    use serde_json::Value;
    use uuid::Uuid;

    use crate::packet::time;
    use crate::packet::{Packet, ReplyTo, StreamHeader};

    pub(super) fn read(bytes: &[u8]) -> Option<Packet> {
        let mut input = Input(bytes);
        input.literal(b"{\"peer\":\"")?;
        let peer = input.uuid()?;
        input.literal(b"\",\"id\":")?;
        let id = input.number()?;
        input.literal(b",\"created_at\":\"")?;
        let created_at = time::read(input.take(30)?)?;
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
        let timeout_ms = if input.literal(b",\"timeout_ms\":").is_some() {
            Some(input.number()?)
        } else {
            None
        };
        let stream = if input.literal(b",\"stream\":{").is_some() {
            Some(input.stream()?)
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
            timeout_ms,
            stream,
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

        /// The members of a `stream` field after its opening brace, in the
        /// order written (`peer`, `id`, `seq`, `credit`, each optional);
        /// consumes the closing brace.
        fn stream(&mut self) -> Option<StreamHeader> {
            let mut header = StreamHeader::default();
            let mut first = true;
            if self.member(b"\"peer\":\"", &mut first) {
                header.peer = Some(self.uuid()?);
                self.literal(b"\"")?;
            }
            if self.member(b"\"id\":", &mut first) {
                header.id = Some(self.number()?);
            }
            if self.member(b"\"seq\":", &mut first) {
                header.seq = Some(self.number()?);
            }
            if self.member(b"\"credit\":", &mut first) {
                header.credit = Some(self.number()?);
            }
            self.literal(b"}")?;
            Some(header)
        }

        /// Consumes the start of an object member named by `name` (with
        /// its comma unless it is the `first`), if that comes next.
        fn member(&mut self, name: &[u8], first: &mut bool) -> bool {
            let rest = if *first {
                Some(self.0)
            } else {
                self.0.strip_prefix(b",")
            };
            match rest.and_then(|rest| rest.strip_prefix(name)) {
                Some(after) => {
                    self.0 = after;
                    *first = false;
                    true
                }
                None => false,
            }
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

        /// One JSON value, by serde_json, inside the packet object: a
        /// value [`scan`](super::scan) refuses is left to the general path,
        /// which refuses it with the reason.
        fn value(&mut self) -> Option<Value> {
            // A value with spaces before it is not this layout.
            if self.0.first().is_some_and(u8::is_ascii_whitespace) {
                return None;
            }
            let mut values = serde_json::Deserializer::from_slice(self.0).into_iter::<Value>();
            let value = values.next()?.ok()?;
            let (text, rest) = self.0.split_at_checked(values.byte_offset())?;
            super::scan(text, super::MAX_DEPTH - 1).ok()?;
            self.0 = rest;
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
fn push_u64(json: &mut Vec<u8>, value: u64) {
    json.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}
