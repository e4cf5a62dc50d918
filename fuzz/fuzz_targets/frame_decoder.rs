//! The frame decoder fed arbitrary bytes in arbitrary chunks.
//!
//! Checks: no panic; chunking never changes what it yields; every frame is
//! non-empty, within the maximum length and free of the terminator; and the
//! buffer never holds more than one maximum frame (plus terminator and a
//! tolerated `\r`) beyond the chunk just added.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use stream_rpc::codec::{CodecError, FrameCodec};
use tokio_util::codec::Decoder;

const TERMINATORS: [&[u8]; 3] = [b"\n", b"\r\n", b"<END>"];

#[derive(Debug, Arbitrary)]
struct Input {
    terminator: u8,
    max_len: u8,
    chunk_sizes: Vec<u8>,
    data: Vec<u8>,
}

/// What the codec yields: a frame, or a report of an over-long one.
type Yield = Result<Vec<u8>, ()>;

fn decode(terminator: &[u8], max_len: usize, pieces: &[&[u8]]) -> Vec<Yield> {
    let mut codec = FrameCodec::new(terminator, max_len);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        let bound = max_len + terminator.len() + 1 + piece.len();
        assert!(buf.len() <= bound, "buffered {} > {bound}", buf.len());
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => out.push(Ok(frame.to_vec())),
                Ok(None) => break,
                Err(CodecError::FrameTooLong { .. }) => out.push(Err(())),
                Err(other) => panic!("unexpected codec error: {other}"),
            }
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let terminator = TERMINATORS[usize::from(input.terminator) % TERMINATORS.len()];
    let max_len = usize::from(input.max_len).max(1);
    let whole = decode(terminator, max_len, &[&input.data]);

    let mut pieces = Vec::new();
    let mut rest = &input.data[..];
    for size in input.chunk_sizes.iter().cycle().take(rest.len()) {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(usize::from(*size).clamp(1, rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    let chunked = decode(terminator, max_len, &pieces);
    assert_eq!(chunked, whole, "chunking changed the frames");

    for frame in whole.iter().flatten() {
        assert!(!frame.is_empty() && frame.len() <= max_len);
        assert!(!frame.windows(terminator.len()).any(|w| w == terminator));
    }
});
