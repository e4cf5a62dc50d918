//! [`Fernet`]: the default cipher, composed from the RustCrypto primitives.
//!
//! Fernet is composed here from RustCrypto's `aes`, `cbc` (CBC decryption
//! and PKCS #7 padding) and `hmac` (its constant-time verification), with
//! vectorised URL-safe base64, rather than taken from the `fernet` crate, for
//! four reasons: the key schedules are set up once per key instead of once
//! per message (a message copies them, and the copies are wiped);
//! initialisation vectors come from a buffer of operating system randomness
//! instead of one system call each; no input from the network can reach
//! an arithmetic overflow (`fernet` 0.2.2 computes `timestamp + ttl` on
//! unauthenticated input); and a batch of tokens is sealed at once, their
//! CBC chains encrypted side by side ([`Cipher::seal_batch`], CBC encryption
//! written here for it). The tests prove it against the specification's
//! vectors and against the `fernet` crate in both directions.
//!
//! One file per job: `key.rs` (keys and their schedules), `token.rs` (the
//! token format, sealing and opening), `lanes.rs` (CBC chains side by side),
//! `iv.rs` (the pool of randomness for IVs, and fork detection).

use std::fmt;
use std::time::{Duration, SystemTime};

use zeroize::Zeroize as _;

use super::{Cipher, CipherError, Unsealed};

mod iv;
mod key;
mod lanes;
#[cfg(test)]
mod tests;
mod token;

use key::{KEY_LEN, Key};
pub use token::MAX_CLOCK_SKEW;
use token::{B64, unix_secs};

/// Fernet tokens under one or more keys, with an optional time to live.
///
/// Encrypts with the first key and accepts tokens under any of them, so keys
/// can be rotated without downtime: deploy `NEW,OLD` everywhere, then `NEW`.
///
/// Not `Clone`: the key material exists once, and is wiped when the
/// `Fernet` is dropped; share one in an `Arc`.
///
/// ```
/// use stream_rpc::{Cipher, Fernet};
///
/// let fernet = Fernet::new(&Fernet::generate_key()?)?;
/// let token = fernet.encrypt(b"hello")?;
/// assert_eq!(fernet.decrypt(&token)?, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
        let mut bytes = [0u8; KEY_LEN];
        getrandom::getrandom(&mut bytes).map_err(|e| CipherError::Randomness(e.to_string()))?;
        let key = B64.encode_to_string(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// Encrypts at a given time with a given IV: the deterministic core,
    /// exposed to the tests for the specification's `generate` vectors.
    #[cfg(test)]
    fn seal(&self, plaintext: &[u8], now: u64, iv: &[u8; token::IV_LEN]) -> Vec<u8> {
        let mut token = Vec::new();
        let one = token::Stamped {
            len: plaintext.len(),
            secs: now,
            iv: *iv,
        };
        self.seal_group(plaintext, &[one], b"", &mut token, &mut |_| {});
        token
    }

    /// Seals `plaintext` stamped with `now`, appending the token to `out`.
    #[cfg(test)]
    pub(super) fn seal_at(
        &self,
        plaintext: &[u8],
        now: SystemTime,
        out: &mut Vec<u8>,
    ) -> Result<(), CipherError> {
        let one = Unsealed::new(plaintext.len(), now);
        self.seal_batch(plaintext, &[one], b"", out, &mut |_| {})
    }
}

/// Fernet's batch operations: tokens sealed a batch at a time, their CBC
/// chains side by side; the token's length known from the plaintext's; the
/// token's time given to the replay cache; and the token remembered by its
/// HMAC.
impl Cipher for Fernet {
    fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
        let mut token = Vec::new();
        let one = Unsealed::new(plaintext.len(), SystemTime::now());
        self.seal_stamped_batch(plaintext, &[one], b"", &mut token, &mut |_| {})?;
        Ok(token)
    }

    fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CipherError> {
        self.open(token, unix_secs(SystemTime::now()))
    }

    fn time_to_live(&self) -> Option<Duration> {
        self.ttl
    }

    fn token_len(&self, plaintext_len: usize) -> Option<usize> {
        Some(token::token_len(plaintext_len))
    }

    fn seal_batch(
        &self,
        plaintexts: &[u8],
        items: &[Unsealed],
        terminator: &[u8],
        out: &mut Vec<u8>,
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<(), CipherError> {
        self.seal_stamped_batch(plaintexts, items, terminator, out, each)
    }

    fn open_at(
        &self,
        token: &[u8],
        now: SystemTime,
        out: &mut Vec<u8>,
    ) -> Result<Option<u64>, CipherError> {
        self.open_stamped(token, now, out).map(Some)
    }

    fn identity<'t>(&self, token: &'t [u8]) -> &'t [u8] {
        token::identity(token)
    }
}
