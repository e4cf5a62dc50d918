//! Replay and reflection protection: a token is accepted at most once.
//!
//! Every endpoint (every [`Config`](crate::Config) built) keeps a bounded
//! cache of the fingerprints of the tokens it sent and of the tokens it
//! accepted. An incoming token already in the cache is refused: as a
//! *replay* if it was received before (on this connection or any other), as
//! a *reflection* if this endpoint sent it. A packet forwarded by a queue is
//! sealed anew, with a fresh IV, so it is a new token and passes.
//!
//! Fingerprints are of the token as received (of the part that
//! [`Cipher::token_identity`](crate::Cipher::token_identity) names: for
//! [`Fernet`](crate::Fernet), the text of its HMAC), so a cipher must accept
//! one spelling per token; `Fernet` accepts only canonical base64.
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
//! (logged once per endpoint). No per-entry bookkeeping: a check and
//! insertion is a look-up in each generation's flat table.

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

/// How many insertions pass between two looks at the clock for the age of
/// the current generation. Opening a new generation late only keeps
/// entries longer than needed, never shorter.
const CLOCK_EVERY: u32 = 1024;

/// One generation: an open-addressing table of fingerprints with linear
/// probing, never more than half full, so a look-up is usually one cache
/// line. A slot holds `0` when empty; otherwise the fingerprint with its
/// two low bits replaced by an occupied mark (bit 0) and the origin
/// (bit 1).
#[derive(Debug)]
struct Generation {
    slots: Box<[u64]>,
    len: usize,
    opened: Instant,
}

const OCCUPIED: u64 = 1;
const RECEIVED: u64 = 2;
const MARKS: u64 = OCCUPIED | RECEIVED;

impl Generation {
    /// A table for `cap` entries. The zeroed slots come from `calloc`, so
    /// memory is only touched as entries arrive.
    fn new(cap: usize, opened: Instant) -> Self {
        let slots = cap.saturating_mul(2).next_power_of_two().max(2);
        Generation {
            slots: vec![0; slots].into_boxed_slice(),
            len: 0,
            opened,
        }
    }

    fn start(&self, fingerprint: u64) -> usize {
        // The high bits pick the slot; the mask keeps any table size right.
        (fingerprint >> 32) as usize & (self.slots.len() - 1)
    }

    /// The origin recorded for `fingerprint`; with `insert`, records it
    /// with `origin` when it is not there.
    fn find(&mut self, fingerprint: u64, insert: Option<Origin>) -> Option<Origin> {
        let key = fingerprint & !MARKS;
        let mask = self.slots.len() - 1;
        let mut index = self.start(fingerprint);
        // Terminates: the table is at most half full, so an empty slot
        // comes within `slots.len()` steps.
        for _ in 0..self.slots.len() {
            let slot = self.slots[index];
            if slot == 0 {
                if let Some(origin) = insert {
                    let mark = match origin {
                        Origin::Sent => OCCUPIED,
                        Origin::Received => OCCUPIED | RECEIVED,
                    };
                    self.slots[index] = key | mark;
                    self.len += 1;
                }
                return None;
            }
            if slot & !MARKS == key {
                return Some(if slot & RECEIVED == 0 {
                    Origin::Sent
                } else {
                    Origin::Received
                });
            }
            index = (index + 1) & mask;
        }
        None
    }

    fn clear(&mut self, opened: Instant) {
        self.slots.fill(0);
        self.len = 0;
        self.opened = opened;
    }
}

#[derive(Debug)]
struct State {
    current: Generation,
    previous: Generation,
    /// Insertions since the clock was last read.
    since_clock: u32,
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
        let generation_cap = (capacity / 2).max(1);
        ReplayGuard {
            state: Mutex::new(State {
                current: Generation::new(generation_cap, now),
                previous: Generation::new(generation_cap, now),
                since_clock: 0,
            }),
            window: ttl.map(|ttl| ttl + MAX_CLOCK_SKEW),
            generation_cap,
            key,
            warned_full: AtomicBool::new(false),
        }
    }

    /// The token's fingerprint under this endpoint's key.
    pub(crate) fn fingerprint(&self, token: &[u8]) -> u64 {
        fingerprint(self.key, token)
    }

    /// Remembers tokens this endpoint is about to send, by their
    /// [`fingerprint`](Self::fingerprint)s.
    pub(crate) fn sent_all(&self, fingerprints: &[u64]) {
        let mut state = self.lock();
        // A token is sent once (every seal draws a fresh IV), so the previous
        // generation is not searched for it: one look-up, in the current one.
        warm_generation(&state.current, fingerprints);
        for &fingerprint in fingerprints {
            let _ = self.record_locked(&mut state, fingerprint, Origin::Sent, false);
        }
    }

    /// Remembers a token this endpoint sent.
    #[cfg(test)]
    pub(crate) fn sent(&self, token: &[u8]) {
        self.sent_all(&[self.fingerprint(token)]);
    }

    /// Checks an incoming token that decrypted; remembers it if it is new.
    #[cfg(test)]
    pub(crate) fn received(&self, token: &[u8]) -> Result<(), Seen> {
        self.received_fingerprint(self.fingerprint(token))
    }

    /// [`received`](Self::received) for a token whose fingerprint is known.
    pub(crate) fn received_fingerprint(&self, fingerprint: u64) -> Result<(), Seen> {
        match self.record(fingerprint, Origin::Received, true) {
            None => Ok(()),
            Some(Origin::Received) => Err(Seen::Replay),
            Some(Origin::Sent) => Err(Seen::Reflection),
        }
    }

    /// Reads the first slot of each fingerprint in both generations, so
    /// that the look-ups that follow find them in the cache: reads that do
    /// not depend on each other are fetched from memory together.
    pub(crate) fn warm(&self, fingerprints: &[u64]) {
        let state = self.lock();
        for generation in [&state.current, &state.previous] {
            warm_generation(generation, fingerprints);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a fingerprint unless it is known (in the current generation, or
    /// with `search_previous` in either), in which case it returns the
    /// origin recorded for it and changes nothing.
    fn record(&self, fingerprint: u64, origin: Origin, search_previous: bool) -> Option<Origin> {
        self.record_locked(&mut self.lock(), fingerprint, origin, search_previous)
    }

    fn record_locked(
        &self,
        state: &mut State,
        fingerprint: u64,
        origin: Origin,
        search_previous: bool,
    ) -> Option<Origin> {
        if search_previous && let Some(known) = state.previous.find(fingerprint, None) {
            return Some(known);
        }
        if let Some(now) = self.new_generation_due(state) {
            if let Some(known) = state.current.find(fingerprint, None) {
                return Some(known);
            }
            self.open_generation(state, now);
        }
        state.current.find(fingerprint, Some(origin))
    }

    /// The time now, when the current generation is full or has been open
    /// for the window (looked at every [`CLOCK_EVERY`] insertions).
    fn new_generation_due(&self, state: &mut State) -> Option<Instant> {
        let full = state.current.len >= self.generation_cap;
        state.since_clock += 1;
        let look = full || (self.window.is_some() && state.since_clock >= CLOCK_EVERY);
        if !look {
            return None;
        }
        state.since_clock = 0;
        let now = Instant::now();
        let aged = self
            .window
            .is_some_and(|window| now.duration_since(state.current.opened) >= window);
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
        if early && state.previous.len > 0 && !self.warned_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the replay cache is full ({} tokens): the oldest are forgotten before their time to live ends",
                self.generation_cap * 2
            );
        }
        std::mem::swap(&mut state.current, &mut state.previous);
        state.current.clear(now);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let state = self.lock();
        state.current.len + state.previous.len
    }
}

