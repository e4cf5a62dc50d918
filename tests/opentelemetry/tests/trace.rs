//! stream-rpc's `opentelemetry` feature, with an in-memory exporter: one
//! trace id across a Rust client, a Rust server and the peers its handler
//! calls (a second Rust server, and a Python hop), each served call's span
//! the child of the span of the call that made it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value, json};
use stream_rpc::layer::{
    CallService, LayeredCaller, LayeredProtocol, TraceParent, Tracing, TracingService,
};
use stream_rpc::{
    Call, CallError, Caller, Client, Config, Connector, Context, Fernet, HandlerError, Packet,
    Protocol, Reply, ShutdownHandle,
};
use stream_rpc_test_support::{BOUND, Process};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// The exporter every test's spans go to (one subscriber for the process).
fn exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static EXPORT: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    EXPORT.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("stream-rpc-test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        (exporter, provider)
    })
}

/// The spans of one trace exported so far.
fn spans_of(trace: TraceId) -> Vec<SpanData> {
    let (exporter, provider) = exporter();
    provider.force_flush().unwrap();
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.span_context.trace_id() == trace)
        .collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The one span of `kind` for `method`.
fn span<'a>(spans: &'a [SpanData], kind: SpanKind, method: &str) -> &'a SpanData {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == kind && attribute(s, "rpc.method").as_deref() == Some(method))
        .collect();
    assert_eq!(found.len(), 1, "{kind:?} {method}: {spans:#?}");
    found[0]
}

async fn bounded<F: std::future::Future>(body: F) -> F::Output {
    tokio::time::timeout(BOUND, body)
        .await
        .expect("the test exceeded its time bound")
}

/// A loopback server of `protocol` under the tracing layer.
struct Served {
    port: u16,
    shutdown: ShutdownHandle,
    task: tokio::task::JoinHandle<Result<(), stream_rpc::Error>>,
}

fn config(key: &str, port: u16) -> Config {
    Config::builder()
        .key(key)
        .host("127.0.0.1")
        .port(port)
        .build()
        .unwrap()
}

async fn serve<P: Protocol>(key: &str, protocol: P) -> Served {
    let server = Connector::new(config(key, 0)).bind().await.unwrap();
    let port = server.local_addr().port();
    let shutdown = server.shutdown_handle();
    let task = tokio::spawn(server.serve(LayeredProtocol::new(protocol, Tracing::new())));
    Served {
        port,
        shutdown,
        task,
    }
}

impl Served {
    async fn stop(self) {
        self.shutdown.shutdown();
        self.task.await.unwrap().unwrap();
    }
}

/// Answers `last` with the `traceparent` it carried, `back` too; `relay`
/// with what `onward` answers to `method`.
struct Hop {
    onward: Option<(Arc<dyn Onward>, &'static str)>,
}

trait Onward: Send + Sync {
    fn call(self: Arc<Self>, call: Call)
    -> stream_rpc::layer::BoxFuture<Result<Packet, CallError>>;
}

impl<C: Caller + 'static> Onward for C {
    fn call(
        self: Arc<Self>,
        call: Call,
    ) -> stream_rpc::layer::BoxFuture<Result<Packet, CallError>> {
        Box::pin(async move { self.call_with(call).await })
    }
}

impl Protocol for Hop {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match (packet.method.as_str(), &self.onward) {
            ("relay", Some((onward, method))) => {
                let answer = Arc::clone(onward)
                    .call(Call::new(*method, json!(null)))
                    .await
                    .map_err(|e| HandlerError::failed(e.to_string()))?;
                Ok(Reply::message("relay.reply", answer.payload))
            }
            ("last" | "back", _) => {
                Ok(Reply::message("seen", json!(ctx.meta().get("traceparent"))))
            }
            (other, _) => Err(HandlerError::unknown_method(other)),
        }
    }
}

/// A caller under the tracing layer.
type Traced = LayeredCaller<Client, TracingService<CallService<Client>>>;

/// A client of `port` under the tracing layer, serving `protocol` (also
/// under it) on its connection.
async fn traced_client<P: Protocol>(key: &str, port: u16, protocol: P) -> Traced {
    let client = Connector::new(config(key, port))
        .connect(LayeredProtocol::new(protocol, Tracing::new()))
        .await
        .unwrap();
    LayeredCaller::new(client, Tracing::new())
}

/// The trace of the span `root`.
fn trace_of(root: &tracing::Span) -> TraceId {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    root.context().span().span_context().trace_id()
}

