//! The engine's own tests: calls and replies over an in-memory pipe.
use super::*;
use crate::Caller;
use crate::cipher::Fernet;
use crate::error::{CallError, SendError};
use crate::packet::{Packet, ReplyTo};
use crate::protocol::{Context, HandlerError, Reply};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream, duplex};
use uuid::Uuid;

/// Answers `ping` with `pong`; everything else is unknown.
struct Pong;

impl Protocol for Pong {
    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "ping" => Ok(Reply::message("pong", packet.payload)),
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

fn config() -> Arc<Config> {
    let key = Fernet::generate_key().unwrap();
    Arc::new(Config::builder().key(key).build().unwrap())
}

/// A session on one end of an in-memory pipe; the test holds the other end.
fn start(config: &Arc<Config>) -> (Connection, DuplexStream, tokio::task::JoinHandle<EndReason>) {
    start_with(config, Pong)
}

/// [`start`] with another protocol.
fn start_with<P: Protocol>(
    config: &Arc<Config>,
    protocol: P,
) -> (Connection, DuplexStream, tokio::task::JoinHandle<EndReason>) {
    let (ours, theirs) = duplex(64 * 1024);
    let session = Session::new(
        Arc::new(protocol),
        &Endpoint::new((**config).clone()),
        Role::Client,
        None,
    );
    let handle = session.handle();
    let (reader, writer) = tokio::io::split(ours);
    let task = tokio::spawn(session.run(reader, writer, CancellationToken::new()));
    (handle, theirs, task)
}

async fn read_packet(
    config: &Config,
    reader: &mut BufReader<tokio::io::ReadHalf<DuplexStream>>,
) -> Packet {
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let plain = config.cipher().decrypt(line.trim_end().as_bytes()).unwrap();
    Packet::from_json(&plain).unwrap()
}

async fn write_packet(
    config: &Config,
    writer: &mut tokio::io::WriteHalf<DuplexStream>,
    packet: &Packet,
) {
    let mut token = config.cipher().encrypt(&packet.to_json().unwrap()).unwrap();
    token.push(b'\n');
    writer.write_all(&token).await.unwrap();
}

#[tokio::test]
async fn a_reply_completes_only_the_call_it_names() {
    let config = config();
    let (handle, theirs, _task) = start(&config);
    let (read, mut write) = tokio::io::split(theirs);
    let mut read = BufReader::new(read);
    let caller = handle.clone();
    let call = tokio::spawn(async move { caller.call("ask", json!(1)).await });
    let request = read_packet(&config, &mut read).await;
    assert_eq!((request.method.as_str(), request.reply_to), ("ask", None));

    let other = Uuid::new_v4();
    // Names the right id but another peer: not an answer to the call;
    // it is dispatched, and as a reply it gets no error back.
    let mut wrong_peer = Packet::new(other, 1, "answer", json!("wrong"));
    wrong_peer.reply_to = Some(ReplyTo {
        peer: other,
        id: request.id,
    });
    write_packet(&config, &mut write, &wrong_peer).await;
    // Names the call exactly: completes it.
    let mut right = Packet::new(other, 2, "answer", json!("right"));
    right.reply_to = Some(request.reply_address());
    write_packet(&config, &mut write, &right).await;
    let reply = call.await.unwrap().unwrap();
    assert_eq!(reply.payload, json!("right"));
    // The same reply again completes nothing and is not answered with an error.
    write_packet(&config, &mut write, &right).await;
    let ping = Packet::new(other, 3, "ping", json!("after"));
    write_packet(&config, &mut write, &ping).await;
    let next = read_packet(&config, &mut read).await;
    assert_eq!(
        (next.method.as_str(), next.payload),
        ("pong", json!("after"))
    );
    assert!(!handle.shared.has_pending());
}

#[tokio::test]
async fn a_call_says_how_long_its_caller_waits_and_a_notification_does_not() {
    let config = config();
    let (handle, theirs, _task) = start(&config);
    let (read, _write) = tokio::io::split(theirs);
    let mut read = BufReader::new(read);
    let caller = handle.clone();
    let limit = Duration::from_secs(7);
    tokio::spawn(async move { caller.call_with_timeout("ask", json!(1), limit).await });
    let request = read_packet(&config, &mut read).await;
    let said = request.timeout_ms.expect("a call says its time limit");
    assert!((6_000..=7_000).contains(&said), "{said}");
    handle.notify("note", json!(2)).await.unwrap();
    let note = read_packet(&config, &mut read).await;
    assert_eq!(note.timeout_ms, None);
}

#[tokio::test]
async fn a_dropped_call_leaves_nothing_pending() {
    let config = config();
    let (handle, theirs, _task) = start(&config);
    let (read, _write) = tokio::io::split(theirs);
    let mut read = BufReader::new(read);
    let caller = handle.clone();
    let call = tokio::spawn(async move { caller.call("ask", json!(null)).await });
    read_packet(&config, &mut read).await;
    assert!(handle.shared.has_pending());
    call.abort();
    let _ = call.await;
    assert!(!handle.shared.has_pending());
}

#[tokio::test]
async fn after_the_session_ends_calls_and_sends_fail_fast() {
    let config = config();
    let (handle, theirs, task) = start(&config);
    drop(theirs);
    assert_eq!(task.await.unwrap(), EndReason::PeerClosed);
    handle.closed().await;
    assert!(handle.is_closed());
    // Never sent, so certainly not run: safe to retry elsewhere.
    let err = handle.call("ask", json!(null)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::NotSent {
                reason: SendError::Closed,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.may_have_run());
    assert_eq!(
        handle.notify("x", json!(null)).await,
        Err(SendError::Closed)
    );
}

#[tokio::test]
async fn a_token_that_would_split_in_two_is_refused_to_its_sender() {
    /// Tokens with the frame terminator inside, against the contract.
    #[derive(Debug)]
    struct Splits;

    impl crate::Cipher for Splits {
        fn encrypt(&self, _: &[u8]) -> Result<Vec<u8>, crate::CipherError> {
            Ok(b"half\nhalf".to_vec())
        }
        fn decrypt(&self, _: &[u8]) -> Result<Vec<u8>, crate::CipherError> {
            Err(crate::CipherError::Other("never".into()))
        }
    }

    let config = Arc::new(Config::builder().cipher(Arc::new(Splits)).build().unwrap());
    let (handle, _theirs, _task) = start(&config);
    let err = handle.notify("x", json!(null)).await.unwrap_err();
    assert!(
        matches!(&err, SendError::Cipher(crate::CipherError::Other(text)) if text.contains("terminator")),
        "{err}"
    );
}

fn timed_config() -> (Arc<Config>, Arc<crate::cipher::Recording>) {
    let recording = Arc::new(crate::cipher::Recording {
        fernet: Arc::new(Fernet::new(&Fernet::generate_key().unwrap()).unwrap()),
        sealed: Default::default(),
        opened: Default::default(),
    });
    let config = Config::builder()
        .key(Fernet::generate_key().unwrap())
        .build()
        .unwrap()
        .with_recording(recording.clone());
    (Arc::new(config), recording)
}

#[tokio::test]
async fn a_new_packet_is_sealed_at_the_time_it_is_stamped_with() {
    let (config, timed) = timed_config();
    let (handle, theirs, _task) = start(&config);
    let (read, mut write) = tokio::io::split(theirs);
    let mut read = BufReader::new(read);
    let caller = handle.clone();
    tokio::spawn(async move { caller.call("ask", json!(1)).await });
    let request = read_packet(&config, &mut read).await;
    let ping = Packet::new(Uuid::new_v4(), 0, "ping", json!(2));
    write_packet(&config, &mut write, &ping).await;
    let pong = read_packet(&config, &mut read).await;
    handle.notify("note", json!(3)).await.unwrap();
    let note = read_packet(&config, &mut read).await;
    let sealed = timed.sealed.lock().unwrap().clone();
    let stamps: Vec<_> = [request, pong, note]
        .iter()
        .map(|packet| packet.created_at.timestamp_micros())
        .collect();
    let times: Vec<_> = sealed
        .iter()
        .map(|&time| chrono::DateTime::<chrono::Utc>::from(time).timestamp_micros())
        .collect();
    assert_eq!(times, stamps);
}

#[tokio::test]
async fn the_frames_of_a_turn_are_opened_at_one_reading_of_the_clock() {
    let (config, timed) = timed_config();
    let (handle, theirs, _task) = start(&config);
    let (read, mut write) = tokio::io::split(theirs);
    let mut read = BufReader::new(read);
    let calls: Vec<_> = (0..2)
        .map(|n| {
            let caller = handle.clone();
            tokio::spawn(async move { caller.call("ask", json!(n)).await })
        })
        .collect();
    let peer = Uuid::new_v4();
    // Two replies, then two requests for the handler, written at once so
    // that the session reads all four in one turn.
    let mut frames = Vec::new();
    for id in 0..4 {
        let mut packet = Packet::new(peer, id, "ping", json!(id));
        if id < 2 {
            let request = read_packet(&config, &mut read).await;
            packet.reply_to = Some(request.reply_address());
        }
        frames.extend(config.cipher().encrypt(&packet.to_json().unwrap()).unwrap());
        frames.push(b'\n');
    }
    write.write_all(&frames).await.unwrap();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    for _ in 0..2 {
        read_packet(&config, &mut read).await;
    }
    // Another frame, in a turn of its own once the first turn's
    // answers are out: the clock is read again for it.
    let ping = Packet::new(peer, 4, "ping", json!(4));
    write_packet(&config, &mut write, &ping).await;
    read_packet(&config, &mut read).await;
    let opened = timed.opened.lock().unwrap().clone();
    assert_eq!(opened.len(), 5);
    // All four frames of the first turn (replies and requests alike)
    // are opened, age-checked and replay-checked before any handler
    // runs, as of one reading; a handler that runs long cannot make
    // that reading stale.
    assert!(opened[..4].iter().all(|at| *at == opened[0]), "{opened:?}");
    assert!(opened[4] > opened[3], "{opened:?}");
}

/// Calls `method` with a 100 ms limit, and checks that the call was not
/// sent: it found no call slot or no room to send for its whole limit.
async fn call_finds_no_room(handle: &Connection, method: &str) {
    let limit = Duration::from_millis(100);
    let call = handle.call_with_timeout(method, json!(null), limit);
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends by its own limit")
        .unwrap_err();
    assert!(
        matches!(&err, CallError::NotSent { method: called, reason: SendError::NoRoom { waited } } if called == method && *waited == limit),
        "{err}"
    );
    assert!(!err.may_have_run());
}

/// Calls `method` with a 100 ms limit, and checks that the call fails
/// as that call's timeout, by its own limit.
async fn call_times_out(handle: &Connection, method: &str) {
    let limit = Duration::from_millis(100);
    let call = handle.call_with_timeout(method, json!(null), limit);
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends by its own limit")
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Timeout { method: called, after } if called == method && *after == limit),
        "{err}"
    );
}

