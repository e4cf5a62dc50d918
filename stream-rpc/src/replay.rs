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
//! The cache is two generations of fingerprints: new entries go into the
//! current one, and lookups check both. The current generation becomes the
//! previous one, and the previous one is forgotten whole, when the current
//! one has been open for the window (TTL plus the 60 s clock-skew
//! allowance), so every entry is kept at least that long; or when it holds
//! half of
//! [`Limits::replay_cache_entries`](crate::Limits::replay_cache_entries), so
//! the cache never holds more than that. A generation forgotten for space
//! before its time shortens the protected window under heavy traffic
//! (logged once per endpoint). No per-entry bookkeeping: an insertion is one
//! table look-up, a check two.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
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

/// One generation of fingerprints and when it was opened.
#[derive(Debug)]
struct Generation {
    seen: Table,
    opened: Instant,
}

#[derive(Debug)]
struct State {
    current: Generation,
    previous: Generation,
}

/// The cache of one endpoint.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    state: Mutex<State>,
    /// How long an entry must be kept; `None` keeps entries until the cap.
    window: Option<Duration>,
    /// The most entries one generation holds: half the cache.
    generation_cap: usize,
    /// A random key per endpoint, so fingerprints cannot be predicted.
    key: [u64; 2],
    warned_full: AtomicBool,
}

impl ReplayGuard {
    /// A guard for tokens living at most `ttl`, holding at most `capacity`
    /// entries (at least 2).
    pub(crate) fn new(ttl: Option<Duration>, capacity: usize) -> Self {
        // `RandomState` is seeded from the operating system once per
        // process and varied per instance: two random words without a
        // fallible system call of our own.
        let key = [
            RandomState::new().hash_one(0x5eed_u64),
            RandomState::new().hash_one(0xf00d_u64),
        ];
        let now = Instant::now();
        let generation = || Generation {
            seen: Table::default(),
            opened: now,
        };
        ReplayGuard {
            state: Mutex::new(State {
                current: generation(),
                previous: generation(),
            }),
            window: ttl.map(|ttl| ttl + MAX_CLOCK_SKEW),
            generation_cap: (capacity / 2).max(1),
            key,
            warned_full: AtomicBool::new(false),
        }
    }

    fn fingerprint(&self, token: &[u8]) -> u64 {
        fingerprint(self.key, token)
    }

    /// Remembers a token this endpoint sent.
    pub(crate) fn sent(&self, token: &[u8]) {
        // A token is sent once (every seal draws a fresh IV): an entry with
        // this fingerprint already there is left as it is.
        let _ = self.record(self.fingerprint(token), Origin::Sent);
    }

    /// Checks an incoming token that decrypted; remembers it if it is new.
    pub(crate) fn received(&self, token: &[u8]) -> Result<(), Seen> {
        match self.record(self.fingerprint(token), Origin::Received) {
            None => Ok(()),
            Some(Origin::Received) => Err(Seen::Replay),
            Some(Origin::Sent) => Err(Seen::Reflection),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a fingerprint unless it is known, in which case it returns the
    /// origin recorded for it and changes nothing.
    fn record(&self, fingerprint: u64, origin: Origin) -> Option<Origin> {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(&known) = state.previous.seen.get(&fingerprint) {
            return Some(known);
        }
        if let Some(now) = self.new_generation_due(&state.current) {
            if let Some(&known) = state.current.seen.get(&fingerprint) {
                return Some(known);
            }
            self.open_generation(state, now);
            state.current.seen.insert(fingerprint, origin);
            return None;
        }
        match state.current.seen.entry(fingerprint) {
            Entry::Occupied(known) => Some(*known.get()),
            Entry::Vacant(slot) => {
                slot.insert(origin);
                None
            }
        }
    }

    /// The time now, when the current generation is full or has been open
    /// for the window.
    fn new_generation_due(&self, current: &Generation) -> Option<Instant> {
        let full = current.seen.len() >= self.generation_cap;
        let window = match self.window {
            None if !full => return None,
            None => None,
            Some(window) => Some(window),
        };
        let now = Instant::now();
        let aged = window.is_some_and(|window| now.duration_since(current.opened) >= window);
        (full || aged).then_some(now)
    }

    /// Forgets the previous generation and makes the current one previous.
    fn open_generation(&self, state: &mut State, now: Instant) {
        // Every entry of the previous generation is older than the opening
        // of the current one: if that was a window ago, none is forgotten
        // before its time.
        let early = self
            .window
            .is_none_or(|window| now.duration_since(state.current.opened) < window);
        if early
            && !state.previous.seen.is_empty()
            && !self.warned_full.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "the replay cache is full ({} tokens): the oldest are forgotten before their time to live ends",
                self.generation_cap * 2
            );
        }
        std::mem::swap(&mut state.current, &mut state.previous);
        // Clearing keeps the table's allocation: no regrowth per generation.
        state.current.seen.clear();
        state.current.opened = now;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let state = self.lock();
        state.current.seen.len() + state.previous.seen.len()
    }
}

