//! What the logs say of streams: the open and the end at DEBUG, a broken
//! rule and a frame for an unknown stream as refusals (WARNING, rate
//! limited), a frame for a stream that just ended at DEBUG only.
//!
//! Single-threaded, so that the thread's subscriber sees every task.

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};
use stream_rpc::logging::TextFormat;
use stream_rpc::{Context, HandlerError, Packet, Protocol, Reply, StreamHeader, StreamIo};
use tracing_subscriber::filter::LevelFilter;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>, Arc<tokio::sync::Notify>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    async fn wait_for(&self, needle: &str) {
        loop {
            let written = self.1.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if self.text().contains(needle) {
                return;
            }
            written.await;
        }
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

/// Serves `hold`: takes its input and waits for ever.
struct Hold;

impl Protocol for Hold {
    async fn process_message(&self, _: Context, packet: Packet) -> Result<Reply, HandlerError> {
        Ok(Reply::message("pong", packet.payload))
    }

    async fn process_stream(
        &self,
        _: Context,
        _: Packet,
        mut io: StreamIo,
    ) -> Result<Value, HandlerError> {
        let _input = io.input();
        std::future::pending().await
    }
}

async fn open(raw: &mut RawPeer) -> u64 {
    let mut open = raw.packet("hold", json!(null));
    open.stream = Some(StreamHeader::open(0));
    raw.send(&open).await
}

async fn frame(raw: &mut RawPeer, method: &str, header: StreamHeader) {
    let mut packet = raw.packet(method, json!(null));
    packet.stream = Some(header);
    raw.send(&packet).await;
}

#[tokio::test(flavor = "current_thread")]
async fn stream_lines_at_their_levels() {
    let out = Captured::default();
    let sink = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .event_format(TextFormat)
        .with_max_level(LevelFilter::DEBUG)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    bounded(async {
        let key = new_key();
        let server = TestServer::start(Hold, config(&key, 0), &key).await;
        let mut raw = server.raw().await;
        let id = open(&mut raw).await;
        let stream = stream_rpc::ReplyTo { peer: raw.id, id };
        // Its first credit: the handler took the input.
        assert_eq!(raw.recv().await.method, "stream.credit");
        out.wait_for("stream `hold` #").await;
        assert!(out.text().contains("accepted"), "{}", out.text());

        // Cancelled, then an item in flight: DEBUG, no refusal.
        frame(&mut raw, "stream.cancel", StreamHeader::frame(stream)).await;
        frame(
            &mut raw,
            "stream.item",
            StreamHeader::frame(stream).with_seq(1),
        )
        .await;
        ping_is_next(&mut raw).await;
        out.wait_for("which has ended").await;
        assert!(!out.text().contains("does not know"), "{}", out.text());

        // A frame for a stream never opened: a refusal.
        let never = stream_rpc::ReplyTo {
            peer: raw.id,
            id: 999,
        };
        frame(
            &mut raw,
            "stream.item",
            StreamHeader::frame(never).with_seq(1),
        )
        .await;
        ping_is_next(&mut raw).await;
        out.wait_for("which this side does not know").await;

        // A broken rule: a refusal naming it.
        let id = open(&mut raw).await;
        let stream = stream_rpc::ReplyTo { peer: raw.id, id };
        assert_eq!(raw.recv().await.method, "stream.credit");
        frame(
            &mut raw,
            "stream.item",
            StreamHeader::frame(stream).with_seq(2),
        )
        .await;
        let error = raw.recv().await;
        assert_error(&error, stream_rpc::ErrorCode::InvalidStream);
        out.wait_for("broke a rule").await;
        let text = out.text();
        let broke = text.lines().find(|l| l.contains("broke a rule")).unwrap();
        assert!(broke.contains(" - WARNING - "), "{broke}");
        assert!(broke.contains("out of order"), "{broke}");
        let unknown = text.lines().find(|l| l.contains("does not know")).unwrap();
        assert!(unknown.contains(" - WARNING - "), "{unknown}");
        let ended = text
            .lines()
            .find(|l| l.contains("which has ended"))
            .unwrap();
        assert!(ended.contains(" - DEBUG - "), "{ended}");
        server.stop().await;
    })
    .await;
}
