//! How packets show in log lines: `Send: {method: "ping", id: 0, ...}`.

use std::fmt;

use crate::packet::{Packet, time};

/// The most payload bytes a log line shows before it is cut.
const LOG_PAYLOAD_BYTES: usize = 512;

/// A packet as a log line shows it: method, id, peer, time and
/// correlation, and the payload (cut at 512 bytes) unless it is left out.
/// Written without allocating.
#[derive(Debug, Clone, Copy)]
pub struct LogLine<'a> {
    packet: &'a Packet,
    payload: bool,
}

impl Packet {
    /// How a log line shows this packet: with its payload (cut at 512
    /// bytes), or without.
    pub fn log_line(&self, payload: bool) -> LogLine<'_> {
        LogLine {
            packet: self,
            payload,
        }
    }
}

/// Shows the packet readably for logs, payload included (see [`LogLine`]). A
/// long payload is cut while it is being rendered, so a log line costs the
/// same for a 1 MiB payload as for a small one.
impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.log_line(true).fmt(f)
    }
}

impl fmt::Display for LogLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let packet = self.packet;
        // The method is the peer's text: escaped, so that it cannot start a
        // line of its own, and cut.
        write!(
            f,
            "{{method: {:?}, id: {}, peer: {}, created_at: ",
            super::Escaped::method(&packet.method),
            packet.id,
            packet.peer
        )?;
        let mut stamp = [0u8; 24];
        match time::write_millis(&packet.created_at, &mut stamp) {
            Some(text) => f.write_str(text)?,
            None => write!(
                f,
                "{}",
                packet
                    .created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )?,
        }
        if let Some(to) = &packet.reply_to {
            write!(f, ", reply_to: {}#{}", to.peer, to.id)?;
        }
        if let Some(timeout) = packet.timeout_ms {
            write!(f, ", timeout_ms: {timeout}")?;
        }
        if let Some(stream) = &packet.stream {
            f.write_str(", stream:")?;
            if let Some(to) = stream.stream() {
                write!(f, " {}#{}", to.peer, to.id)?;
            }
            if let Some(seq) = stream.seq {
                write!(f, " seq {seq}")?;
            }
            if let Some(credit) = stream.credit {
                write!(f, " credit {credit}")?;
            }
        }
        if self.payload {
            f.write_str(", payload: ")?;
            let mut capped = Capped {
                out: f,
                left: LOG_PAYLOAD_BYTES,
                failed: false,
            };
            let cut = serde_json::to_writer(&mut capped, &packet.payload).is_err();
            if capped.failed {
                return Err(fmt::Error);
            }
            if cut {
                f.write_str("…")?;
            }
        }
        f.write_str("}")
    }
}

/// Writes JSON straight into the formatter until `left` bytes are
/// written, then fails, which stops the serializer early.
struct Capped<'f, 'a> {
    out: &'f mut fmt::Formatter<'a>,
    left: usize,
    /// The formatter itself failed (as opposed to the cut).
    failed: bool,
}

impl std::io::Write for Capped<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // serde_json writes whole characters per call; a cut inside one
        // keeps what comes before it.
        let take = buf.len().min(self.left);
        let text = match std::str::from_utf8(&buf[..take]) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&buf[..e.valid_up_to()]).unwrap_or_default(),
        };
        if self.out.write_str(text).is_err() {
            self.failed = true;
            return Err(std::io::Error::other("log line not written"));
        }
        self.left -= text.len();
        if take < buf.len() || text.len() < take {
            return Err(std::io::Error::other("log payload cut"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
