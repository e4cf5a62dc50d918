//! [`Fernet`]: the default cipher, composed from the RustCrypto primitives.
//!
//! Fernet is composed here from RustCrypto's `aes`, `cbc` (CBC decryption
//! and PKCS #7 padding) and `hmac` (its constant-time verification), with
//! vectorised URL-safe base64, rather than taken from the `fernet` crate, for
//! four reasons: the key schedules are set up once per key instead of once
//! per message (a message copies them);
//! initialisation vectors come from a buffer of operating system randomness
//! instead of one system call each; no input from the network can reach
//! an arithmetic overflow (`fernet` 0.2.2 computes `timestamp + ttl` on
//! unauthenticated input); and a batch of tokens is sealed at once, their
//! CBC chains encrypted side by side ([`Fernet::seal_batch`], CBC encryption
//! written here for it). The tests prove it against the specification's
//! vectors and against the `fernet` crate in both directions.

use std::cell::RefCell;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::Aes128;
use aes::cipher::KeyInit;
use aes::cipher::consts::U16;
use aes::cipher::typenum::Unsigned as _;
use aes::cipher::{BlockBackend, BlockClosure, BlockEncrypt as _, BlockSizeUser, ParBlocks};
use base64_simd::{Base64, URL_SAFE, URL_SAFE_NO_PAD};
#[cfg(test)]
use cbc::cipher::BlockEncryptMut as _;
#[cfg(test)]
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut as _, InnerIvInit as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize as _, Zeroizing};

use super::{Cipher, CipherError};

/// The version byte of every Fernet token.
const VERSION: u8 = 0x80;
/// Version, timestamp and IV before the ciphertext.
const HEADER_LEN: usize = 1 + 8 + 16;
const MAC_LEN: usize = 32;
const BLOCK: usize = 16;
/// The clock skew the Fernet specification tolerates for tokens from the future.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// URL-safe base64 with padding, read strictly: every token has exactly one
/// accepted text (padding as written by Python's `cryptography` and the
/// `fernet` crate, no stray trailing bits), so that the replay cache, which
/// fingerprints the text, cannot be bypassed by re-spelling a token. The
/// implementation is vectorised (AVX2, SSE4.1 or NEON, chosen at run time):
/// about a quarter of the time of a table-driven one for a ping's token.
const B64: Base64 = URL_SAFE;

/// Keys are read leniently: with or without padding (but, as tokens, with no
/// stray trailing bits). The bytes are wiped when dropped.
fn decode_key(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let engine = if text.ends_with('=') {
        URL_SAFE
    } else {
        URL_SAFE_NO_PAD
    };
    engine.decode_to_vec(text).ok().map(Zeroizing::new)
}

/// One Fernet key with its key schedules computed once. Neither is ever
/// cloned (a message clones the HMAC's state, which it finalises at once),
/// and both are wiped on drop: the AES round keys by `aes` itself, the
/// HMAC's precomputed state (as good as the signing key) here.
struct Key {
    signing: Hmac<Sha256>,
    encryption: Aes128,
}

impl Drop for Key {
    fn drop(&mut self) {
        // The HMAC state of an all-zero key (HMAC takes keys of any length,
        // so this cannot fail).
        if let Ok(blank) = <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 16]) {
            // SAFETY: `self.signing` is a valid, aligned `Hmac` that this
            // `&mut` borrows exclusively; writing another valid `Hmac` over
            // it is sound, and the value overwritten has no drop glue (it is
            // plain arrays and counters). The write is volatile so that the
            // compiler cannot remove it as a store to memory about to be
            // freed.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::write_volatile(&mut self.signing, blank);
            }
        }
    }
}

impl Key {
    fn parse(text: &str) -> Result<Self, &'static str> {
        let bytes = decode_key(text.trim()).ok_or("it is not URL-safe base64")?;
        if bytes.len() != 32 {
            return Err("it does not decode to 32 bytes");
        }
        let signing = <Hmac<Sha256> as Mac>::new_from_slice(&bytes[..16])
            .map_err(|_| "the signing half is unusable")?;
        let encryption =
            Aes128::new_from_slice(&bytes[16..]).map_err(|_| "the encryption half is unusable")?;
        Ok(Key {
            signing,
            encryption,
        })
    }
}

/// Fernet tokens under one or more keys, with an optional time to live.
///
/// Encrypts with the first key and accepts tokens under any of them, so keys
/// can be rotated without downtime: deploy `NEW,OLD` everywhere, then `NEW`.
///
/// Not `Clone`: the key material exists once, and is wiped when the
/// `Fernet` is dropped; share one in an `Arc`.
pub struct Fernet {
    keys: Vec<Key>,
    ttl: Option<Duration>,
}

