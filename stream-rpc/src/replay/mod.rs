//! Replay and reflection protection: a token is accepted at most once.
//!
//! Every endpoint keeps a [`ReplayStore`] of the fingerprints of the tokens
//! it sent and of the tokens it accepted. An incoming token already there is
//! refused: as a *replay* if it was received before (on this connection or
//! any other), as a *reflection* if this endpoint sent it. A packet forwarded
//! by a queue is sealed anew, with a fresh IV, so it is a new token and
//! passes.
//!
//! Fingerprints are of the part of a token that names it (for
//! [`Fernet`](crate::Fernet), the text of its HMAC; for a custom cipher, the
//! whole token), so a cipher must accept one spelling per token; `Fernet`
//! accepts only canonical base64.
//!
//! The default store is the in-process [`MemoryReplayStore`] (in
//! `memory.rs`, with how it bounds itself and fails closed); a store shared
//! by several servers is plugged in with
//! [`Endpoint::builder`](crate::Endpoint::builder).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Where an endpoint remembers the tokens it sent and accepted, so that it
/// accepts each token at most once: the in-process [`MemoryReplayStore`] by
/// default, or a store shared by several servers (plugged in with
/// [`Endpoint::builder`](crate::Endpoint::builder)), so that a token accepted
/// by one is refused by all.
///
/// The session hands a store a read turn's worth of tokens at a time (up to
/// 16 frames), so a store across the network answers a whole turn in one
/// round trip. A call returns [`ReplayWork`]: done at once, or a future the
/// session awaits before it handles the turn's packets (a type rather than
/// `impl Future`, so that the trait stays usable as `dyn ReplayStore`
/// without an allocation per call: see [`ReplayWork`]).
pub trait ReplayStore: Send + Sync + fmt::Debug + 'static {
    /// The fingerprint of a token's identity (the part of the token that
    /// names it) under this store's key. Stores that are shared must use
    /// the same key everywhere; an in-process store picks a random one.
    fn fingerprint(&self, identity: &[u8]) -> u64;

    /// A hint, given before the session opens a turn's tokens, that these
    /// fingerprints are about to be [`received`](Self::received): an
    /// in-process store can start fetching their slots from memory. Does
    /// nothing by default.
    fn prefetch(&self, fingerprints: &[u64]) {
        let _ = fingerprints;
    }

    /// Remembers tokens this endpoint is about to send, sealed no later
    /// than `sealed_by` (seconds since the Unix epoch), so that one that
    /// comes back is refused as a reflection.
    fn sent<'a>(&'a self, fingerprints: &'a [u64], sealed_by: u64) -> ReplayWork<'a>;

    /// Checks tokens that opened, in the order they arrived: clears
    /// `verdicts` and pushes one [`Verdict`] per token, remembering each
    /// [`Verdict::New`] one (so that a token that comes twice in one batch
    /// is new once and then a replay). A verdict missing when the work is
    /// done counts as [`Verdict::Unavailable`].
    fn received<'a>(
        &'a self,
        tokens: &'a [ReceivedToken],
        verdicts: &'a mut Vec<Verdict>,
    ) -> ReplayWork<'a>;
}

/// A token that opened, as a [`ReplayStore`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedToken {
    /// Its [`ReplayStore::fingerprint`].
    pub fingerprint: u64,
    /// When it was made, in seconds since the Unix epoch, when the cipher
    /// says (Fernet's authenticated timestamp).
    pub time: Option<u64>,
}

/// What a [`ReplayStore`] says of a received token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Not seen before: accepted, and now remembered.
    New,
    /// Accepted before, on this or another connection: refused.
    Replay,
    /// Sent by this endpoint (or, with a shared store, by another endpoint
    /// sharing it) and came back: refused.
    Reflection,
    /// Older than what the store still remembers: refused as if expired
    /// (the store fails closed rather than accept a token it may have
    /// forgotten).
    Forgotten,
    /// The store could not answer (a shared store that is unreachable):
    /// refused.
    Unavailable,
}

impl Verdict {
    /// How the session's log names a refused token.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Verdict::New => "a new token",
            Verdict::Replay => "a replayed token (accepted before)",
            Verdict::Reflection => "a reflected token (sent by this endpoint)",
            Verdict::Forgotten => {
                "a token older than the replay store remembers (refused as if expired)"
            }
            Verdict::Unavailable => "a token the replay store could not check",
        }
    }
}

/// The work of a [`ReplayStore`] call: done at once, or a future to await.
/// Awaiting a done one costs nothing.
///
/// Why a type of its own rather than `impl Future` (or `async fn`) in the
/// trait: an endpoint holds its store as `Arc<dyn ReplayStore>`, so that
/// one [`Endpoint`](crate::Endpoint), server and session type serve with
/// whichever store the settings pick at run time (in memory, or on the
/// queue's Redis); a trait method returning `impl Future` cannot be called
/// through `dyn`. The ways around that cost more on the read path, which
/// consults the store once per read turn:
///
/// - a boxed future per call (what a `dyn`-compatible wrapper trait, or
///   `async_trait`, makes) is an allocation per turn even for the
///   in-process store, whose work is always done at once;
/// - a store type parameter instead of `dyn` would spread through the
///   endpoint, the connector, the server and every session handle.
///
/// `ReplayWork` keeps the trait `dyn`-compatible and the default store
/// free of allocations: [`done`](Self::done) is no allocation and its
/// await one branch; only a store across the network, which waits for a
/// round trip anyway, boxes its future ([`pending`](Self::pending)).
///
/// ```
/// use stream_rpc::{ReceivedToken, ReplayStore, ReplayWork, Verdict};
///
/// /// A store that refuses every token (a stand-in for one across the
/// /// network, whose checks would await a round trip in `pending`).
/// #[derive(Debug)]
/// struct RefuseAll;
///
/// impl ReplayStore for RefuseAll {
///     fn fingerprint(&self, identity: &[u8]) -> u64 {
///         identity.iter().fold(0, |hash, byte| hash.rotate_left(5) ^ u64::from(*byte))
///     }
///
///     fn sent<'a>(&'a self, _: &'a [u64], _: u64) -> ReplayWork<'a> {
///         ReplayWork::done()
///     }
///
///     fn received<'a>(
///         &'a self,
///         tokens: &'a [ReceivedToken],
///         verdicts: &'a mut Vec<Verdict>,
///     ) -> ReplayWork<'a> {
///         ReplayWork::pending(async move {
///             verdicts.clear();
///             verdicts.extend(tokens.iter().map(|_| Verdict::Unavailable));
///         })
///     }
/// }
///
/// let store: std::sync::Arc<dyn ReplayStore> = std::sync::Arc::new(RefuseAll);
/// # let _ = store;
/// ```
#[must_use = "the store's work is done only once this is awaited"]
pub struct ReplayWork<'a>(Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>);

impl<'a> ReplayWork<'a> {
    /// Work that is already done (an in-process store).
    pub fn done() -> Self {
        ReplayWork(None)
    }

    /// Work that finishes when `future` does (a store across the network).
    pub fn pending(future: impl Future<Output = ()> + Send + 'a) -> Self {
        ReplayWork(Some(Box::pin(future)))
    }
}

impl fmt::Debug for ReplayWork<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "ReplayWork(pending)"
        } else {
            "ReplayWork(done)"
        })
    }
}

impl Future for ReplayWork<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            None => Poll::Ready(()),
            Some(future) => {
                let done = future.as_mut().poll(cx);
                if done.is_ready() {
                    self.0 = None;
                }
                done
            }
        }
    }
}

mod memory;

pub use memory::MemoryReplayStore;
