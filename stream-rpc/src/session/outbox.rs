//! [`Outbox`]: sealed frames waiting for the writer.
//!
//! Senders frame their token straight into one shared buffer, and the writer
//! swaps the whole buffer out and writes it. Compared with a channel of one
//! buffer per token, a message costs no allocation, no channel slot and no
//! copy on the writer's side, and the writer is woken once per batch (by the
//! frame that finds the outbox empty) rather than once per frame.

use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio_util::codec::Encoder;

use crate::codec::{CodecError, FrameCodec};
use crate::sync::lock;

/// Why a frame was not queued.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The outbox holds its limit of frames: wait for [`Outbox::room`].
    Full,
    /// The session no longer sends.
    Closed,
    /// The codec refused the token (too long, or it contains the terminator).
    Unframeable(CodecError),
}

/// Frames queued for the writer, at most `limit` of them.
pub(crate) struct Outbox {
    queued: Mutex<Queued>,
    limit: usize,
    /// The writer, woken when the first frame of a batch arrives or the
    /// outbox closes.
    writer: AtomicWaker,
    /// Senders waiting for room.
    room: Notify,
}

struct Queued {
    /// Frames tokens (only its encoding side is used).
    codec: FrameCodec,
    /// The frames, terminators included, in the order they were queued.
    bytes: BytesMut,
    frames: usize,
    /// The replay fingerprints of the frames' tokens, when replay
    /// protection is on.
    fingerprints: Vec<u64>,
    closed: bool,
}

/// What the writer took: the frames are in the buffer it passed.
pub(crate) enum Taken {
    /// Some frames (their fingerprints are in the vector passed).
    Frames,
    /// Nothing is queued and nothing more will be.
    Closed,
}

impl Outbox {
    pub(crate) fn new(codec: FrameCodec, limit: usize) -> Self {
        Outbox {
            queued: Mutex::new(Queued {
                codec,
                bytes: BytesMut::new(),
                frames: 0,
                fingerprints: Vec::new(),
                closed: false,
            }),
            limit,
            writer: AtomicWaker::new(),
            room: Notify::new(),
        }
    }

    /// Frames `token` into the outbox, with its replay fingerprint.
    pub(crate) fn push(&self, token: &[u8], fingerprint: Option<u64>) -> Result<(), Refused> {
        let first = {
            let mut queued = lock(&self.queued);
            if queued.closed {
                return Err(Refused::Closed);
            }
            if queued.frames >= self.limit {
                return Err(Refused::Full);
            }
            let Queued { codec, bytes, .. } = &mut *queued;
            codec.encode(token, bytes).map_err(Refused::Unframeable)?;
            queued.frames += 1;
            queued.fingerprints.extend(fingerprint);
            queued.frames == 1
        };
        if first {
            self.writer.wake();
        }
        Ok(())
    }

    /// Whether a push now would be refused as full.
    #[cfg(test)]
    pub(crate) fn is_full(&self) -> bool {
        lock(&self.queued).frames >= self.limit
    }

    /// Waits for room: call [`push`](Self::push) again after. Returns at
    /// once when the outbox has room or is closed by then.
    pub(crate) async fn room(&self) {
        let notified = self.room.notified();
        tokio::pin!(notified);
        // Registered before looking, so that a batch taken in between still
        // wakes this sender.
        notified.as_mut().enable();
        {
            let queued = lock(&self.queued);
            if queued.closed || queued.frames < self.limit {
                return;
            }
        }
        notified.await;
    }