/// Answers `request` with `payload`, as the peer.
async fn answer(
    config: &Config,
    writer: &mut tokio::io::WriteHalf<DuplexStream>,
    request: &Packet,
    payload: serde_json::Value,
) {
    let mut reply = Packet::new(Uuid::new_v4(), 0, "answer", payload);
    reply.reply_to = Some(request.reply_address());
    write_packet(config, writer, &reply).await;
}

fn config_with(limits: crate::Limits) -> Arc<Config> {
    let key = Fernet::generate_key().unwrap();
    let config = Config::builder().key(key).limits(limits).build().unwrap();
    Arc::new(config)
}

#[tokio::test]
async fn a_call_waits_for_a_call_slot_within_its_time_limit() {
    let config = config_with(crate::Limits {
        max_in_flight_calls: 1,
        ..crate::Limits::default()
    });
    let (handle, theirs, _task) = start(&config);
    let (read, mut write) = tokio::io::split(theirs);
    let mut read = BufReader::new(read);
    let caller = handle.clone();
    let first = tokio::spawn(async move { caller.call("first", json!(1)).await });
    let request = read_packet(&config, &mut read).await;
    assert_eq!(request.method, "first");
    // The one slot is taken: this call times out without being sent.
    call_finds_no_room(&handle, "second").await;
    // This one waits for the slot (one thread runs every task here: a
    // yield lets it run until it waits), and is sent once the first is
    // answered.
    let caller = handle.clone();
    let third = tokio::spawn(async move { caller.call("third", json!(3)).await });
    tokio::task::yield_now().await;
    assert!(!third.is_finished());
    answer(&config, &mut write, &request, json!("one")).await;
    assert_eq!(first.await.unwrap().unwrap().payload, json!("one"));
    let request = read_packet(&config, &mut read).await;
    assert_eq!(request.method, "third");
    answer(&config, &mut write, &request, json!("three")).await;
    assert_eq!(third.await.unwrap().unwrap().payload, json!("three"));
}

