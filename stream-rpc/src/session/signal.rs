//! [`Signal`]: a one-way, one-waiter stop flag that costs two atomic
//! operations to check.
//!
//! The read loop and the writer look at their stop flag every time they wake,
//! once per frame or batch. A `CancellationToken` takes a mutex for that (two,
//! counting its `Notified`), and a server's shutdown token is one mutex that
//! every connection's read loop would take on every wake; this flag takes
//! none.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// A flag raised once, watched by one task at a time.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waiter: AtomicWaker,
}

impl Signal {
    /// Raises the flag and wakes the task watching it, if any.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waiter.wake();
    }

    /// Whether the flag has been raised.
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Ready once the flag is raised; registers the task to be woken then.
    /// Only the last task to poll is woken.
    pub(crate) fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_raised() {
            return Poll::Ready(());
        }
        self.waiter.register(cx.waker());
        // Raised between the first look and the registration: `raise` may
        // have found no waker to wake.
        if self.is_raised() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until the flag is raised.
    pub(crate) async fn raised(&self) {
        poll_fn(|cx| self.poll_raised(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_raise_wakes_the_waiting_task() {
        let signal = Arc::new(Signal::default());
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.raised().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        signal.raise();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_raise_before_the_wait_is_seen_at_once() {
        let signal = Signal::default();
        signal.raise();
        assert!(signal.is_raised());
        signal.raised().await;
    }
}
