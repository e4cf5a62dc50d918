//! Every bad input of the core issue, over real loopback sockets. Each test
//! checks the documented outcome for the offending peer, and that the server
//! still serves a fresh client afterwards.
//!
//! "No reply" is proven without sleeping: after the bad input the raw peer
//! sends a valid `ping`, and the first packet back must be its `pong`; the
//! read loop handles frames in order, so an answer to the bad input would
//! have been queued first.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stream_rpc::Caller;

use common::*;
use serde_json::json;
use stream_rpc::ErrorCode;

async fn unanswered_and_counted(bad: &[u8]) {
    let server = TestServer::new().await;
    let mut raw = server.raw().await;
    raw.send_raw(bad).await;
    ping_is_next(&mut raw).await;
    // Three in a row close the connection (the default limit).
    for _ in 0..3 {
        raw.send_raw(bad).await;
    }
    raw.expect_closed().await;
    server.assert_healthy().await;
    server.stop().await;
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn garbage_line() {
    bounded(unanswered_and_counted(
        b"hello there, this is not a token\n",
    ))
    .await;
}

#[tokio::test]
async fn non_base64_line() {
    bounded(unanswered_and_counted(
        b"%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%\n",
    ))
    .await;
}

#[tokio::test]
async fn invalid_utf8() {
    bounded(unanswered_and_counted(
        b"\xff\xfe\xfd\x80\x81 not utf-8 \xc3\x28\n",
    ))
    .await;
}

#[tokio::test]
async fn token_under_another_key() {
    let other = fernet::Fernet::new(&new_key()).unwrap();
    let line = format!("{}\n", other.encrypt(br#"{"anything":1}"#));
    bounded(unanswered_and_counted(line.as_bytes())).await;
}

#[tokio::test]
async fn truncated_token() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let packet = raw.packet("ping", json!(null));
        let token = raw.fernet.encrypt(&packet.to_json().unwrap());
        let line = format!("{}\n", &token[..token.len() - 7]);
        raw.send_raw(line.as_bytes()).await;
        ping_is_next(&mut raw).await;
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn token_with_a_timestamp_near_u64_max() {
    bounded(async {
        // Built in debug mode by `cargo test`, where an overflow would panic.
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        for stamp in [u64::MAX, u64::MAX - 30, u64::MAX - 299] {
            let packet = raw.packet("ping", json!(null));
            let token = raw
                .fernet
                .encrypt_at_time(&packet.to_json().unwrap(), stamp);
            raw.send_raw(format!("{token}\n").as_bytes()).await;
            ping_is_next(&mut raw).await;
        }
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn expired_token_and_token_from_the_far_future() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        // The default time to live is 300 s; the spec allows 60 s of skew.
        for stamp in [now() - 3_600, now() + 3_600] {
            let packet = raw.packet("ping", json!(null));
            let token = raw
                .fernet
                .encrypt_at_time(&packet.to_json().unwrap(), stamp);
            raw.send_raw(format!("{token}\n").as_bytes()).await;
            ping_is_next(&mut raw).await;
        }
        // Within the skew and the time to live: accepted.
        for stamp in [now() - 200, now() + 30] {
            let packet = raw.packet("ping", json!("skewed"));
            let token = raw
                .fernet
                .encrypt_at_time(&packet.to_json().unwrap(), stamp);
            raw.send_raw(format!("{token}\n").as_bytes()).await;
            assert_eq!(raw.recv_reply(packet.id).await.payload, json!("skewed"));
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn over_long_line_with_a_terminator_is_skipped() {
    bounded(async {
        let server = TestServer::with(|c| c.limits(frame_limit(4096))).await;
        let mut raw = server.raw().await;
        let mut long = vec![b'A'; 100_000];
        long.push(b'\n');
        raw.send_raw(&long).await;
        ping_is_next(&mut raw).await;
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn over_long_line_without_a_terminator_is_discarded_unbuffered() {
    bounded(async {
        let server = TestServer::with(|c| c.limits(frame_limit(4096))).await;
        let mut raw = server.raw().await;
        // 8 MiB with no terminator: counted once, skipped as it streams.
        let chunk = vec![b'B'; 64 * 1024];
        for _ in 0..128 {
            raw.send_raw(&chunk).await;
        }
        server.assert_healthy().await;
        raw.send_raw(b"\n").await;
        ping_is_next(&mut raw).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn empty_lines_and_crlf() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        raw.send_raw(b"\n\n\r\n\n").await;
        let packet = raw.packet("ping", json!("crlf"));
        let token = raw.fernet.encrypt(&packet.to_json().unwrap());
        raw.send_raw(format!("{token}\r\n").as_bytes()).await;
        assert_eq!(raw.recv_reply(packet.id).await.payload, json!("crlf"));
        // Empty lines are not bad frames: many of them never close the connection.
        raw.send_raw(&[b'\n'; 100]).await;
        ping_is_next(&mut raw).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn plaintext_that_is_not_json() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        raw.send_plain(b"this is sealed but not JSON").await;
        let error = raw.recv().await;
        let payload = assert_error(&error, ErrorCode::InvalidPacket);
        assert!(
            payload.message.starts_with("packet is not valid"),
            "{payload:?}"
        );
        assert_eq!(error.reply_to, None, "nothing to address it to");
        ping_is_next(&mut raw).await;
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn json_with_missing_or_mistyped_fields() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let peer = raw.id;
        let cases = [
            // Readable peer and id: the error is addressed to the packet.
            (json!({"peer": peer, "id": 5, "method": "ping"}), true),
            (json!({"peer": peer, "id": 6, "created_at": "noon", "method": "ping"}), true),
            (json!({"peer": peer, "id": 7, "created_at": "2024-01-01T00:00:00Z", "method": 42}), true),
            // Unreadable id or peer: an error without reply_to.
            (json!({"peer": peer, "id": "seven", "created_at": "2024-01-01T00:00:00Z", "method": "ping"}), false),
            (json!({"peer": "nobody", "id": 8, "created_at": "2024-01-01T00:00:00Z", "method": "ping"}), false),
            (json!([1, 2, 3]), false),
        ];
        for (plain, addressed) in cases {
            raw.send_plain(plain.to_string().as_bytes()).await;
            let error = raw.recv().await;
            assert_error(&error, ErrorCode::InvalidPacket);
            assert_eq!(error.reply_to.is_some(), addressed, "{plain}");
            if let Some(to) = error.reply_to {
                assert_eq!((to.peer, Some(to.id)), (peer, plain["id"].as_u64()));
            }
        }
        // An invalid packet that claims to be a reply or an error is never answered.
        raw.send_plain(json!({"peer": peer, "id": 9, "method": "x", "reply_to": {"peer": peer, "id": 1}}).to_string().as_bytes()).await;
        raw.send_plain(json!({"peer": peer, "id": 10, "method": "error"}).to_string().as_bytes()).await;
        ping_is_next(&mut raw).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn json_nested_deeper_than_serde_json_allows() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let depth = 10_000;
        let payload = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let plain = format!(
            r#"{{"peer":"{}","id":1,"created_at":"2024-01-01T00:00:00Z","method":"ping","payload":{payload}}}"#,
            raw.id
        );
        raw.send_plain(plain.as_bytes()).await;
        let error = raw.recv().await;
        let payload = assert_error(&error, ErrorCode::InvalidPacket);
        assert!(payload.message.contains("nested deeper"), "{payload:?}");
        ping_is_next(&mut raw).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_integer_beyond_64_bits_is_refused_not_rounded() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let plain = format!(
            r#"{{"peer":"{}","id":7,"created_at":"2024-01-01T00:00:00Z","method":"echo","payload":{{"n":1180591620717411303425}}}}"#,
            raw.id
        );
        raw.send_plain(plain.as_bytes()).await;
        let error = raw.recv().await;
        assert_eq!(error.reply_to.map(|to| to.id), Some(7));
        let payload = assert_error(&error, ErrorCode::InvalidPacket);
        assert!(payload.message.contains("2^64"), "{payload:?}");
        ping_is_next(&mut raw).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_method() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let id = raw.request("no_such_method", json!(null)).await;
        let error = raw.recv_reply(id).await;
        let payload = assert_error(&error, ErrorCode::UnknownMethod);
        assert_eq!(payload.method.as_deref(), Some("no_such_method"));
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn payload_of_the_wrong_type() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let id = raw.request("add", json!(["not", "an", "object"])).await;
        let payload = assert_error(&raw.recv_reply(id).await, ErrorCode::InvalidPayload);
        assert!(payload.message.contains("`add`"), "{payload:?}");
        ping_is_next(&mut raw).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn handler_that_panics() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let id = raw.request("panic", json!(null)).await;
        let payload = assert_error(&raw.recv_reply(id).await, ErrorCode::HandlerPanicked);
        assert_eq!(payload.message, "the handler of `panic` panicked");
        ping_is_next(&mut raw).await;
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn peer_that_disconnects_mid_frame() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let packet = raw.packet("ping", json!(null));
        let token = raw.fernet.encrypt(&packet.to_json().unwrap());
        raw.send_raw(&token.as_bytes()[..token.len() / 2]).await;
        drop(raw);
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_peer_never_disturbs_another_connection() {
    bounded(async {
        let server = TestServer::new().await;
        let good = server.client().await;
        let mut bad = server.raw().await;
        for _ in 0..3 {
            bad.send_raw(b"junk\n").await;
            let reply = good.call("ping", json!("fine")).await.unwrap();
            assert_eq!(reply.payload, json!("fine"));
        }
        bad.expect_closed().await;
        assert_eq!(good.call("ping", json!(1)).await.unwrap().payload, json!(1));
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_frame_run_is_reset_by_a_good_frame() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        // Two bad, one good, two bad, one good: never three in a row.
        for _ in 0..3 {
            raw.send_raw(b"junk\njunk\n").await;
            ping_is_next(&mut raw).await;
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_key_rotation_list_accepts_old_tokens() {
    bounded(async {
        let (new, old) = (new_key(), new_key());
        let server = TestServer::start(
            TestService::default(),
            config(&format!("{new},{old}"), 0),
            &old,
        )
        .await;
        let mut raw = server.raw().await;
        let id = raw.request("ping", json!("old key")).await;
        // The reply is sealed with the new key, which the old-key peer cannot read.
        let line = raw.recv_line().await.unwrap();
        assert!(raw.fernet.decrypt(&line).is_err());
        let reply = fernet::Fernet::new(&new).unwrap().decrypt(&line).unwrap();
        let reply = stream_rpc::Packet::from_json(&reply).unwrap();
        assert_eq!(reply.reply_to.unwrap().id, id);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_tokens_get_no_reply_within_a_wait() {
    // A direct check that undecryptable frames stay unanswered: after one
    // bad frame, nothing arrives until the server closes the idle connection.
    bounded(async {
        let mut timeouts = stream_rpc::Timeouts::default();
        timeouts.first_frame = Duration::from_millis(300);
        timeouts.idle = Some(Duration::from_millis(300));
        let server = TestServer::with(|c| c.timeouts(timeouts)).await;
        let mut raw = server.raw().await;
        raw.send_raw(b"junk\n").await;
        assert_eq!(
            raw.recv_line().await,
            None,
            "no reply, then closed when idle"
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_time_whose_utc_year_is_outside_0000_to_9999_is_an_invalid_packet() {
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        for time in [
            // Year 10000 in UTC, though written as 9999.
            "9999-12-31T23:59:59-01:00",
            // Year -1 in UTC.
            "0000-01-01T00:00:00+01:00",
        ] {
            let packet = raw.packet("ping", json!("poison"));
            let mut plain: serde_json::Value =
                serde_json::from_slice(&packet.to_json().unwrap()).unwrap();
            plain["created_at"] = json!(time);
            raw.send_plain(plain.to_string().as_bytes()).await;
            let error = raw.recv_reply(packet.id).await;
            let error = assert_error(&error, ErrorCode::InvalidPacket);
            assert!(error.message.contains("0000 to 9999"), "{time}: {error:?}");
        }
        // The edge itself is a time.
        let packet = raw.packet("ping", json!("edge"));
        let mut plain: serde_json::Value =
            serde_json::from_slice(&packet.to_json().unwrap()).unwrap();
        plain["created_at"] = json!("9999-12-31T23:59:59+01:00");
        raw.send_plain(plain.to_string().as_bytes()).await;
        let pong = raw.recv_reply(packet.id).await;
        assert_eq!(pong.payload, json!("edge"));
        server.stop().await;
    })
    .await;
}