/// A connection whose outgoing queue (one frame) is full: a pipe that
/// holds less than two frames, a peer that does not read (yet), and a
/// task still sending eight `fill` notifications. Returns the handle, the
/// peer's end of the pipe, the filler and the connection's task.
async fn with_full_outbox(
    config: &Config,
) -> (
    Connection,
    DuplexStream,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<()>,
) {
    let (ours, theirs) = duplex(512);
    let session = Session::new(
        Arc::new(Pong),
        &Endpoint::new(config.clone()),
        Role::Client,
        None,
    );
    let handle = session.handle();
    let (reader, writer) = tokio::io::split(ours);
    let task = tokio::spawn(async move {
        session.run(reader, writer, CancellationToken::new()).await;
    });
    let filler = tokio::spawn({
        let handle = handle.clone();
        async move {
            for n in 0..8 {
                handle.notify("fill", json!(n)).await.unwrap();
            }
        }
    });
    // One thread runs every task here: yielding lets the filler and the
    // writer go as far as they can.
    for _ in 0..1000 {
        if handle.shared.outbox.is_full() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(handle.shared.outbox.is_full() && !filler.is_finished());
    (handle, theirs, filler, task)
}

#[tokio::test]
async fn a_call_that_finds_the_outgoing_queue_full_waits_for_room_within_its_time_limit() {
    let config = config_with(crate::Limits {
        outgoing_queue: 1,
        ..crate::Limits::default()
    });
    let (handle, theirs, filler, _task) = with_full_outbox(&config).await;
    // Full, and nobody reads: this call times out and is never sent.
    call_finds_no_room(&handle, "late").await;
    // This one waits for room, and is sent once the peer reads.
    let caller = handle.clone();
    let ask = tokio::spawn(async move { caller.call("ask", json!(null)).await });
    let (read, mut write) = tokio::io::split(theirs);
    let mut read = BufReader::new(read);
    let mut methods = Vec::new();
    let request = loop {
        let packet = read_packet(&config, &mut read).await;
        methods.push(packet.method.clone());
        if packet.method == "ask" {
            break packet;
        }
    };
    assert!(!methods.contains(&"late".to_owned()), "{methods:?}");
    answer(&config, &mut write, &request, json!("answered")).await;
    assert_eq!(ask.await.unwrap().unwrap().payload, json!("answered"));
    // The rest of the fill goes out too, and never the late call.
    while methods.iter().filter(|method| *method == "fill").count() < 8 {
        let packet = read_packet(&config, &mut read).await;
        assert_ne!(packet.method, "late");
        methods.push(packet.method);
    }
    filler.await.unwrap();
}

#[tokio::test]
async fn large_messages_to_a_peer_that_stops_reading_stay_within_the_byte_bound() {
    const BOUND: usize = 64 * 1024;
    const MESSAGE: usize = 16 * 1024;
    let config = config_with(crate::Limits::default().with_max_outbox_bytes(BOUND));
    // A pipe that holds little, and a peer that reads none of it.
    let (ours, _theirs) = duplex(1024);
    let session = Session::new(
        Arc::new(Pong),
        &Endpoint::new((*config).clone()),
        Role::Client,
        None,
    );
    let handle = session.handle();
    let (reader, writer) = tokio::io::split(ours);
    let _task = tokio::spawn(session.run(reader, writer, CancellationToken::new()));
    // 64 messages of 16 KiB: 1 MiB, far below the count limit (1024).
    let filler = tokio::spawn({
        let handle = handle.clone();
        async move {
            let blob = "x".repeat(MESSAGE);
            for _ in 0..64 {
                handle.notify("blob", json!(blob)).await.unwrap();
            }
        }
    });
    // One thread runs every task here: yielding lets the filler and the
    // writer go as far as they can, while the largest queue is noted.
    let mut most = 0;
    for _ in 0..1000 {
        most = most.max(handle.shared.outbox.queued_bytes());
        if filler.is_finished() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(!filler.is_finished(), "every message was queued");
    // The bound, give or take the JSON around one message.
    assert!(most <= BOUND, "{most} bytes queued");
    assert!(most >= BOUND - MESSAGE - 512, "{most} bytes queued");
    filler.abort();
}

#[test]
fn consecutive_request_numbers_hash_apart_in_the_bits_the_table_uses() {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let build = BuildHasherDefault::<crate::session::IdHasher>::default();
    // The pending-call table picks a slot with the low bits and tells
    // entries apart with the top seven.
    let tops: std::collections::HashSet<u64> =
        (0..128u64).map(|id| build.hash_one(id) >> 57).collect();
    let slots: std::collections::HashSet<u64> =
        (0..128u64).map(|id| build.hash_one(id) & 127).collect();
    assert!(tops.len() > 100, "{}", tops.len());
    assert_eq!(slots.len(), 128);
}

#[tokio::test]
async fn request_numbers_count_up_across_the_sessions_of_an_endpoint() {
    let endpoint = Endpoint::new((*config()).clone());
    let handles: Vec<Connection> = (0..2)
        .map(|_| Session::new(Arc::new(Pong), &endpoint, Role::Client, None).handle())
        .collect();
    let ids: Vec<u64> = (0..6)
        .map(|n| handles[n % 2].packet("m", json!(null)).id)
        .collect();
    assert_eq!(ids, [0, 1, 2, 3, 4, 5]);
    for handle in &handles {
        assert_eq!(handle.packet("m", json!(null)).peer, endpoint.local_id());
    }
}

#[tokio::test]
async fn every_round_of_a_long_conversation_is_answered_in_order() {
    let config = config();
    let (_handle, theirs, _task) = start(&config);
    let (read, mut write) = tokio::io::split(theirs);
    let mut read = BufReader::new(read);
    let peer = Uuid::new_v4();
    for round in 0..500u64 {
        let ping = Packet::new(peer, round, "ping", json!(round));
        write_packet(&config, &mut write, &ping).await;
        let pong = read_packet(&config, &mut read).await;
        assert_eq!(pong.reply_to, Some(ping.reply_address()));
    }
}

/// Answers `ping` with `pong`, and notes the method of every other packet
/// it is handed.
#[derive(Default, Clone)]
struct Noting(Arc<std::sync::Mutex<Vec<String>>>);

impl Protocol for Noting {
    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        if packet.method == "ping" {
            return Ok(Reply::message("pong", packet.payload));
        }
        self.0.lock().unwrap().push(packet.method);
        Ok(Reply::Nothing)
    }
}

#[tokio::test]
async fn a_reply_after_its_call_gave_up_is_dropped_and_a_reply_to_a_notification_is_handled() {
    let config = config();
    let noting = Noting::default();
    let (handle, theirs, _task) = start_with(&config, noting.clone());
    let (read, mut write) = tokio::io::split(theirs);
    let mut read = BufReader::new(read);
    let peer = Uuid::new_v4();

    // A call that times out, then its reply.
    let caller = handle.clone();
    let late = tokio::spawn(async move { call_times_out(&caller, "slow").await });
    let request = read_packet(&config, &mut read).await;
    late.await.unwrap();
    let mut reply = Packet::new(peer, 1, "late_answer", json!("too late"));
    reply.reply_to = Some(request.reply_address());
    write_packet(&config, &mut write, &reply).await;
    // Its error packet, as late: dropped too.
    let mut error = Packet::new(
        peer,
        2,
        crate::ERROR_METHOD,
        json!({"code": "busy", "message": "x"}),
    );
    error.reply_to = Some(request.reply_address());
    write_packet(&config, &mut write, &error).await;

    // A call dropped by its caller, then its reply.
    let caller = handle.clone();
    let dropped = tokio::spawn(async move { caller.call("dropped", json!(null)).await });
    let request = read_packet(&config, &mut read).await;
    dropped.abort();
    let _ = dropped.await;
    let mut reply = Packet::new(peer, 3, "dropped_answer", json!(null));
    reply.reply_to = Some(request.reply_address());
    write_packet(&config, &mut write, &reply).await;

    // A reply to a notification (the conversation style) is no late reply:
    // it goes to the handler.
    handle.notify("note", json!(null)).await.unwrap();
    let note = read_packet(&config, &mut read).await;
    let mut reply = Packet::new(peer, 4, "note_answer", json!(null));
    reply.reply_to = Some(note.reply_address());
    write_packet(&config, &mut write, &reply).await;

    // Packets are handled in order: once the ping is answered, all of the
    // above have been.
    write_packet(&config, &mut write, &Packet::new(peer, 5, "ping", json!(0))).await;
    assert_eq!(read_packet(&config, &mut read).await.method, "pong");
    assert_eq!(*noting.0.lock().unwrap(), ["note_answer"]);
}

#[tokio::test]
async fn a_stream_open_given_up_while_it_waits_for_room_leaves_nothing_open() {
    let config = config_with(crate::Limits {
        outgoing_queue: 1,
        ..crate::Limits::default()
    });
    // Nobody reads: the open never finds room.
    let (handle, _theirs, filler, _task) = with_full_outbox(&config).await;
    // The open waits for room; its caller gives up first (a timeout of
    // its own, a select, a layer's limit): the stream is not left in the
    // table, where it would keep the connection from ever being idle.
    let open = handle.open_stream("watch", json!(null), crate::StreamOptions::new());
    let gave_up = tokio::time::timeout(Duration::from_millis(50), open).await;
    assert!(gave_up.is_err(), "the open found room");
    assert_eq!(handle.open_streams(), 0);
    filler.abort();
}
