//! Several services on one connection: [`Service`], a [`Protocol`] that
//! says which methods it serves, and [`Services`], which composes any
//! number of them into one protocol that routes each packet by its method.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::packet::Packet;
use crate::protocol::{Context, HandlerError, Protocol, Reply};
use crate::service::REPLY_SUFFIX;
use crate::stream::StreamIo;

/// A [`Protocol`] that declares the methods it serves, so that it can be
/// composed with others in [`Services`]. The servers that
/// `#[stream_rpc::service]` generates implement it (their `METHODS`); a
/// hand-written protocol implements it to be composed too:
///
/// ```
/// use stream_rpc::{Context, HandlerError, Packet, Protocol, Reply, Service};
///
/// struct Health;
///
/// impl Protocol for Health {
///     async fn process_message(&self, _: Context, packet: Packet) -> Result<Reply, HandlerError> {
///         match packet.method.as_str() {
///             "health" => Ok(Reply::message("health.reply", stream_rpc::json!("ok"))),
///             other => Err(HandlerError::unknown_method(other)),
///         }
///     }
/// }
///
/// impl Service for Health {
///     fn methods(&self) -> &[&'static str] {
///         &["health"]
///     }
/// }
/// ```
pub trait Service: Protocol {
    /// The wire names of the methods this protocol answers. [`Services`]
    /// routes exactly these names to it (and their replies, see there).
    fn methods(&self) -> &[&'static str];
}

impl<S: Service> Service for Arc<S> {
    fn methods(&self) -> &[&'static str] {
        (**self).methods()
    }
}

/// Two composed services serve one method name: [`Services::add`] refuses
/// the second.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the method `{method}` is served by both `{first}` and `{second}`: give one of them another wire name (`#[stream_rpc(rename = \"...\")]`)"
)]
pub struct DuplicateMethod {
    /// The wire name served twice.
    pub method: String,
    /// The protocol name of the service added first.
    pub first: String,
    /// The protocol name of the service being added.
    pub second: String,
}

/// The future of a composed service's handler.
type Handling<'a> = Pin<Box<dyn Future<Output = Result<Reply, HandlerError>> + Send + 'a>>;

/// A boxed [`Protocol::process_stream`] future.
type StreamHandling<'a> = Pin<Box<dyn Future<Output = Result<Value, HandlerError>> + Send + 'a>>;

/// A [`Service`] behind a pointer: `Protocol` itself is not object safe
/// (its future is an `impl Future`).
trait Routed: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn handle(&self, ctx: Context, packet: Packet) -> Handling<'_>;
    fn handle_stream(&self, ctx: Context, packet: Packet, io: StreamIo) -> StreamHandling<'_>;
}

impl<S: Service> Routed for S {
    fn name(&self) -> &str {
        Protocol::name(self)
    }

    fn handle(&self, ctx: Context, packet: Packet) -> Handling<'_> {
        Box::pin(self.process_message(ctx, packet))
    }

    fn handle_stream(&self, ctx: Context, packet: Packet, io: StreamIo) -> StreamHandling<'_> {
        Box::pin(self.process_stream(ctx, packet, io))
    }
}

/// Any number of [`Service`]s served as one [`Protocol`] on one listener
/// (or, on a client, served back to the peer on one connection): each
/// packet goes to the service that declares its method.
///
/// - Two services that declare one method name are refused when composed,
///   with a [`DuplicateMethod`] error naming both.
/// - [`methods`](Service::methods) lists every service's methods, in the
///   order they were added.
/// - A packet whose method is `<method>.reply` ([`REPLY_SUFFIX`]) and that
///   no service declares goes to the service that declares `<method>`: the
///   one that would have received it if it were served alone. A reply that
///   answers a call of this side never gets here (the call takes it).
/// - Any other method is answered `unknown_method`.
///
/// A `Services` is itself a [`Service`], so compositions nest. Routing
/// costs one hash lookup and one boxed future per packet.
///
/// ```
/// use stream_rpc::{Config, Connector, Fernet, Services};
///
/// #[stream_rpc::service]
/// pub trait Jobs {
///     async fn submit(&self, name: String) -> u64;
/// }
///
/// #[stream_rpc::service]
/// pub trait Hub {
///     async fn register(&self, worker: String) -> bool;
/// }
///
/// struct Scheduler;
/// impl Jobs for Scheduler {
///     async fn submit(&self, name: String) -> u64 {
///         name.len() as u64
///     }
/// }
/// impl Hub for Scheduler {
///     async fn register(&self, _worker: String) -> bool {
///         true
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let key = Fernet::generate_key()?;
/// # let config = |port| Config::builder().key(key.clone()).host("127.0.0.1").port(port).build();
/// let services = Services::new()
///     .add(JobsServer::new(Scheduler))?
///     .add(HubServer::new(Scheduler))?;
/// assert_eq!(stream_rpc::Service::methods(&services), ["submit", "register"]);
///
/// let server = Connector::new(config(0)?).bind().await?;
/// # let port = server.local_addr().port();
/// # let stop = server.shutdown_handle();
/// let serving = tokio::spawn(server.serve(services));
///
/// let client = Connector::new(config(port)?).connect(()).await?;
/// assert_eq!(JobsClient::new(&client).submit("build".into()).await?, 5);
/// assert!(HubClient::new(&client).register("w1".into()).await?);
/// # stop.shutdown();
/// # drop(client);
/// # serving.await??;
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct Services {
    services: Vec<Box<dyn Routed>>,
    routes: HashMap<&'static str, usize>,
    methods: Vec<&'static str>,
    name: String,
}

