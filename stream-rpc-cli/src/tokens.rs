//! Tokens from a shell: `decode` opens them, `seal` makes them.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use stream_rpc::{Cipher, CipherError, Fernet, Value};

use crate::{DecodeArgs, FAILED, Failure, REFUSED, SealArgs, key};

/// How much of a token that does not open is shown, in characters.
const SHOWN_CHARS: usize = 16;

/// The fields a packet must have (`payload` may be left out: `null`).
const PACKET_FIELDS: [&str; 4] = ["peer", "id", "created_at", "method"];

/// The fields of [`PACKET_FIELDS`] that `value` lacks.
pub fn missing_fields(value: &Value) -> Vec<&'static str> {
    PACKET_FIELDS
        .into_iter()
        .filter(|field| value.get(field).is_none())
        .collect()
}

/// The time a Fernet token was sealed: its bytes 1 to 8, the first 12
/// characters of its text (9 bytes).
fn token_time(token: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u128 = 0;
    for byte in token.as_bytes().get(..12)? {
        let value = ALPHABET.iter().position(|c| c == byte)?;
        bits = (bits << 6) | value as u128;
    }
    // 72 bits: the version byte, then the 8-byte timestamp.
    let seconds = (bits & u128::from(u64::MAX)) as u64;
    chrono::DateTime::from_timestamp(i64::try_from(seconds).ok()?, 0)
}

pub fn decode(key_file: Option<PathBuf>, args: DecodeArgs) -> Result<u8, Failure> {
    let key = key(key_file)?;
    let ttl = (!args.no_ttl).then_some(args.ttl);
    let fernet = Fernet::new(&key)?.with_ttl(ttl);
    let mut status = 0;
    let mut out = std::io::stdout().lock();
    // Whatever the input, nothing here panics: tokens are any text, and
    // output that cannot be written (a closed pipe) ends the command.
    let one = |token: &str| -> Result<(), Failure> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(());
        }
        match fernet.decrypt(token.as_bytes()) {
            Ok(plain) => {
                let packet: Value = serde_json::from_slice(&plain).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&plain).into_owned())
                });
                let time = token_time(token).map(|at| at.to_rfc3339());
                let shown = serde_json::json!({ "token_time": time, "packet": packet });
                let pretty = serde_json::to_string_pretty(&shown).unwrap_or_default();
                writeln!(out, "{pretty}").map_err(|e| format!("cannot write stdout: {e}"))?;
            }
            Err(e) => {
                let why = match e {
                    CipherError::Malformed(what) => format!("malformed ({what})"),
                    CipherError::BadSignature => "wrong key or tampered (bad signature)".to_owned(),
                    other => other.to_string(),
                };
                // The first 16 characters (not bytes: any text may come),
                // with control characters escaped.
                let shown: String = token
                    .chars()
                    .take(SHOWN_CHARS)
                    .flat_map(char::escape_debug)
                    .collect();
                let _ = writeln!(std::io::stderr(), "{shown}…: does not open: {why}");
                status = REFUSED;
            }
        }
        Ok(())
    };
    // Lines of bytes: a line that is not UTF-8 is a token that does not
    // open, not the end of the input.
    each_input(&args.tokens, "tokens", one)?;
    Ok(status)
}

/// Reads lines of stdin, or takes `arguments` when there are any, and
/// gives each to `one`.
fn each_input(
    arguments: &[String],
    what: &str,
    mut one: impl FnMut(&str) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if !arguments.is_empty() {
        return arguments.iter().try_for_each(|argument| one(argument));
    }
    if std::io::stdin().is_terminal() {
        let _ = writeln!(
            std::io::stderr(),
            "reading {what} from stdin, one per line (Ctrl-D ends)"
        );
    }
    for line in std::io::stdin().lock().split(b'\n') {
        let line = line.map_err(|e| format!("cannot read stdin: {e}"))?;
        one(&String::from_utf8_lossy(&line))?;
    }
    Ok(())
}

/// Seals packets into tokens: the pair of [`decode`].
pub fn seal(key_file: Option<PathBuf>, args: SealArgs) -> Result<u8, Failure> {
    let fernet = Fernet::new(&key(key_file)?)?;
    let mut out = std::io::stdout().lock();
    each_input(&args.packets, "packets", |text| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let text = match text.strip_prefix('@') {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read the packet file {file}: {e}"))?,
            None => text.to_owned(),
        };
        let mut packet: Value = serde_json::from_str(&text)
            .map_err(|e| Failure(FAILED, format!("the packet is not JSON: {e}")))?;
        // What `decode` prints: the packet is inside.
        if let Some(inner) = packet
            .get_mut("packet")
            .filter(|_| packet_is_wrapped(&text))
        {
            packet = inner.take();
        }
        let missing = missing_fields(&packet);
        if !packet.is_object() || !missing.is_empty() {
            return Err(Failure(
                FAILED,
                format!(
                    "not a packet: it lacks {} (a packet is {{\"peer\": UUID, \"id\": N, \
                     \"created_at\": TIME, \"method\": M, \"payload\": ...}})",
                    if packet.is_object() {
                        missing.join(", ")
                    } else {
                        "every field".into()
                    }
                ),
            ));
        }
        // Checked as a packet, sealed as it was given.
        serde_json::from_value::<stream_rpc::Packet>(packet.clone())
            .map_err(|e| Failure(FAILED, format!("not a packet: {e}")))?;
        let plain = serde_json::to_vec(&packet)?;
        let token = fernet.encrypt(&plain)?;
        out.write_all(&token)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| format!("cannot write stdout: {e}"))?;
        Ok(())
    })?;
    Ok(0)
}

/// Whether `text` is `decode`'s output: an object of `token_time` and
/// `packet`.
fn packet_is_wrapped(text: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, Value>>(text).is_ok_and(|object| {
        object
            .keys()
            .all(|key| key == "packet" || key == "token_time")
    })
}
