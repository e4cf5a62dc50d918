//! Sealing packets: the [`Cipher`] trait and its default, [`Fernet`].
//!
//! This is the token layer of a connection: below it, frames (a token and
//! the terminator, `codec.rs`); above it, packets (their JSON, `packet/`).
//! A custom cipher implements two methods, [`Cipher::encrypt`] and
//! [`Cipher::decrypt`]; the connection uses the trait's provided methods
//! (sealing a batch, opening at a given time, the part of a token the replay
//! cache remembers), which [`Fernet`] overrides with faster ones, so that
//! the connection treats every cipher alike.

use std::fmt;
use std::time::{Duration, SystemTime};

mod fernet;

pub use fernet::{Fernet, KeyError, MAX_CLOCK_SKEW};

/// Encrypts and authenticates packet plaintexts into tokens, and back.
///
/// The default is [`Fernet`]; a custom cipher can be set with
/// [`ConfigBuilder::cipher`](crate::ConfigBuilder::cipher), as
/// `STREAM_RPC_CYPHER` does in the Python package. A token must never
/// contain the frame terminator (a send whose token does fails with
/// [`SendError::Cipher`](crate::SendError::Cipher) when its sender sealed
/// it), and `Debug` must never show key material. With replay protection on (the default), a cipher must
/// accept one spelling per token: the replay cache remembers a token by its
/// [`identity`](Cipher::identity), by default the whole token.
///
/// Only [`encrypt`](Cipher::encrypt) and [`decrypt`](Cipher::decrypt) must
/// be written; the other methods have defaults built on them.
///
/// Where tokens are sealed follows from [`token_len`](Cipher::token_len):
/// a cipher that cannot tell a token's length before sealing it (the
/// default) is sealed by each sender, a batch of one, so that its errors
/// reach the sender; one that can (as [`Fernet`]) is sealed by the
/// connection's writer, a batch of every queued message at a time.
///
/// ```
/// use stream_rpc::{Cipher, CipherError};
///
/// /// Not a cipher at all: tokens are the plaintext, hex-encoded.
/// #[derive(Debug)]
/// struct Hex;
///
/// impl Cipher for Hex {
///     fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
///         Ok(plaintext.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect())
///     }
///     fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CipherError> {
///         let text = std::str::from_utf8(token).map_err(|_| CipherError::Malformed("not text"))?;
///         (0..text.len())
///             .step_by(2)
///             .map(|at| u8::from_str_radix(text.get(at..at + 2).unwrap_or("?"), 16))
///             .collect::<Result<_, _>>()
///             .map_err(|_| CipherError::Malformed("not hex"))
///     }
/// }
///
/// assert_eq!(Hex.decrypt(&Hex.encrypt(b"hi")?)?, b"hi");
/// # Ok::<(), CipherError>(())
/// ```
pub trait Cipher: Send + Sync + fmt::Debug + std::any::Any + 'static {
    /// Seals `plaintext` into a token.
    fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CipherError>;

    /// Opens a token, checking its integrity (and, for Fernet, its age).
    fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CipherError>;

    /// How old a token may be when it is opened, as far as this cipher
    /// says: the replay cache remembers tokens that long. The default says
    /// nothing (`None`): the cache is then bounded by its size alone.
    fn time_to_live(&self) -> Option<Duration> {
        None
    }

    /// The length of the token that seals a plaintext of `plaintext_len`
    /// bytes, when it is known before sealing; `None` (the default) when it
    /// is not.
    ///
    /// A cipher that answers is sealed by the connection's writer, a batch
    /// at a time, after its senders were told that their message was
    /// queued: it promises that its tokens have exactly this length, never
    /// contain the frame terminator, and that
    /// [`seal_batch`](Cipher::seal_batch) fails only when nothing can be
    /// sealed at all (the connection then ends, with a log line).
    fn token_len(&self, plaintext_len: usize) -> Option<usize> {
        let _ = plaintext_len;
        None
    }

    /// Seals a batch of plaintexts, laid end to end in `plaintexts` as
    /// `items` say (in order, each its length and the time of sending),
    /// appending each token and then `terminator` to `out`; `each` is shown
    /// every token as it is appended (the replay cache remembers it as
    /// sent).
    ///
    /// The default seals one token at a time through
    /// [`encrypt`](Cipher::encrypt); an error stops the batch, `out`
    /// holding the tokens sealed before it. [`Fernet`] encrypts the CBC
    /// chains of several tokens side by side, stamped with the times given.
    fn seal_batch(
        &self,
        plaintexts: &[u8],
        items: &[Unsealed],
        terminator: &[u8],
        out: &mut Vec<u8>,
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<(), CipherError> {
        let mut rest = plaintexts;
        for item in items {
            if item.len() > rest.len() {
                return Err(CipherError::Other(
                    "a batch's lengths overrun its plaintexts".into(),
                ));
            }
            let (plaintext, after) = rest.split_at(item.len());
            rest = after;
            let token = self.encrypt(plaintext)?;
            out.extend_from_slice(&token);
            each(&token);
            out.extend_from_slice(terminator);
        }
        Ok(())
    }

    /// Opens `token` as of `now` (one clock reading for the frames opened
    /// together), appending the plaintext to `out`; on an error `out` is
    /// left as it was. Returns when the token was made, in seconds since
    /// the Unix epoch, as far as the cipher says: the default opens through
    /// [`decrypt`](Cipher::decrypt) and says nothing (`None`); [`Fernet`]
    /// gives its authenticated timestamp.
    fn open_at(
        &self,
        token: &[u8],
        now: SystemTime,
        out: &mut Vec<u8>,
    ) -> Result<Option<u64>, CipherError> {
        let _ = now;
        out.extend_from_slice(&self.decrypt(token)?);
        Ok(None)
    }

    /// The part of a token the replay cache remembers: two tokens that open
    /// and have the same identity are the same token. The default is the
    /// whole token; for [`Fernet`], the text of its HMAC.
    fn identity<'t>(&self, token: &'t [u8]) -> &'t [u8] {
        token
    }
}

