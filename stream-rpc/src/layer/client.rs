//! The calling side as a `tower::Service`: [`Call`] in, the reply
//! [`Packet`] out, and a [`Caller`] made of layers over a caller.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{BoxError, BoxFuture, call_error, send_error};
use crate::caller::{Call, Caller, Opening};
use crate::error::{CallError, SendError};
use crate::packet::Packet;
use crate::stream::{RawStream, StreamOptions};

/// A [`Caller`] seen as a `tower::Service<Call>`: the innermost service of
/// a [`LayeredCaller`]. A call is answered with `Some(reply)`, a
/// [notification](Call::is_notification) with `None` once sent (a failure
/// to send it is [`CallError::NotSent`]), a
/// [stream open](Call::is_stream_open) with `None` once the stream is
/// open. Always ready; cloning it shares
/// the caller.
pub struct CallService<C> {
    caller: Arc<C>,
}

impl<C> Clone for CallService<C> {
    fn clone(&self) -> Self {
        CallService {
            caller: Arc::clone(&self.caller),
        }
    }
}

impl<C: Caller + 'static> CallService<C> {
    /// The service of `caller`.
    pub fn new(caller: C) -> Self {
        CallService {
            caller: Arc::new(caller),
        }
    }

    fn shared(caller: Arc<C>) -> Self {
        CallService { caller }
    }
}

impl<C: Caller + 'static> Service<Call> for CallService<C> {
    type Response = Option<Packet>;
    type Error = CallError;
    type Future = BoxFuture<Result<Option<Packet>, CallError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let caller = Arc::clone(&self.caller);
        Box::pin(async move {
            if let Some(opening) = call.opening {
                // The layers may have changed the metadata or the limit.
                let mut options = opening.options.meta(call.meta);
                options.timeout = call.timeout;
                let stream = caller
                    .open_stream(&call.method, call.payload, options)
                    .await?;
                if let Ok(mut opened) = opening.opened.lock() {
                    *opened = Some(stream);
                }
                Ok(None)
            } else if call.is_notification() {
                let method = call.method.clone();
                caller
                    .notify_with(call)
                    .await
                    .map(|()| None)
                    .map_err(|reason| CallError::NotSent { method, reason })
            } else {
                caller.call_with(call).await.map(Some)
            }
        })
    }
}

/// A [`Caller`] made of a stack of `tower` layers over a caller: each
/// call and notification goes through the layers (outermost first) to the
/// caller, and its reply back. Typed clients ride it as any caller
/// (`CalculatorClient::new(&layered)`), so they get the layers.
///
/// As on the serving side ([`LayeredProtocol`](super::LayeredProtocol)),
/// the stack is one service that each call takes its turn to find ready,
/// so tower's rate and concurrency limits hold across calls.
///
/// ```no_run
/// use std::time::Duration;
/// use stream_rpc::layer::{LayeredCaller, Tracing};
/// use stream_rpc::{Caller, Connector, json};
/// use tower::ServiceBuilder;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Connector::from_env()?.connect(()).await?;
/// let caller = LayeredCaller::new(
///     client,
///     ServiceBuilder::new()
///         .layer(Tracing::new())
///         .concurrency_limit(16)
///         .timeout(Duration::from_secs(2)),
/// );
/// let reply = caller.call("ping", json!(null)).await?;
/// # Ok(())
/// # }
/// ```
pub struct LayeredCaller<C, S> {
    service: tokio::sync::Mutex<S>,
    inner: Arc<C>,
}

impl<C: Caller + 'static, S> LayeredCaller<C, S> {
    /// `caller` under the stack `layer` (a `tower::ServiceBuilder`, one
    /// layer, or `tower::layer::util::Identity` for none).
    pub fn new<L>(caller: C, layer: L) -> Self
    where
        L: Layer<CallService<C>, Service = S>,
    {
        let inner = Arc::new(caller);
        LayeredCaller {
            service: tokio::sync::Mutex::new(layer.layer(CallService::shared(Arc::clone(&inner)))),
            inner,
        }
    }

    /// The caller under the layers: calls made on it skip them.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C, S> LayeredCaller<C, S>
where
    S: Service<Call, Response = Option<Packet>> + Send,
    S::Error: Into<BoxError>,
{
    /// Runs `call` through the stack.
    async fn run(&self, call: Call) -> Result<Option<Packet>, BoxError> {
        let future = {
            let mut service = self.service.lock().await;
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            service.call(call)
        };
        future.await.map_err(Into::into)
    }
}

impl<C, S> Caller for LayeredCaller<C, S>
where
    C: Caller + 'static,
    S: Service<Call, Response = Option<Packet>> + Send,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    async fn call_with(&self, mut call: Call) -> Result<Packet, CallError> {
        let started = Instant::now();
        call.notification = false;
        let method = call.method.clone();
        match self.run(call).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(CallError::Layer {
                method,
                reason: "a layer answered the call with no reply".to_owned(),
            }),
            Err(error) => Err(call_error(&method, error, started)),
        }
    }

    async fn notify_with(&self, mut call: Call) -> Result<(), SendError> {
        let started = Instant::now();
        call.notification = true;
        let method = call.method.clone();
        match self.run(call).await {
            Ok(_) => Ok(()),
            Err(error) => Err(send_error(&method, error, started)),
        }
    }

    fn call_timeout(&self) -> Duration {
        self.inner.call_timeout()
    }

    /// Opens the stream through the layers: they see the open as a
    /// [`Call`] ([`is_stream_open`](Call::is_stream_open)) carrying the
    /// options' metadata, so a layer that sets metadata (a token, the
    /// trace context) or limits calls does so for streams too; the items
    /// then flow outside the stack.
    async fn open_stream(
        &self,
        method: &str,
        payload: Value,
        options: StreamOptions,
    ) -> Result<RawStream, CallError> {
        let started = Instant::now();
        let opened = Arc::new(std::sync::Mutex::new(None));
        let mut call = Call::new(method, payload).meta(options.meta.clone());
        call.timeout = options.timeout;
        call.opening = Some(Opening {
            options,
            opened: Arc::clone(&opened),
        });
        let method = call.method.clone();
        match self.run(call).await {
            Ok(_) => opened
                .lock()
                .ok()
                .and_then(|mut opened| opened.take())
                .ok_or_else(|| CallError::Layer {
                    method,
                    reason: "a layer answered the stream open without opening it".to_owned(),
                }),
            Err(error) => Err(call_error(&method, error, started)),
        }
    }
}