    /// The writer's side: swaps the queued frames into `bytes` (which must
    /// be empty) and their fingerprints into `fingerprints` (cleared
    /// first), or registers the writer to be woken when there are some.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        bytes: &mut BytesMut,
        fingerprints: &mut Vec<u64>,
    ) -> Poll<Taken> {
        let mut queued = lock(&self.queued);
        if queued.frames == 0 {
            if queued.closed {
                return Poll::Ready(Taken::Closed);
            }
            // Registered under the lock: a sender queues the next frame
            // after this and then wakes the writer.
            self.writer.register(cx.waker());
            return Poll::Pending;
        }
        let was_full = self.take_locked(&mut queued, bytes, fingerprints);
        drop(queued);
        if was_full {
            self.room.notify_waiters();
        }
        Poll::Ready(Taken::Frames)
    }

    /// Takes whatever is queued, and closes the outbox: frames queued after
    /// this are refused.
    pub(crate) fn close_and_take(&self, bytes: &mut BytesMut, fingerprints: &mut Vec<u64>) {
        let mut queued = lock(&self.queued);
        queued.closed = true;
        self.take_locked(&mut queued, bytes, fingerprints);
        drop(queued);
        // Waiting senders learn that it closed.
        self.room.notify_waiters();
    }

    /// Closes the outbox and drops what it holds (the connection is gone).
    pub(crate) fn close(&self) {
        let mut queued = lock(&self.queued);
        queued.closed = true;
        queued.bytes = BytesMut::new();
        queued.frames = 0;
        queued.fingerprints = Vec::new();
        drop(queued);
        self.room.notify_waiters();
        self.writer.wake();
    }

    /// Swaps the frames out; says whether senders may be waiting for room.
    fn take_locked(
        &self,
        queued: &mut Queued,
        bytes: &mut BytesMut,
        fingerprints: &mut Vec<u64>,
    ) -> bool {
        let was_full = queued.frames >= self.limit;
        std::mem::swap(&mut queued.bytes, bytes);
        fingerprints.clear();
        std::mem::swap(&mut queued.fingerprints, fingerprints);
        queued.frames = 0;
        was_full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    fn outbox(limit: usize) -> Outbox {
        Outbox::new(FrameCodec::new(b"\n", 16), limit)
    }

    fn take(outbox: &Outbox) -> (BytesMut, Vec<u64>) {
        let mut bytes = BytesMut::new();
        let mut fingerprints = Vec::new();
        let waker = std::task::Waker::noop();
        match outbox.poll_take(
            &mut Context::from_waker(waker),
            &mut bytes,
            &mut fingerprints,
        ) {
            Poll::Ready(Taken::Frames) => (bytes, fingerprints),
            Poll::Ready(Taken::Closed) => panic!("closed"),
            Poll::Pending => panic!("nothing queued"),
        }
    }

    #[test]
    fn frames_come_out_in_order_with_their_fingerprints() {
        let outbox = outbox(8);
        outbox.push(b"one", Some(1)).unwrap();
        outbox.push(b"two", None).unwrap();
        outbox.push(b"three", Some(3)).unwrap();
        let (bytes, fingerprints) = take(&outbox);
        assert_eq!(&bytes[..], b"one\ntwo\nthree\n");
        assert_eq!(fingerprints, [1, 3]);
        // Taken whole: the next batch starts empty.
        outbox.push(b"four", None).unwrap();
        assert_eq!(&take(&outbox).0[..], b"four\n");
    }

    #[test]
    fn unframeable_tokens_are_refused_and_nothing_is_queued() {
        let outbox = outbox(8);
        assert!(matches!(
            outbox.push(b"a\nb", None),
            Err(Refused::Unframeable(CodecError::TerminatorInFrame))
        ));
        assert!(matches!(
            outbox.push(&[b'x'; 17], None),
            Err(Refused::Unframeable(CodecError::FrameTooLong { .. }))
        ));
        outbox.push(b"ok", None).unwrap();
        assert_eq!(&take(&outbox).0[..], b"ok\n");
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_until_the_writer_takes_the_batch() {
        let outbox = std::sync::Arc::new(outbox(2));
        outbox.push(b"a", None).unwrap();
        outbox.push(b"b", None).unwrap();
        assert!(matches!(outbox.push(b"c", None), Err(Refused::Full)));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(&take(&outbox).0[..], b"a\nb\n");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the batch was taken")
            .unwrap();
        outbox.push(b"c", None).unwrap();
    }

    #[tokio::test]
    async fn closing_wakes_the_writer_and_waiting_senders() {
        let outbox = std::sync::Arc::new(outbox(1));
        outbox.push(b"a", None).unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.room().await }
        });
        tokio::task::yield_now().await;
        let mut bytes = BytesMut::new();
        let mut fingerprints = vec![9];
        outbox.close_and_take(&mut bytes, &mut fingerprints);
        assert_eq!(&bytes[..], b"a\n");
        assert!(fingerprints.is_empty());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the close")
            .unwrap();
        assert!(matches!(outbox.push(b"b", None), Err(Refused::Closed)));
        let (mut bytes, mut fingerprints) = (BytesMut::new(), Vec::new());
        let taken = poll_fn(|cx| outbox.poll_take(cx, &mut bytes, &mut fingerprints)).await;
        assert!(matches!(taken, Taken::Closed));
    }

    #[tokio::test]
    async fn the_first_frame_of_a_batch_wakes_the_writer() {
        let outbox = std::sync::Arc::new(outbox(8));
        let writer = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let (mut bytes, mut fingerprints) = (BytesMut::new(), Vec::new());
                let taken = poll_fn(|cx| outbox.poll_take(cx, &mut bytes, &mut fingerprints)).await;
                assert!(matches!(taken, Taken::Frames));
                bytes
            }
        });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        outbox.push(b"hello", None).unwrap();
        let bytes = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(&bytes[..], b"hello\n");
    }
}