/// A plaintext of a batch to seal (see [`Cipher::seal_batch`]): its length,
/// and the time of sending, which a cipher may stamp its token with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsealed {
    len: usize,
    at: SystemTime,
}

impl Unsealed {
    /// A plaintext of `len` bytes, sent at `at`.
    pub fn new(len: usize, at: SystemTime) -> Unsealed {
        Unsealed { len, at }
    }

    /// How long the plaintext is.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the plaintext is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When it was sent: the time its packet was stamped with.
    pub fn at(&self) -> SystemTime {
        self.at
    }
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

/// Fernet that notes the times the connection seals and opens tokens at,
/// for the engine's tests.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Recording {
    pub(crate) fernet: std::sync::Arc<Fernet>,
    pub(crate) sealed: std::sync::Mutex<Vec<SystemTime>>,
    pub(crate) opened: std::sync::Mutex<Vec<SystemTime>>,
}

#[cfg(test)]
impl Cipher for Recording {
    fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
        self.fernet.encrypt(plaintext)
    }
    fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CipherError> {
        self.fernet.decrypt(token)
    }
    fn time_to_live(&self) -> Option<Duration> {
        self.fernet.time_to_live()
    }
    fn token_len(&self, plaintext_len: usize) -> Option<usize> {
        self.fernet.token_len(plaintext_len)
    }
    fn seal_batch(
        &self,
        plaintexts: &[u8],
        items: &[Unsealed],
        terminator: &[u8],
        out: &mut Vec<u8>,
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<(), CipherError> {
        let mut sealed = self.sealed.lock().unwrap();
        sealed.extend(items.iter().map(Unsealed::at));
        self.fernet
            .seal_batch(plaintexts, items, terminator, out, each)
    }
    fn open_at(
        &self,
        token: &[u8],
        now: SystemTime,
        out: &mut Vec<u8>,
    ) -> Result<Option<u64>, CipherError> {
        self.opened.lock().unwrap().push(now);
        self.fernet.open_at(token, now, out)
    }
    fn identity<'t>(&self, token: &'t [u8]) -> &'t [u8] {
        self.fernet.identity(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    /// Tokens are the plaintext reversed, whatever the time; an empty
    /// plaintext cannot be sealed, nor an empty token opened.
    #[derive(Debug)]
    struct Reversed;

    impl Cipher for Reversed {
        fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, CipherError> {
            if plaintext.is_empty() {
                return Err(CipherError::Other("nothing to seal".into()));
            }
            Ok(plaintext.iter().rev().copied().collect())
        }
        fn decrypt(&self, token: &[u8]) -> Result<Vec<u8>, CipherError> {
            if token.is_empty() {
                return Err(CipherError::Other("empty".into()));
            }
            Ok(token.iter().rev().copied().collect())
        }
    }

    fn items(lengths: &[usize]) -> Vec<Unsealed> {
        lengths
            .iter()
            .map(|&len| Unsealed::new(len, UNIX_EPOCH))
            .collect()
    }

    #[test]
    fn a_custom_cipher_needs_only_its_two_methods() {
        let cipher: Arc<dyn Cipher> = Arc::new(Reversed);
        assert_eq!(cipher.token_len(3), None, "sealed by its senders");
        assert_eq!(cipher.time_to_live(), None);
        let mut plain = b">".to_vec();
        // Opened with no time of its own.
        assert_eq!(cipher.open_at(b"cba", UNIX_EPOCH, &mut plain), Ok(None));
        assert_eq!(plain, b">abc");
        assert!(cipher.open_at(b"", UNIX_EPOCH, &mut plain).is_err());
        assert_eq!(
            plain, b">abc",
            "a refused token leaves the buffer as it was"
        );
        // Remembered whole.
        assert_eq!(cipher.identity(b"a-whole-token"), b"a-whole-token");
    }

    #[test]
    fn a_custom_cipher_seals_a_batch_one_token_at_a_time() {
        let mut out = b"<".to_vec();
        let mut shown = Vec::new();
        Reversed
            .seal_batch(
                b"abcdefg",
                &items(&[3, 4]),
                b"\r\n",
                &mut out,
                &mut |token| shown.push(token.to_vec()),
            )
            .unwrap();
        assert_eq!(out, b"<cba\r\ngfed\r\n");
        assert_eq!(shown, [b"cba".to_vec(), b"gfed".to_vec()]);
        // Lengths that overrun the plaintexts are refused, not a panic.
        let overrun = Reversed.seal_batch(b"ab", &items(&[3]), b"\n", &mut out, &mut |_| {});
        assert!(matches!(overrun, Err(CipherError::Other(_))));
    }

    #[test]
    fn a_custom_ciphers_error_stops_its_batch() {
        let mut out = Vec::new();
        let mut shown = 0;
        let sealed = Reversed.seal_batch(b"abxy", &items(&[2, 0, 2]), b"\n", &mut out, &mut |_| {
            shown += 1
        });
        assert_eq!(sealed, Err(CipherError::Other("nothing to seal".into())));
        assert_eq!(out, b"ba\n", "the tokens sealed before the error");
        assert_eq!(shown, 1);
    }

    #[test]
    fn fernet_refuses_tokens_older_than_five_minutes_by_default() {
        let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
        assert_eq!(fernet.ttl(), Some(crate::env::DEFAULT_TOKEN_TTL));
        assert_eq!(fernet.time_to_live(), fernet.ttl());
        let mut old = Vec::new();
        let made = SystemTime::now() - Duration::from_secs(301);
        fernet.seal_at(b"x", made, &mut old).unwrap();
        assert!(matches!(
            fernet.decrypt(&old),
            Err(CipherError::Expired { ttl_secs: 300, .. })
        ));
        assert_eq!(fernet.with_ttl(None).decrypt(&old).unwrap(), b"x");
    }

    #[test]
    fn a_cipher_given_to_the_config_tells_its_own_time_to_live() {
        let key = Fernet::generate_key().unwrap();
        let fernet = Fernet::new(&key).unwrap();
        let config = crate::Config::builder()
            .cipher(Arc::new(fernet))
            .build()
            .unwrap();
        assert_eq!(config.token_ttl(), Some(crate::env::DEFAULT_TOKEN_TTL));
        assert!(config.cipher().token_len(1).is_some(), "sealed in batches");
        // Its own time to live, whatever it is.
        let forever = Fernet::new(&key).unwrap().with_ttl(None);
        let config = crate::Config::builder()
            .cipher(Arc::new(forever))
            .build()
            .unwrap();
        assert_eq!(config.token_ttl(), None);
        // Any other cipher goes through its two methods.
        let config = crate::Config::builder()
            .cipher(Arc::new(Reversed))
            .build()
            .unwrap();
        assert_eq!(config.cipher().token_len(1), None);
        assert_eq!(config.token_ttl(), None);
    }

    #[test]
    fn fernet_is_remembered_by_its_mac_and_knows_its_time() {
        let fernet = Arc::new(Fernet::new(&Fernet::generate_key().unwrap()).unwrap());
        let cipher: Arc<dyn Cipher> = fernet.clone();
        let at = SystemTime::now() - Duration::from_secs(10);
        let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut token = Vec::new();
        cipher
            .seal_batch(b"x", &[Unsealed::new(1, at)], b"", &mut token, &mut |_| {})
            .unwrap();
        assert_eq!(cipher.token_len(1), Some(token.len()));
        assert_eq!(cipher.identity(&token), &token[token.len() - 48..]);
        let mut plain = Vec::new();
        assert_eq!(cipher.open_at(&token, at, &mut plain), Ok(Some(secs)));
        assert_eq!(plain, b"x");
        assert_eq!(fernet.decrypt(&token).unwrap(), b"x");
    }
}