/// Reads the first slot of each fingerprint in `generation` (see
/// [`ReplayGuard::warm`]).
fn warm_generation(generation: &Generation, fingerprints: &[u64]) {
    let mut seen = 0u64;
    for &fingerprint in fingerprints {
        seen ^= generation.slots[generation.start(fingerprint)];
    }
    std::hint::black_box(seen);
}

/// A keyed 64-bit fingerprint of a token: 16 bytes at a time folded in by
/// a 64 × 64 → 128-bit multiply, the construction of the wyhash family.
/// Tokens are authenticated before they reach the cache, so an attacker
/// cannot choose what is fingerprinted; the key keeps the values
/// unpredictable all the same. About 45 ns for a ping's whole 300-byte
/// token on the benchmark machine; a Fernet token's 48-character identity
/// takes a fraction of that.
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
        // Makes the current generation look opened `ago`, and the next
        // insertion look at the clock.
        let age = |ago: Duration| {
            let mut state = guard.lock();
            state.current.opened = Instant::now()
                .checked_sub(ago)
                .expect("a clock that reads more than 61 s after boot");
            state.since_clock = CLOCK_EVERY - 1;
        };
        // Open for almost the window: nothing moves.
        age(MAX_CLOCK_SKEW - Duration::from_secs(5));
        assert_eq!(guard.received(b"y"), Ok(()));
        assert_eq!(guard.received(b"x"), Err(Seen::Replay));
        // Open for longer than the window: the next insertion opens a new
        // generation; `x` and `y` are kept for one more window.
        age(MAX_CLOCK_SKEW + Duration::from_secs(1));
        assert_eq!(guard.received(b"z"), Ok(()));
        assert_eq!(
            guard.received(b"x"),
            Err(Seen::Replay),
            "kept a window longer"
        );
        assert_eq!(guard.len(), 3);
        // Another window later both old generations are gone.
        age(MAX_CLOCK_SKEW + Duration::from_secs(1));
        assert_eq!(guard.received(b"w"), Ok(()));
        age(MAX_CLOCK_SKEW + Duration::from_secs(1));
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

    #[test]
    fn fingerprints_that_start_at_the_same_slot_are_told_apart() {
        let mut generation = Generation::new(4, Instant::now());
        assert_eq!(generation.slots.len(), 8);
        // The same high bits (the same first slot), different low bits;
        // and one that differs only in the two bits used for the marks.
        let same_start = [
            0x0000_0003_0000_0010_u64,
            0x0000_0003_0000_0020,
            0x0000_0003_0000_0030,
        ];
        for (n, &fingerprint) in same_start.iter().enumerate() {
            assert_eq!(generation.find(fingerprint, Some(Origin::Received)), None);
            assert_eq!(generation.len, n + 1);
        }
        for &fingerprint in &same_start {
            assert_eq!(generation.find(fingerprint, None), Some(Origin::Received));
        }
        assert_eq!(generation.find(0x0000_0003_0000_0040, None), None);
        assert_eq!(
            generation.find(0x0000_0003_0000_0011, None),
            Some(Origin::Received)
        );
        // The last slot wraps around to the first.
        let last = 0x0000_0007_0000_0100_u64;
        assert_eq!(generation.find(last, Some(Origin::Sent)), None);
        assert_eq!(generation.find(last + 0x100, Some(Origin::Sent)), None);
        assert_eq!(generation.find(last + 0x100, None), Some(Origin::Sent));
        assert_eq!(generation.slots[0] & !MARKS, last + 0x100);
        generation.clear(Instant::now());
        assert_eq!((generation.len, generation.find(last, None)), (0, None));
    }
}
