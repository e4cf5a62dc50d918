//! Encrypted peer-to-peer RPC over TCP.
//!
//! Two peers exchange [`Packet`]s (`peer`, `id`, `created_at`, `method`,
//! `payload`), each sealed into a Fernet token under one shared key and sent
//! as one line. Each side runs a [`Protocol`] that handles incoming packets
//! and may answer them; both sides can send packets and make calls at any
//! time through a [`Connection`]. The [`Connector`] runs servers and
//! clients with settings from the environment (`CRYPTO_KEY`,
//! `STREAM_RPC_HOST`, `STREAM_RPC_PORT`) or from code; the logs are set up
//! by [`logging::init`] with [`logging::Settings`] (`STREAM_RPC_LOG_LVL`).
//!
//! One way to do each thing:
//!
//! | Job | How |
//! |---|---|
//! | Serve | [`Connector::bind`], [`Server::serve`]; stop with [`Server::with_graceful_shutdown`] ([`shutdown_signal`] for Ctrl-C and SIGTERM) |
//! | Connect | [`Connector::connect`], or [`Connector::connect_reconnecting`] to reconnect and fail over |
//! | Call | [`Caller`] (`call`, `call_with_timeout`, `notify`) on a client or a connection, or a typed client from [`macro@service`] |
//! | Know why a call failed, and whether to retry | [`CallError`], [`CallError::may_have_run`] |
//! | Stop a call's work on the peer | drop the call's future (or let its time limit pass): `call.cancel` is sent; the handler sees [`Context::cancelled`] |
//! | Stream items either way, with flow control | [`Caller::open_stream`] ([`RawStream`], [`ItemSender`]) to open; [`Protocol::process_stream`] ([`StreamIo`]) to serve; [`Streaming`] and [`IncomingItems`] in a typed service |
//! | Know why a stream ended | [`StreamError`] (`Failed`, `Cancelled`, `Disconnected { last_seq }`, `Timeout`, `Call`) |
//! | Send auth tokens, tenant ids, trace context with a call | [`Call`] with [`Caller::call_with`], [`StreamOptions::meta`]; read with [`Context::meta`] |
//! | Wrap calls in timeouts, limits, auth, tracing (tower layers) | [`layer::LayeredProtocol`] to serve, [`layer::LayeredCaller`] to call, [`layer::Tracing`] |
//! | Act when a connection opens or ends | [`Connector::on_connect`], [`Connector::on_disconnect`] |
//! | Run over another byte stream | [`Connector::attach`] |
//! | Put tasks in a queue server, await their typed results, cancel them | [`tasks::Tasks`], or the typed `XTasks` of [`macro@service`] ([`tasks::PutTask`], [`tasks::TaskHandle`]) |
//! | Run tasks a queue server pushes, and drain on stop | [`tasks::Worker`]; a typed error says whether to retry with [`tasks::Retry`] |
//!
//! [`Connector::run_server`] and [`Connector::run_client`] are thin
//! wrappers in the shape of the Python `stream_rpc` connector.
//!
//! ```
//! use serde_json::json;
//! use stream_rpc::{
//!     Caller, Config, Connector, Context, Fernet, HandlerError, Packet, Protocol, Reply,
//! };
//!
//! struct Pinger;
//!
//! impl Protocol for Pinger {
//!     async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
//!         match packet.method.as_str() {
//!             "ping" => Ok(Reply::message("pong", json!({"got": packet.payload}))),
//!             other => Err(HandlerError::unknown_method(other)),
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Fernet::generate_key()?;
//! let config = |port| Config::builder().key(key.clone()).host("127.0.0.1").port(port).build();
//!
//! // A server on a free loopback port.
//! let server = Connector::new(config(0)?).bind().await?;
//! let port = server.local_addr().port();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let serving = tokio::spawn(
//!     server
//!         .with_graceful_shutdown(async move { stopped.await.unwrap_or(()) })
//!         .serve(Pinger),
//! );
//!
//! // A client calls it.
//! let client = Connector::new(config(port)?).connect(()).await?;
//! let reply = client.call("ping", json!(1)).await?;
//! assert_eq!(reply.method, "pong");
//! assert_eq!(reply.payload, json!({"got": 1}));
//!
//! stop.send(()).unwrap();
//! serving.await??;
//! # Ok(())
//! # }
//! ```
//!
//! The wire format is specified in `docs/PROTOCOL.md` of the repository.
//!
//! For work spread over many servers and workers, the `stream-rpc-queue`
//! crate of the same workspace has the task queue (in memory, or on Redis
//! shared by every server) and a replay store shared through Redis; see
//! `docs/SCALING.md`.

