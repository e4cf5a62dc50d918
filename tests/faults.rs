//! Broken networks, through a fault-injecting loopback proxy between a
//! client and a server: frames sliced into 1-byte writes, a connection reset
//! in the middle of a frame, a half-closed connection, delays, and a peer
//! whose reads stall.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use stream_rpc::Caller;

use common::*;
use serde_json::json;
use stream_rpc::{CallError, EndReason};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the proxy does to the bytes going from the client to the server.
#[derive(Clone, Copy)]
enum Fault {
    /// Forward every byte in its own write, both ways.
    OneByteWrites,
    /// Forward this many bytes, then reset both connections.
    ResetAfter(usize),
    /// Hold every chunk this long before forwarding it, both ways.
    Delay(Duration),
    /// Stop reading from the server once this many bytes came from it, as a
    /// client that stops reading would; keep the connection open.
    StallReadsAfter(usize),
}

/// What a test sees of, and tells, the proxy.
#[derive(Default)]
struct Events {
    /// Signalled when the proxy has closed both connections.
    cut: Notify,
    /// Ends a [`Fault::StallReadsAfter`] stall.
    resume: Notify,
}

/// A proxy on a free loopback port in front of `server_port`, for one
/// connection.
async fn proxy(server_port: u16, fault: Fault) -> (u16, Arc<Events>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let events = Arc::new(Events::default());
    let seen = events.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Fault::StallReadsAfter(_) = fault {
            // So that the server's writes back up soon after the stall.
            socket.set_recv_buffer_size(4096).unwrap();
        }
        let server = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], server_port)))
            .await
            .unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let upstream = async {
            let mut buf = [0u8; 4096];
            let mut forwarded = 0;
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                match fault {
                    Fault::Delay(delay) => {
                        tokio::time::sleep(delay).await;
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    Fault::StallReadsAfter(_) => {
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    Fault::OneByteWrites => {
                        for byte in &buf[..n] {
                            if server_write
                                .write_all(std::slice::from_ref(byte))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Fault::ResetAfter(limit) => {
                        let take = n.min(limit - forwarded);
                        let _ = server_write.write_all(&buf[..take]).await;
                        forwarded += take;
                        if forwarded == limit {
                            return;
                        }
                    }
                }
            }
            let _ = server_write.shutdown().await;
        };
        let downstream = async {
            let mut buf = [0u8; 4096];
            let mut received = 0;
            let mut stalled = false;
            loop {
                if let Fault::StallReadsAfter(limit) = fault
                    && !stalled
                    && received >= limit
                {
                    stalled = true;
                    // Read nothing more until the test says so; the
                    // server's writes back up meanwhile.
                    seen.resume.notified().await;
                }
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                received += n;
                if let Fault::Delay(delay) = fault {
                    tokio::time::sleep(delay).await;
                }
                let chunks: Vec<&[u8]> = match fault {
                    Fault::OneByteWrites => buf[..n].chunks(1).collect(),
                    _ => vec![&buf[..n]],
                };
                for chunk in chunks {
                    if client_write.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            }
            let _ = client_write.shutdown().await;
        };
        tokio::select! {
            () = upstream => {}
            () = downstream => {}
        }
        // Dropping the halves closes both connections; with the fault
        // `ResetAfter` this happens mid-frame.
        seen.cut.notify_one();
    });
    (port, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sliced_into_single_bytes_still_make_calls() {
    bounded(async {
        let server = TestServer::new().await;
        let (port, _) = proxy(server.port, Fault::OneByteWrites).await;
        let client = server.client_at(port).await;
        for n in 0..20 {
            let reply = client.call("add", json!({"a": n, "b": 1})).await.unwrap();
            assert_eq!(reply.payload, json!(n + 1));
        }
        // Both directions at once, through the slicing proxy.
        let echoed = client.call("callback", json!("sliced")).await.unwrap();
        assert_eq!(echoed.payload, json!("sliced"));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_frame_fails_calls_in_flight_promptly_and_runs_none_twice() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c).await;
        // The whole first request and 40 bytes of the second.
        let first_frame = {
            let packet = stream_rpc::Packet::new(uuid::Uuid::new_v4(), 0, "wait", json!(0));
            let fernet = stream_rpc::Fernet::new(&server.key).unwrap();
            stream_rpc::Cipher::encrypt(&fernet, &packet.to_json().unwrap())
                .unwrap()
                .len()
                + 1
        };
        let (port, events) = proxy(server.port, Fault::ResetAfter(first_frame + 40)).await;
        let client = server.client_at(port).await;
        let started = probe.started.notified();
        let session = client.connection().expect("connected");
        let waiting = tokio::spawn(async move { session.call("wait", json!(0)).await });
        started.await;
        // The second request is cut in the middle of its frame.
        let cut_off = events.cut.notified();
        let session = client.connection().expect("connected");
        let second = tokio::spawn(async move { session.call("wait", json!(1)).await });
        cut_off.await;
        let cut_at = Instant::now();
        for call in [waiting, second] {
            let err = call.await.unwrap().unwrap_err();
            assert!(matches!(err, CallError::ConnectionLost { .. }), "{err}");
        }
        // Promptly: on the broken connection, not at the 30 s call timeout.
        assert!(cut_at.elapsed() < Duration::from_secs(5));
        assert_eq!(client.join().await, EndReason::PeerClosed);
        // The first request ran once; the cut one never ran.
        let done = probe.done.notified();
        probe.release.notify_one();
        done.await;
        server.assert_healthy().await;
        assert_eq!(probe.finished.load(Ordering::SeqCst), 1);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_peer_still_gets_the_answers_to_what_it_sent() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c).await;
        let mut raw = server.raw().await;
        let started = probe.started.notified();
        let id = raw
            .request("wait", json!("accepted before the half-close"))
            .await;
        started.await;
        // The peer will send nothing more, but keeps reading.
        raw.writer.shutdown().await.unwrap();
        probe.release.notify_one();
        let reply = raw.recv_reply(id).await;
        assert_eq!(reply.payload, json!("accepted before the half-close"));
        raw.expect_closed().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_are_counted_once_per_request_under_slicing() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c).await;
        let (port, _) = proxy(server.port, Fault::OneByteWrites).await;
        let client = server.client_at(port).await;
        for _ in 0..10 {
            let noted = probe.noted.notified();
            client.notify("note", json!("once")).await.unwrap();
            noted.await;
        }
        assert_eq!(probe.notes.load(Ordering::SeqCst), 10);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_frames_still_make_calls_and_late_replies_complete_nothing() {
    bounded(async {
        let server = TestServer::new().await;
        let delay = Duration::from_millis(100);
        let (port, _) = proxy(server.port, Fault::Delay(delay)).await;
        let client = server.client_at(port).await;
        let session = client.connection().expect("connected");
        // The round trip takes at least two delays: a shorter limit expires.
        let err = session
            .call_with_timeout("add", json!({"a": 1, "b": 1}), delay / 2)
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Timeout { .. }), "{err}");
        // A patient call succeeds and gets its own answer, not the late
        // reply to the call that gave up (which arrives first).
        let sent = Instant::now();
        let reply = session.call("add", json!({"a": 2, "b": 2})).await.unwrap();
        assert_eq!(reply.payload, json!(4));
        assert!(sent.elapsed() >= delay * 2, "the proxy did not delay");
        for n in 0..5 {
            let reply = session.call("add", json!({"a": n, "b": 0})).await.unwrap();
            assert_eq!(reply.payload, json!(n));
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_closed_at_the_write_deadline_and_learns_it_when_the_stall_ends() {
    bounded(async {
        // No idle timeout: only the write deadline can close the stalled peer.
        let mut timeouts = stream_rpc::Timeouts::default();
        timeouts.idle = None;
        timeouts.write = Duration::from_millis(500);
        let (server, probe) = TestServer::probed(|c| c.timeouts(timeouts)).await;
        let (port, events) = proxy(server.port, Fault::StallReadsAfter(64 * 1024)).await;
        let client = server.client_at(port).await;
        // A call in flight on the connection that will stall.
        let started = probe.started.notified();
        let session = client.connection().expect("connected");
        let waiting = tokio::spawn(async move { session.call("wait", json!("stalled")).await });
        started.await;
        // Far more than the proxy reads before it stalls.
        let cut = probe.flood_cut.notified();
        client
            .notify("flood", json!({"count": 100_000, "size": 64 * 1024}))
            .await
            .unwrap();
        cut.await;
        // The server gave up on the stalled connection; others are served.
        server.assert_healthy().await;
        // When the stall ends, the client finds the connection gone, and the
        // call in flight fails as lost rather than hanging to its timeout.
        events.resume.notify_one();
        let err = waiting.await.unwrap().unwrap_err();
        assert!(matches!(err, CallError::ConnectionLost { .. }), "{err}");
        // The server cancelled the waiting handler with the connection.
        assert_eq!(probe.finished.load(Ordering::SeqCst), 0);
        client.join().await;
        server.stop().await;
    })
    .await;
}
