//! Fernet keys: parsing, the key schedules computed once, and wiping them.

use aes::Aes128;
use aes::cipher::KeyInit;
use base64_simd::{URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::token::MAC_LEN;

/// The length of a Fernet key once decoded: the signing half, then the
/// encryption half.
pub(super) const KEY_LEN: usize = 32;
/// The length of each half of a key.
const HALF_LEN: usize = KEY_LEN / 2;

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

/// One Fernet key with its key schedules computed once.
///
/// Every token clones them: the HMAC's keyed state (as good as the signing
/// key) for each signature and check, the AES round keys for each CBC
/// decryption. All copies are wiped: the AES round keys by `aes` itself
/// (its `zeroize` feature) when a copy is dropped, the HMAC states here (see
/// [`Key::sign`] and [`Key::verifies`]), and the originals when the key is
/// dropped.
pub(super) struct Key {
    signing: Hmac<Sha256>,
    /// The HMAC state of an all-zero key, written over every state that
    /// held this key's.
    blank: Hmac<Sha256>,
    pub(super) encryption: Aes128,
}

impl Drop for Key {
    fn drop(&mut self) {
        let blank = self.blank.clone();
        wipe(&mut self.signing, blank);
    }
}

/// Writes `blank` over the HMAC state `mac`.
fn wipe(mac: &mut Hmac<Sha256>, blank: Hmac<Sha256>) {
    // SAFETY: `mac` is a valid, aligned `Hmac` that this `&mut` borrows
    // exclusively; writing another valid `Hmac` over it is sound, and the
    // value overwritten has no drop glue (it is plain arrays and counters).
    // The write is volatile so that the compiler cannot remove it as a
    // store to memory about to be freed.
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::write_volatile(mac, blank);
    }
}

impl Key {
    /// Parses one key of a key list.
    pub(super) fn parse(text: &str) -> Result<Self, &'static str> {
        let bytes = decode_key(text.trim()).ok_or("it is not URL-safe base64")?;
        if bytes.len() != KEY_LEN {
            return Err("it does not decode to 32 bytes");
        }
        let signing = <Hmac<Sha256> as Mac>::new_from_slice(&bytes[..HALF_LEN])
            .map_err(|_| "the signing half is unusable")?;
        // HMAC takes keys of any length, so this cannot fail.
        let blank = <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; HALF_LEN])
            .map_err(|_| "the signing half is unusable")?;
        let encryption = Aes128::new_from_slice(&bytes[HALF_LEN..])
            .map_err(|_| "the encryption half is unusable")?;
        Ok(Key {
            signing,
            blank,
            encryption,
        })
    }

    /// The HMAC of `signed`, from a copy of the keyed state that is wiped
    /// once it is done.
    pub(super) fn sign(&self, signed: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = self.signing.clone();
        mac.update(signed);
        let tag = mac.finalize_reset().into_bytes().into();
        wipe(&mut mac, self.blank.clone());
        tag
    }

    /// Whether `tag` is the HMAC of `signed` (compared in constant time),
    /// from a copy of the keyed state that is wiped once it is done.
    pub(super) fn verifies(&self, signed: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.signing.clone();
        mac.update(signed);
        let good = mac.verify_slice_reset(tag).is_ok();
        wipe(&mut mac, self.blank.clone());
        good
    }
}
