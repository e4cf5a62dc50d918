//! The per-message path: packet JSON, framing, and the whole way of one
//! packet from encode to decode (JSON, Fernet, frame, unframe, Fernet, JSON),
//! for a ping and a 1 KiB payload.
//!
//! `cargo bench -p stream-rpc --bench message`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use stream_rpc::codec::FrameCodec;
use stream_rpc::{Cipher, Fernet, Packet};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

fn packets() -> [(&'static str, Packet); 2] {
    [
        ("ping", Packet::new(Uuid::new_v4(), 7, "ping", json!(""))),
        (
            "1KiB",
            Packet::new(Uuid::new_v4(), 7, "ping", json!("x".repeat(1024))),
        ),
    ]
}

fn message(c: &mut Criterion) {
    let fernet = Fernet::new(&Fernet::generate_key().unwrap()).unwrap();
    for (name, packet) in packets() {
        let mut group = c.benchmark_group(format!("message/{name}"));
        let json = packet.to_json().unwrap();
        group.bench_function("json_encode", |b| {
            b.iter(|| black_box(&packet).to_json().unwrap())
        });
        group.bench_function("json_decode", |b| {
            b.iter(|| Packet::from_json(black_box(&json)).unwrap())
        });
        let token = fernet.encrypt(&json).unwrap();
        let mut codec = FrameCodec::default();
        group.bench_function("frame_decode", |b| {
            b.iter(|| {
                let mut buf = BytesMut::with_capacity(token.len() + 1);
                buf.extend_from_slice(&token);
                buf.extend_from_slice(b"\n");
                codec.decode(black_box(&mut buf)).unwrap().unwrap()
            })
        });
        group.bench_function("whole_path", |b| {
            let mut wire = BytesMut::with_capacity(4096);
            b.iter(|| {
                let json = black_box(&packet).to_json().unwrap();
                let token = fernet.encrypt(&json).unwrap();
                codec.encode(&token, &mut wire).unwrap();
                let frame = codec.decode(&mut wire).unwrap().unwrap();
                let plain = fernet.decrypt(&frame).unwrap();
                Packet::from_json(&plain).unwrap()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, message);
criterion_main!(benches);