/// Key material is never shown.
impl fmt::Debug for Fernet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fernet")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A key list that could not be used; it never contains the key itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "key {position} of {count} is not a valid Fernet key: {reason} \
     (expected 32 bytes in URL-safe base64, 44 characters)"
)]
pub struct KeyError {
    /// Which key of the comma-separated list is wrong, from 1.
    pub position: usize,
    /// How many keys the list has.
    pub count: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Fernet {
    /// Parses one key, or several separated by commas (the first encrypts,
    /// all decrypt). Tokens older than
    /// [`DEFAULT_TOKEN_TTL`](crate::env::DEFAULT_TOKEN_TTL) (5 min) are
    /// refused, as a [`Config`](crate::Config) does; [`Fernet::with_ttl`]
    /// changes that (`None` accepts any age).
    pub fn new(keys: &str) -> Result<Self, KeyError> {
        let parts: Vec<&str> = keys.split(',').collect();
        let count = parts.len();
        let keys = parts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                Key::parse(text).map_err(|reason| KeyError {
                    position: index + 1,
                    count,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Fernet {
            keys,
            ttl: Some(crate::config::DEFAULT_TOKEN_TTL),
        })
    }

    /// Sets how old a token may be when it is opened; `None` accepts any age.
    /// Tokens from more than 60 s in the future are refused either way.
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// The configured time to live.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// How many keys decrypt (the first of them also encrypts).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// A new random key in the standard form (44 characters of URL-safe
    /// base64), the same as Python's `Fernet.generate_key()`.
    pub fn generate_key() -> Result<String, CipherError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| CipherError::Randomness(e.to_string()))?;
        let key = B64.encode_to_string(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// Encrypts at a given time with a given IV: the deterministic core,
    /// exposed to the tests for the specification's `generate` vectors.
    #[cfg(test)]
    fn seal(&self, plaintext: &[u8], now: u64, iv: &[u8; 16]) -> Vec<u8> {
        let mut token = Vec::new();
        self.seal_into(plaintext, now, iv, &mut token);
        token
    }

    /// [`seal`](Self::seal), appending the token to `out`: a batch of one.
    fn seal_into(&self, plaintext: &[u8], now: u64, iv: &[u8; 16], out: &mut Vec<u8>) {
        let one = Unsealed {
            len: plaintext.len(),
            secs: now,
            iv: *iv,
        };
        self.seal_batch(plaintext, &[one], b"", out, |_| {});
    }

    /// Seals a batch of plaintexts, laid end to end in `plains` as `items`
    /// says, appending each token and then `terminator` to `out`; `each` is
    /// shown every token as it is written.
    ///
    /// CBC encryption is serial within a token (each block waits for the one
    /// before it), but the tokens of a batch are independent: their chains
    /// run side by side, [`LANES`] at a time, so that the AES unit encrypts
    /// several blocks at once where one token alone leaves it waiting. The
    /// tokens are the same as sealing each alone with the same times and
    /// IVs. The binary tokens are built in a per-thread buffer.
    pub(crate) fn seal_batch(
        &self,
        plains: &[u8],
        items: &[Unsealed],
        terminator: &[u8],
        out: &mut Vec<u8>,
        mut each: impl FnMut(&[u8]),
    ) {
        let key = &self.keys[0];
        crate::scratch::with_taken(
            &RAW,
            |raw| {
                let mut next = 0;
                for group in items.chunks(LANES) {
                    // Each token's bytes: header, plaintext and PKCS #7
                    // padding, then room for the HMAC.
                    raw.clear();
                    let mut ends = [0usize; LANES];
                    for (item, end) in group.iter().zip(&mut ends) {
                        let plain = &plains[next..next + item.len];
                        next += item.len;
                        let pad = BLOCK - item.len % BLOCK;
                        raw.reserve(HEADER_LEN + item.len + pad + MAC_LEN);
                        raw.push(VERSION);
                        raw.extend_from_slice(&item.secs.to_be_bytes());
                        raw.extend_from_slice(&item.iv);
                        raw.extend_from_slice(plain);
                        // `pad` is 1 to 16, so it fits a byte.
                        raw.resize(raw.len() + pad, pad as u8);
                        raw.resize(raw.len() + MAC_LEN, 0);
                        *end = raw.len();
                    }
                    let ends = &ends[..group.len()];
                    encrypt_lanes(&key.encryption, raw, group, ends);
                    let mut start = 0;
                    for &end in ends {
                        let (body, tag) = raw[start..end].split_at_mut(end - start - MAC_LEN);
                        let mut mac = key.signing.clone();
                        mac.update(body);
                        tag.copy_from_slice(&mac.finalize().into_bytes());
                        let token_start = out.len();
                        B64.encode_append(&raw[start..end], out);
                        each(&out[token_start..]);
                        out.extend_from_slice(terminator);
                        start = end;
                    }
                }
            },
            |raw| raw.capacity() <= KEEP_RAW,
        );
    }

    /// The length of the token that seals a plaintext of `len` bytes.
    pub(crate) fn token_len(len: usize) -> usize {
        let raw = HEADER_LEN + (len / BLOCK + 1) * BLOCK + MAC_LEN;
        raw.div_ceil(3) * 4
    }

    /// Opens a token as if the clock read `now` (seconds since the epoch).
    fn open(&self, token: &[u8], now: u64) -> Result<Vec<u8>, CipherError> {
        let mut plain = Vec::new();
        self.open_append(token, now, &mut plain)?;
        Ok(plain)
    }

    /// [`open`](Self::open), appending the plaintext to `out`, returning the
    /// token's (authenticated) timestamp; on an error `out` holds more than
    /// before (the caller truncates it).
    fn open_append(&self, token: &[u8], now: u64, out: &mut Vec<u8>) -> Result<u64, CipherError> {
        let start = out.len();
        B64.decode_append(token, out)
            .map_err(|_| CipherError::Malformed("not URL-safe base64"))?;
        let raw = &mut out[start..];
        if raw.len() < HEADER_LEN + BLOCK + MAC_LEN {
            return Err(CipherError::Malformed("too short"));
        }
        if raw[0] != VERSION {
            return Err(CipherError::Malformed("unknown version"));
        }
        if !(raw.len() - HEADER_LEN - MAC_LEN).is_multiple_of(BLOCK) {
            return Err(CipherError::Malformed(
                "ciphertext is not a whole number of blocks",
            ));
        }
        let (signed, tag) = raw.split_at(raw.len() - MAC_LEN);
        let key = self
            .keys
            .iter()
            .find(|key| {
                // `verify_slice` compares in constant time.
                let mut mac = key.signing.clone();
                mac.update(signed);
                mac.verify_slice(tag).is_ok()
            })
            .ok_or(CipherError::BadSignature)?;

        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&raw[1..9]);
        let created = u64::from_be_bytes(stamp);
        if created > now.saturating_add(MAX_CLOCK_SKEW.as_secs()) {
            return Err(CipherError::FromTheFuture {
                ahead_secs: created - now,
            });
        }
        if let Some(ttl) = self.ttl {
            let age_secs = now.saturating_sub(created);
            if age_secs > ttl.as_secs() {
                return Err(CipherError::Expired {
                    age_secs,
                    ttl_secs: ttl.as_secs(),
                });
            }
        }

        let body_end = raw.len() - MAC_LEN;
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&raw[9..HEADER_LEN]);
        let decryptor =
            cbc::Decryptor::<Aes128>::inner_iv_init(key.encryption.clone(), (&iv).into());
        let len = decryptor
            .decrypt_padded_mut::<Pkcs7>(&mut raw[HEADER_LEN..body_end])
            .map_err(|_| CipherError::Malformed("bad padding"))?
            .len();
        raw.copy_within(HEADER_LEN..HEADER_LEN + len, 0);
        out.truncate(start + len);
        Ok(created)
    }
}

