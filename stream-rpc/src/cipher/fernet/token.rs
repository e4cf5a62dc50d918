//! The Fernet token format: sealing a batch of tokens and opening one.
//!
//! A token is URL-safe base64 of: the version byte, the time it was made
//! (seconds since the Unix epoch, big-endian), the IV, the AES-128-CBC
//! ciphertext of the PKCS #7-padded plaintext, and the HMAC-SHA256 of all
//! that.

use std::cell::RefCell;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::Aes128;
use base64_simd::{Base64, URL_SAFE};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut as _, InnerIvInit as _};

use super::Fernet;
use super::iv::random_iv;
use super::lanes::{LANES, encrypt_lanes};
use crate::cipher::{CipherError, Unsealed};

/// The version byte of every Fernet token.
pub(super) const VERSION: u8 = 0x80;
/// The length of a token's timestamp.
const STAMP_LEN: usize = 8;
/// The length of an initialisation vector.
pub(super) const IV_LEN: usize = 16;
/// Where a binary token's timestamp lies (after the version byte).
const STAMP_AT: Range<usize> = 1..1 + STAMP_LEN;
/// Where a binary token's IV lies (after the timestamp).
const IV_AT: Range<usize> = STAMP_AT.end..STAMP_AT.end + IV_LEN;
/// Version, timestamp and IV before the ciphertext.
pub(super) const HEADER_LEN: usize = IV_AT.end;
/// The length of the HMAC-SHA256 that ends a token.
pub(super) const MAC_LEN: usize = 32;
/// The AES block size.
pub(super) const BLOCK: usize = 16;
/// The clock skew the Fernet specification tolerates for tokens from the future.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How much of a Fernet token's text identifies it (see [`identity`]): the
/// last twelve groups of four characters.
pub(super) const IDENTITY_LEN: usize = 48;

/// URL-safe base64 with padding, read strictly: every token has exactly one
/// accepted text (padding as written by Python's `cryptography` and the
/// `fernet` crate, no stray trailing bits), so that the replay cache, which
/// fingerprints the text, cannot be bypassed by re-spelling a token. The
/// implementation is vectorised (AVX2, SSE4.1 or NEON, chosen at run time):
/// about a quarter of the time of a table-driven one for a ping's token.
pub(super) const B64: Base64 = URL_SAFE;

/// The largest binary-token buffer a thread keeps between tokens.
const KEEP_RAW: usize = 64 * 1024;

thread_local! {
    /// Each thread's buffer for the binary tokens being sealed (it holds
    /// ciphertext only once sealing returns).
    static RAW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A plaintext of a batch with the time and IV to seal it with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamped {
    pub(super) len: usize,
    pub(super) secs: u64,
    pub(super) iv: [u8; IV_LEN],
}

/// Seconds since the Unix epoch at `time`; a clock set before 1970 reads
/// as 0 rather than failing.
pub(super) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The length of the token that seals a plaintext of `len` bytes.
pub(super) fn token_len(len: usize) -> usize {
    let raw = HEADER_LEN + (len / BLOCK + 1) * BLOCK + MAC_LEN;
    raw.div_ceil(3) * 4
}

/// The last [`IDENTITY_LEN`] characters: the last twelve groups of four,
/// which spell the last 34 to 36 bytes (after two, one or no `=`), so the
/// whole 32-byte HMAC. Two authentic tokens with the same HMAC are the same
/// token, and each has one spelling.
pub(super) fn identity(token: &[u8]) -> &[u8] {
    &token[token.len().saturating_sub(IDENTITY_LEN)..]
}

impl Fernet {
    /// Seals a batch of plaintexts, laid end to end in `plains` as `items`
    /// say, appending each token and then `terminator` to `out`; `each` is
    /// shown every token as it is written. The IVs are drawn here, a group
    /// of [`LANES`] at a time; the only error is a want of randomness, or
    /// lengths that overrun `plains`.
    pub(super) fn seal_stamped_batch(
        &self,
        plains: &[u8],
        items: &[Unsealed],
        terminator: &[u8],
        out: &mut Vec<u8>,
        each: &mut dyn FnMut(&[u8]),
    ) -> Result<(), CipherError> {
        let total = items
            .iter()
            .try_fold(0usize, |sum, item| sum.checked_add(item.len()));
        if total.is_none_or(|total| total > plains.len()) {
            return Err(CipherError::Other(
                "a batch's lengths overrun its plaintexts".into(),
            ));
        }
        let mut next = 0;
        let mut group = [Stamped {
            len: 0,
            secs: 0,
            iv: [0; IV_LEN],
        }; LANES];
        for items in items.chunks(LANES) {
            let mut len = 0;
            for (item, stamped) in items.iter().zip(&mut group) {
                *stamped = Stamped {
                    len: item.len(),
                    secs: unix_secs(item.at()),
                    iv: random_iv()?,
                };
                len += item.len();
            }
            let group = &group[..items.len()];
            self.seal_group(&plains[next..next + len], group, terminator, out, each);
            next += len;
        }
        Ok(())
    }

    /// Seals a group of at most [`LANES`] plaintexts, laid end to end in
    /// `plains` as `group` says (their lengths add up to its length), their
    /// CBC chains side by side. The tokens are the same as sealing each
    /// alone with the same times and IVs. The binary tokens are built in a
    /// per-thread buffer.
    pub(super) fn seal_group(
        &self,
        plains: &[u8],
        group: &[Stamped],
        terminator: &[u8],
        out: &mut Vec<u8>,
        each: &mut dyn FnMut(&[u8]),
    ) {
        let key = &self.keys[0];
        crate::scratch::with_taken(
            &RAW,
            |raw| {
                // Each token's bytes: header, plaintext and PKCS #7
                // padding, then room for the HMAC.
                raw.clear();
                let mut ends = [0usize; LANES];
                let mut next = 0;
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
                    tag.copy_from_slice(&key.sign(body));
                    let token_start = out.len();
                    B64.encode_append(&raw[start..end], out);
                    each(&out[token_start..]);
                    out.extend_from_slice(terminator);
                    start = end;
                }
            },
            |raw| raw.capacity() <= KEEP_RAW,
        );
    }

    /// Opens a token as if the clock read `now` (seconds since the epoch).
    pub(super) fn open(&self, token: &[u8], now: u64) -> Result<Vec<u8>, CipherError> {
        let mut plain = Vec::new();
        self.open_append(token, now, &mut plain)?;
        Ok(plain)
    }

    /// Opens `token` as of `now`, appending the plaintext to `out` and
    /// returning when the token was made (its authenticated timestamp, in
    /// seconds since the Unix epoch); on an error `out` is left as it was.
    pub(super) fn open_stamped(
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
            .find(|key| key.verifies(signed, tag))
            .ok_or(CipherError::BadSignature)?;
        let created = self.check_time(raw, now)?;
        let body_end = raw.len() - MAC_LEN;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&raw[IV_AT]);
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

    /// The authenticated binary token `raw`'s time, if it is neither from
    /// too far in the future nor older than the time to live at `now`.
    fn check_time(&self, raw: &[u8], now: u64) -> Result<u64, CipherError> {
        let mut stamp = [0u8; STAMP_LEN];
        stamp.copy_from_slice(&raw[STAMP_AT]);
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
        Ok(created)
    }
}
