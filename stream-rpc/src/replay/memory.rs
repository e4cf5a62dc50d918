//! [`MemoryReplayStore`], the default store, keeps two generations of
//! fingerprints in the process: new entries go into the current one, and
//! lookups check both. The current generation becomes the previous one, and
//! the previous one is forgotten whole, when the current one has been open
//! for the window (TTL plus the 60 s clock-skew allowance), so every entry is
//! kept at least that long; or when it holds half of its capacity
//! ([`Limits::replay_cache_entries`](crate::Limits::replay_cache_entries)),
//! so the store never holds more than that.
//!
//! A generation forgotten for space before its time would let its tokens
//! in again. So the store **fails closed**: it notes the newest token time
//! among what it forgot (its *horizon*), and refuses any token stamped at or
//! before it as [`Verdict::Forgotten`], as if expired. Under a load that
//! fills the cache faster than the window, the window in which tokens are
//! accepted shrinks (to about the time the cache takes to fill), but it never
//! opens; legitimate tokens are seconds old. Since a token's time is whole
//! seconds, forgetting a token stamped this second would refuse every token
//! of this second, a live peer's included: while the generation it would
//! forget holds tokens of the last two seconds, a full current generation
//! grows instead, to at most twice its share, so the store may hold up to
//! twice its capacity for the two seconds a burst lasts, and fails closed
//! only beyond that. The first time this happens the store logs a warning
//! with the numbers.
//!
//! The horizon never lands more than two seconds ahead of this endpoint's
//! clock, or every peer's new tokens would be refused until the clock caught
//! up (tokens may be stamped up to the 60 s skew ahead): the times of tokens
//! that were stamped further ahead of the clock when they came (a peer whose
//! clock is a second fast is not) do not count for it while they may be
//! after the generation that follows; those entries are kept a generation
//! longer instead, up to half a generation of them (a flood of tokens
//! stamped ahead beyond that is forgotten, logged once). So a flood, or a
//! key holder stamping every token a minute ahead, shrinks the window as
//! any flood does, and refuses no one. Tokens of a custom cipher carry no
//! time the store can read: for them the store is bounded by its size alone.

use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{ReceivedToken, ReplayStore, ReplayWork, Verdict};
use crate::cipher::MAX_CLOCK_SKEW;

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
    /// The newest token time among its entries that were not stamped
    /// ahead of this endpoint's clock when they came (seconds since the
    /// epoch): never more than [`FRESH_SECONDS`] ahead of the clock.
    newest: u64,
    /// The newest token time among its entries that were stamped ahead of
    /// the clock when they came.
    newest_ahead: u64,
}

/// Tokens stamped this many seconds before the receiver's clock, or later,
/// are not forgotten for space while the store may grow (see
/// `MemoryReplayStore::defer_for_fresh_tokens`).
const FRESH_SECONDS: u64 = 2;

/// How many entries a generation starts with room for (16 KiB of slots);
/// it doubles as it fills, up to half the store's capacity.
const INITIAL_GENERATION: usize = 1024;

const OCCUPIED: u64 = 1;
const RECEIVED: u64 = 2;
/// A received token stamped more than [`FRESH_SECONDS`] ahead of this
/// endpoint's clock when it came.
const AHEAD: u64 = 4;
const MARKS: u64 = OCCUPIED | RECEIVED | AHEAD;

impl Origin {
    /// The marks of a new entry of this origin.
    fn mark(self) -> u64 {
        match self {
            Origin::Sent => OCCUPIED,
            Origin::Received => OCCUPIED | RECEIVED,
        }
    }
}

impl Generation {
    /// A table for `cap` entries. The zeroed slots come from `calloc`, so
    /// memory is only touched as entries arrive.
    fn new(cap: usize, opened: Instant) -> Self {
        let slots = cap.saturating_mul(2).next_power_of_two().max(2);
        Generation {
            slots: vec![0; slots].into_boxed_slice(),
            len: 0,
            opened,
            newest: 0,
            newest_ahead: 0,
        }
    }

