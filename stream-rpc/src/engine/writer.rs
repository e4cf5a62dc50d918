//! The writer task: messages from the outbox, sealed into tokens and framed,
//! to the socket.
//!
//! The layers of the way out: a packet's JSON (the sender), a token (the
//! cipher: here a batch at a time, or by the sender for a cipher that
//! cannot tell its tokens' length), a frame (the token and the terminator,
//! added here), and the socket, written a slice of frames at a time.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use std::{fmt, io};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::cipher::{CipherError, Unsealed};
use crate::session::outbox::{Batch, KEEP_BUFFER, Message, Taken};
use crate::session::signal::Signal;
use crate::session::{EndReason, Shared, session_log, within_by};

/// Writes the messages queued in the session's outbox, a batch (everything
/// queued) at a time, until stopped; then writes what is still queued,
/// closes the outbox and shuts the stream down. Plaintexts are sealed here,
/// and every token is followed by `terminator`.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    deadline: Duration,
    terminator: Box<[u8]>,
    stop: Arc<Signal>,
    shared: Arc<Shared>,
) {
    // Swapped with the outbox's for every batch.
    let mut batch = Batch::default();
    // The frames of a slice of the batch, and their tokens' fingerprints.
    let mut framed = Framed::default();
    let result: Result<(), WriteFailure> = async {
        loop {
            let taken = std::future::poll_fn(|cx| {
                if let Poll::Ready(taken) = shared.outbox.poll_take(cx, &mut batch) {
                    return Poll::Ready(Some(taken));
                }
                stop.poll_raised(cx).map(|()| None)
            })
            .await;
            // Once stopped or closed: what is still queued (replies queued
            // before the stop) goes out as the last batch; nothing after.
            let last = !matches!(taken, Some(Taken::Messages));
            if last {
                shared.outbox.close_and_take(&mut batch);
            }
            write_batch(
                &mut writer,
                &shared,
                &terminator,
                &batch,
                &mut framed,
                deadline,
            )
            .await?;
            if last {
                break;
            }
            batch.recycle();
            framed.recycle();
        }
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

/// The frames of a slice of a batch, with what it takes to make them.
#[derive(Default)]
struct Framed {
    /// The frames, terminators included.
    frames: Vec<u8>,
    /// Their tokens' replay fingerprints, when replay protection is on.
    fingerprints: Vec<u64>,
    /// The plaintexts' [`Unsealed`], handed to the cipher.
    items: Vec<Unsealed>,
}

impl Framed {
    /// Emptied for the next batch, letting go of the frames' buffer if a
    /// burst made it large.
    fn recycle(&mut self) {
        if self.frames.capacity() > KEEP_BUFFER {
            self.frames = Vec::new();
        } else {
            self.frames.clear();
        }
        self.fingerprints.clear();
        self.items.clear();
    }
}

/// Writes a taken batch a slice at a time (see [`SEAL_SLICE`]): its
/// plaintexts sealed by the cipher, its tokens as they are, each framed.
/// Tokens are recorded as sent before any of them reaches the wire, so that
/// a reflection is always recognised.
async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    shared: &Shared,
    terminator: &[u8],
    batch: &Batch,
    framed: &mut Framed,
    deadline: Duration,
) -> Result<(), WriteFailure> {
    let (mut bytes, mut messages) = (&batch.bytes[..], &batch.messages[..]);
    while !messages.is_empty() {
        let (len, count) = next_slice(messages);
        let ((slice, rest), (these, others)) = (bytes.split_at(len), messages.split_at(count));
        frame_slice(shared, terminator, slice, these, framed).map_err(WriteFailure::Seal)?;
        record_sent(shared, &framed.fingerprints).await;
        write_frames(writer, &framed.frames, deadline).await?;
        (bytes, messages) = (rest, others);
    }
    Ok(())
}

/// The next slice of `messages`: at least one, then as many more of the
/// same kind as fit [`SEAL_SLICE`]; its length in bytes and in messages.
fn next_slice(messages: &[Message]) -> (usize, usize) {
    let plaintext = |message: &Message| matches!(message, Message::Plaintext(_));
    let first = plaintext(&messages[0]);
    let mut count = 1;
    let mut len = messages[0].len();
    while let Some(next) = messages.get(count)
        && plaintext(next) == first
        && len + next.len() <= SEAL_SLICE
    {
        len += next.len();
        count += 1;
    }
    (len, count)
}

/// Makes the frames of a slice of messages of one kind (their bytes end to
/// end in `bytes`) into `framed`: plaintexts sealed by the cipher a batch
/// at a time, tokens as their senders sealed them; each followed by
/// `terminator`, and fingerprinted for the replay cache.
fn frame_slice(
    shared: &Shared,
    terminator: &[u8],
    bytes: &[u8],
    messages: &[Message],
    framed: &mut Framed,
) -> Result<(), CipherError> {
    let Framed {
        frames,
        fingerprints,
        items,
    } = framed;
    frames.clear();
    fingerprints.clear();
    items.clear();
    let cipher = &*shared.cipher;
    let mut remember = |token: &[u8]| {
        if let Some(replay) = &shared.replay {
            fingerprints.push(replay.fingerprint(cipher.identity(token)));
        }
    };
    if let Message::Plaintext(_) = messages[0] {
        items.extend(messages.iter().filter_map(|message| match message {
            Message::Plaintext(unsealed) => Some(*unsealed),
            Message::Token(_) => None,
        }));
        return cipher.seal_batch(bytes, items, terminator, frames, &mut remember);
    }
    let mut rest = bytes;
    for message in messages {
        let (token, after) = rest.split_at(message.len());
        frames.extend_from_slice(token);
        frames.extend_from_slice(terminator);
        remember(token);
        rest = after;
    }
    Ok(())
}

/// How many bytes of messages the writer seals (or frames) before it
/// writes: a batch larger than this (many large messages queued while the
/// socket was slow) goes out in slices, so that the first bytes leave
/// without waiting for the whole batch to be sealed, and the frames held at
/// once stay bounded (a message larger than a slice is a slice of its own).
const SEAL_SLICE: usize = 64 * 1024;

/// Remembers tokens about to be written as sent, for reflection protection.
async fn record_sent(shared: &Shared, fingerprints: &[u64]) {
    if let Some(replay) = &shared.replay
        && !fingerprints.is_empty()
    {
        // Every one of these tokens was sealed before now.
        let sealed_by = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        replay.sent(fingerprints, sealed_by).await;
    }
}

/// Writes frames within the write deadline and counts them.
async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[u8],
    deadline: Duration,
) -> Result<(), WriteFailure> {
    write_within(writer, frames, deadline).await?;
    crate::telemetry::sent(frames.len());
    Ok(())
}

