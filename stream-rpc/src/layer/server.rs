//! The serving side as a `tower::Service`: [`ServerCall`] in, [`Reply`]
//! out, and a [`Protocol`] made of layers over a protocol.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use serde_json::Value;
use tower::{Layer, Service};

use super::{BoxError, BoxFuture, handler_error};
use crate::metadata::Metadata;
use crate::packet::Packet;
use crate::protocol::{Context, HandlerError, Protocol, Reply};
use crate::stream::StreamIo;

/// One served call as a layer sees it: the handler's [`Context`] (who
/// called, the deadline, the connection, the request's
/// [metadata](Context::meta)) and the request [`Packet`] (method and
/// payload). Layers may read and change both before the call goes on.
///
/// A layer's service takes it as its request; one that refuses calls
/// without a tenant:
///
/// ```
/// use std::task::{Context, Poll};
/// use stream_rpc::layer::{BoxError, BoxFuture, LayeredProtocol, ServerCall};
/// use stream_rpc::{ErrorCode, HandlerError, Reply};
/// use tower::Service;
///
/// #[derive(Clone)]
/// struct NeedsTenant<S>(S);
///
/// impl<S> Service<ServerCall> for NeedsTenant<S>
/// where
///     S: Service<ServerCall, Response = Reply>,
///     S::Error: Into<BoxError>,
///     S::Future: Send + 'static,
/// {
///     type Response = Reply;
///     type Error = BoxError;
///     type Future = BoxFuture<Result<Reply, BoxError>>;
///
///     fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
///         self.0.poll_ready(cx).map_err(Into::into)
///     }
///
///     fn call(&mut self, call: ServerCall) -> Self::Future {
///         if call.meta().get("tenant").is_none() {
///             let refused = HandlerError::new(ErrorCode::PermissionDenied, "no tenant");
///             return Box::pin(async move { Err(refused.into()) });
///         }
///         let work = self.0.call(call);
///         Box::pin(async move { work.await.map_err(Into::into) })
///     }
/// }
///
/// # struct Echo;
/// # impl stream_rpc::Protocol for Echo {
/// #     async fn process_message(&self, _: stream_rpc::Context, p: stream_rpc::Packet) -> Result<Reply, HandlerError> {
/// #         Ok(Reply::message("echoed", p.payload))
/// #     }
/// # }
/// let protocol = LayeredProtocol::new(Echo, tower::layer::layer_fn(NeedsTenant));
/// # let _ = protocol;
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct ServerCall {
    /// The context the handler runs in.
    pub ctx: Context,
    /// The request.
    pub packet: Packet,
    /// The stream's flows, when the request opens a stream.
    io: Option<StreamIo>,
}

impl ServerCall {
    /// A call of `packet` handled under `ctx` (for testing a layer).
    pub fn new(ctx: Context, packet: Packet) -> ServerCall {
        ServerCall {
            ctx,
            packet,
            io: None,
        }
    }

    /// Whether the request opens a stream
    /// ([`Protocol::process_stream`]): its call lasts until the stream
    /// ends, and its reply's payload is the stream's final value. Layers
    /// see stream opens as calls (so an auth layer refuses them too); a
    /// time limit layer meant for calls may let streams pass by this.
    pub fn is_stream(&self) -> bool {
        self.io.is_some()
    }

    /// The method called.
    pub fn method(&self) -> &str {
        &self.packet.method
    }

    /// The request's metadata (empty when it carried none).
    pub fn meta(&self) -> &Metadata {
        self.ctx.meta()
    }

    /// The request's payload.
    pub fn payload(&self) -> &serde_json::Value {
        &self.packet.payload
    }
}

/// A [`Protocol`] seen as a `tower::Service<ServerCall>`: the innermost
/// service of a [`LayeredProtocol`]. Always ready; cloning it shares the
/// protocol.
pub struct ProtocolService<P> {
    protocol: Arc<P>,
}

impl<P> Clone for ProtocolService<P> {
    fn clone(&self) -> Self {
        ProtocolService {
            protocol: Arc::clone(&self.protocol),
        }
    }
}