/// A keyed 64-bit fingerprint of a token: 16 bytes at a time folded in by
/// a 64 × 64 → 128-bit multiply, the construction of the wyhash family.
/// Tokens are authenticated before they reach the cache, so an attacker
/// cannot choose what is fingerprinted; the key keeps the values
/// unpredictable all the same. A few nanoseconds for a ping's token, where
/// SipHash took about 150.
fn fingerprint([k0, k1]: [u64; 2], token: &[u8]) -> u64 {
    const P0: u64 = 0xa076_1d64_78bd_642f;
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
    let len = token.len() as u64;
    let mut state = k0 ^ len.wrapping_mul(P0);
    let mut chunks = token.chunks_exact(16);
    for chunk in &mut chunks {
        let (a, b) = chunk.split_at(8);
        state = mix(word(a) ^ k1 ^ state, word(b) ^ P1);
    }
    let tail = chunks.remainder();
    let (a, b) = tail.split_at(tail.len().min(8));
    state = mix(word(a) ^ k1 ^ state, word(b) ^ P1 ^ len);
    mix(state ^ P2, k0 ^ P0)
}

fn mix(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Up to 8 bytes as a little-endian word (zero-extended).
fn word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let len = bytes.len().min(8);
    word[..len].copy_from_slice(&bytes[..len]);
    u64::from_le_bytes(word)
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
    fn the_cache_is_bounded_and_forgets_the_oldest_generation_first() {
        // Generations of 2: at most 4 entries, at least the last 2.
        let guard = ReplayGuard::new(None, 4);
        for token in [b"1", b"2", b"3", b"4"] {
            assert_eq!(guard.received(token), Ok(()));
        }
        assert_eq!(guard.len(), 4);
        assert_eq!(guard.received(b"1"), Err(Seen::Replay));
        assert_eq!(guard.received(b"5"), Ok(()));
        assert!(guard.len() <= 4);
        for token in [b"3", b"4", b"5"] {
            assert_eq!(
                guard.received(token),
                Err(Seen::Replay),
                "recent ones are kept"
            );
        }
        assert_eq!(guard.received(b"1"), Ok(()), "the oldest were forgotten");
        let mut held = 0;
        for n in 0..1000u32 {
            assert_eq!(guard.received(&n.to_be_bytes()), Ok(()));
            held = held.max(guard.len());
        }
        assert_eq!(held, 4, "never more than the capacity");
    }

    #[test]
    fn entries_are_kept_for_the_window_and_then_expire() {
        // A zero TTL leaves the 60 s skew as the window; nothing expires in a test's time.
        let guard = ReplayGuard::new(Some(Duration::ZERO), 100);
        assert_eq!(guard.received(b"x"), Ok(()));
        assert_eq!(guard.received(b"x"), Err(Seen::Replay));
        let past = |ago: Duration| {
            Instant::now()
                .checked_sub(ago)
                .expect("a clock that reads more than 61 s after boot")
        };
        // Open for almost the window: nothing moves.
        guard.lock().current.opened = past(MAX_CLOCK_SKEW - Duration::from_secs(5));
        assert_eq!(guard.received(b"y"), Ok(()));
        assert_eq!(guard.received(b"x"), Err(Seen::Replay));
        // Open for longer than the window: the next insertion opens a new
        // generation; `x` and `y` are kept for one more window.
        guard.lock().current.opened = past(MAX_CLOCK_SKEW + Duration::from_secs(1));
        assert_eq!(guard.received(b"z"), Ok(()));
        assert_eq!(
            guard.received(b"x"),
            Err(Seen::Replay),
            "kept a window longer"
        );
        assert_eq!(guard.len(), 3);
        // Another window later both old generations are gone.
        guard.lock().current.opened = past(MAX_CLOCK_SKEW + Duration::from_secs(1));
        assert_eq!(guard.received(b"w"), Ok(()));
        guard.lock().current.opened = past(MAX_CLOCK_SKEW + Duration::from_secs(1));
        assert_eq!(guard.received(b"x"), Ok(()), "expired");
        assert_eq!(
            guard.received(b"w"),
            Err(Seen::Replay),
            "one window old is kept"
        );
    }

    #[test]
    fn fingerprints_differ_for_any_change_and_any_key() {
        let key = [1, 2];
        let token: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        let base = fingerprint(key, &token);
        let mut seen = std::collections::HashSet::new();
        seen.insert(base);
        // One flipped bit anywhere, a shorter token, a longer one.
        for index in 0..token.len() {
            for bit in 0..8 {
                let mut changed = token.clone();
                changed[index] ^= 1 << bit;
                assert!(
                    seen.insert(fingerprint(key, &changed)),
                    "byte {index} bit {bit}"
                );
            }
        }
        for len in 0..token.len() {
            assert!(seen.insert(fingerprint(key, &token[..len])), "prefix {len}");
        }
        let mut longer = token.clone();
        longer.push(0);
        assert!(seen.insert(fingerprint(key, &longer)));
        assert_ne!(fingerprint([1, 3], &token), base);
        assert_ne!(fingerprint([0, 2], &token), base);
    }

    #[test]
    fn a_refused_token_does_not_push_out_an_entry() {
        let guard = ReplayGuard::new(None, 2);
        assert_eq!(guard.received(b"a"), Ok(()));
        assert_eq!(guard.received(b"b"), Ok(()));
        for _ in 0..3 {
            assert_eq!(guard.received(b"b"), Err(Seen::Replay));
        }
        assert_eq!(guard.received(b"a"), Err(Seen::Replay), "still remembered");
    }
}
