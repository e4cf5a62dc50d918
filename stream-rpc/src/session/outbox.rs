//! [`Outbox`]: messages waiting for the writer.
//!
//! Senders put their message straight into one shared buffer, and the writer
//! swaps the whole buffer out. Compared with a channel of one buffer per
//! message, a message costs no allocation and no channel slot, and the writer
//! is woken once per batch (by the message that finds the outbox empty)
//! rather than once per message.
//!
//! What is queued is a message on its way to becoming a frame: with a
//! cipher that tells its tokens' length in advance (Fernet), a plaintext
//! with the time of sending, which the writer seals a batch at a time
//! ([`Cipher::seal_batch`](crate::Cipher::seal_batch)); with any other
//! cipher, the token its sender sealed (so that the cipher's errors reach
//! the sender). The writer frames both.

use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::cipher::Unsealed;
use crate::codec::{CodecError, FrameCodec};
use crate::sync::lock;

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The outbox holds its limit of frames: wait for [`Outbox::room`].
    Full,
    /// The session no longer sends.
    Closed,
    /// The token cannot be framed (too long, or it contains the terminator).
    Unframeable(CodecError),
}

/// Messages queued for the writer, at most `limit` of them and at most
/// `max_bytes` of them (but always one, however large, when none is
/// queued).
pub(crate) struct Outbox {
    queued: Mutex<Queued>,
    limit: usize,
    max_bytes: usize,
    /// The writer, woken when the first frame of a batch arrives or the
    /// outbox closes.
    writer: AtomicWaker,
    /// Senders waiting for room.
    room: Notify,
}

struct Queued {
    /// The frames' terminator and longest token, which a token its sender
    /// sealed is checked against.
    codec: FrameCodec,
    /// What the writer takes next.
    batch: Batch,
    /// How many messages `batch` holds.
    messages: usize,
    closed: bool,
    /// Whether a sender found no room since the writer last took a batch:
    /// the next take wakes the senders waiting for room.
    refused: bool,
}

impl Queued {
    /// Whether a message of `size` bytes fits now.
    fn fits(&self, size: usize, limit: usize, max_bytes: usize) -> bool {
        self.messages == 0
            || (self.messages < limit && self.batch.bytes.len().saturating_add(size) <= max_bytes)
    }
}

/// Messages in the order they were queued, each on its way to becoming a
/// frame: their bytes end to end, and what each is.
#[derive(Default)]
pub(crate) struct Batch {
    /// The messages' bytes (plaintexts and tokens, no terminators), end to
    /// end.
    pub(crate) bytes: BytesMut,
    /// One per message, in order.
    pub(crate) messages: Vec<Message>,
}

/// A queued message: its bytes are the next ones of its [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    /// A plaintext for the writer to seal: its length and time of sending.
    Plaintext(Unsealed),
    /// A token of this length that its sender sealed: the writer frames it.
    Token(usize),
}

impl Message {
    /// How many bytes of the batch it holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            Message::Plaintext(unsealed) => unsealed.len(),
            Message::Token(len) => *len,
        }
    }
}

impl Batch {
    /// Emptied for the next swap; buffers grown large by a burst are let go.
    pub(crate) fn recycle(&mut self) {
        if self.bytes.capacity() > KEEP_BUFFER {
            self.bytes = BytesMut::new();
        } else {
            self.bytes.clear();
        }
        self.messages.clear();
    }
}

/// The largest buffer kept between batches; a larger one, left by a burst or
/// a big message, is freed once written.
pub(crate) const KEEP_BUFFER: usize = 256 * 1024;

/// What the writer took: the messages are in the batch it passed.
pub(crate) enum Taken {
    /// Some messages.
    Messages,
    /// Nothing is queued and nothing more will be.
    Closed,
}

