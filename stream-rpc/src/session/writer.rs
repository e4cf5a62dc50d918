//! The writer task: sealed frames from the queue to the socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

use super::handle::Shared;
use super::{EndReason, READ_CHUNK, WRITE_BATCH};
use crate::codec::FrameCodec;

/// Writes queued frames, batching whatever is queued into one write, until
/// stopped; then writes what is still queued and shuts the stream down.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Vec<u8>>,
    mut codec: FrameCodec,
    deadline: Duration,
    stop: CancellationToken,
    shared: Arc<Shared>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let frame = |codec: &mut FrameCodec, token: Vec<u8>, buf: &mut BytesMut| {
        if let Err(e) = codec.encode(token, buf) {
            session_log!(error, shared, "dropped an outgoing frame: {e}");
        }
    };
    let result: Result<(), String> = async {
        loop {
            let token = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                token = queue.recv() => match token {
                    Some(token) => token,
                    None => break,
                },
            };
            frame(&mut codec, token, &mut buf);
            while buf.len() < WRITE_BATCH {
                match queue.try_recv() {
                    Ok(token) => frame(&mut codec, token, &mut buf),
                    Err(_) => break,
                }
            }
            write_within(&mut writer, &buf, deadline).await?;
            buf.clear();
        }
        // Replies queued before the stop still go out.
        for _ in 0..queue.len() {
            match queue.try_recv() {
                Ok(token) => frame(&mut codec, token, &mut buf),
                Err(_) => break,
            }
        }
        write_within(&mut writer, &buf, deadline).await?;
        timeout(deadline, writer.shutdown())
            .await
            .map_err(|_| "shutdown timed out".to_owned())?
            .map_err(|e| e.to_string())
    }
    .await;
    queue.close();
    if let Err(e) = result {
        session_log!(warn, shared, "write failed: {e}");
        shared.request_stop(EndReason::WriteFailed(e));
    }
}

/// Writes and flushes `bytes` within `deadline`.
async fn write_within<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    deadline: Duration,
) -> Result<(), String> {
    let write = async {
        if !bytes.is_empty() {
            writer.write_all(bytes).await?;
        }
        writer.flush().await
    };
    match timeout(deadline, write).await {
        Err(_) => Err(format!("missed the {deadline:?} write deadline")),
        Ok(result) => result.map_err(|e| e.to_string()),
    }
}
