//! Procedural macros of [`stream-rpc`](https://docs.rs/stream-rpc).
//!
//! This crate is an implementation detail: depend on `stream-rpc` and use the
//! attribute through it, as `#[stream_rpc::service]`. The attribute works in
//! three steps, one file each: `model` reads the impl block (`streams` its
//! stream arguments and returns), `validate`
//! checks it as a whole, and `expand` generates the code.

#![warn(missing_docs)]

use proc_macro::TokenStream;

mod attr;
mod client;
mod dispatch;
mod errors;
mod expand;
mod fallback;
mod model;
mod streams;
mod tasks;
mod validate;

/// Turns the `async fn`s of an inherent `impl` block, or of a trait
/// definition, into a stream-rpc service: packets are dispatched to the
/// method of the same name, payloads are read into the methods' typed
/// arguments, and what a method returns is sent back. Works the same on
/// servers and on workers.
///
/// # On a trait: the definition in a crate of its own
///
/// A trait holds only the service's definition, so a client program can
/// depend on it without linking any implementation:
///
/// ```
/// use stream_rpc::{Config, Connector, Fernet};
///
/// #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// pub enum KvError {
///     Missing(String),
/// }
///
/// #[stream_rpc::service]
/// pub trait Kv {
///     async fn set(&self, key: String, value: String);
///     async fn take(&self, key: String) -> Result<String, KvError>;
/// }
///
/// // The server's crate implements it with plain `async fn`s...
/// #[derive(Default)]
/// struct MemoryKv(std::sync::Mutex<std::collections::HashMap<String, String>>);
///
/// impl Kv for MemoryKv {
///     async fn set(&self, key: String, value: String) {
///         self.0.lock().unwrap().insert(key, value);
///     }
///     async fn take(&self, key: String) -> Result<String, KvError> {
///         self.0.lock().unwrap().remove(&key).ok_or(KvError::Missing(key))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let key = Fernet::generate_key()?;
/// # let config = |port| Config::builder().key(key.clone()).host("127.0.0.1").port(port).build();
/// // ...and serves it through the generated `KvServer`.
/// let server = Connector::new(config(0)?).bind().await?;
/// # let port = server.local_addr().port();
/// # let stop = server.shutdown_handle();
/// let serving = tokio::spawn(server.serve(KvServer::new(MemoryKv::default())));
///
/// // A client that serves nothing calls it through the generated `KvClient`,
/// // over any `Caller` (here a `Client`; a `ReconnectingClient` as well).
/// let kv = KvClient::new(Connector::new(config(port)?).connect(()).await?);
/// kv.set("a".into(), "1".into()).await?;
/// assert_eq!(kv.take("a".into()).await?, Ok("1".to_owned()));
/// // The method's own error comes back as itself.
/// assert_eq!(kv.take("a".into()).await?, Err(KvError::Missing("a".into())));
/// assert_eq!(KvClient::METHODS, ["set", "take"]);
/// # stop.shutdown();
/// # drop(kv);
/// # serving.await??;
/// # Ok(())
/// # }
/// ```
///
/// On a trait the attribute also rewrites the trait itself (each method's
/// future `Send`, the trait `Send + Sync + 'static`) so that
/// implementations write plain `async fn`s. Every argument and return form
/// below works the same in both forms, and both generate the same items
/// (see [What is generated](#what-is-generated)); trait methods may not
/// have default bodies, generics, `&mut self`, associated types or consts.
///
/// # On an impl block
///
/// ```
/// use std::collections::VecDeque;
/// use std::sync::Mutex;
///
/// use stream_rpc::{Context, HandlerError, Message, Packet, Reply};
///
/// #[derive(Default)]
/// struct QueueServer {
///     queue: Mutex<VecDeque<Packet>>,
/// }
///
/// #[stream_rpc::service]
/// impl QueueServer {
///     /// No argument: the payload is ignored. `Message` picks the reply's method.
///     async fn ping(&self) -> Message<()> {
///         Message::new("pong", ())
///     }
///
///     /// One argument: the whole payload, here a task packet.
///     async fn put_in_queue(&self, task: Packet) -> Message<()> {
///         self.queue.lock().unwrap().push_back(task);
///         Message::new("pong", ())
///     }
///
///     /// `Reply` for anything else, such as a stored packet sent back verbatim.
///     async fn get_task_from_queue(&self) -> Reply {
///         match self.queue.lock().unwrap().pop_front() {
///             Some(task) => Reply::Forward(task),
///             None => Reply::message("pong", stream_rpc::json!(null)),
///         }
///     }
///
///     /// Several arguments: the payload is `{"a": .., "b": ..}`. A typed value
///     /// is the reply's payload (method `add.reply`).
///     async fn add(&self, a: i64, b: i64) -> i64 {
///         a + b
///     }
///
///     /// `Result`: `Err` becomes an error packet; a `HandlerError` keeps its code.
///     async fn divide(&self, a: i64, b: i64) -> Result<i64, HandlerError> {
///         a.checked_div(b).ok_or_else(|| HandlerError::failed("division by zero"))
///     }
///
///     /// No return type: a notification, nothing is sent back.
///     async fn log(&self, line: String) {
///         println!("{line}");
///     }
///
///     /// The handler context first: who sent the packet, and the session to
///     /// send packets or make calls back to that peer.
///     async fn whoami(&self, ctx: Context) -> String {
///         ctx.peer().to_string()
///     }
///
///     /// Another name on the wire.
///     #[stream_rpc(rename = "queue.length")]
///     async fn queue_length(&self) -> usize {
///         self.len()
///     }
///
///     /// A helper, not a service method.
///     #[stream_rpc(skip)]
///     fn len(&self) -> usize {
///         self.queue.lock().unwrap().len()
///     }
/// }
///
/// assert_eq!(
///     QueueServer::METHODS,
///     ["ping", "put_in_queue", "get_task_from_queue", "add", "divide", "log", "whoami", "queue.length"]
/// );
/// ```
///
/// # Arguments
///
/// After `&self` (methods take `&self`: handlers of one connection run
/// concurrently, so state lives behind a `Mutex` or an atomic):
///
/// - an optional first argument written `Context` (or `stream_rpc::Context`)
///   receives the handler context;
/// - no payload argument: the payload is ignored;
/// - one: the whole payload is read into its type;
/// - several: the payload is a JSON object keyed by the argument names
///   (`r#type` is `type`); a missing key reads as `null`, so `Option`
///   arguments may be left out.
///
/// Argument types are owned and implement `Serialize` and `Deserialize`
/// (the typed client sends them): take `String`, not `&str`. A payload that
/// does not fit is answered with an `invalid_payload` error naming the
/// method and the serde error; an unknown method with `unknown_method`.
///
/// # Evolution: which changes keep old clients working
///
/// The payload's shape follows the number of payload arguments: **one
/// argument is the whole payload, two or more are an object** keyed by
/// their names. (The one-argument form is what the Python peers and the
/// queue's `put_in_queue` send: a task packet as the payload, not wrapped.)
/// So, between a client built from an old definition and a server built
/// from a new one:
///
/// | change on the server | old clients |
/// |---|---|
/// | a new method | keep working (they do not call it) |
/// | a new `Option` argument to a method of two or more | keep working: it reads as `None` |
/// | a new `#[serde(default)]` field in an argument's struct | keep working: it reads as its default |
/// | a second argument added to a method of one | **break**: the payload turns from the argument into an object; answered `invalid_payload` |
/// | a renamed method, argument or field; a changed type | **break** |
///
/// A method that may grow arguments later takes one struct argument from
/// the start, and grows by `#[serde(default)]` fields (or takes two
/// arguments from the start). A refused request comes back to the old
/// client as `CallError::Remote` with the code `invalid_payload` or
/// `unknown_method`: nothing was run (`ErrorCode::did_not_run`).
///
/// # Return types
///
/// | return type | sent back | the typed client returns |
/// |---|---|---|
/// | none, or `()` | nothing: a notification | `Result<(), CallError>` once sent |
/// | `T: Serialize + Deserialize` | a reply with method `<method>.reply`, payload `T` | `Result<T, CallError>` |
/// | `Message<T>` | a reply with the method you choose | `Result<T, CallError>` |
/// | `Reply` | what it says: a message, a forwarded packet, or nothing | `Result<Packet, CallError>` |
/// | `Result<R, E>` | `Ok` as above (`Ok(())` is a reply with `null`); `Err` is an error packet | see below |
///
/// `E` travels by what it is: a serializable error as the error packet's
/// `data`, read back by the typed client as itself; a `HandlerError` with
/// its code and message; any other `Display` type as `handler_error` with
/// the message "`method` failed", its text logged on the serving side and
/// never sent. The typed client of a `Result<T, E>` method returns
/// `Result<Result<T, E>, CallError>`: the outer error is the call's, the
/// inner one the method's own. **The method's own error is an error packet
/// with the code `handler_error`** (for a typed `E`, one whose `data` reads
/// as `E`); every other error packet is the call's error,
/// `CallError::Remote` with its code, even for a `HandlerError` method: a
/// request refused as `busy`, `unknown_method`, `invalid_payload`,
/// `invalid_packet` or `unavailable` was not run (`ErrorCode::did_not_run`),
/// and `handler_panicked` is the server's failure, not an answer. A handler
/// that returns a `HandlerError` with one of those codes says the same
/// thing, and its caller sees it the same way. A `Result` alias such as
/// `Result<T>` works (its client returns `Result<T, CallError>`); `Reply`
/// and `Message` must be written by those names.
///
/// On a worker, what a handler returns for a reply is the next message of the
/// conversation: a `pong` handler that returns `Reply::message("ping", ..)`
/// sends the next request.
///
/// # Streams
///
/// A method may return a stream of items (server to client), take one
/// stream argument (client to server), or both. Items are typed values
/// (`Serialize + Deserialize`), sent with the receiver's credit, so a slow
/// consumer slows its producer instead of growing memory.
///
/// | the method | the typed client |
/// |---|---|
/// | `-> Streaming<T>` | `-> Result<ItemStream<T>, CallError>` |
/// | `-> Streaming<T, E>` | `-> Result<ItemStream<T, E>, CallError>` |
/// | `-> Result<Streaming<T, E>, E>` (may fail before its first item) | `-> Result<ItemStream<T, E>, CallError>` |
/// | `items: IncomingItems<T>` and `-> R` (`()`, a value or `Result<R, E>`) | `items: impl Stream<Item = T> + Send + 'static`, and the answer as for a call: `-> Result<R, CallError>` (`Result<Result<R, E>, CallError>`) |
/// | `items: IncomingItems<T>` and `-> Streaming<U, E>` | `items: impl Stream<Item = T> + Send + 'static`, `-> Result<ItemStream<U, E>, CallError>` |
///
/// The other arguments are the payload of the stream's open, read as for a
/// call (the stream argument is not counted among them).
///
/// The client's `ItemStream<T, E>`
/// yields `Ok(item)`s, then ends: `None` after a clean end, or one
/// `Err(StreamError)` that says why not: `Failed(E)`, the method's own
/// error (an `E` the stream or the `Result` ended with, read back as for
/// calls: a `HandlerError`, or a `Deserialize` error from the packet's
/// `data`); `Cancelled`; `Disconnected { last_seq }` (the connection
/// closed after `last_seq` items: see the resume idiom in the `resume`
/// example); `Timeout { after }`; `Call(CallError)` for a refusal or any
/// other error packet. **Dropping the client's stream cancels the call**:
/// the server drops the method's producer (its future).
///
/// On the serving side, build the stream with `Streaming::new(stream of
/// Result<T, E>)`, `Streaming::from_items(stream of T)`, or
/// `Streaming::from_fn(|sink| async move { ... })`, a producer loop whose
/// `sink.send(item).await` waits for credit and fails once the client is
/// gone. A stream argument yields `Result<T, HandlerError>`: an item that
/// does not decode is `Err` with the code `invalid_payload` (return it with
/// `?` to fail the call with it).
///
/// ```
/// use futures_util::StreamExt;
/// use stream_rpc::{Connector, Config, Fernet, HandlerError, IncomingItems, StreamError, Streaming};
///
/// #[stream_rpc::service]
/// pub trait Numbers {
///     /// `from..=to`, then the end.
///     async fn count(&self, from: u64, to: u64) -> Streaming<u64>;
///     /// The sum of what the client sends.
///     async fn sum(&self, values: IncomingItems<u64>) -> Result<u64, HandlerError>;
/// }
///
/// struct Impl;
///
/// impl Numbers for Impl {
///     async fn count(&self, from: u64, to: u64) -> Streaming<u64> {
///         Streaming::from_items(futures_util::stream::iter(from..=to))
///     }
///     async fn sum(&self, mut values: IncomingItems<u64>) -> Result<u64, HandlerError> {
///         let mut sum = 0;
///         while let Some(value) = values.next().await {
///             sum += value?;
///         }
///         Ok(sum)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let key = Fernet::generate_key()?;
/// # let config = |port| Config::builder().key(key.clone()).host("127.0.0.1").port(port).build();
/// # let server = Connector::new(config(0)?).bind().await?;
/// # let port = server.local_addr().port();
/// # let stop = server.shutdown_handle();
/// # let serving = tokio::spawn(server.serve(NumbersServer::new(Impl)));
/// let numbers = NumbersClient::new(Connector::new(config(port)?).connect(()).await?);
/// let counted: Vec<u64> = numbers
///     .count(1, 3)
///     .await?
///     .map(|item| item.expect("no error"))
///     .collect()
///     .await;
/// assert_eq!(counted, [1, 2, 3]);
/// // A method that takes a stream answers as a call does.
/// assert_eq!(numbers.sum(futures_util::stream::iter([1, 2, 3])).await?, Ok(6));
/// # stop.shutdown();
/// # drop(numbers);
/// # serving.await??;
/// # Ok(())
/// # }
/// ```
///
/// A plain call to a stream method is refused with `stream_required`, and
/// a stream opened to a plain method with `not_a_stream` (neither runs
/// the method). A stream method has no default time limit (streams are
/// long-lived; the call timeout does not apply): give it one with the
/// attributes below, or with the client's `with_timeout`.
///
/// # Attributes
///
/// - `#[stream_rpc(rename = "wire.name")]` on a method: its name on the wire.
/// - `#[stream_rpc(skip)]` on a fn: a helper, left out of dispatch.
/// - `#[stream_rpc(timeout = "5m")]` on a method: the typed client's limit
///   on the whole call (instead of the caller's call timeout for a plain
///   call; instead of no limit for a stream). A client's own
///   `with_timeout` wins over it. A duration is a whole number and a unit,
///   `ms`, `s`, `m` or `h`, or several (`"1m30s"`).
/// - `#[stream_rpc(item_timeout = "30s")]` on a method that returns a
///   stream: the typed client's limit on the time between two items (the
///   first one included); past it the stream ends with
///   `StreamError::Timeout` and the call is cancelled.
/// - `#[stream_rpc::service(name = "Queue")]`: the protocol name in logs
///   (the type's name by default).
/// - `#[stream_rpc::service(crate = path)]`: where the runtime crate is, if it
///   is reached through another crate. A rename in `Cargo.toml` is found
///   without it.
///
/// # What is generated
///
/// The same items in both forms. The server is the type itself on an impl
/// block (`QueueServer`), and the generated `KvServer<T: Kv>` on a trait
/// (`KvServer::new(implementation)`, with `get_ref` and `into_inner`):
///
/// - `impl stream_rpc::Protocol` for the server: hand it to
///   `Server::serve`, `Connector::connect` or `run_client`.
/// - `impl stream_rpc::Service` for the server, which lists its methods, so
///   that it composes with other services on one listener or one
///   connection in `stream_rpc::Services` (routed by method name, a method
///   name served twice refused when composed).
/// - `QueueServer::METHODS` / `KvServer::<T>::METHODS`: the wire names, for
///   logs and introspection.
/// - `QueueServerClient` / `KvClient`, the typed client, generic over any
///   `Caller` (a `Connection` by default): `new(caller)`, `caller()`,
///   `with_timeout(limit)` for a time limit of its own, `METHODS` (the same
///   list, without naming the server's parameter), and one async method per
///   service method with the same arguments (without the context), as
///   visible as the service method. Over a client: `KvClient::new(&client)`
///   (a `Client` or a `ReconnectingClient`); inside a handler, to call back
///   into the peer: `KvClient::new(&ctx)` or `KvClient::new(ctx.connection())`.
/// - `QueueServerTasks` / `KvTasks`, the typed task producer, generic over
///   an owned `Caller` connected to a queue server (`stream_rpc::tasks`):
///   `new(caller)`, `tasks()` (the untyped `stream_rpc::tasks::Tasks`
///   inside: show, cancel, list, limits, schedules), and one method per
///   method that is **not a stream** (a task has no stream), with the same
///   arguments, returning a `stream_rpc::tasks::PutTask`: set its options
///   (`.delay(d)`, `.run_at(t)`, `.priority(p)`, `.max_attempts(n)`,
///   `.backoff(b)`, `.dedupe(key)`, `.timeout(d)`), then `.await` it for the
///   task's handle, whose `result()` is the method's answer: `Result<T, E>`
///   for a method returning `Result<T, E>`, `Result<T, HandlerError>` for
///   one returning `T` (`()` for a notification method). A method named
///   `tasks` has no method of its own there (put it with
///   `tasks().put(...)`). The server itself is the worker's side: a
///   `stream_rpc::tasks::Worker` serves it to the tasks a queue server
///   pushes. When a method's error type implements
///   `stream_rpc::tasks::Retry`, the server sends what it says as the error
///   packet's `retry`: `false` makes the task go dead at once.
///
/// The generated code's generic parameters have names no user code writes
/// (a service may be called `S`, `C`, `Result`, `Context`...), and it names
/// everything else by absolute path.
///
/// ```
/// # use stream_rpc::{Config, Connector, Fernet};
/// struct Calculator;
///
/// #[stream_rpc::service]
/// impl Calculator {
///     async fn add(&self, a: i64, b: i64) -> i64 {
///         a + b
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let key = Fernet::generate_key()?;
/// # let config = |port| Config::builder().key(key.clone()).host("127.0.0.1").port(port).build();
/// # let server = Connector::new(config(0)?).bind().await?;
/// # let port = server.local_addr().port();
/// # let stop = server.shutdown_handle();
/// # let serving = tokio::spawn(server.serve(Calculator));
/// let client = Connector::new(config(port)?).connect(Calculator).await?;
/// let calculator = CalculatorClient::new(&client);
/// assert_eq!(calculator.add(2, 40).await?, 42);
/// # stop.shutdown();
/// # drop(client);
/// # serving.await??;
/// # Ok(())
/// # }
/// ```
///
/// # Deadlines
///
/// A caller gives each request a deadline (its call timeout). **When the
/// deadline passes, the handler's future is dropped**: it stops at the
/// `.await` it is waiting on, code after that `.await` does not run, and
/// nothing is sent back. So a handler must not leave state half-changed
/// across an `.await` (keep the change after the last one, or undo it in
/// a guard's `Drop`). A handler that takes the context reads the deadline
/// with `Context::deadline`, to stop early by itself or to give up on work
/// the caller will not wait for.
///
/// # Mistakes are compile errors
///
/// Each misuse is reported once, on the offending token, and the generated
/// items are still emitted (with bodies that never run), so code that uses
/// the service adds no errors of its own: a fn that is not
/// `async`; a receiver other than `&self`; a generic method; `impl Trait`,
/// pattern or `_` arguments; borrowed arguments (`&str`: take `String`);
/// argument, return or error types that are not serializable (or
/// `Display`), one error per type written; two methods with one wire name;
/// an empty wire name or one with whitespace; unknown, repeated or mistyped
/// attribute arguments; the attribute on something other than an inherent
/// impl block or a trait definition (a trait impl, a struct, a fn); an impl
/// or trait with no service method; a fn named like a generated item
/// (`METHODS` on an impl block; the client's `new`, `caller` and
/// `with_timeout`); a context argument that is not first, or more than one;
/// `const` or `type` items; two stream arguments, a stream argument by
/// reference or inside another type, `Streaming` anywhere but as the whole
/// return type (or the `Ok` of `Result<Streaming<T, E>, E>`),
/// `IncomingItems` in a return type, a `Reply` or `Message` answer to a
/// stream argument, `item_timeout` on a method that returns no stream,
/// `timeout` on a notification, a duration that does not read.
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::service(args.into(), input.into()).into()
}