impl Cipher for Fernet {
    fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
        let mut token = Vec::new();
        self.seal_at(plaintext, SystemTime::now(), &mut token)?;
        Ok(token)
    }

    fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CipherError> {
        self.open(token, unix_secs(SystemTime::now()))
    }
}

/// The session's fast paths (see [`Sealer`](super::Sealer)).
impl Fernet {
    /// Seals `plaintext` stamped with `now`, appending the token to `out`.
    pub(crate) fn seal_at(
        &self,
        plaintext: &[u8],
        now: SystemTime,
        out: &mut Vec<u8>,
    ) -> Result<(), CipherError> {
        let iv = random_iv()?;
        self.seal_into(plaintext, unix_secs(now), &iv, out);
        Ok(())
    }

    /// Opens `token` as of `now`, appending the plaintext to `out` and
    /// returning when the token was made (its authenticated timestamp, in
    /// seconds since the Unix epoch); on an error `out` is left as it was.
    pub(crate) fn open_at(
        &self,
        token: &[u8],
        now: SystemTime,
        out: &mut Vec<u8>,
    ) -> Result<u64, CipherError> {
        let start = out.len();
        let opened = self.open_append(token, unix_secs(now), out);
        if opened.is_err() {
            out.truncate(start);
        }
        opened
    }

    /// The last 48 characters: the last twelve groups of four, which spell
    /// the last 34 to 36 bytes (after two, one or no `=`), so the whole
    /// 32-byte HMAC. Two authentic tokens with the same HMAC are the same
    /// token, and each has one spelling.
    pub(crate) fn identity(token: &[u8]) -> &[u8] {
        &token[token.len().saturating_sub(IDENTITY_LEN)..]
    }
}

/// How much of a Fernet token's text identifies it (see `Fernet::identity`).
const IDENTITY_LEN: usize = 48;

/// Seconds since the Unix epoch at `time`; a clock set before 1970 reads
/// as 0 rather than failing.
fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// How many tokens' CBC chains are encrypted side by side: the `aes`
/// crate's AES-NI backend encrypts eight independent blocks at once, in
/// about the time one chained block takes.
const LANES: usize = 8;

/// A plaintext waiting to be sealed in a batch (see [`Fernet::seal_batch`]):
/// its length, the time to stamp its token with and its IV, both chosen
/// when it was queued.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unsealed {
    len: usize,
    secs: u64,
    iv: [u8; 16],
}

impl Unsealed {
    /// A plaintext of `len` bytes to be sealed as of `now`, with a fresh IV.
    pub(crate) fn new(len: usize, now: SystemTime) -> Result<Unsealed, CipherError> {
        Ok(Unsealed {
            len,
            secs: unix_secs(now),
            iv: random_iv()?,
        })
    }

