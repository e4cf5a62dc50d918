//! A whole server session fed an arbitrary byte stream through an in-memory
//! duplex, in arbitrary chunks, with authentic packets of every kind mixed
//! into the noise (requests, replies, error packets, invalid packets).
//!
//! Checks: no panic; no hang: the session ends within the
//! bound once its input ends; memory stays within libFuzzer's RSS limit.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use stream_rpc::{
    Caller, Cipher, Config, Connector, Context, Fernet, HandlerError, Limits, Packet, Protocol,
    Reply, ReplyTo, Role, Timeouts,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
const METHODS: [&str; 6] = ["ping", "error", "call_back", "slow", "unknown", ""];

#[derive(Debug, Arbitrary)]
enum Piece {
    /// Bytes as they are.
    Noise(Vec<u8>),
    /// An authentic packet.
    Packet {
        method: u8,
        id: u64,
        payload: String,
        reply_to: Option<u64>,
    },
    /// Any plaintext, sealed under the key: authentic but maybe not a packet.
    Sealed(Vec<u8>),
    /// A line terminator.
    Terminator,
}

#[derive(Debug, Arbitrary)]
struct Input {
    pieces: Vec<Piece>,
    chunk_sizes: Vec<u8>,
    max_frame_len: u16,
}

/// Answers pings, calls the peer back, takes its time on request.
/// (libFuzzer aborts on any panic, caught or not, so handler panics are
/// left to the test suite.)
struct Target;

impl Protocol for Target {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "ping" => Ok(Reply::message("pong", packet.payload)),
            "call_back" => {
                // Nobody answers: bounded by the call timeout, cut short when
                // the session ends.
                let _ = ctx.call("ping", json!(null)).await;
                Ok(Reply::Nothing)
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(Reply::message("done", packet.payload))
            }
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

fn stream_of(pieces: &[Piece], fernet: &Fernet) -> Vec<u8> {
    let mut stream = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Noise(bytes) => stream.extend_from_slice(bytes),
            Piece::Terminator => stream.push(b'\n'),
            Piece::Packet {
                method,
                id,
                payload,
                reply_to,
            } => {
                let method = METHODS[usize::from(*method) % METHODS.len()];
                let peer = uuid::Uuid::from_u128(7);
                let mut packet = Packet::new(peer, *id, method, json!(payload));
                packet.reply_to = reply_to.map(|id| ReplyTo { peer, id });
                let json = packet.to_json().expect("a packet serializes");
                stream.extend_from_slice(&fernet.encrypt(&json).expect("sealing works"));
                stream.push(b'\n');
            }
            Piece::Sealed(plain) => {
                stream.extend_from_slice(&fernet.encrypt(plain).expect("sealing works"));
                stream.push(b'\n');
            }
        }
    }
    stream
}

fuzz_target!(|input: Input| {
    let fernet = Fernet::new(KEY).expect("a valid key");
    let stream = stream_of(&input.pieces, &fernet);
    let mut limits = Limits::default();
    limits.max_frame_len = usize::from(input.max_frame_len).max(128);
    limits.max_concurrent_handlers = 4;
    let mut timeouts = Timeouts::default();
    timeouts.call = Duration::from_millis(200);
    timeouts.shutdown_grace = Duration::from_millis(500);
    let config = Config::builder()
        .key(KEY)
        .limits(limits)
        .timeouts(timeouts)
        .build()
        .expect("a valid config");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let session = Connector::new(config).attach(ours, Target, Role::Server);
        let running = tokio::spawn(session.join());
        let (mut their_reader, mut their_writer) = tokio::io::split(theirs);
        // Drain what the session sends, so that it never waits on us.
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 16 * 1024];
            while matches!(their_reader.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let mut rest = &stream[..];
        let mut sizes = input.chunk_sizes.iter().cycle();
        while !rest.is_empty() {
            let size = sizes.next().map_or(rest.len(), |&s| usize::from(s).max(1));
            let (piece, tail) = rest.split_at(size.min(rest.len()));
            // The session may close first (too many bad frames); the rest
            // then cannot be written, which is fine.
            if their_writer.write_all(piece).await.is_err() {
                break;
            }
            rest = tail;
        }
        let _ = their_writer.shutdown().await;
        let outcome = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the session hung after its input ended");
        outcome.expect("the session task panicked");
        drain.abort();
    });
});