impl Services {
    /// No service yet: every packet is answered `unknown_method`.
    pub fn new() -> Self {
        Services::default()
    }

    /// Adds `service`, or refuses it if it declares a method that a service
    /// added before declares (or declares one method twice).
    // Not `std::ops::Add`: adding a service may fail, and takes no `Services`.
    #[allow(clippy::should_implement_trait)]
    pub fn add<S: Service>(mut self, service: S) -> Result<Self, DuplicateMethod> {
        let index = self.services.len();
        let second = Protocol::name(&service).to_owned();
        for &method in service.methods() {
            match self.routes.entry(method) {
                Entry::Occupied(taken) => {
                    let first = match self.services.get(*taken.get()) {
                        Some(first) => first.name().to_owned(),
                        None => second.clone(),
                    };
                    return Err(DuplicateMethod {
                        method: method.to_owned(),
                        first,
                        second,
                    });
                }
                Entry::Vacant(free) => {
                    free.insert(index);
                }
            }
            self.methods.push(method);
        }
        if !self.name.is_empty() {
            self.name.push('+');
        }
        self.name.push_str(&second);
        self.services.push(Box::new(service));
        Ok(self)
    }

    /// The service that takes `method`, if any.
    fn route(&self, method: &str) -> Option<&dyn Routed> {
        let index = match self.routes.get(method) {
            Some(&index) => index,
            None => {
                let stem = method.strip_suffix(REPLY_SUFFIX)?;
                *self.routes.get(stem)?
            }
        };
        self.services.get(index).map(|service| &**service)
    }
}

impl Protocol for Services {
    /// The names of the services, joined with `+` (`Jobs+Hub`).
    fn name(&self) -> &str {
        if self.name.is_empty() {
            "Services"
        } else {
            &self.name
        }
    }

    async fn process_message(&self, ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match self.route(&packet.method) {
            Some(service) => service.handle(ctx, packet).await,
            None => Err(HandlerError::unknown_method(&packet.method)),
        }
    }

    /// Routes a stream's open to the service that serves its method (by
    /// its exact name: a stream has no reply stem to route by).
    async fn process_stream(
        &self,
        ctx: Context,
        packet: Packet,
        io: StreamIo,
    ) -> Result<Value, HandlerError> {
        let service = self
            .routes
            .get(packet.method.as_str())
            .and_then(|&index| self.services.get(index));
        match service {
            Some(service) => service.handle_stream(ctx, packet, io).await,
            None => Err(HandlerError::unknown_method(&packet.method)),
        }
    }
}

impl Service for Services {
    fn methods(&self) -> &[&'static str] {
        &self.methods
    }
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Services")
            .field("name", &Protocol::name(self))
            .field("methods", &self.methods)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str, &'static [&'static str]);

    impl Protocol for Named {
        fn name(&self) -> &str {
            self.0
        }

        async fn process_message(&self, _: Context, p: Packet) -> Result<Reply, HandlerError> {
            Err(HandlerError::unknown_method(&p.method))
        }
    }

    impl Service for Named {
        fn methods(&self) -> &[&'static str] {
            self.1
        }
    }

    #[test]
    fn a_method_served_twice_is_refused_naming_both_services() {
        let services = Services::new().add(Named("Jobs", &["submit", "status"]));
        let err = services
            .unwrap()
            .add(Named("Hub", &["register", "status"]))
            .unwrap_err();
        assert_eq!(
            err,
            DuplicateMethod {
                method: "status".into(),
                first: "Jobs".into(),
                second: "Hub".into()
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("`status`") && text.contains("`Jobs` and `Hub`"),
            "{text}"
        );
    }

    #[test]
    fn routes_by_method_and_replies_by_their_stem() {
        let services = Services::new()
            .add(Named("Jobs", &["submit"]))
            .and_then(|s| s.add(Named("Hub", &["register"])))
            .unwrap();
        assert_eq!(services.methods(), ["submit", "register"]);
        assert_eq!(Protocol::name(&services), "Jobs+Hub");
        assert_eq!(services.route("register").map(Routed::name), Some("Hub"));
        assert_eq!(
            services.route("submit.reply").map(Routed::name),
            Some("Jobs")
        );
        assert!(services.route("nope").is_none());
        assert!(services.route("nope.reply").is_none());
        assert!(services.route(".reply").is_none());
    }
}
