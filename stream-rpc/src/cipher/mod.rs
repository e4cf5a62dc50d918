//! Sealing packets: the [`Cipher`] trait and its default, [`Fernet`].
//!
//! A custom cipher implements two methods, [`Cipher::encrypt`] and
//! [`Cipher::decrypt`]. The session's fast paths (sealing and opening in
//! reused buffers at a clock reading it already has, the part of a token the
//! replay cache remembers, the token's time for the replay cache's horizon)
//! are a crate-internal extension that only [`Fernet`] provides; a custom
//! cipher goes through its two methods and is remembered whole.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

mod fernet;

pub(crate) use fernet::Unsealed;
pub use fernet::{Fernet, KeyError, MAX_CLOCK_SKEW};

/// Encrypts and authenticates packet plaintexts into tokens, and back.
///
/// The default is [`Fernet`]; a custom cipher can be set with
/// [`ConfigBuilder::cipher`](crate::ConfigBuilder::cipher), like the seed's
/// `STREAM_RPC_CYPHER`. A token must never contain the frame terminator (a
/// send whose token does fails with [`SendError::Cipher`](crate::SendError::Cipher)),
/// and `Debug` must never show key material. With replay protection on (the
/// default), a cipher must accept one spelling per token: the replay cache
/// remembers a custom cipher's tokens as they are written.
///
/// A [`Fernet`] given as the cipher is recognised as Fernet: its own time
/// to live applies, its tokens' times bound the replay cache, and the
/// session seals its messages a batch at a time.
pub trait Cipher: Send + Sync + fmt::Debug + std::any::Any + 'static {
    /// Seals `plaintext` into a token.
    fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CipherError>;

    /// Opens a token, checking its integrity (and, for Fernet, its age).
    fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CipherError>;
}

/// Why a token could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CipherError {
    /// The token is not well formed: not base64, too short, wrong version,
    /// ciphertext not a whole number of blocks, or bad padding.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The token's signature matches none of the keys: another key, or
    /// tampering.
    #[error("token signature does not match any key")]
    BadSignature,
    /// The token is older than the configured time to live.
    #[error("token expired: created {age_secs} s ago, time to live is {ttl_secs} s")]
    Expired {
        /// How old the token is.
        age_secs: u64,
        /// The configured time to live.
        ttl_secs: u64,
    },
    /// The token claims to be created further in the future than the 60 s of
    /// clock skew that the Fernet specification allows.
    #[error("token is from the future: {ahead_secs} s ahead of this clock")]
    FromTheFuture {
        /// How far ahead of the local clock the token's timestamp is.
        ahead_secs: u64,
    },
    /// The operating system's random number generator failed.
    #[error("no randomness for the initialisation vector: {0}")]
    Randomness(String),
    /// A custom cipher's own failure.
    #[error("{0}")]
    Other(String),
}

/// The cipher as the session uses it: [`Fernet`]'s fast paths, or a custom
/// cipher through its two methods.
#[derive(Clone)]
pub(crate) enum Sealer {
    /// The default.
    Fernet(Arc<Fernet>),
    /// A custom cipher.
    Custom(Arc<dyn Cipher>),
    /// Fernet that notes the times it is given, for the session's tests.
    #[cfg(test)]
    Recording(Arc<Recording>),
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sealer::Fernet(fernet) => fernet.fmt(f),
            Sealer::Custom(cipher) => cipher.fmt(f),
            #[cfg(test)]
            Sealer::Recording(recording) => recording.fernet.fmt(f),
        }
    }
}

impl Sealer {
    /// The sealer of `cipher`: Fernet's fast paths when it is a [`Fernet`],
    /// its two methods otherwise; and how long its tokens live, as far as
    /// it says (a custom cipher says nothing).
    pub(crate) fn of(cipher: Arc<dyn Cipher>) -> (Sealer, Option<std::time::Duration>) {
        let any: Arc<dyn std::any::Any + Send + Sync> = cipher.clone();
        match any.downcast::<Fernet>() {
            Ok(fernet) => {
                let ttl = fernet.ttl();
                (Sealer::Fernet(fernet), ttl)
            }
            Err(_) => (Sealer::Custom(cipher), None),
        }
    }

    /// Seals `plaintext` and appends the token to `out`. `now` is the time
    /// the packet was stamped with (for a packet sent as it is, the time of
    /// sending): Fernet stamps the token with it instead of reading the
    /// clock again.
    pub(crate) fn seal_at(
        &self,
        plaintext: &[u8],
        now: SystemTime,
        out: &mut Vec<u8>,
    ) -> Result<(), CipherError> {
        match self {
            Sealer::Fernet(fernet) => fernet.seal_at(plaintext, now, out),
            Sealer::Custom(cipher) => {
                out.extend_from_slice(&cipher.encrypt(plaintext)?);
                Ok(())
            }
            #[cfg(test)]
            Sealer::Recording(recording) => {
                recording.sealed.lock().unwrap().push(now);
                recording.fernet.seal_at(plaintext, now, out)
            }
        }
    }

    /// Opens `token` as of `now` (one clock reading for the frames opened
    /// together), appending the plaintext to `out`; on an error `out` is
    /// left as it was. Returns when the token was made, in seconds since
    /// the Unix epoch, as far as the cipher says: Fernet's authenticated
    /// timestamp, `None` for a custom cipher.
    pub(crate) fn open_at(
        &self,
        token: &[u8],
        now: SystemTime,
        out: &mut Vec<u8>,
    ) -> Result<Option<u64>, CipherError> {
        match self {
            Sealer::Fernet(fernet) => fernet.open_at(token, now, out).map(Some),
            Sealer::Custom(cipher) => {
                out.extend_from_slice(&cipher.decrypt(token)?);
                Ok(None)
            }
            #[cfg(test)]
            Sealer::Recording(recording) => {
                recording.opened.lock().unwrap().push(now);
                recording.fernet.open_at(token, now, out).map(Some)
            }
        }
    }

