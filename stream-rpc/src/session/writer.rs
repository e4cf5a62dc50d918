//! The writer task: sealed frames from the queue to the socket.

use std::sync::Arc;
use std::time::Duration;
use std::{fmt, io};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::codec::Encoder;

use super::handle::Shared;
use super::signal::Signal;
use super::{EndReason, READ_CHUNK, WRITE_BATCH, within_by};
use crate::codec::FrameCodec;

/// Writes queued frames, batching whatever is queued into one write, until
/// stopped; then writes what is still queued and shuts the stream down.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Vec<u8>>,
    mut codec: FrameCodec,
    deadline: Duration,
    stop: Arc<Signal>,
    shared: Arc<Shared>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut fingerprints: Vec<u64> = Vec::new();
    // Records the batch as sent (before any of it reaches the wire, so a
    // reflection is always recognised) and frames it into `buf`.
    let mut frame_all = |codec: &mut FrameCodec, tokens: &mut Vec<Vec<u8>>, buf: &mut BytesMut| {
        if let Some(replay) = &shared.replay {
            fingerprints.clear();
            fingerprints.extend(
                tokens
                    .iter()
                    .map(|token| replay.fingerprint(shared.cipher.token_identity(token))),
            );
            replay.sent_all(&fingerprints);
        }
        for token in tokens.drain(..) {
            if let Err(e) = codec.encode(token, buf) {
                session_log!(error, shared, "dropped an outgoing frame: {e}");
            }
        }
    };
    let result: Result<(), WriteFailure> = async {
        loop {
            let token = tokio::select! {
                biased;
                () = stop.raised() => break,
                token = queue.recv() => match token {
                    Some(token) => token,
                    None => break,
                },
            };
            let mut batched = token.len();
            tokens.push(token);
            while batched < WRITE_BATCH {
                match queue.try_recv() {
                    Ok(token) => {
                        batched += token.len();
                        tokens.push(token);
                    }
                    Err(_) => break,
                }
            }
            frame_all(&mut codec, &mut tokens, &mut buf);
            write_within(&mut writer, &buf, deadline).await?;
            buf.clear();
        }
        // Replies queued before the stop still go out.
        for _ in 0..queue.len() {
            match queue.try_recv() {
                Ok(token) => tokens.push(token),
                Err(_) => break,
            }
        }
        frame_all(&mut codec, &mut tokens, &mut buf);
        write_within(&mut writer, &buf, deadline).await?;
        timeout(deadline, writer.shutdown())
            .await
            .map_err(|_| WriteFailure::Deadline(deadline))?
            .map_err(WriteFailure::Io)
    }
    .await;
    queue.close();
    match result {
        Ok(()) => {}
        Err(WriteFailure::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            // The peer is gone. What it sent before it went (replies among
            // it) may still wait in the socket: the read loop takes it and
            // then ends at the reset or end of stream, so that no answer that
            // arrived is dropped. Nothing more can be sent.
            session_log!(debug, shared, "write failed: {e}; reading what is left");
            shared.refuse_sends();
        }
        Err(e) => {
            session_log!(warn, shared, "write failed: {e}");
            shared.request_stop(EndReason::WriteFailed(e.to_string()));
        }
    }
}

/// Why writing stopped.
enum WriteFailure {
    Deadline(Duration),
    Io(io::Error),
}

impl fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteFailure::Deadline(deadline) => write!(f, "missed the {deadline:?} write deadline"),
            WriteFailure::Io(e) => e.fmt(f),
        }
    }
}

/// Writes and flushes `bytes` within `deadline`.
async fn write_within<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    deadline: Duration,
) -> Result<(), WriteFailure> {
    let write = async {
        if !bytes.is_empty() {
            writer.write_all(bytes).await?;
        }
        writer.flush().await
    };
    match within_by(|| Instant::now() + deadline, write).await {
        Err(_) => Err(WriteFailure::Deadline(deadline)),
        Ok(result) => result.map_err(WriteFailure::Io),
    }
}
