//! Fernet sealing and opening: this crate's [`Fernet`] against the `fernet`
//! crate (RustCrypto backend), for a ping-sized packet and a 1 KiB payload.
//!
//! `cargo bench -p stream-rpc --bench cipher`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use stream_rpc::{Cipher, Fernet, Packet};
use uuid::Uuid;

fn plaintexts() -> [(&'static str, Vec<u8>); 2] {
    let ping = Packet::new(Uuid::new_v4(), 7, "ping", json!(null));
    let kib = Packet::new(Uuid::new_v4(), 7, "ping", json!("x".repeat(1024)));
    [
        ("ping", ping.to_json().unwrap()),
        ("1KiB", kib.to_json().unwrap()),
    ]
}

fn cipher(c: &mut Criterion) {
    let key = Fernet::generate_key().unwrap();
    let ours = Fernet::new(&key).unwrap();
    let theirs = fernet::Fernet::new(&key).unwrap();
    for (name, plain) in plaintexts() {
        let mut group = c.benchmark_group(format!("fernet/{name}"));
        group.bench_function("ours/encrypt", |b| {
            b.iter(|| ours.encrypt(black_box(&plain)).unwrap())
        });
        group.bench_function("crate/encrypt", |b| {
            b.iter(|| theirs.encrypt(black_box(&plain)))
        });
        let token = ours.encrypt(&plain).unwrap();
        let token_text = String::from_utf8(token.clone()).unwrap();
        group.bench_function("ours/decrypt", |b| {
            b.iter(|| ours.decrypt(black_box(&token)).unwrap())
        });
        group.bench_function("crate/decrypt", |b| {
            b.iter(|| theirs.decrypt(black_box(&token_text)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, cipher);
criterion_main!(benches);
