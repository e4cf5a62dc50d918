//! Deadlines a handler can see and act on: a service method without a
//! `Context` argument finds its own with `Context::current`, and a handler
//! told to wrap up (`Context::cancelled`) finishes its cleanup, with
//! `.await`s, before its caller's deadline or when its connection closes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, bounded, config, new_key};
use stream_rpc::{CallError, Connector, Context};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A service whose methods take no `Context`.
#[stream_rpc::service]
trait Jobs {
    /// How many milliseconds are left until the caller's deadline, if any.
    async fn time_left(&self) -> Option<u64>;
    /// Waits for ever, cleaning up when told to wrap up; returns what woke
    /// it.
    async fn hold(&self) -> String;
}

#[derive(Default)]
struct State {
    /// Signalled when `hold` has started.
    started: Notify,
    /// Signalled once `hold` has cleaned up (after an `.await`).
    cleaned: Notify,
}

struct Worker(Arc<State>);

impl Jobs for Worker {
    async fn time_left(&self) -> Option<u64> {
        let deadline = Context::current()?.deadline()?;
        let left = deadline.saturating_duration_since(Instant::now());
        Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
    }

    async fn hold(&self) -> String {
        let Some(ctx) = Context::current() else {
            return "no context".to_owned();
        };
        self.0.started.notify_one();
        ctx.cancelled().await;
        // Cleanup that waits, as closing a file or a transaction would.
        tokio::task::yield_now().await;
        self.0.cleaned.notify_one();
        "cleaned up".to_owned()
    }
}

async fn start() -> (TestServer, Arc<State>, String) {
    let key = new_key();
    let state = Arc::new(State::default());
    let server = TestServer::start(
        JobsServer::new(Worker(state.clone())),
        config(&key, 0),
        &key,
    )
    .await;
    (server, state, key)
}

#[tokio::test]
async fn a_method_without_a_context_argument_reads_its_deadline() {
    bounded(async {
        let (server, _state, key) = start().await;
        let connector = Connector::new(config(&key, server.port).build().unwrap());
        let client = connector.connect(()).await.unwrap();
        let limit = Duration::from_secs(20);
        let jobs = JobsClient::new(client.connection().expect("connected")).with_timeout(limit);
        let left = jobs.time_left().await.unwrap().expect("a deadline");
        assert!(left > 0 && left <= 20_000, "{left} ms left");
        // Outside a handler, there is none.
        assert!(Context::current().is_none());
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_handler_cleans_up_before_its_callers_deadline() {
    bounded(async {
        let (server, state, key) = start().await;
        let connector = Connector::new(config(&key, server.port).build().unwrap());
        let client = connector.connect(()).await.unwrap();
        let limit = Duration::from_millis(300);
        let jobs = JobsClient::new(client.connection().expect("connected")).with_timeout(limit);
        let cleaned = state.cleaned.notified();
        // The handler is told a little before the deadline, and its
        // cleanup, `.await` and all, runs: its answer makes it in time
        // unless the machine is very slow.
        match jobs.hold().await {
            Ok(woke) => assert_eq!(woke, "cleaned up"),
            Err(err) => assert!(matches!(err, CallError::Timeout { .. }), "{err}"),
        }
        cleaned.await;
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_handler_cleans_up_when_its_connection_closes() {
    bounded(async {
        let (server, state, key) = start().await;
        let connector = Connector::new(config(&key, server.port).build().unwrap());
        let client = connector.connect(()).await.unwrap();
        let jobs = JobsClient::new(client.connection().expect("connected"));
        let started = state.started.notified();
        let cleaned = state.cleaned.notified();
        let call = tokio::spawn(async move { jobs.hold().await });
        started.await;
        // The client leaves: the server's handler is told at once, and has
        // the shutdown grace period to clean up.
        client.close();
        cleaned.await;
        assert!(call.await.unwrap().is_err());
        server.stop().await;
    })
    .await;
}
