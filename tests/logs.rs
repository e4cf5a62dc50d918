//! What the logs show: the line format shared with the Python package
//! (time, protocol, level, peer), a line for every bad input, the level
//! each failure deserves, and never the key.
//!
//! The runtime is single-threaded so that the thread-local subscriber set
//! by the test sees every task of the server and the clients.

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use stream_rpc::Caller;

use common::*;
use serde_json::json;
use stream_rpc::ErrorCode;
use stream_rpc::logging::{PacketLog, TextFormat};
use tracing_subscriber::filter::LevelFilter;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>, Arc<tokio::sync::Notify>);

impl Captured {
    /// Everything written so far.
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Waits until `done` holds of what was written, looking again after
    /// every write (bounded by the test's own bound).
    async fn wait_until(&self, done: impl Fn(&str) -> bool) {
        loop {
            let written = self.1.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if done(&self.text()) {
                return;
            }
            written.await;
        }
    }

    /// A new capture, set as this thread's subscriber up to `level` until
    /// the guard is dropped.
    fn install(level: LevelFilter) -> (Captured, tracing::subscriber::DefaultGuard) {
        let out = Captured::default();
        let guard = tracing::subscriber::set_default(out.subscriber(level));
        (out, guard)
    }

    /// [`Captured::install`], with the packet lines as `packets` says
    /// (through the filter of the logging settings).
    fn install_packets(
        level: tracing::Level,
        packets: PacketLog,
    ) -> (Captured, tracing::subscriber::DefaultGuard) {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let out = Captured::default();
        let settings = stream_rpc::logging::Settings::default()
            .with_level(level)
            .with_packets(packets);
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .event_format(TextFormat)
            .with_writer(move || sink.clone())
            .with_filter(settings.filter());
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        (out, guard)
    }

    /// A subscriber in that line format, up to `level`, writing here.
    fn subscriber(&self, level: LevelFilter) -> impl tracing::Subscriber + Send + Sync + use<> {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .event_format(TextFormat)
            .with_max_level(level)
            .with_writer(move || sink.clone())
            .finish()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        self.1.notify_waiters();
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

/// How many lines contain `needle`.
fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|line| line.contains(needle)).count()
}

/// The sum of N over the lines `... {before} N {after} ...`.
fn counted(text: &str, before: &str, after: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(before)?;
            let (count, _) = rest.split_once(after)?;
            count.trim().parse::<u64>().ok()
        })
        .sum()
}