impl Outbox {
    pub(crate) fn new(codec: FrameCodec, limit: usize, max_bytes: usize) -> Self {
        Outbox {
            queued: Mutex::new(Queued {
                codec,
                batch: Batch::default(),
                messages: 0,
                closed: false,
                refused: false,
            }),
            limit,
            max_bytes,
            writer: AtomicWaker::new(),
            room: Notify::new(),
        }
    }

    /// Queues a token its sender sealed, if it can be framed.
    pub(crate) fn push_token(&self, token: &[u8]) -> Result<(), Refused> {
        self.push_with(token.len(), |queued| {
            check_frame(&queued.codec, token).map_err(Refused::Unframeable)?;
            queued.batch.bytes.extend_from_slice(token);
            queued.batch.messages.push(Message::Token(token.len()));
            Ok(())
        })
    }

    /// Queues a plaintext for the writer to seal as `unsealed` says. The
    /// sender has checked that its token fits a frame (the cipher told the
    /// token's length, and promises it never holds a terminator).
    pub(crate) fn push_plaintext(&self, plain: &[u8], unsealed: Unsealed) -> Result<(), Refused> {
        self.push_with(plain.len(), |queued| {
            queued.batch.bytes.extend_from_slice(plain);
            queued.batch.messages.push(Message::Plaintext(unsealed));
            Ok(())
        })
    }

    /// Queues a message of `size` bytes with `put`, unless the outbox is
    /// closed or full; wakes the writer for the first message of a batch.
    fn push_with(
        &self,
        size: usize,
        put: impl FnOnce(&mut Queued) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        let first = {
            let mut queued = lock(&self.queued);
            if queued.closed {
                return Err(Refused::Closed);
            }
            if !queued.fits(size, self.limit, self.max_bytes) {
                queued.refused = true;
                return Err(Refused::Full);
            }
            put(&mut queued)?;
            queued.messages += 1;
            queued.messages == 1
        };
        if first {
            self.writer.wake();
        }
        Ok(())
    }

    /// Whether a push now would be refused as full.
    #[cfg(test)]
    pub(crate) fn is_full(&self) -> bool {
        lock(&self.queued).messages >= self.limit
    }

    /// The bytes queued (plaintexts and tokens), not counting the
    /// batch the writer is writing.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        lock(&self.queued).batch.bytes.len()
    }

    /// Waits for room for a message of `size` bytes (the length of the
    /// plaintext or token that was refused): push it again after. Returns
    /// at once when it fits or the outbox is closed by then.
    pub(crate) async fn room(&self, size: usize) {
        let notified = self.room.notified();
        tokio::pin!(notified);
        // Registered before looking, so that a batch taken in between still
        // wakes this sender.
        notified.as_mut().enable();
        {
            let mut queued = lock(&self.queued);
            if queued.closed || queued.fits(size, self.limit, self.max_bytes) {
                return;
            }
            // The next take wakes this sender.
            queued.refused = true;
        }
        notified.await;
    }

    /// The writer's side: swaps the queued messages into `batch` (which
    /// must be empty, as [`Batch::recycle`] leaves it), or registers the
    /// writer to be woken when there are some.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>, batch: &mut Batch) -> Poll<Taken> {
        let mut queued = lock(&self.queued);
        if queued.messages == 0 {
            if queued.closed {
                return Poll::Ready(Taken::Closed);
            }
            // Registered under the lock: a sender queues the next frame
            // after this and then wakes the writer.
            self.writer.register(cx.waker());
            return Poll::Pending;
        }
        let was_full = self.take_locked(&mut queued, batch);
        drop(queued);
        if was_full {
            self.room.notify_waiters();
        }
        Poll::Ready(Taken::Messages)
    }

    /// Takes whatever is queued into `batch` (empty, as for
    /// [`poll_take`](Self::poll_take)), and closes the outbox: messages
    /// queued after this are refused.
    pub(crate) fn close_and_take(&self, batch: &mut Batch) {
        let mut queued = lock(&self.queued);
        queued.closed = true;
        self.take_locked(&mut queued, batch);
        drop(queued);
        // Waiting senders learn that it closed.
        self.room.notify_waiters();
    }

    /// Closes the outbox and drops what it holds (the connection is gone).
    pub(crate) fn close(&self) {
        let mut queued = lock(&self.queued);
        queued.closed = true;
        queued.batch = Batch::default();
        queued.messages = 0;
        drop(queued);
        self.room.notify_waiters();
        self.writer.wake();
    }

    /// Swaps the messages out; says whether senders may be waiting for room.
    fn take_locked(&self, queued: &mut Queued, batch: &mut Batch) -> bool {
        let was_full = std::mem::take(&mut queued.refused);
        std::mem::swap(&mut queued.batch, batch);
        queued.messages = 0;
        was_full
    }
}

