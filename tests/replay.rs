//! Replay and reflection protection over loopback: a captured token works
//! once, on any connection, and a token cannot be sent back to its sender.

mod common;

use common::*;
use serde_json::json;
use stream_rpc::Caller;

/// A ping token, sealed once, and its id.
fn sealed_ping(raw: &mut RawPeer) -> (String, u64) {
    let packet = raw.packet("ping", json!("captured"));
    (
        format!("{}\n", raw.fernet.encrypt(&packet.to_json().unwrap())),
        packet.id,
    )
}

#[tokio::test]
async fn a_replayed_token_is_refused_on_the_same_and_on_a_new_connection() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let (line, id) = sealed_ping(&mut raw);
        raw.send_raw(line.as_bytes()).await;
        assert_eq!(raw.recv_reply(id).await.payload, json!("captured"));

        // The same bytes again, on the same connection: no answer.
        raw.send_raw(line.as_bytes()).await;
        ping_is_next(&mut raw).await;

        // And on a new connection.
        let mut other = server.raw().await;
        other.send_raw(line.as_bytes()).await;
        ping_is_next(&mut other).await;
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_replay_cannot_hide_by_respelling_the_token() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        // A token's length moves with its plaintext in 16-byte blocks, so
        // within 48 more bytes of payload some token needs base64 padding.
        let (line, id, payload) = (0..48)
            .find_map(|extra| {
                let payload = json!("x".repeat(extra));
                let packet = raw.packet("ping", payload.clone());
                let token = raw.fernet.encrypt(&packet.to_json().unwrap());
                token
                    .contains('=')
                    .then(|| (format!("{token}\n"), packet.id, payload))
            })
            .expect("some length needs padding");
        // Use it once, then try it again without the padding.
        raw.send_raw(line.as_bytes()).await;
        assert_eq!(raw.recv_reply(id).await.payload, payload);
        let respelled = line.replace('=', "");
        // To a lenient decoder (the `fernet` crate) it is the same token...
        assert!(raw.fernet.decrypt(respelled.trim_end()).is_ok());
        // ...but this crate accepts one spelling per token, so the
        // re-spelling never reaches the replay store, which remembers the
        // text of a token's HMAC: it is refused as malformed before it is
        // opened. (A decoder made lenient would fail here, and the replay
        // store would then have to catch it.)
        let strict = stream_rpc::Fernet::new(&server.key).unwrap();
        assert_eq!(
            stream_rpc::Cipher::decrypt(&strict, respelled.trim_end().as_bytes()),
            Err(stream_rpc::CipherError::Malformed("not URL-safe base64"))
        );
        raw.send_raw(respelled.as_bytes()).await;
        ping_is_next(&mut raw).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_token_sent_back_to_its_sender_is_refused() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let id = raw.request("ping", json!("original")).await;
        // Capture the server's own reply token and reflect it.
        let reply_line = raw.recv_line().await.unwrap();
        let reply =
            stream_rpc::Packet::from_json(&raw.fernet.decrypt(&reply_line).unwrap()).unwrap();
        assert_eq!(reply.reply_to.unwrap().id, id);
        raw.send_raw(format!("{reply_line}\n").as_bytes()).await;
        // Had it been taken, the server would have dispatched a `pong` and
        // answered nothing, so check with the counter instead: three
        // refused tokens in a row close the connection.
        raw.send_raw(format!("{reply_line}\n").as_bytes()).await;
        raw.send_raw(format!("{reply_line}\n").as_bytes()).await;
        raw.expect_closed().await;
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn without_replay_protection_the_same_token_works_twice() {
    bounded(async {
        let server = TestServer::with(|c| c.replay_protection(false)).await;
        let mut raw = server.raw().await;
        let (line, id) = sealed_ping(&mut raw);
        for _ in 0..2 {
            raw.send_raw(line.as_bytes()).await;
            assert_eq!(raw.recv_reply(id).await.payload, json!("captured"));
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_forwarded_task_is_a_new_token_and_passes() {
    bounded(async {
        let server = TestServer::new().await;
        let client = server.client().await;
        let session = client.connection().expect("connected");
        // The client's own packet comes back through the server, resealed.
        let task = session.packet("parse_article", json!({"article_id": 7}));
        let back = session
            .call("forward", serde_json::to_value(&task).unwrap())
            .await
            .unwrap();
        assert_eq!((back.peer, back.id), (task.peer, task.id));
        server.stop().await;
    })
    .await;
}

/// Seconds since the Unix epoch, `ago` seconds back.
fn unix_secs_ago(ago: u64) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - ago
}

#[tokio::test]
async fn a_token_the_full_store_forgot_is_refused_as_if_expired() {
    bounded(async {
        // Generations of 32 tokens: a hundred notes forget the first one
        // long before its time to live ends. Only notifications, so that the
        // server seals nothing (its own tokens, stamped now, would move the
        // horizon to now: a store this small for this traffic refuses all).
        let limits = stream_rpc::Limits::default().with_replay_cache_entries(64);
        let (server, probe) = TestServer::probed(|c| c.limits(limits)).await;
        let mut raw = server.raw().await;
        let note_at = |raw: &mut RawPeer, n: u64, ago: u64| {
            let note = raw.packet("note", json!(n));
            let token = raw
                .fernet
                .encrypt_at_time(&note.to_json().unwrap(), unix_secs_ago(ago));
            format!("{token}\n")
        };
        let captured = note_at(&mut raw, 0, 10);
        raw.send_raw(captured.as_bytes()).await;
        // Each generation's notes a second newer than the last one's, as
        // traffic the store can hold for a second or more: forgetting a
        // generation refuses what is older than its newest, not them.
        for n in 1..=100 {
            let line = note_at(&mut raw, n, 9 - n / 32);
            raw.send_raw(line.as_bytes()).await;
        }
        // The captured token is no longer remembered, and is refused all
        // the same; a newer token is still taken. Frames are handled in
        // order, so when the ping is answered the replay has been judged.
        raw.send_raw(captured.as_bytes()).await;
        ping_is_next(&mut raw).await;
        assert_eq!(probe.notes.load(std::sync::atomic::Ordering::SeqCst), 101);
        server.stop().await;
    })
    .await;
}