impl<P: Protocol> ProtocolService<P> {
    /// The service of `protocol`.
    pub fn new(protocol: P) -> Self {
        ProtocolService {
            protocol: Arc::new(protocol),
        }
    }
}

impl<P: Protocol> Service<ServerCall> for ProtocolService<P> {
    type Response = Reply;
    type Error = HandlerError;
    type Future = BoxFuture<Result<Reply, HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ServerCall) -> Self::Future {
        let protocol = Arc::clone(&self.protocol);
        Box::pin(async move {
            match call.io {
                None => protocol.process_message(call.ctx, call.packet).await,
                Some(io) => protocol
                    .process_stream(call.ctx, call.packet, io)
                    .await
                    .map(|value| Reply::message("", value)),
            }
        })
    }
}

/// A [`Protocol`] made of a stack of `tower` layers over a protocol: each
/// packet goes through the layers (outermost first) to the protocol, and
/// its reply back. Serve it as any protocol.
///
/// The stack is one service: a call takes its turn to find it ready (a
/// concurrency limit's permit, a rate limit's token) and starts at once,
/// so that tower's `RateLimit`, `ConcurrencyLimit` and `LoadShed` keep
/// their state across calls; the calls then run concurrently. An empty
/// stack (`tower::layer::util::Identity`) costs a boxed future and an
/// uncontended lock per call (BENCHMARKS.md).
///
/// ```
/// use std::time::Duration;
/// use stream_rpc::layer::{LayeredProtocol, Tracing};
/// use tower::ServiceBuilder;
///
/// #[stream_rpc::service]
/// trait Greeter {
///     async fn greet(&self, name: String) -> String;
/// }
///
/// struct Polite;
///
/// impl Greeter for Polite {
///     async fn greet(&self, name: String) -> String {
///         format!("Hello, {name}")
///     }
/// }
///
/// let protocol = LayeredProtocol::new(
///     GreeterServer::new(Polite),
///     ServiceBuilder::new()
///         .layer(Tracing::new())
///         .load_shed()
///         .concurrency_limit(100)
///         .timeout(Duration::from_secs(10)),
/// );
/// # let _ = protocol;
/// ```
pub struct LayeredProtocol<S> {
    service: tokio::sync::Mutex<S>,
    name: String,
}

impl<S> LayeredProtocol<S> {
    /// `protocol` under the stack `layer` (a `tower::ServiceBuilder`, one
    /// layer, or `tower::layer::util::Identity` for none).
    pub fn new<P, L>(protocol: P, layer: L) -> Self
    where
        P: Protocol,
        L: Layer<ProtocolService<P>, Service = S>,
    {
        let name = protocol.name().to_owned();
        LayeredProtocol {
            service: tokio::sync::Mutex::new(layer.layer(ProtocolService::new(protocol))),
            name,
        }
    }
}

impl<S> LayeredProtocol<S>
where
    S: Service<ServerCall, Response = Reply> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    /// Runs `call` through the stack.
    async fn run(&self, call: ServerCall) -> Result<Reply, HandlerError> {
        let work = {
            let mut service = self.service.lock().await;
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(|e| handler_error(e.into()))?;
            service.call(call)
        };
        work.await.map_err(|e| handler_error(e.into()))
    }
}

impl<S> Protocol for LayeredProtocol<S>
where
    S: Service<ServerCall, Response = Reply> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    /// The name of the protocol under the layers.
    fn name(&self) -> &str {
        &self.name
    }

    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        self.run(ServerCall::new(ctx, packet)).await
    }

    /// A stream open goes through the layers too: its reply's payload is
    /// the stream's final value.
    async fn process_stream(
        &self,
        ctx: Context,
        packet: Packet,
        io: StreamIo,
    ) -> Result<Value, HandlerError> {
        let call = ServerCall {
            ctx,
            packet,
            io: Some(io),
        };
        Ok(match self.run(call).await? {
            Reply::Message { payload, .. } => payload,
            Reply::Forward(packet) => packet.payload,
            _ => Value::Null,
        })
    }
}
