//! Properties of the parts that face the network, over many random inputs
//! (proptest, on stable). The same properties are meant for `cargo fuzz`
//! with coverage guidance; these run on every `cargo test`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use stream_rpc::codec::{CodecError, FrameCodec};
use stream_rpc::{
    Cipher, Config, Connector, Context, Fernet, HandlerError, Packet, Protocol, Reply, Role,
};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Decoder;

/// Bytes drawn mostly from the characters that matter to framing.
fn wire_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => Just(b'A'),
            2 => Just(b'\n'),
            1 => Just(b'\r'),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

/// Splits `input` at the given fractions into consecutive chunks.
fn chunks(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (input.len() + 1)).collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| input[w[0]..w[1]].to_vec())
        .collect()
}

/// Everything a codec yields for `input` fed in `pieces`, with the most the
/// buffer ever held.
fn decode_in_pieces(max_len: usize, pieces: &[Vec<u8>]) -> (Vec<Result<Vec<u8>, String>>, usize) {
    let mut codec = FrameCodec::new(b"\n", max_len);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut most = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        most = most.max(buf.len());
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => out.push(Ok(frame.to_vec())),
                Ok(None) => break,
                Err(CodecError::FrameTooLong { .. }) => out.push(Err("too long".into())),
                Err(other) => panic!("unexpected codec error {other}"),
            }
        }
    }
    (out, most)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Chunking never changes what the codec yields, and it never buffers
    /// more than one read chunk beyond a maximum frame.
    #[test]
    fn the_codec_is_indifferent_to_chunking(
        input in wire_bytes(400),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max_len in 1usize..40,
    ) {
        let whole = decode_in_pieces(max_len, std::slice::from_ref(&input)).0;
        let pieces = chunks(&input, &cuts);
        let (split, _) = decode_in_pieces(max_len, &pieces);
        prop_assert_eq!(&split, &whole);
        // Byte by byte, the buffer stays within a frame plus `\r\n`.
        let bytes: Vec<Vec<u8>> = input.iter().map(|&b| vec![b]).collect();
        let (one_by_one, most) = decode_in_pieces(max_len, &bytes);
        prop_assert_eq!(&one_by_one, &whole);
        prop_assert!(most <= max_len + 2, "buffered {} with max {}", most, max_len);
        for frame in whole.iter().flatten() {
            prop_assert!(!frame.is_empty() && frame.len() <= max_len);
            prop_assert!(!frame.contains(&b'\n'));
        }
    }

    /// Arbitrary bytes are refused as a token (an error, never a panic: no
    /// MAC of ours matches them) and as a packet (not a JSON object with a
    /// packet's fields), whether they come alone or in a token's shape.
    #[test]
    fn arbitrary_tokens_and_plaintexts_are_refused_without_panicking(
        token in prop::collection::vec(any::<u8>(), 0..300),
        plain in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let fernet = fernet();
        let opened = fernet.decrypt(&token);
        prop_assert!(opened.is_err(), "arbitrary bytes opened: {:?}", opened);
        // The same bytes in a token's alphabet: version byte, then base64.
        let shaped = format!(
            "gAAAAA{}",
            token
                .iter()
                .map(|byte| char::from(BASE64URL[usize::from(*byte) % BASE64URL.len()]))
                .collect::<String>()
        );
        let opened = fernet.decrypt(shaped.as_bytes());
        prop_assert!(opened.is_err(), "a token-shaped text opened: {:?}", opened);
        let parsed = Packet::from_json(&plain);
        prop_assert!(parsed.is_err(), "arbitrary bytes parsed as {:?}", parsed);
    }

    /// The packet encoder writes exactly what serde writes, and reads back.
    #[test]
    fn packets_encode_as_serde_encodes_them(
        peer in any::<u128>(),
        id in any::<u64>(),
        seconds in -62_135_596_800i64..253_402_300_800,
        nanos in 0u32..1_000_000_000,
        method in ".{0,12}",
        text in ".{0,24}",
        number in any::<i64>(),
        reply in prop::option::of((any::<u128>(), any::<u64>())),
        timeout_ms in prop::option::of(any::<u64>()),
        meta in prop::collection::btree_map("[a-z0-9._-]{1,8}", ".{0,12}", 0..4),
    ) {
        let payload = serde_json::json!({"text": text, "n": number, "list": [number, null, true]});
        let mut packet = Packet::new(uuid::Uuid::from_u128(peer), id, method, payload);
        packet.created_at = chrono::DateTime::from_timestamp(seconds, nanos).unwrap();
        packet.reply_to = reply.map(|(peer, id)| stream_rpc::ReplyTo {
            peer: uuid::Uuid::from_u128(peer),
            id,
        });
        packet.timeout_ms = timeout_ms;
        packet.meta = (!meta.is_empty()).then(|| stream_rpc::Metadata::try_from(meta.into_iter().collect::<Vec<_>>()).unwrap());
        let ours = packet.to_json().unwrap();
        prop_assert_eq!(&ours, &serde_json::to_vec(&packet).unwrap());
        prop_assert_eq!(Packet::from_json(&ours).unwrap(), packet);
    }

    /// Decoding gives what serde gives, for a packet's own bytes and for
    /// those bytes with pieces replaced, inserted or removed.
    #[test]
    fn packets_decode_as_serde_decodes_them(
        id in any::<u64>(),
        method in ".{0,8}",
        reply in any::<bool>(),
        timeout_ms in prop::option::of(any::<u64>()),
        meta in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), 0u8..3, prop::sample::select(
            b"0123456789\"\\{}[],: .-eEZTtfn\x00\xff".to_vec()
        )), 0..4),
    ) {
        let mut packet = Packet::new(uuid::Uuid::new_v4(), id, method, serde_json::json!({"a": [1, "x"]}));
        if reply {
            packet.reply_to = Some(packet.reply_address());
        }
        packet.timeout_ms = timeout_ms;
        if meta {
            packet.meta = Some(stream_rpc::Metadata::try_from(vec![("k-1", "v"), ("z", "\u{e9}\"")]).unwrap());
        }
        let mut bytes = packet.to_json().unwrap();
        for (at, kind, byte) in edits {
            let at = at % (bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => { bytes.remove(at); }
                _ => {}
            }
        }
        let ours = Packet::from_json(&bytes).map_err(|e| e.to_string());
        let serde = serde_json::from_slice::<Packet>(&bytes).map_err(|e| e.to_string());
        match &ours {
            // An integer beyond 64 bits, which serde reads as a float (or
            // refuses in `id` with other words), is refused by the protocol
            // (PROTOCOL.md §4).
            Err(refused) if refused.contains("2^64") => {}
            _ => prop_assert_eq!(ours, serde),
        }
    }

    /// A token with any byte changed is never accepted.
    #[test]
    fn a_tampered_token_is_never_accepted(position in any::<usize>(), flip in 1u8..=255) {
        let fernet = fernet();
        let mut token = fernet.encrypt(br#"{"payload":"secret"}"#).unwrap();
        let at = position % token.len();
        token[at] ^= flip;
        // Every change is refused: a changed byte either breaks the strict
        // base64 (one spelling per token, padding bits included) or changes
        // the decoded bytes, which the HMAC then refuses.
        let opened = fernet.decrypt(&token);
        prop_assert!(opened.is_err(), "a tampered token opened: {:?}", opened);
    }
}