    /// The Fernet that seals this session's messages in the writer, a batch
    /// at a time; `None` for a custom cipher, whose tokens their senders
    /// seal one by one.
    pub(crate) fn batch_sealer(&self) -> Option<&Fernet> {
        match self {
            Sealer::Fernet(fernet) => Some(fernet),
            Sealer::Custom(_) => None,
            #[cfg(test)]
            Sealer::Recording(recording) => Some(&recording.fernet),
        }
    }

    /// Notes, for the session's tests, the time a message queued for
    /// [`batch_sealer`](Self::batch_sealer) will be sealed at.
    #[cfg(test)]
    pub(crate) fn note_sealed_at(&self, now: SystemTime) {
        if let Sealer::Recording(recording) = self {
            recording.sealed.lock().unwrap().push(now);
        }
    }

    /// The part of a token the replay cache remembers: two tokens that open
    /// and have the same identity are the same token. For Fernet, the text
    /// of its HMAC; for a custom cipher, the whole token.
    pub(crate) fn identity<'t>(&self, token: &'t [u8]) -> &'t [u8] {
        match self {
            Sealer::Fernet(_) => Fernet::identity(token),
            Sealer::Custom(_) => token,
            #[cfg(test)]
            Sealer::Recording(_) => Fernet::identity(token),
        }
    }
}

/// Fernet that notes the times the session seals and opens tokens at.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Recording {
    pub(crate) fernet: Arc<Fernet>,
    pub(crate) sealed: std::sync::Mutex<Vec<SystemTime>>,
    pub(crate) opened: std::sync::Mutex<Vec<SystemTime>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// Tokens are the plaintext reversed, whatever the time.
    #[derive(Debug)]
    struct Reversed;

    impl Cipher for Reversed {
        fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
            Ok(plaintext.iter().rev().copied().collect())
        }
        fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CipherError> {
            if token.is_empty() {
                return Err(CipherError::Other("empty".into()));
            }
            Ok(token.iter().rev().copied().collect())
        }
    }

    #[test]
    fn a_custom_cipher_needs_only_its_two_methods() {
        let sealer = Sealer::Custom(Arc::new(Reversed));
        let mut out = b"<".to_vec();
        sealer.seal_at(b"abc", UNIX_EPOCH, &mut out).unwrap();
        assert_eq!(out, b"<cba");
        let mut plain = b">".to_vec();
        // Opened with no time of its own.
        assert_eq!(sealer.open_at(b"cba", UNIX_EPOCH, &mut plain), Ok(None));
        assert_eq!(plain, b">abc");
        assert!(sealer.open_at(b"", UNIX_EPOCH, &mut plain).is_err());
        assert_eq!(
            plain, b">abc",
            "a refused token leaves the buffer as it was"
        );
        // Remembered whole.
        assert_eq!(sealer.identity(b"a-whole-token"), b"a-whole-token");
    }

    #[test]
    fn fernet_refuses_tokens_older_than_five_minutes_by_default() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        assert_eq!(fernet.ttl(), Some(crate::env::DEFAULT_TOKEN_TTL));
        let mut old = Vec::new();
        let made = SystemTime::now() - std::time::Duration::from_secs(301);
        fernet.seal_at(b"x", made, &mut old).unwrap();
        assert!(matches!(
            fernet.decrypt(&old),
            Err(CipherError::Expired { ttl_secs: 300, .. })
        ));
        assert_eq!(fernet.with_ttl(None).decrypt(&old).unwrap(), b"x");
    }

    #[test]
    fn a_fernet_given_as_the_cipher_is_recognised_as_fernet() {
        let key = Fernet::generate_key().unwrap();
        let fernet = Fernet::new(&key).unwrap();
        let config = crate::Config::builder()
            .cipher(Arc::new(fernet))
            .build()
            .unwrap();
        assert!(
            matches!(config.sealer, Sealer::Fernet(_)),
            "{:?}",
            config.sealer
        );
        assert_eq!(config.token_ttl(), Some(crate::env::DEFAULT_TOKEN_TTL));
        assert_eq!(
            config.sealer.batch_sealer().map(Fernet::ttl),
            Some(config.token_ttl())
        );
        // Its own time to live, whatever it is.
        let forever = Fernet::new(&key).unwrap().with_ttl(None);
        let config = crate::Config::builder()
            .cipher(Arc::new(forever))
            .build()
            .unwrap();
        assert!(matches!(config.sealer, Sealer::Fernet(_)));
        assert_eq!(config.token_ttl(), None);
        // Any other cipher goes through its two methods.
        let config = crate::Config::builder()
            .cipher(Arc::new(Reversed))
            .build()
            .unwrap();
        assert!(matches!(config.sealer, Sealer::Custom(_)));
        assert_eq!(config.token_ttl(), None);
    }

    #[test]
    fn fernet_is_remembered_by_its_mac_and_knows_its_time() {
        let fernet = Arc::new(Fernet::new(&Fernet::generate_key().unwrap()).unwrap());
        let sealer = Sealer::Fernet(fernet.clone());
        let at = SystemTime::now() - std::time::Duration::from_secs(10);
        let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut token = Vec::new();
        sealer.seal_at(b"x", at, &mut token).unwrap();
        assert_eq!(sealer.identity(&token), &token[token.len() - 48..]);
        let mut plain = Vec::new();
        assert_eq!(sealer.open_at(&token, at, &mut plain), Ok(Some(secs)));
        assert_eq!(plain, b"x");
        assert_eq!(fernet.decrypt(&token).unwrap(), b"x");
    }
}