    /// How long the plaintext is.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// CBC-encrypts the bodies of a group of binary tokens in place: the tokens
/// lie end to end in `raw`, ending at `ends`, each a header, a padded
/// plaintext and room for its MAC; `items` hold their IVs.
fn encrypt_lanes(aes: &Aes128, raw: &mut [u8], items: &[Unsealed], ends: &[usize]) {
    let mut lanes = Lanes {
        bodies: Default::default(),
        chains: [[0u8; BLOCK]; LANES],
        count: items.len(),
    };
    let mut rest = raw;
    let mut start = 0;
    for ((item, &end), (chain, body)) in items
        .iter()
        .zip(ends)
        .zip(lanes.chains.iter_mut().zip(lanes.bodies.iter_mut()))
    {
        let (token, tail) = std::mem::take(&mut rest).split_at_mut(end - start);
        let len = token.len();
        *body = &mut token[HEADER_LEN..len - MAC_LEN];
        *chain = item.iv;
        rest = tail;
        start = end;
    }
    aes.encrypt_with_backend(lanes);
}

/// Up to [`LANES`] CBC chains, encrypted with the cipher's backend taken
/// once: block `n` of every body still that long goes through the backend
/// together, in one parallel call when there are several (the AES-NI
/// backend pipelines eight), alone when there is one.
struct Lanes<'a> {
    bodies: [&'a mut [u8]; LANES],
    /// Each chain's last ciphertext block, the IV at first.
    chains: [[u8; BLOCK]; LANES],
    count: usize,
}

impl BlockSizeUser for Lanes<'_> {
    type BlockSize = U16;
}

impl BlockClosure for Lanes<'_> {
    // Inlined into the backend's own function, which is compiled for the
    // AES instructions, so that the blocks' encryption is inlined here in
    // turn rather than called block by block.
    #[inline(always)]
    fn call<B: BlockBackend<BlockSize = U16>>(mut self, backend: &mut B) {
        let bodies = &mut self.bodies[..self.count];
        let chains = &mut self.chains[..self.count];
        if let ([body], [chain]) = (&mut *bodies, &mut *chains) {
            // One token: its chain alone, block by block.
            let mut last = u128::from_ne_bytes(*chain);
            // Bodies are whole blocks: nothing is left over.
            for block in body.as_chunks_mut::<BLOCK>().0 {
                *block = (u128::from_ne_bytes(*block) ^ last).to_ne_bytes();
                backend.proc_block_inplace(block.into());
                last = u128::from_ne_bytes(*block);
            }
            return;
        }
        let par = B::ParBlocksSize::USIZE;
        let longest = bodies
            .iter()
            .map(|body| body.len() / BLOCK)
            .max()
            .unwrap_or(0);
        let mut blocks = ParBlocks::<B>::default();
        for index in 0..longest {
            // The chains still running, `par` at a time.
            let mut first = 0;
            while first < bodies.len() {
                let mut live = 0;
                let mut next = first;
                while next < bodies.len() && live < par {
                    if let Some(plain) = bodies[next].as_chunks::<BLOCK>().0.get(index) {
                        let mixed = u128::from_ne_bytes(*plain) ^ u128::from_ne_bytes(chains[next]);
                        blocks[live].copy_from_slice(&mixed.to_ne_bytes());
                        live += 1;
                    }
                    next += 1;
                }
                match live {
                    0 => {}
                    1 => backend.proc_block_inplace(&mut blocks[0]),
                    // Unused slots hold stale blocks, encrypted for nothing:
                    // in parallel that costs about as much as one block.
                    _ => backend.proc_par_blocks_inplace(&mut blocks),
                }
                let mut done = blocks[..live].iter();
                for (body, chain) in bodies[first..next].iter_mut().zip(&mut chains[first..next]) {
                    if let Some(cipher) = body.as_chunks_mut::<BLOCK>().0.get_mut(index)
                        && let Some(block) = done.next()
                    {
                        cipher.copy_from_slice(block);
                        chain.copy_from_slice(block);
                    }
                }
                first = next;
            }
        }
    }
}

/// The largest binary-token buffer a thread keeps between tokens.
const KEEP_RAW: usize = 64 * 1024;

thread_local! {
    /// Each thread's buffer for the binary token being sealed (it holds
    /// ciphertext only once sealing returns).
    static RAW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How many bytes of operating system randomness one system call fetches.
const POOL_LEN: usize = 16 * 1024;

/// A per-thread buffer of operating system randomness, so that one system
/// call provides 1,024 initialisation vectors. Used bytes are wiped.
///
/// A process made by `fork()` starts with a copy of its parent's buffer:
/// were it to take IVs from it, parent and child would seal with the same
/// IVs. So the buffer notes the count of forks (raised in every child by a
/// `pthread_atfork` handler) it was filled under, and is filled again when
/// that count has moved: a check of one atomic per IV, where asking the
/// process id would cost a system call each.
struct RandomPool {
    bytes: Box<[u8; POOL_LEN]>,
    used: usize,
    forks: u64,
}

thread_local! {
    static POOL: RefCell<RandomPool> = RefCell::new({
        fork::watch();
        RandomPool {
            bytes: Box::new([0; POOL_LEN]),
            used: POOL_LEN,
            forks: fork::count(),
        }
    });
}

fn random_iv() -> Result<[u8; 16], CipherError> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let forks = fork::count();
        if pool.used + 16 > POOL_LEN || pool.forks != forks {
            getrandom::getrandom(&mut pool.bytes[..])
                .map_err(|e| CipherError::Randomness(e.to_string()))?;
            pool.used = 0;
            pool.forks = forks;
        }
        let start = pool.used;
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&pool.bytes[start..start + 16]);
        pool.bytes[start..start + 16].fill(0);
        pool.used += 16;
        Ok(iv)
    })
}

/// Counts the forks of this process's ancestry line: raised in each child.
mod fork {
    use std::sync::atomic::{AtomicU64, Ordering};

    static FORKS: AtomicU64 = AtomicU64::new(0);

    /// How many times this process (as a child, and its parents before it)
    /// was forked since the handler was registered.
    pub(super) fn count() -> u64 {
        FORKS.load(Ordering::Relaxed)
    }