/// The URL-safe base64 alphabet of tokens.
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn fernet() -> &'static Fernet {
    use std::sync::OnceLock;
    static FERNET: OnceLock<Fernet> = OnceLock::new();
    FERNET.get_or_init(|| Fernet::new(&Fernet::generate_key().unwrap()).unwrap())
}

/// Answers everything it understands; the stream decides the rest.
struct Echo;

impl Protocol for Echo {
    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "ping" => Ok(Reply::message("pong", packet.payload)),
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A whole session fed an arbitrary byte stream, in arbitrary chunks,
    /// with valid tokens mixed in, neither panics nor hangs: it ends when
    /// the stream ends.
    #[test]
    fn a_session_survives_any_byte_stream(
        noise in prop::collection::vec(wire_bytes(300), 0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let key = Fernet::generate_key().unwrap();
        let config = Arc::new(Config::builder().key(key.clone()).build().unwrap());
        let sealer = Fernet::new(&key).unwrap();
        let mut stream = Vec::new();
        for (index, junk) in noise.iter().enumerate() {
            stream.extend_from_slice(junk);
            stream.push(b'\n');
            let packet = Packet::new(uuid::Uuid::new_v4(), index as u64, "ping", serde_json::json!(index));
            stream.extend_from_slice(&sealer.encrypt(&packet.to_json().unwrap()).unwrap());
            stream.push(b'\n');
        }
        let pieces = chunks(&stream, &cuts);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let end = runtime.block_on(async move {
            let (ours, theirs) = tokio::io::duplex(1 << 20);
            let session = Connector::new((*config).clone()).attach(ours, Echo, Role::Server);
            let running = tokio::spawn(session.join());
            let (_their_reader, mut their_writer) = tokio::io::split(theirs);
            // The session may close first (bad frames in a row): then the
            // rest cannot be written, which is fine.
            for piece in pieces {
                if their_writer.write_all(&piece).await.is_err() {
                    break;
                }
            }
            let _ = their_writer.shutdown().await;
            tokio::time::timeout(Duration::from_secs(20), running).await
        });
        let end = end.expect("the session did not end after its input ended");
        prop_assert!(end.is_ok(), "the session task panicked");
    }
}
