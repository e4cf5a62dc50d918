//! What the logs show: the seed's shape for the conversation, a line for
//! every bad input, and never the key.
//!
//! The runtime is single-threaded so that the thread-local subscriber set
//! by the test sees every task of the server and the clients.

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;
use stream_rpc::logging::SeedFormat;
use tracing_subscriber::filter::LevelFilter;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// A new capture, set as this thread's subscriber up to `level` until
    /// the guard is dropped.
    fn install(level: LevelFilter) -> (Captured, tracing::subscriber::DefaultGuard) {
        let out = Captured::default();
        let guard = tracing::subscriber::set_default(out.subscriber(level));
        (out, guard)
    }

    /// A subscriber in the seed's format, up to `level`, writing here.
    fn subscriber(&self, level: LevelFilter) -> impl tracing::Subscriber + Send + Sync + use<> {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .event_format(SeedFormat)
            .with_max_level(level)
            .with_writer(move || sink.clone())
            .finish()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn seed_format_shows_time_protocol_level_peer_and_message() {
    let out = Captured::default();
    let subscriber = out.subscriber(LevelFilter::INFO);
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(protocol = "QueueServer", peer = "p-1", "Received: {}", "x");
        tracing::warn!(extra = 5, "plain");
    });
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let (time, rest) = lines[0].split_once(" - ").unwrap();
    assert_eq!(time.len(), "2024-05-01 12:00:00,123".len(), "{time}");
    assert_eq!(rest, "QueueServer - INFO - [p-1] Received: x");
    assert!(
        lines[1].ends_with(" - WARNING - plain extra=5"),
        "{}",
        lines[1]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn bad_input_is_logged_in_the_seed_shape_and_the_key_never_is() {
    let (out, _guard) = Captured::install(LevelFilter::DEBUG);

    let key = new_key();
    bounded(async {
        let server = TestServer::start(TestService::default(), config(&key, 0), &key).await;
        let mut raw = server.raw().await;
        raw.send_raw(b"garbage\n").await;
        raw.send_plain(b"not json").await;
        raw.recv().await;
        let id = raw.request("nope", json!(null)).await;
        raw.recv_reply(id).await;
        let id = raw.request("panic", json!(null)).await;
        raw.recv_reply(id).await;
        let id = raw.request("ping", json!("hello")).await;
        raw.recv_reply(id).await;
        server.stop().await;
    })
    .await;

    let text = out.text();
    assert!(!text.contains(&key), "the key leaked into the logs");
    let find = |needle: &str| {
        text.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    };
    let decrypt = find("failed to decrypt");
    assert!(
        decrypt.contains(" - TestService - WARNING - ["),
        "{decrypt}"
    );
    find("received an invalid packet");
    find("`nope` failed: unknown_method");
    find("handler of `panic` panicked: the test handler panics on purpose");
    let received = find("Received: {method: \"ping\"");
    assert!(received.contains(" - TestService - INFO - ["), "{received}");
    find("Send: {method: \"pong\"");
}

#[tokio::test(flavor = "current_thread")]
async fn refused_connections_are_counted_in_the_log() {
    let (out, _guard) = Captured::install(LevelFilter::INFO);

    bounded(async {
        let mut limits = stream_rpc::Limits::default();
        limits.max_connections = 1;
        let server = TestServer::with(|c| c.limits(limits)).await;
        let kept = server.client().await;
        kept.session().call("ping", json!(0)).await.unwrap();
        for _ in 0..3 {
            let mut refused = server.raw().await;
            // Closed at once: no answer, end of stream.
            assert!(refused.recv_line().await.is_none());
        }
        // The one within the limit is still served.
        kept.session().call("ping", json!(1)).await.unwrap();
        server.stop().await;
    })
    .await;

    let text = out.text();
    for count in 1..=3 {
        let needle = "connection limit of 1 reached: refused 127.0.0.1:";
        let counted = format!("({count} refused so far)");
        assert!(
            text.lines()
                .any(|line| line.contains(needle) && line.contains(&counted)),
            "no refusal line counting {count} in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_handler_cut_off_by_the_end_of_its_session_is_logged_as_cancelled() {
    let (out, _guard) = Captured::install(LevelFilter::WARN);

    bounded(async {
        let mut timeouts = stream_rpc::Timeouts::default();
        timeouts.shutdown_grace = std::time::Duration::from_millis(100);
        let (server, probe) = TestServer::probed(|c| c.timeouts(timeouts)).await;
        let client = server.client().await;
        let started = probe.started.notified();
        let session = client.session().clone();
        let waiting = tokio::spawn(async move { session.call("wait", json!(null)).await });
        started.await;
        // The handler waits for a release that never comes; the grace period
        // runs out and the handler is dropped unfinished.
        server.stop().await;
        assert!(waiting.await.unwrap().is_err());
        assert_eq!(probe.finished.load(std::sync::atomic::Ordering::SeqCst), 0);
    })
    .await;

    let text = out.text();
    let line = text
        .lines()
        .find(|line| line.contains("handler of `wait` cancelled: the session closed"))
        .unwrap_or_else(|| panic!("no cancellation line in:\n{text}"));
    assert!(line.contains(" - TestService - WARNING - ["), "{line}");
}

/// Makes one call with `packets` set on both ends, and returns the log.
async fn one_call_logged(packets: stream_rpc::PacketLog) -> String {
    let (out, _guard) = Captured::install(LevelFilter::INFO);
    bounded(async {
        let server = TestServer::with(|c| c.log_packets(packets)).await;
        let client = stream_rpc::Connector::new(
            config(&server.key, server.port)
                .log_packets(packets)
                .build()
                .unwrap(),
        )
        .connect_client()
        .await
        .unwrap();
        let reply = client
            .session()
            .call("ping", json!({"secret": "s3cr3t"}))
            .await;
        assert_eq!(reply.unwrap().payload, json!({"secret": "s3cr3t"}));
        drop(client);
        server.stop().await;
    })
    .await;
    out.text()
}

#[tokio::test(flavor = "current_thread")]
async fn packet_lines_leave_payloads_out_by_default_and_can_show_them_or_go() {
    let headers = one_call_logged(stream_rpc::PacketLog::default()).await;
    let sent = headers
        .lines()
        .find(|line| line.contains("Send: {method: \"ping\", id: 0, peer: "))
        .unwrap_or_else(|| panic!("no Send line in:\n{headers}"));
    assert!(
        sent.ends_with('}') && sent.contains("created_at: "),
        "{sent}"
    );
    assert!(headers.contains("Received: {method: \"pong\""), "{headers}");
    assert!(
        !headers.contains("s3cr3t"),
        "a payload in the log:\n{headers}"
    );

    let full = one_call_logged(stream_rpc::PacketLog::Full).await;
    assert!(
        full.contains("payload: {\"secret\":\"s3cr3t\"}}"),
        "no payload in:\n{full}"
    );

    let off = one_call_logged(stream_rpc::PacketLog::Off).await;
    assert!(
        !off.contains("Send: ") && !off.contains("Received: "),
        "{off}"
    );
    // The other lines are still there.
    assert!(off.contains("Serving on 127.0.0.1:"), "{off}");
}