/// Why writing stopped.
enum WriteFailure {
    Deadline(Duration),
    Io(io::Error),
    /// The cipher could not seal a batch (for Fernet, no randomness for
    /// the IVs): nothing more can be sent.
    Seal(CipherError),
}

impl fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteFailure::Deadline(deadline) => write!(f, "missed the {deadline:?} write deadline"),
            WriteFailure::Io(e) => e.fmt(f),
            WriteFailure::Seal(e) => write!(f, "could not seal: {e}"),
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
    match within_by(|| crate::session::deadline_in(deadline), write).await {
        Err(_) => Err(WriteFailure::Deadline(deadline)),
        Ok(result) => result.map_err(WriteFailure::Io),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Caller;
    use std::pin::Pin;
    use std::task::Context;

    use crate::cipher::{Cipher, Unsealed};
    use crate::endpoint::Endpoint;
    use crate::{Config, Fernet};

    /// Takes every write whole, noting how long each was.
    #[derive(Default)]
    struct Writes {
        lengths: Vec<usize>,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.lengths.push(buf.len());
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_large_batch_is_sealed_and_written_a_slice_at_a_time() {
        let config = Config::builder()
            .key(Fernet::generate_key().unwrap())
            .build()
            .unwrap();
        let shared = Shared::new(&Endpoint::new(config.clone()), "test", None);
        // Three messages of 40 KiB (two never share a slice), then twenty
        // of 1 KiB, which fit in the third one's slice.
        let plains: Vec<Vec<u8>> = (0..23u8)
            .map(|n| vec![b'a' + n; if n < 3 { 40 * 1024 } else { 1024 }])
            .collect();
        let now = SystemTime::now();
        for plain in &plains {
            let unsealed = Unsealed::new(plain.len(), now);
            shared.outbox.push_plaintext(plain, unsealed).unwrap();
        }
        let mut batch = Batch::default();
        let waker = std::task::Waker::noop();
        let taken = shared
            .outbox
            .poll_take(&mut Context::from_waker(waker), &mut batch);
        assert!(matches!(taken, Poll::Ready(Taken::Messages)));
        let mut writes = Writes::default();
        let mut framed = Framed::default();
        let deadline = Duration::from_secs(5);
        let written = write_batch(&mut writes, &shared, b"\n", &batch, &mut framed, deadline);
        assert!(written.await.is_ok());
        assert_eq!(writes.lengths.len(), 3, "{:?}", writes.lengths);
        // Each write ends on a whole frame, and the frames are the
        // messages, in order, each opening to its plaintext.
        let mut start = 0;
        let mut frames = Vec::new();
        for length in writes.lengths {
            assert_eq!(writes.bytes[start + length - 1], b'\n');
            frames.extend(
                writes.bytes[start..start + length - 1]
                    .split(|&byte| byte == b'\n')
                    .map(<[u8]>::to_vec),
            );
            start += length;
        }
        let opened: Vec<Vec<u8>> = frames
            .iter()
            .map(|token| config.cipher().decrypt(token).unwrap())
            .collect();
        assert_eq!(opened, plains);
        // The tokens were recorded as sent: one coming back is refused.
        let replay = shared.replay.as_ref().expect("replay protection is on");
        let back = crate::replay::ReceivedToken {
            fingerprint: replay.fingerprint(config.cipher().identity(&frames[22])),
            time: None,
        };
        let mut verdicts = Vec::new();
        replay.received(&[back], &mut verdicts).await;
        assert_eq!(verdicts, [crate::replay::Verdict::Reflection]);
    }

    /// Tokens are the plaintext reversed, sealed one at a time through
    /// `encrypt` (the default batch); a plaintext that says `boom` cannot be
    /// sealed. Sealed by the writer when it tells its tokens' length.
    #[derive(Debug)]
    struct Reversed {
        tells_length: bool,
    }

    impl Cipher for Reversed {
        fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
            if memchr::memmem::find(plaintext, b"boom").is_some() {
                return Err(CipherError::Other("boom refused".into()));
            }
            Ok(plaintext.iter().rev().copied().collect())
        }
        fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CipherError> {
            Ok(token.iter().rev().copied().collect())
        }
        fn token_len(&self, plaintext_len: usize) -> Option<usize> {
            self.tells_length.then_some(plaintext_len)
        }
    }

    fn reversed(tells_length: bool) -> (Config, Shared) {
        let config = Config::builder()
            .cipher(Arc::new(Reversed { tells_length }))
            .build()
            .unwrap();
        let shared = Shared::new(&Endpoint::new(config.clone()), "test", None);
        (config, shared)
    }

    fn take(shared: &Shared) -> Batch {
        let mut batch = Batch::default();
        let waker = std::task::Waker::noop();
        let taken = shared
            .outbox
            .poll_take(&mut Context::from_waker(waker), &mut batch);
        assert!(matches!(taken, Poll::Ready(Taken::Messages)));
        batch
    }

    #[tokio::test]
    async fn a_custom_cipher_that_tells_its_token_length_is_sealed_by_the_writer() {
        let (_config, shared) = reversed(true);
        let now = SystemTime::now();
        for plain in [&b"abc"[..], b"de"] {
            let unsealed = Unsealed::new(plain.len(), now);
            shared.outbox.push_plaintext(plain, unsealed).unwrap();
        }
        let batch = take(&shared);
        let mut writes = Writes::default();
        let mut framed = Framed::default();
        let deadline = Duration::from_secs(5);
        let written = write_batch(&mut writes, &shared, b"\r\n", &batch, &mut framed, deadline);
        assert!(written.await.is_ok());
        assert_eq!(writes.bytes, b"cba\r\ned\r\n");
        // Remembered as sent, whole (the default identity).
        let replay = shared.replay.as_ref().expect("replay protection is on");
        let back = crate::replay::ReceivedToken {
            fingerprint: replay.fingerprint(b"ed"),
            time: None,
        };
        let mut verdicts = Vec::new();
        replay.received(&[back], &mut verdicts).await;
        assert_eq!(verdicts, [crate::replay::Verdict::Reflection]);
    }

    #[tokio::test]
    async fn a_batch_the_writer_cannot_seal_ends_the_writing() {
        let (_config, shared) = reversed(true);
        let plain = b"{\"boom\":1}";
        let unsealed = Unsealed::new(plain.len(), SystemTime::now());
        shared.outbox.push_plaintext(plain, unsealed).unwrap();
        let batch = take(&shared);
        let mut writes = Writes::default();
        let mut framed = Framed::default();
        let deadline = Duration::from_secs(5);
        let written = write_batch(&mut writes, &shared, b"\n", &batch, &mut framed, deadline);
        let Err(failure) = written.await else {
            panic!("a batch that cannot be sealed was written");
        };
        assert_eq!(failure.to_string(), "could not seal: boom refused");
        assert!(writes.bytes.is_empty());
    }

    /// Answers nothing.
    struct Silent;

    impl crate::Protocol for Silent {
        async fn process_message(
            &self,
            _ctx: crate::Context,
            packet: crate::Packet,
        ) -> Result<crate::Reply, crate::HandlerError> {
            Err(crate::HandlerError::unknown_method(&packet.method))
        }
    }

    #[tokio::test]
    async fn a_custom_ciphers_error_reaches_its_sender() {
        let (config, _) = reversed(false);
        let endpoint = Endpoint::new(config);
        let session = super::super::Session::new(
            Arc::new(Silent),
            &endpoint,
            crate::session::Role::Client,
            None,
        );
        let handle = session.handle();
        let refused = handle.notify("boom", serde_json::Value::Null).await;
        assert!(
            matches!(&refused, Err(crate::SendError::Cipher(CipherError::Other(text))) if text == "boom refused"),
            "{refused:?}"
        );
        // Another message is sealed by its sender: its token is queued.
        handle
            .notify("fine", serde_json::Value::Null)
            .await
            .unwrap();
        let batch = take(&handle.shared);
        assert!(matches!(batch.messages[..], [Message::Token(_)]));
        let token = batch.bytes.to_vec();
        let plain: Vec<u8> = token.iter().rev().copied().collect();
        assert!(memchr::memmem::find(&plain, b"\"fine\"").is_some());
        // The writer frames it as it is, and remembers it as sent.
        let mut writes = Writes::default();
        let mut framed = Framed::default();
        let deadline = Duration::from_secs(5);
        let shared = &handle.shared;
        let written = write_batch(&mut writes, shared, b"\n", &batch, &mut framed, deadline);
        assert!(written.await.is_ok());
        assert_eq!(writes.bytes, [&token[..], b"\n"].concat());
        let replay = shared.replay.as_ref().expect("replay protection is on");
        let back = crate::replay::ReceivedToken {
            fingerprint: replay.fingerprint(&token),
            time: None,
        };
        let mut verdicts = Vec::new();
        replay.received(&[back], &mut verdicts).await;
        assert_eq!(verdicts, [crate::replay::Verdict::Reflection]);
    }
}
