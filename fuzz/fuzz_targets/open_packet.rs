//! Token decryption and packet parsing, the two steps every frame from the
//! network goes through.
//!
//! Checks: no panic on any bytes; any plaintext sealed under the key opens
//! to itself, and the same token with any one byte changed either fails or
//! opens to the same plaintext (a change in base64 padding bits); a packet
//! that parses serializes to JSON that parses back to the same header.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use stream_rpc::{Cipher, Fernet, Packet};

#[derive(Debug, Arbitrary)]
struct Input {
    /// Tried as a token and as a plaintext packet.
    bytes: Vec<u8>,
    /// Where to change the sealed token, and how.
    tamper_at: u16,
    tamper_with: u8,
}

fn fernet() -> &'static Fernet {
    static FERNET: OnceLock<Fernet> = OnceLock::new();
    FERNET.get_or_init(|| {
        // A fixed key, so that a crash reproduces from its input alone.
        Fernet::new("cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=").expect("a valid key")
    })
}

fuzz_target!(|input: Input| {
    let fernet = fernet();
    let _ = fernet.decrypt(&input.bytes);

    if let Ok(packet) = Packet::from_json(&input.bytes) {
        let json = packet.to_json().expect("a parsed packet serializes");
        let again = Packet::from_json(&json).expect("a serialized packet parses");
        assert_eq!(
            (again.peer, again.id, &again.method, again.reply_to),
            (packet.peer, packet.id, &packet.method, packet.reply_to)
        );
    }

    let mut token = fernet.encrypt(&input.bytes).expect("sealing works");
    assert_eq!(
        fernet.decrypt(&token).expect("own token opens"),
        input.bytes
    );
    let at = usize::from(input.tamper_at) % token.len();
    if input.tamper_with != 0 {
        token[at] ^= input.tamper_with;
        if let Ok(plain) = fernet.decrypt(&token) {
            assert_eq!(plain, input.bytes, "a tampered token opened to other bytes");
        }
    }
});