/// Whether `token` can be framed by `codec`: no longer than its longest
/// frame, and without its terminator.
fn check_frame(codec: &FrameCodec, token: &[u8]) -> Result<(), CodecError> {
    if token.len() > codec.max_len() {
        return Err(CodecError::FrameTooLong {
            max: codec.max_len(),
        });
    }
    let splits = match codec.terminator() {
        [byte] => memchr::memchr(*byte, token).is_some(),
        many => memchr::memmem::find(token, many).is_some(),
    };
    if splits {
        return Err(CodecError::TerminatorInFrame);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    fn outbox(limit: usize) -> Outbox {
        Outbox::new(FrameCodec::new(b"\n", 16), limit, usize::MAX)
    }

    fn take(outbox: &Outbox) -> (BytesMut, Vec<Message>) {
        let batch = take_batch(outbox);
        (batch.bytes, batch.messages)
    }

    fn take_batch(outbox: &Outbox) -> Batch {
        let mut batch = Batch::default();
        let waker = std::task::Waker::noop();
        match outbox.poll_take(&mut Context::from_waker(waker), &mut batch) {
            Poll::Ready(Taken::Messages) => batch,
            Poll::Ready(Taken::Closed) => panic!("closed"),
            Poll::Pending => panic!("nothing queued"),
        }
    }

    #[test]
    fn tokens_come_out_in_order_with_their_lengths() {
        let outbox = outbox(8);
        outbox.push_token(b"one").unwrap();
        outbox.push_token(b"two").unwrap();
        outbox.push_token(b"three").unwrap();
        let (bytes, messages) = take(&outbox);
        assert_eq!(&bytes[..], b"onetwothree");
        assert_eq!(
            messages,
            [Message::Token(3), Message::Token(3), Message::Token(5)]
        );
        // Taken whole: the next batch starts empty.
        outbox.push_token(b"four").unwrap();
        assert_eq!(&take(&outbox).0[..], b"four");
    }

    #[test]
    fn plaintexts_come_out_end_to_end_with_how_to_seal_each() {
        let outbox = outbox(3);
        let now = std::time::SystemTime::now();
        for plain in [&b"{}"[..], b"", b"{\"a\":1}"] {
            outbox
                .push_plaintext(plain, Unsealed::new(plain.len(), now))
                .unwrap();
        }
        // Plaintexts count against the limit as frames do.
        let refused = outbox.push_plaintext(b"x", Unsealed::new(1, now));
        assert!(matches!(refused, Err(Refused::Full)));
        let mut batch = take_batch(&outbox);
        assert_eq!(&batch.bytes[..], b"{}{\"a\":1}");
        let lengths: Vec<usize> = batch.messages.iter().map(Message::len).collect();
        assert_eq!(lengths, [2, 0, 7]);
        assert!(
            batch
                .messages
                .iter()
                .all(|message| *message == Message::Plaintext(Unsealed::new(message.len(), now)))
        );
        batch.recycle();
        assert!(batch.bytes.is_empty() && batch.messages.is_empty());
        outbox.push_plaintext(b"y", Unsealed::new(1, now)).unwrap();
        assert_eq!(&take_batch(&outbox).bytes[..], b"y");
    }

    #[test]
    fn unframeable_tokens_are_refused_and_nothing_is_queued() {
        let outbox = outbox(8);
        assert!(matches!(
            outbox.push_token(b"a\nb"),
            Err(Refused::Unframeable(CodecError::TerminatorInFrame))
        ));
        assert!(matches!(
            outbox.push_token(&[b'x'; 17]),
            Err(Refused::Unframeable(CodecError::FrameTooLong { .. }))
        ));
        outbox.push_token(b"ok").unwrap();
        assert_eq!(&take(&outbox).0[..], b"ok");
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_until_the_writer_takes_the_batch() {
        let outbox = std::sync::Arc::new(outbox(2));
        outbox.push_token(b"a").unwrap();
        outbox.push_token(b"b").unwrap();
        assert!(matches!(outbox.push_token(b"c"), Err(Refused::Full)));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(&take(&outbox).0[..], b"ab");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the batch was taken")
            .unwrap();
        outbox.push_token(b"c").unwrap();
    }

    #[tokio::test]
    async fn the_outbox_is_bounded_in_bytes_and_senders_wait_for_room() {
        let outbox = std::sync::Arc::new(Outbox::new(FrameCodec::new(b"\n", 1 << 20), 1024, 100));
        let now = std::time::SystemTime::now();
        let plain = [b'x'; 40];
        let unsealed = || Unsealed::new(plain.len(), now);
        outbox.push_plaintext(&plain, unsealed()).unwrap();
        outbox.push_plaintext(&plain, unsealed()).unwrap();
        // A third would make 120 bytes: refused, though far from the count.
        assert!(matches!(
            outbox.push_plaintext(&plain, unsealed()),
            Err(Refused::Full)
        ));
        assert!(matches!(outbox.push_token(&[b't'; 30]), Err(Refused::Full)));
        // What still fits is taken.
        outbox.push_plaintext(&plain[..20], unsealed()).unwrap();
        assert_eq!(outbox.queued_bytes(), 100);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                outbox.room(40).await;
                outbox.push_plaintext(&[b'y'; 40], Unsealed::new(40, std::time::SystemTime::now()))
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(take_batch(&outbox).bytes.len(), 100);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the batch was taken")
            .unwrap()
            .unwrap();
        assert_eq!(outbox.queued_bytes(), 40);
        take_batch(&outbox);
        // One message larger than the bound is queued when nothing else is
        // (a message that fits a frame can always be sent), and nothing
        // after it.
        outbox.push_token(&[b'z'; 500]).unwrap();
        assert!(matches!(outbox.push_token(b"a"), Err(Refused::Full)));
        assert_eq!(take(&outbox).0.len(), 500);
    }

    #[tokio::test]
    async fn closing_wakes_the_writer_and_waiting_senders() {
        let outbox = std::sync::Arc::new(outbox(1));
        outbox.push_token(b"a").unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room(1).await }
        });
        tokio::task::yield_now().await;
        let mut batch = Batch::default();
        outbox.close_and_take(&mut batch);
        assert_eq!(&batch.bytes[..], b"a");
        assert_eq!(batch.messages, [Message::Token(1)]);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the close")
            .unwrap();
        assert!(matches!(outbox.push_token(b"b"), Err(Refused::Closed)));
        let mut batch = Batch::default();
        let taken = poll_fn(|cx| outbox.poll_take(cx, &mut batch)).await;
        assert!(matches!(taken, Taken::Closed));
    }

    #[tokio::test]
    async fn the_first_frame_of_a_batch_wakes_the_writer() {
        let outbox = std::sync::Arc::new(outbox(8));
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let mut batch = Batch::default();
                let taken = poll_fn(|cx| outbox.poll_take(cx, &mut batch)).await;
                assert!(matches!(taken, Taken::Messages));
                batch.bytes
            }
        });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        outbox.push_token(b"hello").unwrap();
        let bytes = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(&bytes[..], b"hello");
    }
}