    /// Registers the handler, once per process (a child inherits it).
    pub(super) fn watch() {
        #[cfg(unix)]
        {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                extern "C" fn in_child() {
                    FORKS.fetch_add(1, Ordering::Relaxed);
                }
                // SAFETY: registers a handler that only increments an
                // atomic, which is async-signal-safe, as the handlers run
                // in the child of a fork must be. Registration fails only
                // for want of memory; then forks go unnoticed, which
                // `random_iv` cannot do better about than without it.
                #[allow(unsafe_code)]
                let registered = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
                if registered != 0 {
                    tracing::warn!(
                        "could not watch for fork(): a forked child must not seal with Fernet"
                    );
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use serde_json::Value;

    fn vectors(text: &str) -> Vec<Value> {
        serde_json::from_str(text).unwrap()
    }

    fn at(v: &Value) -> u64 {
        let now = DateTime::parse_from_rfc3339(v["now"].as_str().unwrap()).unwrap();
        u64::try_from(now.timestamp()).unwrap()
    }

    fn fernet(v: &Value) -> Fernet {
        let ttl = v["ttl_sec"].as_u64().map(Duration::from_secs);
        Fernet::new(v["secret"].as_str().unwrap())
            .unwrap()
            .with_ttl(ttl)
    }

    #[test]
    fn spec_generate_vectors() {
        let all = vectors(include_str!("../../tests/data/fernet-spec/generate.json"));
        assert!(!all.is_empty());
        for v in all {
            let iv: Vec<u8> = serde_json::from_value(v["iv"].clone()).unwrap();
            let token = fernet(&v).seal(
                v["src"].as_str().unwrap().as_bytes(),
                at(&v),
                &iv.try_into().unwrap(),
            );
            assert_eq!(String::from_utf8(token).unwrap(), v["token"]);
        }
    }

    #[test]
    fn spec_verify_vectors() {
        let all = vectors(include_str!("../../tests/data/fernet-spec/verify.json"));
        assert!(!all.is_empty());
        for v in all {
            let plain = fernet(&v)
                .open(v["token"].as_str().unwrap().as_bytes(), at(&v))
                .unwrap();
            assert_eq!(plain, v["src"].as_str().unwrap().as_bytes());
        }
    }

    #[test]
    fn spec_invalid_vectors() {
        let all = vectors(include_str!("../../tests/data/fernet-spec/invalid.json"));
        assert_eq!(all.len(), 8);
        for v in all {
            let result = fernet(&v).open(v["token"].as_str().unwrap().as_bytes(), at(&v));
            assert!(result.is_err(), "{} was accepted", v["desc"]);
        }
    }

    #[test]
    fn spec_invalid_vectors_fail_for_the_stated_reason() {
        let all = vectors(include_str!("../../tests/data/fernet-spec/invalid.json"));
        for v in all {
            let err = fernet(&v)
                .open(v["token"].as_str().unwrap().as_bytes(), at(&v))
                .unwrap_err();
            let desc = v["desc"].as_str().unwrap();
            let fits = match desc {
                "incorrect mac" => err == CipherError::BadSignature,
                "far-future TS (unacceptable clock skew)" => {
                    matches!(err, CipherError::FromTheFuture { .. })
                }
                "expired TTL" => matches!(err, CipherError::Expired { .. }),
                _ => matches!(err, CipherError::Malformed(_)),
            };
            assert!(fits, "{desc}: {err:?}");
        }
    }

    #[test]
    fn interoperates_with_the_fernet_crate_both_ways() {
        let key = Fernet::generate_key().unwrap();
        let ours = Fernet::new(&key).unwrap();
        let theirs = fernet::Fernet::new(&key).unwrap();
        // Every length up to past two batches of eight blocks, then a long one.
        let texts: Vec<Vec<u8>> = (0..=300usize)
            .map(|len| (0..len).map(|i| (i * 31 + len) as u8).collect())
            .chain([vec![0u8; 5000]])
            .collect();
        for plain in &texts {
            let plain = plain.as_slice();
            let token = ours.encrypt(plain).unwrap();
            assert_eq!(
                theirs
                    .decrypt(std::str::from_utf8(&token).unwrap())
                    .unwrap(),
                plain
            );
            let token = theirs.encrypt(plain);
            assert_eq!(ours.decrypt(token.as_bytes()).unwrap(), plain);
        }
    }

    #[test]
    fn a_batch_seals_each_token_as_it_would_be_sealed_alone() {
        let key = Fernet::generate_key().unwrap();
        let ours = Fernet::new(&key).unwrap();
        let theirs = fernet::Fernet::new(&key).unwrap();
        // Lengths that end on, before and after a block, the empty one,
        // and a long one, in batches that fill some groups of lanes and
        // leave the last one short.
        let lengths = [0usize, 1, 15, 16, 17, 31, 32, 100, 300, 5000, 2];
        for count in [1, 2, LANES - 1, LANES, LANES + 1, 2 * LANES + 3] {
            let mut plains = Vec::new();
            let mut each_plain = Vec::new();
            let mut items = Vec::new();
            let mut alone = Vec::new();
            for n in 0..count {
                let len = lengths[n % lengths.len()];
                let plain: Vec<u8> = (0..len).map(|i| (i * 7 + n) as u8).collect();
                let item = Unsealed {
                    len,
                    secs: 1_700_000_000 + n as u64,
                    iv: [n as u8; 16],
                };
                alone.push(ours.seal(&plain, item.secs, &item.iv));
                plains.extend_from_slice(&plain);
                each_plain.push(plain);
                items.push(item);
            }
            let mut out = b">".to_vec();
            let mut shown = Vec::new();
            ours.seal_batch(&plains, &items, b"\r\n", &mut out, |token| {
                shown.push(token.to_vec())
            });
            assert_eq!(shown, alone, "{count} tokens");
            let mut expected = b">".to_vec();
            for token in &alone {
                expected.extend_from_slice(token);
                expected.extend_from_slice(b"\r\n");
            }
            assert_eq!(out, expected, "{count} tokens");
            // Sealed alone means sealed right: the other implementation
            // opens each, and so do we.
            for ((token, item), plain) in alone.iter().zip(&items).zip(&each_plain) {
                let text = std::str::from_utf8(token).unwrap();
                let opened = theirs.decrypt_at_time(text, None, item.secs).unwrap();
                assert_eq!(&opened, plain);
                assert_eq!(&ours.open(token, item.secs).unwrap(), plain);
            }
        }
    }

    #[test]
    fn the_token_length_is_known_before_sealing() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        for len in (0..=100).chain([1023, 1024, 1025, 65_536]) {
            let token = fernet.seal(&vec![b'x'; len], 0, &[0; 16]);
            assert_eq!(Fernet::token_len(len), token.len(), "{len} bytes");
        }
    }

    /// A token with a good signature over a body padded as given.
    fn token_with_body(fernet: &Fernet, body: &[u8]) -> Vec<u8> {
        let key = &fernet.keys[0];
        let iv = [9u8; 16];
        let mut raw = vec![VERSION];
        raw.extend_from_slice(&unix_secs(SystemTime::now()).to_be_bytes());
        raw.extend_from_slice(&iv);
        raw.extend_from_slice(body);
        let body_len = raw.len() - HEADER_LEN;
        let _ = cbc::Encryptor::<Aes128>::inner_iv_init(key.encryption.clone(), (&iv).into())
            .encrypt_padded_mut::<NoPadding>(&mut raw[HEADER_LEN..], body_len);
        let mut mac = key.signing.clone();
        mac.update(&raw);
        raw.extend_from_slice(&mac.finalize().into_bytes());
        B64.encode_to_string(&raw).into_bytes()
    }

    #[test]
    fn padding_is_checked_byte_by_byte() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        let mut good = [b'a'; 32];
        good[16..].fill(16);
        assert_eq!(
            fernet.decrypt(&token_with_body(&fernet, &good)).unwrap(),
            [b'a'; 16]
        );
        let mut short = [b'a'; 16];
        short[13..].fill(3);
        assert_eq!(
            fernet.decrypt(&token_with_body(&fernet, &short)).unwrap(),
            [b'a'; 13]
        );
        // Each spoils the good body of 16 letters and 16 padding bytes.
        let spoilers: [(usize, u8); 5] = [
            (31, 0),   // a padding length of zero
            (31, 17),  // longer than a block
            (31, 255), // far longer
            (16, 15),  // the first padding byte wrong
            (30, 3),   // one in the middle wrong
        ];
        for (at, byte) in spoilers {
            let mut body = good;
            body[at] = byte;
            let result = fernet.decrypt(&token_with_body(&fernet, &body));
            assert_eq!(
                result,
                Err(CipherError::Malformed("bad padding")),
                "{at}: {byte}"
            );
        }
    }

    #[test]
    fn several_keys_encrypt_with_the_first_and_accept_any() {
        let (new, old) = (
            Fernet::generate_key().unwrap(),
            Fernet::generate_key().unwrap(),
        );
        let rotating = Fernet::new(&format!("{new},{old}")).unwrap();
        let only_old = Fernet::new(&old).unwrap();
        let only_new = Fernet::new(&new).unwrap();
        let from_old = only_old.encrypt(b"hi").unwrap();
        assert_eq!(rotating.decrypt(&from_old).unwrap(), b"hi");
        let from_rotating = rotating.encrypt(b"yo").unwrap();
        assert_eq!(only_new.decrypt(&from_rotating).unwrap(), b"yo");
        assert_eq!(
            only_old.decrypt(&from_rotating),
            Err(CipherError::BadSignature)
        );
    }

    #[test]
    fn bad_keys_name_their_position_and_never_echo_the_key() {
        let good = Fernet::generate_key().unwrap();
        let secretish = "c2VjcmV0LXNlY3JldC1zZWNyZXQ";
        for (list, position) in [
            (format!("{good},{secretish}"), 2),
            ("%%%".to_string(), 1),
            (format!("{good},"), 2),
            (String::new(), 1),
        ] {
            let err = Fernet::new(&list).unwrap_err();
            assert_eq!(err.position, position, "{list}");
            let text = err.to_string();
            assert!(!text.contains(secretish) && !text.contains(&good), "{text}");
        }
        let debug = format!("{:?}", Fernet::new(&good).unwrap());
        assert!(!debug.contains(&good) && debug.contains("redacted"));
    }

    #[test]
    fn timestamps_near_u64_max_are_refused_without_overflow() {
        let key = Fernet::generate_key().unwrap();
        let fernet = Fernet::new(&key)
            .unwrap()
            .with_ttl(Some(Duration::from_secs(u64::MAX)));
        for created in [u64::MAX, u64::MAX - 1, u64::MAX - 60] {
            let token = fernet.seal(b"{}", created, &[1; 16]);
            assert!(matches!(
                fernet.decrypt(&token),
                Err(CipherError::FromTheFuture { .. })
            ));
            // The same stamp with a forged signature fails on the signature.
            let mut raw = B64.decode_to_vec(&token).unwrap();
            let last = raw.len() - 1;
            raw[last] ^= 1;
            assert_eq!(
                fernet.decrypt(B64.encode_to_string(raw).as_bytes()),
                Err(CipherError::BadSignature)
            );
        }
        assert!(
            fernet
                .open(&fernet.seal(b"{}", 0, &[1; 16]), u64::MAX)
                .is_ok()
        );
    }

    #[test]
    fn ttl_and_skew_edges() {
        let key = Fernet::generate_key().unwrap();
        let fernet = Fernet::new(&key)
            .unwrap()
            .with_ttl(Some(Duration::from_secs(100)));
        let token = fernet.seal(b"x", 1_000, &[3; 16]);
        assert!(fernet.open(&token, 1_100).is_ok());
        assert_eq!(
            fernet.open(&token, 1_101),
            Err(CipherError::Expired {
                age_secs: 101,
                ttl_secs: 100
            })
        );
        assert!(fernet.open(&token, 940).is_ok());
        assert_eq!(
            fernet.open(&token, 939),
            Err(CipherError::FromTheFuture { ahead_secs: 61 })
        );
    }

    #[test]
    fn tokens_are_stamped_and_checked_at_the_time_given() {
        let key = Fernet::generate_key().unwrap();
        let fernet = Fernet::new(&key)
            .unwrap()
            .with_ttl(Some(Duration::from_secs(100)));
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        // The time's fraction of a second is dropped, not rounded.
        let mut token = b"kept:".to_vec();
        fernet
            .seal_at(b"x", at(5_000) + Duration::from_millis(999), &mut token)
            .unwrap();
        assert_eq!(&token[..5], b"kept:");
        let token = &token[5..];
        let raw = B64.decode_to_vec(token).unwrap();
        assert_eq!(raw[1..9], 5_000u64.to_be_bytes());

        let mut plain = b"before:".to_vec();
        fernet.open_at(token, at(5_100), &mut plain).unwrap();
        assert_eq!(plain, b"before:x");
        // A refused token leaves the buffer as it was.
        for (now, error) in [
            (
                5_101,
                CipherError::Expired {
                    age_secs: 101,
                    ttl_secs: 100,
                },
            ),
            (4_939, CipherError::FromTheFuture { ahead_secs: 61 }),
        ] {
            assert_eq!(fernet.open_at(token, at(now), &mut plain), Err(error));
            assert_eq!(plain, b"before:x");
        }
        let mut tampered = token.to_vec();
        tampered[30] ^= 1;
        assert!(fernet.open_at(&tampered, at(5_000), &mut plain).is_err());
        assert_eq!(plain, b"before:x");
        // `decrypt` reads the clock: this token is long expired.
        assert!(matches!(
            fernet.decrypt(token),
            Err(CipherError::Expired { .. })
        ));
    }

    #[test]
    fn garbage_tokens_are_malformed() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        for token in [
            &b""[..],
            b"hello world",
            b"\xff\xfe\x00",
            b"gAAAAA",
            &[b'A'; 200],
        ] {
            assert!(
                matches!(
                    fernet.decrypt(token),
                    Err(CipherError::Malformed(_) | CipherError::BadSignature)
                ),
                "{token:?}"
            );
        }
    }

