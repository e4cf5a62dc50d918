//! The Fernet tests: the specification's vectors, the `fernet` crate in
//! both directions, batches, and the edges of the format.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes::Aes128;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockEncryptMut as _, InnerIvInit as _};
use chrono::DateTime;
use serde_json::Value;

use super::lanes::LANES;
use super::token::{
    B64, HEADER_LEN, IDENTITY_LEN, MAC_LEN, Stamped, VERSION, token_len, unix_secs,
};
use super::*;

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
    let all = vectors(include_str!(
        "../../../tests/data/fernet-spec/generate.json"
    ));
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
    let all = vectors(include_str!("../../../tests/data/fernet-spec/verify.json"));
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
    let all = vectors(include_str!("../../../tests/data/fernet-spec/invalid.json"));
    assert_eq!(all.len(), 8);
    for v in all {
        let result = fernet(&v).open(v["token"].as_str().unwrap().as_bytes(), at(&v));
        assert!(result.is_err(), "{} was accepted", v["desc"]);
    }
}

#[test]
fn spec_invalid_vectors_fail_for_the_stated_reason() {
    let all = vectors(include_str!("../../../tests/data/fernet-spec/invalid.json"));
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
fn a_group_seals_each_token_as_it_would_be_sealed_alone() {
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
            let item = Stamped {
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
        let mut next = 0;
        for group in items.chunks(LANES) {
            let len: usize = group.iter().map(|item| item.len).sum();
            let mut show = |token: &[u8]| shown.push(token.to_vec());
            ours.seal_group(
                &plains[next..next + len],
                group,
                b"\r\n",
                &mut out,
                &mut show,
            );
            next += len;
        }
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
        assert_eq!(token_len(len), token.len(), "{len} bytes");
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
    let tag = key.sign(&raw);
    raw.extend_from_slice(&tag);
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
    assert_eq!(
        fernet.open_at(token, at(5_100), &mut plain),
        Ok(Some(5_000))
    );
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
        let identity = token::identity(&token);
        assert_eq!(identity.len(), IDENTITY_LEN);
        // Whole groups of four: the tail decodes on its own, to the
        // token's last bytes, the HMAC among them.
        let tail = B64.decode_to_vec(identity).unwrap();
        assert!(tail.len() >= MAC_LEN + 2, "{}", tail.len());
        assert!(raw.ends_with(&tail));
    }
    assert_eq!(token::identity(b"short"), b"short");
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
        assert_eq!(fernet.open_at(&token, at, &mut plain), Ok(Some(secs)));
    }
    let now = SystemTime::now();
    assert!(fernet.open_at(b"short", now, &mut plain).is_err());
    assert!(
        fernet
            .open_at(b"!!!!!!!!!!!!!!!!", now, &mut plain)
            .is_err()
    );
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

#[test]
fn a_batch_stamps_each_token_with_its_time_and_a_fresh_iv() {
    let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
    let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
    // More than a group of lanes, so that IVs are drawn for two groups.
    let items: Vec<Unsealed> = (0..LANES as u64 + 3)
        .map(|n| Unsealed::new(n as usize, at(1_000 + n)))
        .collect();
    let plains: Vec<u8> = items
        .iter()
        .flat_map(|item| vec![b'p'; item.len()])
        .collect();
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    fernet
        .seal_batch(&plains, &items, b"\n", &mut out, &mut |token| {
            tokens.push(token.to_vec())
        })
        .unwrap();
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), items.len());
    let mut ivs = std::collections::HashSet::new();
    for (token, item) in tokens.iter().zip(&items) {
        let raw = B64.decode_to_vec(token).unwrap();
        assert!(ivs.insert(raw[9..25].to_vec()), "an IV was reused");
        let mut plain = Vec::new();
        let secs = unix_secs(item.at());
        assert_eq!(fernet.open_at(token, item.at(), &mut plain), Ok(Some(secs)));
        assert_eq!(plain, vec![b'p'; item.len()]);
    }
    // Lengths that overrun the plaintexts are refused, not a panic.
    let overrun = [Unsealed::new(plains.len() + 1, at(0))];
    let refused = fernet.seal_batch(&plains, &overrun, b"\n", &mut out, &mut |_| {});
    assert!(matches!(refused, Err(CipherError::Other(_))));
    let huge = [Unsealed::new(usize::MAX, at(0)), Unsealed::new(2, at(0))];
    let refused = fernet.seal_batch(&plains, &huge, b"\n", &mut out, &mut |_| {});
    assert!(matches!(refused, Err(CipherError::Other(_))));
}