/// Floods a server whose `limits` let one connection in with refused
/// connections, and checks that every refusal is counted in a bounded
/// number of lines: `detail` (the first of a second) or `what` (the count).
async fn refusals_counted(limits: stream_rpc::Limits, detail: &str, what: &str) {
    let (out, _guard) = Captured::install(LevelFilter::INFO);
    const FLOOD: u64 = 40;

    let summary = ("refused ", what);
    bounded(async {
        let server = TestServer::with(|c| c.limits(limits)).await;
        let kept = server.client().await;
        kept.call("ping", json!(0)).await.unwrap();
        let started = tokio::time::Instant::now();
        for _ in 0..FLOOD {
            let mut refused = server.raw().await;
            // Closed at once: no answer, end of stream.
            assert!(refused.recv_line().await.is_none());
        }
        let took = started.elapsed();
        // The one within the limit is still served.
        kept.call("ping", json!(1)).await.unwrap();
        // Every refusal is counted: in a line of its own, or in a summary
        // once its second is over.
        out.wait_until(|text| {
            lines_with(text, detail) as u64 + counted(text, summary.0, summary.1) == FLOOD
        })
        .await;
        // At most one line of each kind a second.
        let text = out.text();
        let seconds = took.as_secs() as usize + 2;
        assert!(lines_with(&text, detail) <= seconds, "{text}");
        assert!(lines_with(&text, summary.1) <= seconds, "{text}");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn refused_connections_are_logged_at_most_once_a_second_with_a_count() {
    refusals_counted(
        stream_rpc::Limits::default().with_max_connections(1),
        "connection limit of 1 reached: refused 127.0.0.1:",
        " connections over the connection limit in the last ",
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn connections_over_the_per_address_limit_are_logged_at_most_once_a_second_with_a_count() {
    refusals_counted(
        stream_rpc::Limits::default().with_max_connections_per_ip(1),
        "per-address connection limit of 1 reached: refused 127.0.0.1:",
        " connections over the per-address limit in the last ",
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_frames_without_the_key_writes_a_bounded_number_of_lines() {
    let (out, _guard) = Captured::install(LevelFilter::INFO);
    const PEERS: u64 = 20;

    let detail = "dropped a frame that failed to decrypt";
    let summary = ("refused ", " frames that failed to decrypt in the last ");
    let closed = (
        "refused ",
        " connections after too many bad frames in the last ",
    );
    bounded(async {
        let server = TestServer::new().await;
        let started = tokio::time::Instant::now();
        for _ in 0..PEERS {
            let mut raw = server.raw().await;
            // Three bad frames: the connection is closed.
            raw.send_raw(b"garbage\ngarbage\ngarbage\n").await;
            raw.expect_closed().await;
        }
        let took = started.elapsed();
        out.wait_until(|text| {
            lines_with(text, detail) as u64 + counted(text, summary.0, summary.1) == 3 * PEERS
                && lines_with(text, "closed: too many bad frames in a row") as u64
                    + counted(text, closed.0, closed.1)
                    == PEERS
        })
        .await;
        let text = out.text();
        let seconds = took.as_secs() as usize + 2;
        for needle in [detail, summary.1, closed.1] {
            assert!(lines_with(&text, needle) <= seconds, "{needle}: {text}");
        }
        server.assert_healthy().await;
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_method_name_cannot_start_a_log_line_of_its_own() {
    let (out, _guard) = Captured::install(LevelFilter::INFO);
    bounded(async {
        let server = TestServer::new().await;
        let mut raw = server.raw().await;
        let long = "x".repeat(10_000);
        for method in [
            "evil\n2024-05-01 12:00:00,123 - TestService - INFO - forged",
            &long,
        ] {
            let id = raw.request(method, json!(null)).await;
            assert_error(&raw.recv_reply(id).await, ErrorCode::UnknownMethod);
        }
        server.stop().await;
    })
    .await;
    let text = out.text();
    assert!(
        !text.lines().any(|line| line.starts_with("2024-05-01")),
        "a forged line:\n{text}"
    );
    let received = text
        .lines()
        .find(|line| line.contains("Received: {method: \"evil"))
        .unwrap_or_else(|| panic!("no Received line in:\n{text}"));
    assert!(
        received.contains(
            r#"{method: "evil\n2024-05-01 12:00:00,123 - TestService - INFO - forged", id: "#
        ),
        "{received}"
    );
    let failed = text
        .lines()
        .find(|line| line.contains("`evil"))
        .unwrap_or_else(|| panic!("no failure line in:\n{text}"));
    assert!(failed.contains(r"`evil\n2024-05-01"), "{failed}");
    // A long name is cut.
    assert!(!text.contains(&"x".repeat(100)), "{text}");
    assert!(text.contains(&format!("{}…", "x".repeat(64))), "{text}");
}

/// Sends what quotes `secret` in serde errors and error packets, and
/// returns the log with `packets` set on the server.
async fn secrets_logged(packets: PacketLog) -> String {
    let (out, _guard) = Captured::install_packets(tracing::Level::DEBUG, packets);
    bounded(async {
        let server = TestServer::with(|c| c).await;
        let mut raw = server.raw().await;
        // A payload of the wrong type: serde's error quotes it.
        let id = raw.request("add", json!({"a": "s3cr3t-payload", "b": 1})).await;
        assert_error(&raw.recv_reply(id).await, ErrorCode::InvalidPayload);
        // A plaintext that is no packet: serde's error quotes it.
        let peer = raw.id;
        let plain = json!({"peer": peer, "id": "s3cr3t-id", "created_at": "2024-01-01T00:00:00Z", "method": "ping"});
        raw.send_plain(plain.to_string().as_bytes()).await;
        assert_error(&raw.recv().await, ErrorCode::InvalidPacket);
        // An error packet that answers no call: its payload.
        let error = raw.packet(
            "error",
            json!({"code": "handler_error", "message": "s3cr3t-error"}),
        );
        raw.send(&error).await;
        ping_is_next(&mut raw).await;
        server.stop().await;
    })
    .await;
    out.text()
}

#[tokio::test(flavor = "current_thread")]
async fn serde_errors_and_error_payloads_stay_out_of_the_default_logs() {
    let text = secrets_logged(PacketLog::default()).await;
    assert!(!text.contains("s3cr3t"), "a secret in the log:\n{text}");
    // The lines are still there, saying what happened and how to see more.
    for needle in [
        "`add` failed: invalid_payload: its text is logged with STREAM_RPC_LOG_PACKETS=full",
        "received an invalid packet (JSON that is not a packet, at line 1 column",
        "dropped an error packet that answers no pending call (no `error` handler): code handler_error",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    // With full packet logs, they are shown.
    let text = secrets_logged(PacketLog::Full).await;
    for secret in ["s3cr3t-payload", "s3cr3t-id", "s3cr3t-error"] {
        assert!(
            text.lines()
                .any(|line| line.contains(secret) && !line.contains("Received: ")),
            "no {secret} outside packet lines in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_on_one_connection_writes_a_bounded_number_of_packet_lines() {
    let (out, _guard) = Captured::install(LevelFilter::INFO);
    const BURST: u64 = 1_000;
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c).await;
        let mut raw = server.raw().await;
        let started = tokio::time::Instant::now();
        let mut frames = Vec::new();
        for n in 0..BURST {
            let packet = raw.packet("note", json!(n));
            let token = raw.fernet.encrypt(&packet.to_json().unwrap());
            frames.extend_from_slice(token.as_bytes());
            frames.push(b'\n');
        }
        raw.send_raw(&frames).await;
        while probe.notes.load(std::sync::atomic::Ordering::SeqCst) < BURST as usize {
            let noted = probe.noted.notified();
            if probe.notes.load(std::sync::atomic::Ordering::SeqCst) >= BURST as usize {
                break;
            }
            noted.await;
        }
        let took = started.elapsed();
        let left_out = ("left out ", " packet lines in the last ");
        out.wait_until(|text| {
            lines_with(text, "Received: {method: \"note\"") as u64
                + counted(text, left_out.0, left_out.1)
                == BURST
        })
        .await;
        let text = out.text();
        let seconds = took.as_secs() as usize + 2;
        let lines = lines_with(&text, "Received: {method: \"note\"");
        assert!(lines <= 20 * seconds, "{lines} packet lines in {took:?}");
        assert!(lines_with(&text, left_out.1) <= seconds, "{text}");
        server.stop().await;
    })
    .await;
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
        let session = client.connection().expect("connected");
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
async fn one_call_logged(packets: PacketLog) -> String {
    let (out, _guard) = Captured::install_packets(tracing::Level::INFO, packets);
    bounded(async {
        let server = TestServer::with(|c| c).await;
        let client = stream_rpc::Connector::new(config(&server.key, server.port).build().unwrap())
            .connect(())
            .await
            .unwrap();
        let reply = client.call("ping", json!({"secret": "s3cr3t"})).await;
        assert_eq!(reply.unwrap().payload, json!({"secret": "s3cr3t"}));
        drop(client);
        server.stop().await;
    })
    .await;
    out.text()
}

#[tokio::test(flavor = "current_thread")]
async fn packet_lines_leave_payloads_out_by_default_and_can_show_them_or_go() {
    let headers = one_call_logged(PacketLog::default()).await;
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

    let full = one_call_logged(PacketLog::Full).await;
    assert!(
        full.contains("payload: {\"secret\":\"s3cr3t\"}}"),
        "no payload in:\n{full}"
    );

    let off = one_call_logged(PacketLog::Off).await;
    assert!(
        !off.contains("Send: ") && !off.contains("Received: "),
        "{off}"
    );
    // The other lines are still there.
    assert!(off.contains("Serving on 127.0.0.1:"), "{off}");
}

/// A method's own typed error.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum SubmitError {
    InvalidUrl { url: String },
}

/// A service whose methods fail: by answering with their own error, or
/// because this side failed.
struct Jobs;

#[stream_rpc::service]
impl Jobs {
    async fn submit(&self, url: String) -> Result<u32, SubmitError> {
        Err(SubmitError::InvalidUrl { url })
    }

    async fn broken(&self) -> Result<u32, stream_rpc::HandlerError> {
        Err(stream_rpc::HandlerError::failed("could not save").with_detail("the disk is full"))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_methods_own_error_is_logged_at_debug_without_its_data_and_a_failure_at_warning() {
    let (out, _guard) = Captured::install(LevelFilter::DEBUG);
    bounded(async {
        let key = new_key();
        let server = TestServer::start(Jobs, config(&key, 0), &key).await;
        let mut raw = server.raw().await;
        let id = raw.request("submit", json!("ftp://s3cr3t-url")).await;
        let error = assert_error(&raw.recv_reply(id).await, ErrorCode::HandlerError);
        // The peer is told everything.
        assert_eq!(
            error.data,
            Some(json!({"InvalidUrl": {"url": "ftp://s3cr3t-url"}}))
        );
        let id = raw.request("broken", json!(null)).await;
        assert_error(&raw.recv_reply(id).await, ErrorCode::HandlerError);
        server.stop().await;
    })
    .await;

    let text = out.text();
    assert!(
        !text.contains("s3cr3t"),
        "the error's data in the log:\n{text}"
    );
    let answered = text
        .lines()
        .find(|line| line.contains("`submit` answered with its own error (handler_error"))
        .unwrap_or_else(|| panic!("no line for `submit` in:\n{text}"));
    assert!(answered.contains(" - Jobs - DEBUG - ["), "{answered}");
    assert!(
        !text
            .lines()
            .any(|line| line.contains("`submit`") && line.contains(" - WARNING - ")),
        "a warning for `submit` in:\n{text}"
    );
    let failed = text
        .lines()
        .find(|line| {
            line.contains("`broken` failed: handler_error: could not save (the disk is full)")
        })
        .unwrap_or_else(|| panic!("no line for `broken` in:\n{text}"));
    assert!(failed.contains(" - Jobs - WARNING - ["), "{failed}");
}
