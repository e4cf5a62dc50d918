//! The writer task: messages from the outbox, sealed (a batch at once, with
//! Fernet), to the socket.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use std::{fmt, io};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};

use crate::cipher::Fernet;
use crate::session::outbox::{Batch, KEEP_BUFFER, Taken};
use crate::session::signal::Signal;
use crate::session::{EndReason, Shared, session_log, within_by};

/// Writes the messages queued in the session's outbox, a batch (everything
/// queued) per write, until stopped; then writes what is still queued, closes
/// the outbox and shuts the stream down. Plaintexts are sealed here, each
/// token followed by `terminator`.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    deadline: Duration,
    terminator: Box<[u8]>,
    stop: Arc<Signal>,
    shared: Arc<Shared>,
) {
    // Swapped with the outbox's for every batch.
    let mut batch = Batch::default();
    // The frames of a batch of plaintexts, once sealed.
    let mut sealed: Vec<u8> = Vec::new();
    let result: Result<(), WriteFailure> = async {
        loop {
            let taken = std::future::poll_fn(|cx| {
                if let Poll::Ready(taken) = shared.outbox.poll_take(cx, &mut batch) {
                    return Poll::Ready(Some(taken));
                }
                stop.poll_raised(cx).map(|()| None)
            })
            .await;
            match taken {
                Some(Taken::Messages) => {}
                Some(Taken::Closed) | None => break,
            }
            write_batch(
                &mut writer,
                &shared,
                &terminator,
                &mut batch,
                &mut sealed,
                deadline,
            )
            .await?;
            batch.recycle();
            recycle(&mut sealed);
        }
        // Replies queued before the stop still go out; nothing after.
        shared.outbox.close_and_take(&mut batch);
        write_batch(
            &mut writer,
            &shared,
            &terminator,
            &mut batch,
            &mut sealed,
            deadline,
        )
        .await?;
        timeout(deadline, writer.shutdown())
            .await
            .map_err(|_| WriteFailure::Deadline(deadline))?
            .map_err(WriteFailure::Io)
    }
    .await;
    // Senders waiting for room learn that nothing more goes out.
    shared.outbox.close();
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

/// Writes a taken batch: seals its plaintexts into `sealed` (a batch of
/// frames is written as it was queued), and records its tokens as sent
/// before any of it reaches the wire, so that a reflection is always
/// recognised.
async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    shared: &Shared,
    terminator: &[u8],
    batch: &mut Batch,
    sealed: &mut Vec<u8>,
    deadline: Duration,
) -> Result<(), WriteFailure> {
    let frames: &[u8] = if seal(shared, terminator, batch, sealed) {
        sealed
    } else {
        &batch.bytes
    };
    if let Some(replay) = &shared.replay
        && !batch.fingerprints.is_empty()
    {
        // Every token of the batch was sealed before now.
        let sealed_by = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        replay.sent(&batch.fingerprints, sealed_by).await;
    }
    write_within(writer, frames, deadline).await?;
    crate::telemetry::sent(frames.len());
    Ok(())
}

/// Seals a taken batch's plaintexts into `sealed`, adding their tokens'
/// fingerprints to the batch's, and says whether it did; a batch of frames
/// is written as it was queued.
fn seal(shared: &Shared, terminator: &[u8], batch: &mut Batch, sealed: &mut Vec<u8>) -> bool {
    let Batch {
        bytes,
        fingerprints,
        unsealed,
    } = batch;
    let Some(fernet) = shared
        .cipher
        .batch_sealer()
        .filter(|_| !unsealed.is_empty())
    else {
        return false;
    };
    fernet.seal_batch(bytes, unsealed, terminator, sealed, |token| {
        if let Some(replay) = &shared.replay {
            fingerprints.push(replay.fingerprint(Fernet::identity(token)));
        }
    });
    true
}

/// Empties a written batch's frames for the next one, letting go of the
/// buffer if a burst made it large.
fn recycle(sealed: &mut Vec<u8>) {
    if sealed.capacity() > KEEP_BUFFER {
        *sealed = Vec::new();
    } else {
        sealed.clear();
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
