//! Replay and reflection protection: a token is accepted at most once.
//!
//! Every endpoint (every [`Config`](crate::Config) built) keeps a bounded
//! cache of the fingerprints of the tokens it sent and of the tokens it
//! accepted. An incoming token already in the cache is refused: as a
//! *replay* if it was received before (on this connection or any other), as
//! a *reflection* if this endpoint sent it. A packet forwarded by a queue is
//! sealed anew, with a fresh IV, so it is a new token and passes.
//!
//! Fingerprints are of the token as received, so a cipher must accept one
//! spelling per token; [`Fernet`](crate::Fernet) accepts only canonical
//! base64.
//!
//! Entries expire once a token that old could no longer pass the time to
//! live (TTL plus the 60 s clock-skew allowance). The cache holds at most
//! [`Limits::replay_cache_entries`](crate::Limits::replay_cache_entries)
//! fingerprints; when it is full the oldest go first, which shortens the
//! protected window under heavy traffic (logged once per endpoint).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cipher::MAX_CLOCK_SKEW;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Accepted before, on this or another connection.
    Replay,
    /// Sent by this endpoint and came back.
    Reflection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Sent,
    Received,
}

/// The fingerprints are already keyed random hashes: the table uses them
/// as they are instead of hashing them again.
#[derive(Debug, Default, Clone, Copy)]
struct AsIs(u64);

impl std::hash::Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in for completeness.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type Table = HashMap<u64, Origin, std::hash::BuildHasherDefault<AsIs>>;

#[derive(Debug, Default)]
struct State {
    seen: Table,
    order: VecDeque<(Instant, u64)>,
}

/// The cache of one endpoint.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    state: Mutex<State>,
    /// How long an entry must be kept; `None` keeps entries until the cap.
    window: Option<Duration>,
    capacity: usize,
    /// A random key per endpoint, so fingerprints cannot be predicted.
    hasher: RandomState,
    warned_full: AtomicBool,
}

impl ReplayGuard {
    /// A guard for tokens living at most `ttl`, holding `capacity` entries.
    pub(crate) fn new(ttl: Option<Duration>, capacity: usize) -> Self {
        ReplayGuard {
            state: Mutex::new(State::default()),
            window: ttl.map(|ttl| ttl + MAX_CLOCK_SKEW),
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            warned_full: AtomicBool::new(false),
        }
    }

    fn fingerprint(&self, token: &[u8]) -> u64 {
        self.hasher.hash_one(token)
    }

    /// Remembers a token this endpoint sent.
    pub(crate) fn sent(&self, token: &[u8]) {
        let fingerprint = self.fingerprint(token);
        let mut state = self.lock();
        self.insert(&mut state, fingerprint, Origin::Sent);
    }

    /// Checks an incoming token that decrypted; remembers it if it is new.
    pub(crate) fn received(&self, token: &[u8]) -> Result<(), Seen> {
        let fingerprint = self.fingerprint(token);
        let mut state = self.lock();
        match state.seen.get(&fingerprint) {
            Some(Origin::Received) => Err(Seen::Replay),
            Some(Origin::Sent) => Err(Seen::Reflection),
            None => {
                self.insert(&mut state, fingerprint, Origin::Received);
                Ok(())
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, state: &mut State, fingerprint: u64, origin: Origin) {
        let now = Instant::now();
        if let Some(window) = self.window {
            while let Some(&(at, old)) = state.order.front() {
                if now.duration_since(at) <= window {
                    break;
                }
                state.order.pop_front();
                state.seen.remove(&old);
            }
        }
        while state.seen.len() >= self.capacity {
            let Some((_, old)) = state.order.pop_front() else {
                break;
            };
            state.seen.remove(&old);
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the replay cache is full ({} tokens): the oldest are forgotten before their time to live ends",
                    self.capacity
                );
            }
        }
        if let Entry::Vacant(slot) = state.seen.entry(fingerprint) {
            slot.insert(origin);
            state.order.push_back((now, fingerprint));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_accepted_once() {
        let guard = ReplayGuard::new(Some(Duration::from_secs(300)), 100);
        assert_eq!(guard.received(b"token-a"), Ok(()));
        assert_eq!(guard.received(b"token-a"), Err(Seen::Replay));
        assert_eq!(guard.received(b"token-b"), Ok(()));
    }

    #[test]
    fn a_token_this_endpoint_sent_is_a_reflection() {
        let guard = ReplayGuard::new(Some(Duration::from_secs(300)), 100);
        guard.sent(b"mine");
        assert_eq!(guard.received(b"mine"), Err(Seen::Reflection));
        assert_eq!(guard.received(b"yours"), Ok(()));
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_the_oldest_first() {
        let guard = ReplayGuard::new(None, 3);
        for token in [b"1", b"2", b"3", b"4"] {
            assert_eq!(guard.received(token), Ok(()));
        }
        assert_eq!(guard.len(), 3);
        assert_eq!(guard.received(b"4"), Err(Seen::Replay));
        assert_eq!(guard.received(b"1"), Ok(()), "the oldest was forgotten");
    }

    #[test]
    fn entries_expire_after_the_window() {
        // A zero TTL leaves the 60 s skew as the window; nothing expires in a test's time.
        let guard = ReplayGuard::new(Some(Duration::ZERO), 100);
        assert_eq!(guard.received(b"x"), Ok(()));
        assert_eq!(guard.received(b"x"), Err(Seen::Replay));
        let mut state = guard.lock();
        // Age the entry past the window by hand.
        let aged = Instant::now()
            .checked_sub(MAX_CLOCK_SKEW + Duration::from_secs(1))
            .expect("a clock that reads more than 61 s after boot");
        state.order[0].0 = aged;
        drop(state);
        assert_eq!(guard.received(b"y"), Ok(()));
        assert_eq!(guard.len(), 1, "the aged entry expired when the next came");
        assert_eq!(guard.received(b"x"), Ok(()));
    }
}