    /// How many entries it takes before it is full (half its slots).
    fn capacity(&self) -> usize {
        self.slots.len() / 2
    }

    /// Doubles the table, keeping every entry.
    fn grow(&mut self) {
        let bigger = vec![0; self.slots.len() * 2].into_boxed_slice();
        let old = std::mem::replace(&mut self.slots, bigger);
        let mask = self.slots.len() - 1;
        for slot in old.iter().copied().filter(|&slot| slot != 0) {
            // The marks sit in the low bits; the start needs the high ones.
            let mut index = (slot >> 32) as usize & mask;
            while self.slots[index] != 0 {
                index = (index + 1) & mask;
            }
            self.slots[index] = slot;
        }
    }

    fn start(&self, fingerprint: u64) -> usize {
        // The high bits pick the slot; the mask keeps any table size right.
        (fingerprint >> 32) as usize & (self.slots.len() - 1)
    }

    /// The origin recorded for `fingerprint`; with `insert`, records it
    /// with `origin` when it is not there.
    fn find(&mut self, fingerprint: u64, insert: Option<Origin>) -> Option<Origin> {
        self.find_or_mark(fingerprint, insert.map(Origin::mark))
    }

    /// [`find`](Self::find), inserting with the marks `insert`.
    fn find_or_mark(&mut self, fingerprint: u64, insert: Option<u64>) -> Option<Origin> {
        let key = fingerprint & !MARKS;
        let mask = self.slots.len() - 1;
        let mut index = self.start(fingerprint);
        // Terminates: the table is at most half full, so an empty slot
        // comes within `slots.len()` steps.
        for _ in 0..self.slots.len() {
            let slot = self.slots[index];
            if slot == 0 {
                if let Some(mark) = insert {
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

    #[cfg(test)]
    fn clear(&mut self, opened: Instant) {
        self.slots.fill(0);
        self.len = 0;
        self.opened = opened;
        self.newest = 0;
        self.newest_ahead = 0;
    }
}

#[derive(Debug)]
struct State {
    current: Generation,
    previous: Generation,
    /// Insertions since the clock was last read.
    since_clock: u32,
    /// Tokens stamped at or before this second may have been forgotten:
    /// they are refused.
    horizon: Option<u64>,
}

/// The default [`ReplayStore`]: the tokens of one endpoint, in its process,
/// in bounded memory (see the module docs of how it forgets, and how it
/// fails closed when it must forget early).
#[derive(Debug)]
pub struct MemoryReplayStore {
    state: Mutex<State>,
    /// How long an entry must be kept; `None` keeps entries until the cap.
    window: Option<Duration>,
    /// The most entries one generation holds: half the cache.
    generation_cap: usize,
    /// How many entries a new generation starts with room for.
    initial_cap: usize,
    /// A random key per endpoint, so fingerprints cannot be predicted.
    key: [u64; 2],
    warned_full: AtomicBool,
    warned_ahead: AtomicBool,
}

impl MemoryReplayStore {
    /// A store for tokens living at most `ttl` (`None`: bounded by size
    /// alone), holding at most `capacity` fingerprints (at least 2; its
    /// tables take 16 bytes of address space per entry, touched as they
    /// fill).
    pub fn new(ttl: Option<Duration>, capacity: usize) -> Self {
        // `RandomState` is seeded from the operating system once per
        // process and varied per instance: two random words without a
        // fallible system call of our own.
        let key = [
            RandomState::new().hash_one(0x5eed_u64),
            RandomState::new().hash_one(0xf00d_u64),
        ];
        let now = Instant::now();
        let generation_cap = (capacity / 2).max(1);
        let initial_cap = generation_cap.min(INITIAL_GENERATION);
        MemoryReplayStore {
            state: Mutex::new(State {
                current: Generation::new(initial_cap, now),
                previous: Generation::new(initial_cap, now),
                since_clock: 0,
                horizon: None,
            }),
            window: ttl.map(|ttl| ttl + MAX_CLOCK_SKEW),
            generation_cap,
            initial_cap,
            key,
            warned_full: AtomicBool::new(false),
            warned_ahead: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The verdict on one received token, remembering it when it is new;
    /// `now` is this endpoint's clock in seconds since the epoch.
    fn check_locked(&self, state: &mut State, token: ReceivedToken, now: u64) -> Verdict {
        if let (Some(time), Some(horizon)) = (token.time, state.horizon)
            && time <= horizon
        {
            return Verdict::Forgotten;
        }
        let time = token.time.unwrap_or(0);
        // A peer whose clock is a second fast is not "ahead": its tokens
        // count for the horizon as everyone's, which may then be up to
        // FRESH_SECONDS past this clock for the seconds a flood beyond the
        // store's bound lasts. Only tokens stamped further ahead are kept
        // apart (and carried, a bounded number of them).
        let ahead = time > now.saturating_add(FRESH_SECONDS);
        match self.record_locked(
            state,
            token.fingerprint,
            Origin::Received,
            true,
            time,
            ahead,
        ) {
            None => Verdict::New,
            Some(Origin::Received) => Verdict::Replay,
            Some(Origin::Sent) => Verdict::Reflection,
        }
    }

    /// Adds a fingerprint (of a token made at `time`) unless it is known (in
    /// the current generation, or with `search_previous` in either), in
    /// which case it returns the origin recorded for it and changes nothing.
    fn record_locked(
        &self,
        state: &mut State,
        fingerprint: u64,
        origin: Origin,
        search_previous: bool,
        time: u64,
        ahead: bool,
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
        let mark = origin.mark() | if ahead { AHEAD } else { 0 };
        let known = state.current.find_or_mark(fingerprint, Some(mark));
        if known.is_none() {
            let newest = if ahead {
                &mut state.current.newest_ahead
            } else {
                &mut state.current.newest
            };
            *newest = (*newest).max(time);
        }
        known
    }

    /// The time now, when the current generation is full or has been open
    /// for the window (looked at every [`CLOCK_EVERY`] insertions).
    fn new_generation_due(&self, state: &mut State) -> Option<Instant> {
        // A table that fills before the cap doubles instead: memory follows
        // the traffic, and the whole window is remembered until the cap.
        if state.current.len >= state.current.capacity()
            && state.current.capacity() < self.generation_cap
        {
            state.current.grow();
        }
        let mut full = state.current.len >= self.generation_cap.min(state.current.capacity());
        if full && self.defer_for_fresh_tokens(state) {
            full = false;
        }
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

    /// Whether a full current generation should grow instead of opening a
    /// new one: forgetting the previous generation would refuse the tokens
    /// stamped in the last [`FRESH_SECONDS`] (a token's time is whole
    /// seconds, so forgetting one stamped now refuses every token of this
    /// second, those still on their way included). The current generation
    /// then takes up to twice its share, so the store holds at most twice
    /// its capacity, and only while it fills in less than about two seconds.
    fn defer_for_fresh_tokens(&self, state: &mut State) -> bool {
        if state.previous.len == 0 || state.current.len >= self.generation_cap.saturating_mul(2) {
            return false;
        }
        let now = unix_now();
        if state.previous.newest.saturating_add(FRESH_SECONDS) < now {
            return false;
        }
        if state.current.len >= state.current.capacity() {
            state.current.grow();
        }
        true
    }

    /// Forgets the previous generation and makes the current one previous.
    /// Tokens stamped no later than the newest it held are refused from
    /// then on: the store no longer knows whether it saw them. The newest
    /// of the entries that were stamped ahead of this clock when they came
    /// does not count while it may be after the opening of the current
    /// generation: those entries are kept instead, in the new generation,
    /// so that the horizon never lands ahead of the clock.
    fn open_generation(&self, state: &mut State, now: Instant) {
        // Every entry of the previous generation is older than the opening
        // of the current one: if that was a window ago, none is forgotten
        // before its time.
        let early = self
            .window
            .is_none_or(|window| now.duration_since(state.current.opened) < window);
        // The new current generation starts with room for what the last
        // one held: a fresh table (pages untouched until used), so an
        // endpoint whose traffic fell gives the memory back.
        let room =
            (state.current.len.saturating_mul(2)).clamp(self.initial_cap, self.generation_cap);
        let mut fresh = Generation::new(room, now);
        if state.previous.len > 0 {
            // Tokens may be stamped up to the skew ahead of this clock: a
            // horizon there would refuse every peer's new tokens until the
            // clock caught up. Those stamped after the current generation
            // opened are kept a generation longer instead (so about until
            // their stamps pass), to be refused as replays.
            let clock = unix_now();
            let opened = clock.saturating_sub(now.duration_since(state.current.opened).as_secs());
            let mut horizon = state.previous.newest;
            if early && state.previous.newest_ahead > opened {
                self.carry_ahead(&state.previous, &mut fresh);
            } else {
                horizon = horizon.max(state.previous.newest_ahead.min(clock));
            }
            if horizon > 0 {
                state.horizon = Some(state.horizon.unwrap_or(0).max(horizon));
            }
        }
        if early && state.previous.len > 0 && !self.warned_full.swap(true, Ordering::Relaxed) {
            let open_for = now.duration_since(state.previous.opened);
            match state.horizon {
                Some(horizon) => tracing::warn!(
                    "the replay store is full ({} tokens in {open_for:.1?}, less than its window): \
                     tokens stamped at or before {horizon} (Unix seconds) are refused from now on, \
                     as if expired; raise Limits::replay_cache_entries for this rate",
                    self.generation_cap * 2
                ),
                None => tracing::warn!(
                    "the replay store is full ({} tokens in {open_for:.1?}): the oldest are forgotten \
                     before their time to live ends (this cipher's tokens carry no time to refuse them by)",
                    self.generation_cap * 2
                ),
            }
        }
        state.previous = std::mem::replace(&mut state.current, fresh);
    }

    /// Copies the entries of `forgotten` that were stamped ahead of this
    /// clock when they came into `fresh`, up to half a generation; the rest
    /// (only a flood of tokens stamped ahead leaves any) are forgotten,
    /// logged once.
    fn carry_ahead(&self, forgotten: &Generation, fresh: &mut Generation) {
        let most = self.generation_cap / 2;
        let mut carried = 0;
        let mut dropped = 0u64;
        for &slot in forgotten.slots.iter().filter(|&&slot| slot & AHEAD != 0) {
            if carried >= most {
                dropped += 1;
                continue;
            }
            if fresh.len >= fresh.capacity() {
                fresh.grow();
            }
            if fresh.find_or_mark(slot, Some(slot & MARKS)).is_none() {
                carried += 1;
            }
        }
        if carried > 0 {
            fresh.newest_ahead = fresh.newest_ahead.max(forgotten.newest_ahead);
        }
        if dropped > 0 && !self.warned_ahead.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the replay store forgot {dropped} tokens stamped ahead of this clock before \
                 their stamps passed (a flood of tokens stamped ahead, beyond {most} kept): \
                 those could be accepted once more"
            );
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let state = self.lock();
        state.current.len + state.previous.len
    }

    /// Checks one token by its text, as the session does a batch.
    #[cfg(test)]
    fn received_at(&self, token: &[u8], time: Option<u64>) -> Verdict {
        let token = ReceivedToken {
            fingerprint: self.fingerprint(token),
            time,
        };
        let mut state = self.lock();
        self.check_locked(&mut state, token, unix_now())
    }

    /// [`received_at`](Self::received_at) without a time.
    #[cfg(test)]
    fn received(&self, token: &[u8]) -> Verdict {
        self.received_at(token, None)
    }
}

impl ReplayStore for MemoryReplayStore {
    fn fingerprint(&self, identity: &[u8]) -> u64 {
        fingerprint(self.key, identity)
    }

    /// Reads the first slot of each fingerprint in both generations, so
    /// that the look-ups that follow find them in the cache: reads that do
    /// not depend on each other are fetched from memory together, while
    /// the session opens the tokens.
    fn prefetch(&self, fingerprints: &[u64]) {
        let state = self.lock();
        for generation in [&state.current, &state.previous] {
            warm_generation(generation, fingerprints);
        }
    }

    fn sent<'a>(&'a self, fingerprints: &'a [u64], sealed_by: u64) -> ReplayWork<'a> {
        let mut state = self.lock();
        // A token is sent once (every seal draws a fresh IV), so the previous
        // generation is not searched for it: one look-up, in the current one.
        warm_generation(&state.current, fingerprints);
        for &fingerprint in fingerprints {
            let _ = self.record_locked(
                &mut state,
                fingerprint,
                Origin::Sent,
                false,
                sealed_by,
                false,
            );
        }
        ReplayWork::done()
    }

    fn received<'a>(
        &'a self,
        tokens: &'a [ReceivedToken],
        verdicts: &'a mut Vec<Verdict>,
    ) -> ReplayWork<'a> {
        verdicts.clear();
        let now = unix_now();
        let mut state = self.lock();
        verdicts.extend(
            tokens
                .iter()
                .map(|&token| self.check_locked(&mut state, token, now)),
        );
        ReplayWork::done()
    }
}

/// This clock, in seconds since the Unix epoch (0 before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Reads the first slot of each fingerprint in `generation` (see
/// [`MemoryReplayStore::prefetch`](ReplayStore::prefetch)).
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
    use futures_util::FutureExt as _;

    #[test]
    fn a_token_is_accepted_once() {
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 100);
        assert_eq!(guard.received(b"token-a"), Verdict::New);
        assert_eq!(guard.received(b"token-a"), Verdict::Replay);
        assert_eq!(guard.received(b"token-b"), Verdict::New);
    }

    #[test]
    fn a_token_this_endpoint_sent_is_a_reflection() {
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 100);
        let mine = [guard.fingerprint(b"mine")];
        assert_eq!(guard.sent(&mine, 0).now_or_never(), Some(()));
        assert_eq!(guard.received(b"mine"), Verdict::Reflection);
        assert_eq!(guard.received(b"yours"), Verdict::New);
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_the_oldest_generation_first() {
        // Generations of 2: at most 4 entries, at least the last 2.
        let guard = MemoryReplayStore::new(None, 4);
        for token in [b"1", b"2", b"3", b"4"] {
            assert_eq!(guard.received(token), Verdict::New);
        }
        assert_eq!(guard.len(), 4);
        assert_eq!(guard.received(b"1"), Verdict::Replay);
        assert_eq!(guard.received(b"5"), Verdict::New);
        assert!(guard.len() <= 4);
        for token in [b"3", b"4", b"5"] {
            assert_eq!(
                guard.received(token),
                Verdict::Replay,
                "recent ones are kept"
            );
        }
        assert_eq!(
            guard.received(b"1"),
            Verdict::New,
            "the oldest were forgotten"
        );
        let mut held = 0;
        for n in 0..1000u32 {
            assert_eq!(guard.received(&n.to_be_bytes()), Verdict::New);
            held = held.max(guard.len());
        }
        assert_eq!(held, 4, "never more than the capacity");
    }

    #[test]
    fn entries_are_kept_for_the_window_and_then_expire() {
        // A zero TTL leaves the 60 s skew as the window; nothing expires in a test's time.
        let guard = MemoryReplayStore::new(Some(Duration::ZERO), 100);
        assert_eq!(guard.received(b"x"), Verdict::New);
        assert_eq!(guard.received(b"x"), Verdict::Replay);
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
        assert_eq!(guard.received(b"y"), Verdict::New);
        assert_eq!(guard.received(b"x"), Verdict::Replay);
        // Open for longer than the window: the next insertion opens a new
        // generation; `x` and `y` are kept for one more window.
        age(MAX_CLOCK_SKEW + Duration::from_secs(1));
        assert_eq!(guard.received(b"z"), Verdict::New);
        assert_eq!(
            guard.received(b"x"),
            Verdict::Replay,
            "kept a window longer"
        );
        assert_eq!(guard.len(), 3);
        // Another window later both old generations are gone.
        age(MAX_CLOCK_SKEW + Duration::from_secs(1));
        assert_eq!(guard.received(b"w"), Verdict::New);
        age(MAX_CLOCK_SKEW + Duration::from_secs(1));
        assert_eq!(guard.received(b"x"), Verdict::New, "expired");
        assert_eq!(
            guard.received(b"w"),
            Verdict::Replay,
            "one window old is kept"
        );
    }

    #[test]
    fn forgetting_early_fails_closed_by_token_time() {
        // Generations of 2: the cache fills after four tokens.
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 4);
        assert_eq!(guard.received_at(b"a", Some(100)), Verdict::New);
        assert_eq!(guard.received_at(b"b", Some(101)), Verdict::New);
        assert_eq!(guard.received_at(b"c", Some(102)), Verdict::New);
        assert_eq!(guard.received_at(b"d", Some(103)), Verdict::New);
        // The fifth forgets `a` and `b`, long before their time to live:
        // anything stamped at or before 101 is refused from now on, `a`
        // played again among it, and new tokens of that age too.
        assert_eq!(guard.received_at(b"e", Some(104)), Verdict::New);
        assert_eq!(guard.received_at(b"a", Some(100)), Verdict::Forgotten);
        assert_eq!(guard.received_at(b"b", Some(101)), Verdict::Forgotten);
        assert_eq!(guard.received_at(b"x", Some(101)), Verdict::Forgotten);
        // What is still remembered is refused as a replay; newer tokens pass.
        assert_eq!(guard.received_at(b"d", Some(103)), Verdict::Replay);
        assert_eq!(guard.received_at(b"y", Some(102)), Verdict::New);
        // A token without a time cannot be refused by it.
        assert_eq!(guard.received_at(b"z", None), Verdict::New);
    }

    #[test]
    fn a_store_that_fills_within_a_second_refuses_no_fresh_token() {
        // Generations of 2, filled by tokens stamped now: forgetting the
        // first two would refuse every token of this second, those of a
        // live peer included (the fifth token did before). The current
        // generation grows instead, up to twice its share, and only then
        // the store fails closed.
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 4);
        let now = unix_now();
        for n in 0..6u32 {
            assert_eq!(
                guard.received_at(&n.to_be_bytes(), Some(now)),
                Verdict::New,
                "token {n} of this second"
            );
        }
        assert_eq!(guard.len(), 6, "nothing forgotten");
        for n in 0..6u32 {
            assert_eq!(
                guard.received_at(&n.to_be_bytes(), Some(now)),
                Verdict::Replay
            );
        }
        // Beyond twice the capacity it forgets, and fails closed.
        let mut refused = false;
        for n in 8..32u32 {
            refused |= guard.received_at(&n.to_be_bytes(), Some(now)) == Verdict::Forgotten;
            assert!(guard.len() <= 8, "never more than twice the capacity");
        }
        assert!(refused, "a flood beyond the bound still fails closed");
    }

