//! A retry/timeout layer on the client: each try has a time limit, and a
//! call that failed is tried again only when
//! [`CallError::may_have_run`](stream_rpc::CallError::may_have_run) says
//! it certainly did not run (not sent, no connection, or refused with
//! `busy`, `unavailable`, ...), so a method that must not run twice never
//! does. A try that timed out, lost its connection or failed in its handler
//! may have run: it is not tried again.
//!
//! Runs a server whose `reserve` method is refused `busy` twice before it
//! runs, and a client that rides the layers, in one process on a free
//! loopback port:
//!
//! ```text
//! cargo run --example retry
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stream_rpc::layer::{BoxError, LayeredCaller};
use stream_rpc::{
    Call, CallError, Caller, Config, Connector, Context, ErrorCode, Fernet, HandlerError, Packet,
    Protocol, Reply, json,
};
use tower::ServiceBuilder;
use tower::retry::Policy;

/// Tries a call again, after a pause that doubles each time, while it
/// certainly did not run and tries are left.
#[derive(Clone, Debug)]
pub struct RetrySafe {
    /// Tries left after this one.
    left: usize,
    /// The pause before the next try.
    pause: Duration,
}

impl RetrySafe {
    /// At most `tries` tries in all, the first pause `pause`.
    pub fn new(tries: usize, pause: Duration) -> RetrySafe {
        RetrySafe {
            left: tries.saturating_sub(1),
            pause,
        }
    }

    /// Whether a try that failed with `error` certainly did not run.
    pub fn did_not_run(error: &BoxError) -> bool {
        if let Some(error) = error.downcast_ref::<CallError>() {
            return !error.may_have_run();
        }
        // tower's load shedding refused it before it was sent.
        error.is::<tower::load_shed::error::Overloaded>()
    }
}

impl Policy<Call, Option<Packet>, BoxError> for RetrySafe {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _call: &mut Call,
        outcome: &mut Result<Option<Packet>, BoxError>,
    ) -> Option<Self::Future> {
        let Err(error) = outcome else {
            return None;
        };
        if self.left == 0 || !RetrySafe::did_not_run(error) {
            return None;
        }
        self.left -= 1;
        let pause = self.pause;
        self.pause = self.pause.saturating_mul(2);
        Some(tokio::time::sleep(pause))
    }

    fn clone_request(&mut self, call: &Call) -> Option<Call> {
        Some(call.clone())
    }
}

/// A caller over `caller` whose calls have at most `tries` tries of at
/// most `per_try` each, tried again only when safe.
pub fn retrying<C: Caller + 'static>(caller: C, tries: usize, per_try: Duration) -> impl Caller {
    LayeredCaller::new(
        caller,
        ServiceBuilder::new()
            .retry(RetrySafe::new(tries, Duration::from_millis(10)))
            .timeout(per_try),
    )
}

/// The example's server: `reserve` is refused `busy` (nothing run) until
/// its third try; `charge` runs and then fails; `stall` answers only when
/// the connection closes.
#[derive(Default)]
pub struct Flaky {
    /// Tries of `reserve` that reached the server.
    pub reserve_tries: AtomicUsize,
    /// Runs of `charge`.
    pub charges: AtomicUsize,
    /// Runs of `stall`.
    pub stalls: AtomicUsize,
}

impl Protocol for Flaky {
    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "reserve" => {
                let tries = self.reserve_tries.fetch_add(1, Ordering::SeqCst) + 1;
                if tries < 3 {
                    return Err(HandlerError::new(ErrorCode::Busy, "try again"));
                }
                Ok(Reply::message("reserve.reply", json!(tries)))
            }
            "charge" => {
                self.charges.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::failed("card declined"))
            }
            "stall" => {
                self.stalls.fetch_add(1, Ordering::SeqCst);
                ctx.cancelled().await;
                Err(HandlerError::failed("stalled until the connection closed"))
            }
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

#[allow(dead_code)] // Also compiled as a module of tests/middleware.rs.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = Fernet::generate_key()?;
    let config = |port| {
        Config::builder()
            .key(key.clone())
            .host("127.0.0.1")
            .port(port)
            .build()
    };
    let server = Connector::new(config(0)?).bind().await?;
    let port = server.local_addr().port();
    let shutdown = server.shutdown_handle();
    let flaky = Arc::new(Flaky::default());
    let serving = tokio::spawn(server.serve(Arc::clone(&flaky)));

    let client = Connector::new(config(port)?).connect(()).await?;
    let caller = retrying(client, 5, Duration::from_secs(2));
    let reserved = caller.call("reserve", json!(null)).await?;
    println!(
        "reserve: {} after {} tries",
        reserved.payload,
        flaky.reserve_tries.load(Ordering::SeqCst)
    );
    let charged = caller.call("charge", json!(null)).await;
    println!(
        "charge: {charged:?}, run {} time(s): not retried, it may have run",
        flaky.charges.load(Ordering::SeqCst)
    );

    shutdown.shutdown();
    serving.await??;
    Ok(())
}