#![warn(missing_docs)]
// The only `unsafe` is in `cipher/fernet/` (fork detection, key wiping),
// each allowed where it stands with its reasoning.
#![deny(unsafe_code)]

// Every public item has one path: the crate root, or one of the three
// public modules (`codec`, `env`, `logging`) for the items a program needs
// less often.
mod caller;
mod cipher;
pub mod codec;
mod config;
mod connector;
mod endpoint;
mod engine;
mod error;
mod hooks;
mod human;
pub mod layer;
mod lifecycle;
pub mod logging;
mod metadata;
mod packet;
mod protocol;
mod reconnect;
mod replay;
mod router;
mod scratch;
mod service;
mod session;
mod stream;
mod sync;
pub mod tasks;
mod telemetry;

/// The environment variables the settings are read from, their defaults,
/// and the reader of server lists.
pub mod env {
    pub use crate::config::{
        DEFAULT_CONNECT_HOST, DEFAULT_HOST, DEFAULT_MAX_CONNECTIONS,
        DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_PORT, DEFAULT_TOKEN_TTL, ENV_HOST, ENV_KEY,
        ENV_LOG_LEVEL, ENV_LOG_PACKETS, ENV_MAX_CONNECTIONS_PER_IP, ENV_PORT, ENV_SERVERS,
        MAX_CONNECTIONS_LIMIT, MAX_FRAME_LEN_LIMIT, MAX_OUTBOX_BYTES_LIMIT,
        MAX_PER_CONNECTION_LIMIT, MAX_REPLAY_CACHE_ENTRIES, MAX_TERMINATOR_LEN, MIN_FRAME_LEN,
        connect_host, parse_servers,
    };
}

pub use caller::{Call, Caller};
pub use cipher::{Cipher, CipherError, Fernet, KeyError, MAX_CLOCK_SKEW, Unsealed};
pub use config::{Config, ConfigBuilder, ConfigError, Limits, Timeouts};
pub use connector::{Client, Connector, Server, ShutdownHandle, shutdown_signal};
pub use endpoint::{Endpoint, EndpointBuilder};
pub use error::{CallError, Error, HookError, SendError};
pub use lifecycle::{EndReason, Role};
pub use metadata::{
    MAX_META_BYTES, MAX_META_ENTRIES, MAX_META_KEY_LEN, MAX_META_VALUE_LEN, Metadata,
    MetadataError, TRACEPARENT, TRACESTATE,
};
pub use packet::{ERROR_METHOD, ErrorCode, ErrorPayload, Packet, ReplyTo, StreamHeader};
pub use protocol::{Context, HandlerError, Protocol, Reply};
pub use reconnect::{Reconnect, ReconnectingClient};
pub use replay::{MemoryReplayStore, ReceivedToken, ReplayStore, ReplayWork, Verdict};
pub use router::{DuplicateMethod, Service, Services};
pub use service::{Argument, IntoReply, Message, MethodError, REPLY_SUFFIX};
pub use session::Connection;
pub use stream::{
    DecodeError, Incoming, IncomingItems, ItemSender, ItemStream, MAX_STREAM_CREDIT, RawStream,
    Sink, StreamError, StreamIo, StreamOptions, Streaming, TypedSink,
};
pub use stream_rpc_macros::service;

#[doc(hidden)]
pub use service::__private;
#[doc(hidden)]
pub use stream::__stream;

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// Re-exported so that applications and generated code need no direct
/// dependency on `serde_json`.
pub use serde_json::{Value, json};