    #[test]
    fn a_flood_stamped_ahead_never_puts_the_horizon_ahead_of_the_clock() {
        // Generations of 32: 200 tokens fill and rotate them six times.
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 64);
        let now = unix_now();
        for n in 0..200u32 {
            assert_eq!(
                guard.received_at(&n.to_be_bytes(), Some(now + 60)),
                Verdict::New
            );
        }
        let horizon = guard.lock().horizon;
        assert!(horizon.is_none_or(|horizon| horizon <= now), "{horizon:?}");
        // A peer's token made now is still accepted.
        assert_eq!(guard.received_at(b"now", Some(unix_now())), Verdict::New);
        assert_eq!(guard.received_at(b"now", Some(unix_now())), Verdict::Replay);
    }

    #[test]
    fn a_peer_a_second_fast_under_a_flood_gets_no_forgotten_token_accepted_again() {
        // Generations of 4; forty tokens of a peer whose clock is a second
        // fast overflow the store many times over. Whatever was forgotten
        // is refused (as forgotten), never accepted again.
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 8);
        let fast = unix_now() + 1;
        for n in 0..40u32 {
            let _ = guard.received_at(&n.to_be_bytes(), Some(fast));
        }
        for n in 0..40u32 {
            assert_ne!(
                guard.received_at(&n.to_be_bytes(), Some(fast)),
                Verdict::New,
                "token {n} accepted twice"
            );
        }
    }

    #[test]
    fn a_token_stamped_ahead_is_still_refused_once_its_generation_is_forgotten() {
        // Generations of 4.
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 8);
        let now = unix_now();
        assert_eq!(guard.received_at(b"ahead", Some(now + 30)), Verdict::New);
        // Eight tokens of ten seconds ago: the generation of `ahead` is
        // forgotten, early, with a horizon at their time, before `ahead`'s.
        for n in 0..8u32 {
            assert_eq!(
                guard.received_at(&n.to_be_bytes(), Some(now - 10)),
                Verdict::New
            );
        }
        assert_eq!(guard.lock().horizon, Some(now - 10));
        assert_eq!(guard.received_at(b"0", Some(now - 10)), Verdict::Forgotten);
        // `ahead` was kept, and is refused as what it is.
        assert_eq!(guard.received_at(b"ahead", Some(now + 30)), Verdict::Replay);
        assert_eq!(guard.received_at(b"new", Some(now)), Verdict::New);
    }

    #[test]
    fn tables_grow_with_the_traffic_and_forget_nothing_below_the_cap() {
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 1 << 16);
        assert_eq!(guard.lock().current.capacity(), INITIAL_GENERATION);
        for n in 0..20_000u32 {
            assert_eq!(
                guard.received_at(&n.to_be_bytes(), Some(1_000)),
                Verdict::New
            );
        }
        // Below the cap nothing was forgotten: every token is a replay.
        for n in 0..20_000u32 {
            assert_eq!(
                guard.received_at(&n.to_be_bytes(), Some(1_000)),
                Verdict::Replay
            );
        }
        let state = guard.lock();
        assert_eq!(state.horizon, None);
        assert_eq!(state.current.len, 20_000);
        assert_eq!(state.current.capacity(), 32_768);
    }

    #[test]
    fn a_forgotten_sent_token_reflected_back_is_refused_too() {
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 4);
        let mine = [guard.fingerprint(b"mine")];
        assert_eq!(guard.sent(&mine, 50).now_or_never(), Some(()));
        for (n, token) in [b"p", b"q", b"r", b"s"].iter().enumerate() {
            assert_eq!(guard.received_at(*token, Some(60 + n as u64)), Verdict::New);
        }
        // `mine` was forgotten with its generation; its time gives it away.
        assert_eq!(guard.received_at(b"mine", Some(50)), Verdict::Forgotten);
    }

    #[test]
    fn a_batch_gets_one_verdict_per_token_in_order() {
        let guard = MemoryReplayStore::new(Some(Duration::from_secs(300)), 100);
        let token = |text: &[u8]| ReceivedToken {
            fingerprint: guard.fingerprint(text),
            time: Some(10),
        };
        let batch = [token(b"one"), token(b"two"), token(b"one")];
        let mut verdicts = vec![Verdict::Unavailable; 7];
        let work = ReplayStore::received(&guard, &batch, &mut verdicts);
        assert!(format!("{work:?}").contains("done"));
        assert_eq!(work.now_or_never(), Some(()));
        assert_eq!(verdicts, [Verdict::New, Verdict::New, Verdict::Replay]);
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
        let guard = MemoryReplayStore::new(None, 2);
        assert_eq!(guard.received(b"a"), Verdict::New);
        assert_eq!(guard.received(b"b"), Verdict::New);
        for _ in 0..3 {
            assert_eq!(guard.received(b"b"), Verdict::Replay);
        }
        assert_eq!(guard.received(b"a"), Verdict::Replay, "still remembered");
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
