//! Framing: one token per line, with a bounded frame length.
//!
//! A frame is a token followed by the terminator (`\n` unless configured
//! otherwise). The decoder never buffers more than the maximum frame length
//! plus the terminator: an over-long frame is reported once as
//! [`CodecError::FrameTooLong`] and its bytes are then discarded up to the
//! next terminator, after which decoding goes on. The session counts such a
//! frame as a bad frame and keeps the connection (see `docs/PROTOCOL.md`).
//!
//! A `\r` just before the terminator is dropped, and empty lines are skipped.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The default frame terminator, as in the Python package (`STREAM_RPC_TERM`).
pub const DEFAULT_TERMINATOR: &[u8] = b"\n";
/// The default maximum frame length: 1 MiB, terminator excluded.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024 * 1024;

/// What can go wrong while framing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame is longer than the maximum; its bytes are skipped up to the
    /// next terminator.
    #[error("frame longer than the maximum of {max} bytes")]
    FrameTooLong {
        /// The configured maximum frame length.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame ({len} bytes unterminated)")]
    Unterminated {
        /// How many bytes of the unfinished frame had arrived.
        len: usize,
    },
    /// An outgoing token contains the terminator and would split in two.
    #[error("outgoing frame contains the terminator")]
    TerminatorInFrame,
    /// Reading or writing the stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A [`tokio_util::codec`] codec for terminator-separated frames.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    terminator: Box<[u8]>,
    max_len: usize,
    /// Where the search for the terminator resumes in the buffer.
    searched: usize,
    /// Skipping the rest of an over-long frame.
    discarding: bool,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_TERMINATOR, DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameCodec {
    /// A codec with the given terminator and maximum frame length.
    ///
    /// The terminator must not be empty; [`ConfigBuilder`](crate::ConfigBuilder)
    /// checks that. An empty one is replaced by `\n` rather than panicking.
    pub fn new(terminator: &[u8], max_len: usize) -> Self {
        let terminator = if terminator.is_empty() {
            DEFAULT_TERMINATOR
        } else {
            terminator
        };
        FrameCodec {
            terminator: terminator.into(),
            max_len,
            searched: 0,
            discarding: false,
        }
    }

    /// The maximum frame length, terminator excluded.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The frame terminator.
    pub fn terminator(&self) -> &[u8] {
        &self.terminator
    }

    /// The most bytes a frame plus its terminator may occupy (a tolerated
    /// `\r` included).
    fn window(&self) -> usize {
        self.max_len
            .saturating_add(1)
            .saturating_add(self.terminator.len())
    }

    /// Looks for the terminator in `buf[from..end]`.
    fn find_terminator(&self, buf: &[u8], from: usize, end: usize) -> Option<usize> {
        let hay = buf.get(from..end)?;
        match *self.terminator {
            [byte] => memchr::memchr(byte, hay),
            ref many => memchr::memmem::find(hay, many),
        }
        .map(|at| at + from)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        let overlap = self.terminator.len() - 1;
        loop {
            let from = self.searched.saturating_sub(overlap);
            if self.discarding {
                // Skip the rest of an over-long frame, keeping nothing but a
                // possible partial terminator at the end.
                match self.find_terminator(buf, from, buf.len()) {
                    Some(at) => {
                        buf.advance(at + self.terminator.len());
                        self.searched = 0;
                        self.discarding = false;
                        continue;
                    }
                    None => {
                        buf.advance(buf.len().saturating_sub(overlap));
                        self.searched = buf.len();
                        return Ok(None);
                    }
                }
            }
            let end = buf.len().min(self.window());
            match self.find_terminator(buf, from, end) {
                Some(at) => {
                    self.searched = 0;
                    let mut frame = buf.split_to(at);
                    buf.advance(self.terminator.len());
                    if frame.last() == Some(&b'\r') {
                        frame.truncate(frame.len() - 1);
                    }
                    if frame.len() > self.max_len {
                        return Err(CodecError::FrameTooLong { max: self.max_len });
                    }
                    if frame.is_empty() {
                        continue;
                    }
                    return Ok(Some(frame));
                }
                None if end == self.window() => {
                    // The window holds no terminator: the frame is too long.
                    // Drop what was searched and skip the rest from here on.
                    let searched = end - overlap;
                    buf.advance(searched);
                    self.searched = 0;
                    self.discarding = true;
                    return Err(CodecError::FrameTooLong { max: self.max_len });
                }
                None => {
                    self.searched = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        let rest = buf.len();
        let only_cr = buf.iter().all(|&b| b == b'\r');
        buf.clear();
        self.searched = 0;
        let was_discarding = std::mem::take(&mut self.discarding);
        if was_discarding || only_cr {
            Ok(None)
        } else {
            Err(CodecError::Unterminated { len: rest })
        }
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, token: T, dst: &mut BytesMut) -> Result<(), CodecError> {
        let token = token.as_ref();
        if token.len() > self.max_len {
            return Err(CodecError::FrameTooLong { max: self.max_len });
        }
        let splits = match *self.terminator {
            [byte] => memchr::memchr(byte, token).is_some(),
            ref many => memchr::memmem::find(token, many).is_some(),
        };
        if splits {
            return Err(CodecError::TerminatorInFrame);
        }
        dst.reserve(token.len() + self.terminator.len());
        dst.put_slice(token);
        dst.put_slice(&self.terminator);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Vec<Result<Vec<u8>, String>> {
        let mut out = Vec::new();
        loop {
            match codec.decode(buf) {
                Ok(Some(frame)) => out.push(Ok(frame.to_vec())),
                Ok(None) => return out,
                Err(e) => out.push(Err(e.to_string())),
            }
        }
    }

    #[test]
    fn splits_lines_skips_empty_ones_and_strips_cr() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&b"one\n\ntwo\r\n\r\nthr"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![Ok(b"one".to_vec()), Ok(b"two".to_vec())]
        );
        buf.extend_from_slice(b"ee\n");
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![Ok(b"three".to_vec())]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn over_long_frame_is_reported_once_then_skipped_without_buffering() {
        let mut codec = FrameCodec::new(b"\n", 8);
        let mut buf = BytesMut::new();
        let mut results = Vec::new();
        for chunk in [&b"0123456789"[..], b"abcdefghij", b"klm\nok\n"] {
            buf.extend_from_slice(chunk);
            results.extend(decode_all(&mut codec, &mut buf));
            assert!(buf.len() <= 10, "buffer grew to {}", buf.len());
        }
        assert_eq!(
            results,
            vec![
                Err("frame longer than the maximum of 8 bytes".into()),
                Ok(b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn over_long_frame_with_terminator_in_one_chunk() {
        let mut codec = FrameCodec::new(b"\n", 4);
        let mut buf = BytesMut::from(&b"abcdef\nxy\n"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![
                Err("frame longer than the maximum of 4 bytes".into()),
                Ok(b"xy".to_vec())
            ]
        );
    }

    #[test]
    fn exactly_max_len_passes_with_or_without_cr() {
        let mut codec = FrameCodec::new(b"\n", 4);
        let mut buf = BytesMut::from(&b"abcd\nabcd\r\nabcde\n"[..]);
        assert_eq!(
            decode_all(&mut codec, &mut buf),
            vec![
                Ok(b"abcd".to_vec()),
                Ok(b"abcd".to_vec()),
                Err("frame longer than the maximum of 4 bytes".into())
            ]
        );
    }

    #[test]
    fn multi_byte_terminator_split_across_reads() {
        let mut codec = FrameCodec::new(b"<END>", 64);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in [&b"hello<E"[..], b"N", b"D>world<END", b">"] {
            buf.extend_from_slice(chunk);
            frames.extend(decode_all(&mut codec, &mut buf));
        }
        assert_eq!(frames, vec![Ok(b"hello".to_vec()), Ok(b"world".to_vec())]);
    }

    #[test]
    fn byte_at_a_time_feeding_gives_the_same_frames() {
        let input = b"alpha\nbeta\r\n\ngamma\n";
        let mut codec = FrameCodec::new(b"\n", 16);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for &b in input {
            buf.put_u8(b);
            frames.extend(decode_all(&mut codec, &mut buf));
        }
        assert_eq!(
            frames,
            vec![
                Ok(b"alpha".to_vec()),
                Ok(b"beta".to_vec()),
                Ok(b"gamma".to_vec())
            ]
        );
    }

    #[test]
    fn eof_mid_frame_is_unterminated_and_eof_after_cr_is_not() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&b"done\npart"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap().unwrap(), &b"done"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Unterminated { len: 4 })
        ));
        let mut buf = BytesMut::new();
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        // A stream that ends with the `\r` of a `\r\n` whose `\n` never
        // came holds no frame: not an error.
        for ending in [&b"\r"[..], b"\r\r"] {
            let mut buf = BytesMut::from(ending);
            assert!(codec.decode_eof(&mut buf).unwrap().is_none(), "{ending:?}");
            assert!(buf.is_empty());
        }
        // Data before the `\r` is a cut frame.
        let mut buf = BytesMut::from(&b"abc\r"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Unterminated { len: 4 })
        ));
    }

    #[test]
    fn encoder_appends_the_terminator_and_refuses_splitting_or_huge_tokens() {
        let mut codec = FrameCodec::new(b"\r\n", 8);
        let mut out = BytesMut::new();
        codec.encode(b"abc", &mut out).unwrap();
        assert_eq!(&out[..], b"abc\r\n");
        assert!(matches!(
            codec.encode(b"a\r\nb", &mut out),
            Err(CodecError::TerminatorInFrame)
        ));
        assert!(matches!(
            codec.encode(b"123456789", &mut out),
            Err(CodecError::FrameTooLong { max: 8 })
        ));
    }
}