fn trace_id_of(traceparent: &Value) -> [u8; 16] {
    TraceParent::parse(traceparent.as_str().expect("a traceparent"))
        .expect("a valid traceparent")
        .trace_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_a_client_a_server_and_the_server_it_calls() {
    exporter();
    bounded(async {
        let key = Fernet::generate_key().unwrap();
        let last = serve(&key, Hop { onward: None }).await;
        let onward = Arc::new(traced_client(&key, last.port, ()).await);
        let relay = serve(
            &key,
            Hop {
                onward: Some((onward, "last")),
            },
        )
        .await;
        let client = traced_client(&key, relay.port, ()).await;

        let root = tracing::info_span!("test.root");
        let trace = trace_of(&root);
        assert_ne!(trace, TraceId::INVALID);
        let reply = client
            .call("relay", json!(null))
            .instrument(root.clone())
            .await
            .unwrap();
        drop(root);
        assert_eq!(trace_id_of(&reply.payload), trace.to_bytes());

        let spans = spans_of(trace);
        let call_relay = span(&spans, SpanKind::Client, "relay");
        let serve_relay = span(&spans, SpanKind::Server, "relay");
        let call_last = span(&spans, SpanKind::Client, "last");
        let serve_last = span(&spans, SpanKind::Server, "last");
        // Each served call's parent is the span of the call that made it,
        // across the wire (a remote parent).
        assert_eq!(
            serve_relay.parent_span_id,
            call_relay.span_context.span_id()
        );
        assert!(serve_relay.parent_span_is_remote);
        assert_eq!(call_last.parent_span_id, serve_relay.span_context.span_id());
        assert_eq!(serve_last.parent_span_id, call_last.span_context.span_id());
        let seen = TraceParent::parse(reply.payload.as_str().unwrap()).unwrap();
        assert_eq!(
            SpanId::from_bytes(seen.parent_id),
            call_last.span_context.span_id()
        );
        for span in [call_relay, serve_relay, call_last, serve_last] {
            assert_eq!(attribute(span, "rpc.outcome").as_deref(), Some("ok"));
        }
        assert!(attribute(serve_relay, "rpc.peer").is_some());

        relay.stop().await;
        last.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_a_span_with_its_outcome() {
    exporter();
    bounded(async {
        let key = Fernet::generate_key().unwrap();
        let last = serve(&key, Hop { onward: None }).await;
        let client = traced_client(&key, last.port, ()).await;
        let root = tracing::info_span!("test.root");
        let trace = trace_of(&root);
        let err = client
            .call("nope", json!(null))
            .instrument(root.clone())
            .await
            .unwrap_err();
        drop(root);
        assert!(err.code().is_some(), "{err}");
        let spans = spans_of(trace);
        for kind in [SpanKind::Client, SpanKind::Server] {
            let failed = span(&spans, kind, "nope");
            assert_eq!(
                attribute(failed, "rpc.outcome").as_deref(),
                Some("unknown_method")
            );
        }
        last.stop().await;
    })
    .await;
}

/// The Python of the virtual environment `scripts/test` makes (before it
/// runs the Rust tests), with the package of `python/` installed.
fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join("target/python-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test, which makes it and installs the python package into it",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_a_rust_client_a_rust_server_and_a_python_hop() {
    exporter();
    let key = Fernet::generate_key().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python_hop.py");
    let mut command = Command::new(python());
    command
        .arg(script)
        .env("CRYPTO_KEY", &key)
        .env("STREAM_RPC_HOST", "127.0.0.1")
        .env("STREAM_RPC_PORT", "0");
    let mut hop = Process::spawn("python_hop.py", command);
    let line = tokio::task::block_in_place(|| hop.wait_for("its port", |l| l.starts_with("PORT ")));
    let port: u16 = line["PORT ".len()..].trim().parse().unwrap();

    bounded(async {
        // The Rust server's handler calls the Python peer, whose handler
        // calls `back` on that connection: served here, under the layer.
        let to_python = Arc::new(traced_client(&key, port, Hop { onward: None }).await);
        let relay = serve(
            &key,
            Hop {
                onward: Some((to_python, "hop")),
            },
        )
        .await;
        let client = traced_client(&key, relay.port, ()).await;
        let root = tracing::info_span!("test.root");
        let trace = trace_of(&root);
        let reply = client
            .call("relay", json!(null))
            .instrument(root.clone())
            .await
            .unwrap();
        drop(root);
        // What the Python hop saw, and what its call back carried.
        assert_eq!(trace_id_of(&reply.payload["seen"]), trace.to_bytes());
        assert_eq!(trace_id_of(&reply.payload["back"]), trace.to_bytes());

        let spans = spans_of(trace);
        let call_hop = span(&spans, SpanKind::Client, "hop");
        let serve_back = span(&spans, SpanKind::Server, "back");
        let seen = TraceParent::parse(reply.payload["seen"].as_str().unwrap()).unwrap();
        assert_eq!(
            SpanId::from_bytes(seen.parent_id),
            call_hop.span_context.span_id()
        );
        // The call back's parent is a span of the Python hop's own.
        let back = TraceParent::parse(reply.payload["back"].as_str().unwrap()).unwrap();
        assert_eq!(
            serve_back.parent_span_id,
            SpanId::from_bytes(back.parent_id)
        );
        assert_ne!(back.parent_id, seen.parent_id);
        let ids: HashSet<_> = spans.iter().map(|s| s.span_context.trace_id()).collect();
        assert_eq!(ids.len(), 1);
        relay.stop().await;
    })
    .await;
    drop(hop);
}