    #[test]
    fn a_token_has_one_accepted_spelling() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        // Plaintexts of one, two and three blocks: tokens of 73, 89 and 105
        // bytes, spelled with two `=`, one and none.
        let mut paddings = Vec::new();
        for plain in [&b"a"[..], &[b'b'; 20], &[b'c'; 40]] {
            let token = fernet.encrypt(plain).unwrap();
            paddings.push(token.iter().filter(|&&b| b == b'=').count());
            assert_eq!(fernet.decrypt(&token).unwrap(), plain);
            let unpadded: Vec<u8> = token.iter().copied().filter(|&b| b != b'=').collect();
            let pads = token.len() - unpadded.len();
            if pads == 0 {
                continue;
            }
            assert!(
                matches!(fernet.decrypt(&unpadded), Err(CipherError::Malformed(_))),
                "a token without its padding was accepted"
            );
            // The last letter before the padding carries 2 (one `=`) or 4
            // (two) bits that encode nothing; setting one spells the same
            // bytes, which a lenient reader would accept.
            let mut stray = token.clone();
            let last = token.len() - pads - 1;
            let alphabet = B64.charset();
            let index = alphabet.iter().position(|&c| c == token[last]).unwrap();
            assert_eq!(index % 4, 0, "canonical spellings leave those bits clear");
            stray[last] = alphabet[index + 1];
            assert!(
                matches!(fernet.decrypt(&stray), Err(CipherError::Malformed(_))),
                "a token with stray trailing bits was accepted"
            );
        }
        assert_eq!(paddings, [2, 1, 0]);
    }

    #[test]
    fn a_token_identity_spells_the_whole_hmac() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        for plain in [&b"a"[..], &[b'b'; 20], &[b'c'; 40]] {
            let token = fernet.encrypt(plain).unwrap();
            let raw = B64.decode_to_vec(&token).unwrap();
            let identity = Fernet::identity(&token);
            assert_eq!(identity.len(), IDENTITY_LEN);
            // Whole groups of four: the tail decodes on its own, to the
            // token's last bytes, the HMAC among them.
            let tail = B64.decode_to_vec(identity).unwrap();
            assert!(tail.len() >= MAC_LEN + 2, "{}", tail.len());
            assert!(raw.ends_with(&tail));
        }
        assert_eq!(Fernet::identity(b"short"), b"short");
    }

    #[test]
    fn a_token_whose_mac_differs_in_any_bit_is_refused() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        let token = fernet.encrypt(b"payload").unwrap();
        let raw = B64.decode_to_vec(&token).unwrap();
        let now = unix_secs(SystemTime::now());
        for index in raw.len() - MAC_LEN..raw.len() {
            for bit in 0..8 {
                let mut tampered = raw.clone();
                tampered[index] ^= 1 << bit;
                let text = B64.encode_to_string(&tampered);
                assert_eq!(
                    fernet.open(text.as_bytes(), now),
                    Err(CipherError::BadSignature),
                    "byte {index}, bit {bit}"
                );
            }
        }
        assert_eq!(fernet.open(&token, now).unwrap(), b"payload");
    }

    #[test]
    fn opening_a_token_tells_its_time() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        let mut plain = Vec::new();
        for secs in [0, 1, 1_700_000_000, u64::from(u32::MAX) + 7] {
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let mut token = Vec::new();
            fernet.seal_at(b"x", at, &mut token).unwrap();
            assert_eq!(fernet.open_at(&token, at, &mut plain), Ok(secs));
        }
        let now = SystemTime::now();
        assert!(fernet.open_at(b"short", now, &mut plain).is_err());
        assert!(
            fernet
                .open_at(b"!!!!!!!!!!!!!!!!", now, &mut plain)
                .is_err()
        );
    }

    /// A forked child takes IVs of its own, never the ones left in the
    /// parent's buffer.
    #[cfg(unix)]
    #[test]
    fn a_forked_child_never_reuses_the_parents_ivs() {
        // Fill this thread's buffer and take one IV, so that the buffer
        // holds unused IVs when the process forks.
        random_iv().unwrap();
        let mut pipe = [0i32; 2];
        // SAFETY: `pipe` has room for the two descriptors.
        #[allow(unsafe_code)]
        let piped = unsafe { libc::pipe(pipe.as_mut_ptr()) };
        assert_eq!(piped, 0);
        // SAFETY: the child only takes IVs (no allocation: the buffer
        // exists, refilling it is a system call into it), writes them to the
        // pipe and leaves with `_exit`, so it never touches a lock another
        // thread of the test harness may have held at the fork.
        #[allow(unsafe_code)]
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let mut ivs = [0u8; 64];
            for chunk in ivs.chunks_exact_mut(16) {
                match random_iv() {
                    Ok(iv) => chunk.copy_from_slice(&iv),
                    // SAFETY: leaving the child at once.
                    #[allow(unsafe_code)]
                    Err(_) => unsafe { libc::_exit(2) },
                }
            }
            // SAFETY: writes the 64 bytes of `ivs` to the pipe, then leaves.
            #[allow(unsafe_code)]
            unsafe {
                libc::write(pipe[1], ivs.as_ptr().cast(), ivs.len());
                libc::_exit(0);
            }
        }
        let parent: Vec<[u8; 16]> = (0..4).map(|_| random_iv().unwrap()).collect();
        let mut from_child = [0u8; 64];
        let mut got = 0;
        while got < from_child.len() {
            // SAFETY: reads into the unfilled rest of `from_child`.
            #[allow(unsafe_code)]
            let read = unsafe {
                libc::read(
                    pipe[0],
                    from_child[got..].as_mut_ptr().cast(),
                    from_child.len() - got,
                )
            };
            assert!(read > 0, "the child wrote no IVs");
            got += read as usize;
        }
        let mut status = 0;
        // SAFETY: waits for the child made above; closes our descriptors.
        #[allow(unsafe_code)]
        unsafe {
            libc::waitpid(child, &mut status, 0);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        let child_ivs: Vec<&[u8]> = from_child.chunks_exact(16).collect();
        for iv in &parent {
            assert!(!child_ivs.contains(&&iv[..]), "the child reused {iv:?}");
        }
        assert_eq!(fork::count(), 0, "the parent's count never moves");
    }

    #[test]
    fn keys_are_read_with_or_without_padding() {
        let key = Fernet::generate_key().unwrap();
        assert!(key.ends_with('='));
        let padded = Fernet::new(&key).unwrap();
        let unpadded = Fernet::new(key.trim_end_matches('=')).unwrap();
        assert_eq!(
            unpadded.decrypt(&padded.encrypt(b"x").unwrap()).unwrap(),
            b"x"
        );
        assert!(Fernet::new(&format!("{key}=")).is_err());
        assert!(Fernet::new(&key[..40]).is_err());
    }

    #[test]
    fn ivs_differ_between_tokens() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..600 {
            let raw = B64.decode_to_vec(fernet.encrypt(b"same").unwrap()).unwrap();
            assert!(seen.insert(raw[9..25].to_vec()));
        }
    }
}
