//! Resource bounds, deadlines and graceful shutdown over loopback.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;
use stream_rpc::Caller;

use common::*;
use serde_json::json;
use stream_rpc::{CallError, EndReason, ErrorCode, Limits, Timeouts};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn short_timeouts() -> Timeouts {
    let mut timeouts = Timeouts::default();
    timeouts.first_frame = Duration::from_millis(300);
    timeouts.idle = Some(Duration::from_millis(400));
    timeouts.write = Duration::from_millis(500);
    timeouts.shutdown_grace = Duration::from_secs(5);
    timeouts
}

async fn server_with(limits: Limits, timeouts: Timeouts) -> TestServer {
    TestServer::with(|c| c.limits(limits).timeouts(timeouts)).await
}

#[tokio::test]
async fn a_silent_peer_is_closed_at_the_first_frame_deadline() {
    bounded(async {
        let server = server_with(Limits::default(), short_timeouts()).await;
        let mut stream = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte).await;
        assert!(matches!(read, Ok(0) | Err(_)));
        assert!(started.elapsed() >= Duration::from_millis(250));
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_idle_peer_is_closed_but_a_busy_one_is_not() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c.timeouts(short_timeouts())).await;

        // Idle after one exchange: closed after the idle timeout.
        let mut idle = server.raw().await;
        let id = idle.request("ping", json!(null)).await;
        idle.recv_reply(id).await;
        idle.expect_closed().await;

        // A handler that runs longer than the idle timeout keeps it open.
        let mut busy = server.raw().await;
        let started = probe.started.notified();
        let id = busy.request("wait", json!("long job")).await;
        started.await;
        // Let several idle periods pass while the handler runs: the
        // connection must survive them. Here waiting is the point of the test.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        probe.release.notify_one();
        assert_eq!(busy.recv_reply(id).await.payload, json!("long job"));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_closed_at_the_write_deadline() {
    bounded(async {
        // No idle timeout: only the write deadline can close the hog.
        let mut timeouts = short_timeouts();
        timeouts.idle = None;
        let (server, probe) = TestServer::probed(|c| c.timeouts(timeouts)).await;
        let mut hog = RawPeer::connect_small(server.port, &server.key).await;
        // Far more than the socket buffers hold; the hog reads none of it
        // until the server has given up on it.
        let cut = probe.flood_cut.notified();
        hog.request("flood", json!({"count": 100_000, "size": 64 * 1024}))
            .await;
        cut.await;
        // Others are served.
        server.assert_healthy().await;
        // The hog finds what was buffered, then the end of the stream.
        hog.expect_closed().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_promptly() {
    bounded(async {
        let mut limits = Limits::default();
        limits.max_connections = 2;
        let server = server_with(limits, Timeouts::default()).await;
        let first = server.client().await;
        let second = server.client().await;
        for client in [&first, &second] {
            client.call("ping", json!(1)).await.unwrap();
        }
        // A third is closed at once, well before any timeout.
        let mut third = server.raw().await;
        let refused_at = tokio::time::Instant::now();
        third.request("ping", json!(null)).await;
        assert!(third.recv_line().await.is_none());
        assert!(refused_at.elapsed() < Duration::from_secs(5));
        // The two still work; when one leaves, a new one gets its slot.
        first.call("ping", json!(2)).await.unwrap();
        second.close();
        second.join().await;
        // The server frees the slot when its side of the session has ended,
        // a moment after the client's: a connection refused before then is
        // closed at once, so try again until a time bound.
        let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut next = server.raw().await;
            let id = next.request("ping", json!("in")).await;
            match next.recv_line().await {
                Some(line) => {
                    let plain = next.fernet.decrypt(&line).unwrap();
                    let reply = stream_rpc::Packet::from_json(&plain).unwrap();
                    assert_eq!(reply.reply_to.unwrap().id, id);
                    break;
                }
                None if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None => panic!("the freed slot was not reused within 5 s"),
            }
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn too_many_concurrent_handlers_get_busy_errors() {
    bounded(async {
        let mut limits = Limits::default();
        limits.max_concurrent_handlers = 2;
        let (server, probe) = TestServer::probed(|c| c.limits(limits)).await;
        let mut raw = server.raw().await;
        let first = probe.started.notified();
        let a = raw.request("wait", json!("a")).await;
        first.await;
        let second = probe.started.notified();
        let b = raw.request("wait", json!("b")).await;
        second.await;
        let c = raw.request("ping", json!("c")).await;
        let busy = raw.recv_reply(c).await;
        assert_error(&busy, ErrorCode::Busy);
        probe.release.notify_one();
        probe.release.notify_one();
        let mut done = [raw.recv().await, raw.recv().await];
        done.sort_by_key(|p| p.reply_to.unwrap().id);
        assert_eq!(done[0].reply_to.unwrap().id, a);
        assert_eq!(done[1].reply_to.unwrap().id, b);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_answers_calls_already_accepted() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c.timeouts(short_timeouts())).await;
        let client = server.client().await;
        let session = client.connection().expect("connected");
        let started = probe.started.notified();
        let call = tokio::spawn(async move { session.call("wait", json!("accepted")).await });
        started.await;

        server.shutdown.shutdown();
        // New connections are no longer accepted once the listener is gone;
        // the accepted call still completes.
        probe.release.notify_one();
        let reply = call.await.unwrap().unwrap();
        assert_eq!(reply.payload, json!("accepted"));
        assert_eq!(probe.finished.load(Ordering::SeqCst), 1);
        server.task.await.unwrap().unwrap();
        assert!(
            TcpStream::connect(("127.0.0.1", server.port))
                .await
                .is_err()
        );
        // The client sees the server go.
        let end = client.join().await;
        assert_eq!(end, EndReason::PeerClosed);
    })
    .await;
}

#[tokio::test]
async fn a_call_without_reply_times_out_and_frees_its_slot() {
    bounded(async {
        let server = server_with(Limits::default(), Timeouts::default()).await;
        let client = server.client().await;
        // `note` never answers.
        let err = client
            .call_with_timeout("note", json!(null), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Timeout { .. }), "{err}");
        assert_eq!(
            client.call("ping", json!(3)).await.unwrap().payload,
            json!(3)
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn packets_larger_than_the_frame_limit_are_errors_not_lost_frames() {
    bounded(async {
        let server = TestServer::with(|c| c.limits(frame_limit(4096))).await;
        // A small request whose reply would not fit: an error packet instead.
        let mut raw = server.raw().await;
        let id = raw.request("repeat", json!(["ab", 1000])).await;
        assert_eq!(raw.recv_reply(id).await.payload, json!("ab".repeat(1000)));
        let id = raw.request("repeat", json!(["ab", 3000])).await;
        let error = assert_error(&raw.recv_reply(id).await, ErrorCode::HandlerError);
        assert!(
            error.message.contains("maximum frame length of 4096"),
            "{error:?}"
        );
        // A request that would not fit fails on the caller's side.
        let client = stream_rpc::Connector::new(
            config(&server.key, server.port)
                .limits(frame_limit(4096))
                .build()
                .unwrap(),
        )
        .connect(TestService::default())
        .await
        .unwrap();
        let err = client
            .call("ping", json!("z".repeat(5_000)))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CallError::NotSent {
                    reason: stream_rpc::SendError::TooLarge { max: 4096, .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            client.call("ping", json!(1)).await.unwrap().payload,
            json!(1)
        );
        server.stop().await;
    })
    .await;
}

/// Keeps writing garbage lines (one every 50 ms: the pace of a peer that
/// wants to look alive) until the server closes the connection; returns
/// how long that took, or fails the test after 5 s.
async fn garbage_until_closed(raw: &mut RawPeer, lines: Option<usize>) -> Duration {
    use tokio::io::AsyncWriteExt;
    let started = tokio::time::Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut written = 0;
    let mut sink = [0u8; 4096];
    let closed = async {
        loop {
            tokio::select! {
                read = raw.reader_mut().read(&mut sink) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = pace.tick(), if lines.is_none_or(|lines| written < lines) => {
                    // The server may have closed already: a failed write is
                    // not the test's concern, the close is.
                    let _ = raw.writer.write_all(b"garbage-without-the-key\n").await;
                    written += 1;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("garbage kept the connection open");
    started.elapsed()
}

#[tokio::test]
async fn garbage_lines_do_not_count_as_the_first_frame() {
    bounded(async {
        // The default idle timeout (5 min): only the first-frame deadline
        // can close the connection within the test's bound.
        let mut timeouts = Timeouts::default();
        timeouts.first_frame = Duration::from_millis(300);
        let server = server_with(Limits::default(), timeouts.clone()).await;
        // Two lines without the key, within the bad-frame limit of 3.
        let mut raw = server.raw().await;
        garbage_until_closed(&mut raw, Some(2)).await;
        // A peer within the bad-frame limit for ever: garbage every 50 ms
        // with the limit raised so that the garbage alone never closes it.
        let server_long = server_with(
            Limits::default().with_max_bad_frames_in_row(u32::MAX),
            timeouts,
        )
        .await;
        let mut raw = server_long.raw().await;
        garbage_until_closed(&mut raw, None).await;
        server.assert_healthy().await;
        server.stop().await;
        server_long.stop().await;
    })
    .await;
}

#[tokio::test]
async fn garbage_lines_do_not_restart_the_idle_timer() {
    bounded(async {
        let mut timeouts = Timeouts::default();
        timeouts.idle = Some(Duration::from_millis(400));
        let server = server_with(
            Limits::default().with_max_bad_frames_in_row(u32::MAX),
            timeouts,
        )
        .await;
        let mut raw = server.raw().await;
        let id = raw.request("ping", json!(null)).await;
        raw.recv_reply(id).await;
        // Then garbage every 50 ms, more often than the idle timeout.
        garbage_until_closed(&mut raw, None).await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_closed_at_once() {
    bounded(async {
        let limits = Limits::default().with_max_connections_per_ip(2);
        let server = server_with(limits, Timeouts::default()).await;
        let first = server.client().await;
        let second = server.client().await;
        for client in [&first, &second] {
            client.call("ping", json!(1)).await.unwrap();
        }
        // Every further one from 127.0.0.1 is closed at once, though the
        // global limit (1024) is far.
        for _ in 0..3 {
            let mut third = server.raw().await;
            let refused_at = tokio::time::Instant::now();
            third.request("ping", json!(null)).await;
            assert!(third.recv_line().await.is_none());
            assert!(refused_at.elapsed() < Duration::from_secs(5));
        }
        // The two still work; when one leaves, its slot is given back (a
        // moment after the client's side ends: try until a time bound).
        first.call("ping", json!(2)).await.unwrap();
        second.close();
        second.join().await;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut next = server.raw().await;
            let id = next.request("ping", json!("in")).await;
            match next.recv_line().await {
                Some(line) => {
                    let plain = next.fernet.decrypt(&line).unwrap();
                    let reply = stream_rpc::Packet::from_json(&plain).unwrap();
                    assert_eq!(reply.reply_to.unwrap().id, id);
                    break;
                }
                None if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None => panic!("the freed slot was not reused within 5 s"),
            }
        }
        server.stop().await;
    })
    .await;
}
