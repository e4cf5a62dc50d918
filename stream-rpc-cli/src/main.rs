//! `stream-rpc`: keys, calls, token decoding, the queue server and its
//! queue, from a shell. Reads the library's environment settings
//! (`CRYPTO_KEY`, `STREAM_RPC_HOST`, `STREAM_RPC_PORT`, `STREAM_RPC_QUEUE`,
//! ...), which flags override; never prints a key except from `keygen`.

mod bench;
mod duration;
mod stream;
mod tasks;
mod tokens;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use stream_rpc::Caller;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use stream_rpc::{
    Call, CallError, ConfigBuilder, ConfigError, Connector, Endpoint, Fernet, Metadata, Value,
    logging,
};
use stream_rpc_example_queue::QueueServer;
use stream_rpc_queue::{
    QueueConfig, QueueSettings, RedisTls, ReplaySharing, TaskQueue, TaskRef, replay_store_for,
};

/// Exit status of a call answered with an error packet, or of `decode` when
/// a token did not open.
pub(crate) const REFUSED: u8 = 1;
/// Exit status when nothing could be asked: bad settings, no server, no
/// answer in time.
pub(crate) const FAILED: u8 = 2;

#[derive(Parser)]
#[command(
    name = "stream-rpc",
    version,
    about = "Talk to stream-rpc services from a shell: keys, calls, sealing and decoding tokens, the queue server",
    after_help = "Settings come from the environment (CRYPTO_KEY, STREAM_RPC_HOST, \
                  STREAM_RPC_PORT, STREAM_RPC_QUEUE, ...); flags override them.\n\
                  Durations are a number and a unit (500ms, 3s, 2m, 1h) or a bare number of seconds.\n\
                  Examples:\n  stream-rpc keygen > key && chmod 600 key\n  \
                  stream-rpc --key-file key call ping\n  \
                  stream-rpc --key-file key serve --port 8888"
)]
struct Cli {
    /// Read the key (or comma-separated keys) from this file instead of
    /// CRYPTO_KEY, so that it stays out of shell history.
    #[arg(long, global = true, value_name = "PATH")]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new random key (32 bytes, URL-safe base64).
    #[command(after_help = "Example:\n  stream-rpc keygen > key && chmod 600 key")]
    Keygen,
    /// Send one request and print the reply's payload as JSON.
    #[command(after_help = CALL_HELP)]
    Call(CallArgs),
    /// Make a token of a packet (arguments, or one per line on stdin): the
    /// pair of `decode`.
    #[command(after_help = SEAL_HELP)]
    Seal(SealArgs),
    /// Open tokens (arguments, or one per line on stdin) and print each
    /// packet with its token's time.
    #[command(
        after_help = "A token that does not open is reported on stderr with why \
                            (malformed, wrong key, expired, from the future) and the next \
                            one is tried; the exit status is then 1.\n\
                            Example:\n  tcpdump -A -i lo port 8888 | grep -o 'gAAAA[A-Za-z0-9_=-]*' | \
                            stream-rpc decode --no-ttl"
    )]
    Decode(DecodeArgs),
    /// Load a server with calls and report calls/s, latency percentiles and
    /// errors by code.
    #[command(
        after_help = "Closed loop by default: each of the connections x concurrency \
                            callers makes its next call when the last is answered. With \
                            --rate, open loop: calls start at that rate whatever the answers \
                            do, and latency counts from each call's scheduled start.\n\
                            Examples:\n  stream-rpc bench --calls 100000 --connections 4 --concurrency 16\n  \
                            stream-rpc bench --method get --payload '\"k\"' --rate 5000 --duration 30s --json"
    )]
    Bench(BenchArgs),
    /// Run the ping/queue server (the `server` example), every setting a flag.
    #[command(after_help = "Examples:\n  stream-rpc serve --port 8888\n  \
                            stream-rpc serve --queue redis://10.0.0.5:6379/0 --lease 1m")]
    Serve(ServeArgs),
    /// Put, await, cancel, list and schedule tasks through a server; look
    /// at and mend a queue on Redis directly (stats, dead, requeue,
    /// purge-dead).
    #[command(
        after_help = "put, show, cancel, list, tasks, schedules, schedule, unschedule and \
                            limit ask a server (--addr, else STREAM_RPC_SERVERS, else \
                            STREAM_RPC_HOST and STREAM_RPC_PORT) under CRYPTO_KEY, like `call`; \
                            stats, dead, requeue and purge-dead open the Redis queue itself \
                            (--queue or STREAM_RPC_QUEUE).\n\
                            Examples:\n  stream-rpc queue put parse_article '{\"article_id\": 7}' --wait 30s\n  \
                            stream-rpc queue list --state dead\n  \
                            stream-rpc queue --queue redis://127.0.0.1:6379 stats\n  \
                            stream-rpc queue requeue 3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41:4"
    )]
    Queue(QueueArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  stream-rpc completions bash > /etc/bash_completion.d/stream-rpc"
    )]
    Completions {
        /// The shell.
        shell: Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Where a server is.
#[derive(Args)]
pub(crate) struct Target {
    /// HOST:PORT of the server [default: STREAM_RPC_HOST (else 127.0.0.1) and
    /// STREAM_RPC_PORT (else 8888)].
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: Option<String>,
}

#[derive(Args)]
struct CallArgs {
    /// The method.
    method: String,
    /// The payload as JSON; `-` reads it from stdin, `@FILE` from a file
    /// [default: null].
    payload: Option<String>,
    #[command(flatten)]
    target: Target,
    /// How long to wait for the reply (500ms, 3s, 2m, or seconds); with
    /// --stream, the whole stream's limit [default: 10s; with --stream, no
    /// limit].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    timeout: Option<Duration>,
    /// Print the whole reply packet, not just its payload.
    #[arg(long)]
    packet: bool,
    /// Send without waiting for a reply.
    #[arg(long, conflicts_with = "packet")]
    notify: bool,
    /// Open a stream: print each item as one line of JSON as it arrives,
    /// until the server ends it (Ctrl-C cancels it).
    #[arg(long, conflicts_with_all = ["packet", "notify"])]
    stream: bool,
    /// With --stream: stop after this many items, cancelling the stream
    /// (exit status 0).
    #[arg(long, requires = "stream", value_name = "N")]
    max_items: Option<u64>,
    /// With --stream: the most time between two items (500ms, 3s, or
    /// seconds) [default: no limit].
    #[arg(long, requires = "stream", value_name = "DURATION", value_parser = duration::parse)]
    item_timeout: Option<Duration>,
    /// With --stream: items the server may send ahead of those printed
    /// [default: the library's window, 32].
    #[arg(long, requires = "stream", value_name = "ITEMS",
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    window: Option<u32>,
    /// Metadata sent with the call, notification or stream open, one
    /// `KEY=VALUE` each time it is given (keys: 1 to 64 of `a-z 0-9 - _ .`;
    /// e.g. `--meta authorization=TOKEN --meta tenant=acme`).
    #[arg(long, value_name = "KEY=VALUE")]
    meta: Vec<String>,
}

/// The metadata of `--meta KEY=VALUE` arguments, checked against the
/// protocol's limits.
fn metadata(pairs: &[String]) -> Result<Metadata, Failure> {
    let mut meta = Metadata::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--meta: expected KEY=VALUE, got {pair:?}"))?;
        meta.insert(key, value)
            .map_err(|e| format!("--meta {key:?}: {e}"))?;
    }
    Ok(meta)
}

/// How long `call` waits for its answer (and to connect) unless told.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
struct BenchArgs {
    /// The method to call.
    #[arg(long, default_value = "ping")]
    method: String,
    /// The payload as JSON; `-` reads it from stdin, `@FILE` from a file [default: null].
    #[arg(long)]
    payload: Option<String>,
    #[command(flatten)]
    target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    connections: u64,
    /// Calls in flight on each connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Stop after this many calls [default: run for --duration].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    calls: Option<u64>,
    /// How long to run (with --calls: at most); 30s, 2m, or seconds.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = duration::parse)]
    duration: Duration,
    /// Calls per second in all, open loop [default: closed loop].
    #[arg(long)]
    rate: Option<f64>,
    /// How long each call may take (500ms, 3s, or seconds).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = duration::parse)]
    timeout: Duration,
    /// Print the summary as JSON (and no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DecodeArgs {
    /// Tokens; without any, one per line is read from stdin.
    tokens: Vec<String>,
    /// Open tokens of any age (a capture from long ago).
    #[arg(long, conflicts_with = "ttl")]
    no_ttl: bool,
    /// Refuse tokens older than this (5m, 300s, or seconds).
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = duration::parse)]
    ttl: Duration,
}

#[derive(Args)]
struct SealArgs {
    /// Packets as JSON (`@FILE` reads one from a file); without any, one
    /// per line is read from stdin. `decode`'s output is taken too.
    packets: Vec<String>,
}

/// The help after `call`'s options.
const CALL_HELP: &str = "\
Exit status: 0 answered, 1 answered with an error packet (its code and message \
on stderr), 2 no answer (unreachable, timed out, wrong key) or bad arguments. \
With --stream: 0 when the server ended the stream or --max-items were printed, \
1 when it ended with an error packet (a refused open too: not_a_stream for a \
plain method), 2 when the connection closed or a limit passed, 130 after \
Ctrl-C (the stream is cancelled on the server first).

Examples:
  stream-rpc call ping
  stream-rpc call put_in_queue @task.json
  echo '{\"key\":\"a\",\"value\":\"b\"}' | stream-rpc call set - --notify
  stream-rpc call --stream watch_stats '{\"every_ms\": 500}'
  stream-rpc call --stream watch_stats --max-items 1 | jq .queued

put_in_queue (the server of `stream-rpc serve`) takes a task packet, so \
task.json holds one: its creator's peer id, its number, its time, and the \
task's method and payload (the example workers take parse_article tasks):
  {\"peer\": \"3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41\", \"id\": 1,
   \"created_at\": \"2024-05-01T12:00:00Z\",
   \"method\": \"parse_article\", \"payload\": {\"article_id\": 7}}";

/// The help after `seal`'s options.
const SEAL_HELP: &str = "\
Each packet is checked (peer, id, created_at and method are needed) and \
sealed as it is, under the key, at the current time; the token is printed, \
one per line. `decode` opens it again.

Examples:
  stream-rpc seal '{\"peer\": \"3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41\", \"id\": 1, \"created_at\": \"2024-05-01T12:00:00Z\", \"method\": \"ping\"}'
  stream-rpc seal @packet.json | stream-rpc decode";

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    /// Lines of text: `time - protocol - LEVEL - [peer] message`.
    #[value(alias = "seed")]
    Text,
    /// One JSON object a line.
    Json,
    /// tracing's compact lines.
    Compact,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on [default: STREAM_RPC_HOST, else 0.0.0.0].
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on, 0 for any free one [default: STREAM_RPC_PORT, else 8888].
    #[arg(long)]
    port: Option<u16>,
    /// `memory`, or a redis:// or rediss:// URL [default: STREAM_RPC_QUEUE, else memory].
    #[arg(long)]
    queue: Option<String>,
    /// How long a task is leased to a worker, at most a day (30s, 5m, or
    /// seconds) [default: STREAM_RPC_QUEUE_LEASE_SECS, else 30s].
    #[arg(long, alias = "lease-secs", value_name = "DURATION", value_parser = lease)]
    lease: Option<Duration>,
    /// Hand-outs before a task becomes a dead letter [default: STREAM_RPC_QUEUE_MAX_ATTEMPTS, else 5].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: Option<u32>,
    /// A PEM file of the CAs trusted for Redis's certificate (rediss://).
    #[arg(long, value_name = "PATH")]
    queue_tls_ca: Option<PathBuf>,
    /// Where tokens are remembered against replay: `auto` (shared through
    /// the queue's Redis when the queue is on Redis), `local` (this server
    /// only, with a warning) or `shared` [default: STREAM_RPC_REPLAY, else auto].
    #[arg(long, value_name = "WHERE")]
    replay: Option<String>,
    /// Connections served at once.
    #[arg(long)]
    max_connections: Option<usize>,
    /// The longest frame accepted, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_frame: Option<usize>,
    /// Handlers running at once on one connection.
    #[arg(long)]
    max_handlers: Option<usize>,
    /// Log level: error, warn, info, debug or trace [default: STREAM_RPC_LOG_LVL, else INFO].
    #[arg(long)]
    log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormatArg,
    /// Serve metrics in the Prometheus text format at http://ADDR/metrics
    /// (docs/METRICS.md lists them).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Args)]
struct QueueArgs {
    /// The queue: a redis:// or rediss:// URL [default: STREAM_RPC_QUEUE].
    #[arg(long)]
    queue: Option<String>,
    /// A PEM file of the CAs trusted for Redis's certificate (rediss://).
    #[arg(long, value_name = "PATH")]
    queue_tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    action: QueueAction,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Tasks queued, leased, done and dead; puts refused (duplicates, names
    /// taken, queue full); redeliveries.
    #[command(after_help = "Example:\n  stream-rpc queue --queue redis://127.0.0.1:6379 stats")]
    Stats,
    /// The dead letters: tasks handed out too often without an ack (those
    /// that cannot be read are counted on stderr, not listed).
    #[command(after_help = "Example:\n  stream-rpc queue dead | jq -r '.[].task'")]
    Dead,
    /// Put a dead letter back in the queue: PEER:ID of its task packet (a
    /// name stands for one task at most: a different task put under a held
    /// name is refused).
    #[command(after_help = "Exit status 1 when there is no such dead letter.\n\
                            Example:\n  stream-rpc queue requeue 3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41:4")]
    Requeue {
        /// The task packet's `peer` and `id`, as PEER:ID.
        task: String,
    },
    /// Drop every dead letter.
    #[command(after_help = "Example:\n  stream-rpc queue purge-dead")]
    PurgeDead,
    #[command(flatten)]
    Tasks(tasks::TaskAction),
}

/// The longest lease `serve` takes.
const MOST_LEASE: Duration = Duration::from_secs(86_400);

/// A lease: a duration of at most a day.
fn lease(text: &str) -> Result<Duration, String> {
    let lease = duration::parse(text)?;
    if lease > MOST_LEASE {
        return Err(format!("{text:?}: a lease may be at most a day"));
    }
    Ok(lease)
}

/// A failure that ends the command, with its exit status.
pub(crate) struct Failure(u8, String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(FAILED, e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Keygen => {
            println!("{}", Fernet::generate_key()?);
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            let out = &mut std::io::stdout();
            match shell {
                Shell::Bash => clap_complete::generate(
                    clap_complete::Shell::Bash,
                    &mut command,
                    "stream-rpc",
                    out,
                ),
                Shell::Zsh => clap_complete::generate(
                    clap_complete::Shell::Zsh,
                    &mut command,
                    "stream-rpc",
                    out,
                ),
                Shell::Fish => clap_complete::generate(
                    clap_complete::Shell::Fish,
                    &mut command,
                    "stream-rpc",
                    out,
                ),
            }
            Ok(0)
        }
        Command::Call(args) => call(cli.key_file, args).await,
        Command::Bench(args) => load(cli.key_file, args).await,
        Command::Decode(args) => tokens::decode(cli.key_file, args),
        Command::Seal(args) => tokens::seal(cli.key_file, args),
        Command::Serve(args) => serve(cli.key_file, args).await,
        Command::Queue(args) => queue(cli.key_file, args).await,
    }
}

/// What the command says when there is no key.
const NO_KEY: &str = "CRYPTO_KEY is not set: make a key with `stream-rpc keygen > key` \
                      (then `chmod 600 key`) and give `--key-file key`, or \
                      `export CRYPTO_KEY=$(stream-rpc keygen)`";

/// The settings of the environment, with the key from `key_file` when given.
pub(crate) fn settings(key_file: Option<PathBuf>) -> Result<ConfigBuilder, Failure> {
    let builder = ConfigBuilder::from_env().map_err(config_failure)?;
    Ok(match key_file {
        Some(path) => builder.key(read_key_file(&path)?),
        None => builder,
    })
}

/// A setting that could not be used, said as the command says it.
pub(crate) fn config_failure(e: ConfigError) -> Failure {
    match e {
        ConfigError::MissingKey => Failure(FAILED, NO_KEY.to_owned()),
        other => Failure(FAILED, other.to_string()),
    }
}

/// The key, from `key_file` or CRYPTO_KEY.
fn key(key_file: Option<PathBuf>) -> Result<String, Failure> {
    let key = match key_file {
        Some(path) => read_key_file(&path)?,
        None => std::env::var(stream_rpc::env::ENV_KEY).unwrap_or_default(),
    };
    if key.trim().is_empty() {
        return Err(Failure(FAILED, NO_KEY.to_owned()));
    }
    Ok(key.trim().to_owned())
}

/// The key (or keys) in `path`, without the line end.
fn read_key_file(path: &std::path::Path) -> Result<String, Failure> {
    let key = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    Ok(key.trim().to_owned())
}

/// HOST:PORT of the target, from the flag or the environment.
pub(crate) fn address(target: &Target) -> Result<(String, u16), Failure> {
    if let Some(addr) = &target.addr {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("--addr: expected HOST:PORT, got {addr:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        return Ok((host.to_owned(), port));
    }
    // A listening address (0.0.0.0) stands for this machine.
    let host = match std::env::var(stream_rpc::env::ENV_HOST) {
        Ok(host) if !host.trim().is_empty() => {
            stream_rpc::env::connect_host(host.trim()).to_owned()
        }
        _ => stream_rpc::env::DEFAULT_CONNECT_HOST.to_owned(),
    };
    let port = match std::env::var(stream_rpc::env::ENV_PORT) {
        Ok(port) if !port.trim().is_empty() => port
            .trim()
            .parse()
            .map_err(|_| format!("STREAM_RPC_PORT: expected a port number, got {port:?}"))?,
        _ => stream_rpc::env::DEFAULT_PORT,
    };
    Ok((host, port))
}

/// The payload argument: JSON, `-` for stdin, `@FILE` for a file.
pub(crate) fn payload(argument: Option<&str>) -> Result<Value, Failure> {
    let text = match argument {
        None => return Ok(Value::Null),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the payload from stdin: {e}"))?;
            text
        }
        Some(file) if file.starts_with('@') => std::fs::read_to_string(&file[1..])
            .map_err(|e| format!("cannot read the payload file {}: {e}", &file[1..]))?,
        Some(text) => text.to_owned(),
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure(FAILED, format!("the payload is not JSON: {e}")))
}

async fn call(key_file: Option<PathBuf>, args: CallArgs) -> Result<u8, Failure> {
    let (host, port) = address(&args.target)?;
    let body = payload(args.payload.as_deref())?;
    if args.method == TASK_METHOD {
        check_task(&body)?;
    }
    let limit = args.timeout.unwrap_or(CALL_TIMEOUT);
    let meta = metadata(&args.meta)?;
    let config = settings(key_file)?
        .host(host.clone())
        .port(port)
        .build()
        .map_err(config_failure)?;
    let connector = Connector::new(config);
    // A stream's --timeout is the whole stream's: connecting takes the
    // calls' default.
    let connect_limit = if args.stream { CALL_TIMEOUT } else { limit };
    let client = tokio::time::timeout(connect_limit, connector.connect(()))
        .await
        .map_err(|_| format!("cannot connect to {host}:{port} within {connect_limit:?}"))?
        .map_err(|e| match e {
            // It names the address already.
            unreachable @ stream_rpc::Error::Unreachable { .. } => unreachable.to_string(),
            other => format!("cannot connect to {host}:{port}: {other}"),
        })?;
    if args.stream {
        let plan = stream::Plan {
            method: args.method,
            payload: body,
            timeout: args.timeout,
            item_timeout: args.item_timeout,
            max_items: args.max_items,
            window: args.window,
            meta,
        };
        return stream::run(client, plan).await;
    }
    let request = Call::new(args.method.clone(), body).meta(meta);
    if args.notify {
        client.notify_with(request).await?;
        // Closing writes what is queued first.
        client.close();
        client.join().await;
        return Ok(0);
    }
    match client.call_with(request.timeout(limit)).await {
        Ok(reply) => {
            let shown = if args.packet {
                serde_json::to_value(&reply)?
            } else {
                reply.payload
            };
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(0)
        }
        Err(CallError::Remote {
            code,
            message,
            data,
            ..
        }) => {
            eprintln!("{code}: {message}");
            if let Some(data) = data {
                eprintln!("data: {data}");
            }
            Ok(REFUSED)
        }
        Err(e @ CallError::Timeout { .. }) => Err(Failure(
            FAILED,
            format!("{e} (a server with another key answers nothing: check the key)"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The method of the queue server (`stream-rpc serve`) that takes a task
/// packet.
const TASK_METHOD: &str = "put_in_queue";

/// Refuses, before anything is sent, a task that is not a packet, naming
/// every field it lacks (the server's answer names the first only).
fn check_task(task: &Value) -> Result<(), Failure> {
    let shape = "a task packet: {\"peer\": UUID, \"id\": N, \"created_at\": \"2024-05-01T12:00:00Z\", \
                 \"method\": M, \"payload\": ...} (see `stream-rpc call --help`)";
    if !task.is_object() {
        return Err(Failure(
            FAILED,
            format!("the payload of {TASK_METHOD} is {shape}, not {task}"),
        ));
    }
    let missing = tokens::missing_fields(task);
    if !missing.is_empty() {
        return Err(Failure(
            FAILED,
            format!(
                "the task lacks {}: the payload of {TASK_METHOD} is {shape}",
                missing.join(", ")
            ),
        ));
    }
    Ok(())
}

async fn load(key_file: Option<PathBuf>, args: BenchArgs) -> Result<u8, Failure> {
    let (host, port) = address(&args.target)?;
    let config = settings(key_file)?
        .host(host)
        .port(port)
        .build()
        .map_err(config_failure)?;
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        return Err(Failure(
            FAILED,
            "--rate must be a positive number of calls a second".into(),
        ));
    }
    let plan = bench::Plan {
        method: args.method,
        payload: payload(args.payload.as_deref())?,
        connections: args.connections as usize,
        concurrency: args.concurrency as usize,
        calls: args.calls,
        duration: args.duration,
        rate: args.rate,
        timeout: args.timeout,
        progress: !args.json && std::io::stderr().is_terminal(),
    };
    let outcome = bench::run(config, plan).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.to_json())?);
    } else {
        print!("{}", outcome.to_text());
    }
    Ok(0)
}

/// The queue's TLS settings: the environment's, with `ca` when given.
fn queue_tls(ca: Option<PathBuf>) -> Result<RedisTls, Failure> {
    let tls = RedisTls::from_lookup(|name| std::env::var(name).ok())?;
    Ok(match ca {
        Some(ca) => tls.with_ca_file(ca),
        None => tls,
    })
}

async fn serve(key_file: Option<PathBuf>, args: ServeArgs) -> Result<u8, Failure> {
    let mut builder = settings(key_file)?;
    if let Some(host) = args.host {
        builder = builder.host(host);
    }
    if let Some(port) = args.port {
        builder = builder.port(port);
    }
    let mut logs = logging::Settings::from_env()?.with_format(match args.log_format {
        LogFormatArg::Text => logging::LogFormat::Text,
        LogFormatArg::Json => logging::LogFormat::Json,
        LogFormatArg::Compact => logging::LogFormat::Compact,
    });
    if let Some(level) = &args.log_level {
        logs = logs.with_level(level.parse::<logging::LogLevel>()?.0);
    }
    // The environment's limits (STREAM_RPC_MAX_CONNECTIONS_PER_IP) kept.
    let mut limits = builder.current_limits();
    if let Some(max) = args.max_connections {
        limits.max_connections = max;
    }
    if let Some(max) = args.max_frame {
        limits.max_frame_len = max;
    }
    if let Some(max) = args.max_handlers {
        limits.max_concurrent_handlers = max;
    }
    let config = builder.limits(limits).build().map_err(config_failure)?;
    logging::init(&logs)?;
    // Before anything is recorded: the runtime keeps its handles.
    if let Some(addr) = args.metrics {
        serve_metrics(addr)?;
    }
    let mut queue_config = QueueConfig::from_env()?;
    if let Some(queue) = args.queue {
        queue_config.queue = queue;
    }
    if let Some(lease) = args.lease {
        queue_config.lease = lease;
    }
    if let Some(attempts) = args.max_attempts {
        queue_config.settings = queue_config.settings.with_max_attempts(attempts);
    }
    queue_config.tls = queue_tls(args.queue_tls_ca)?;
    let sharing = match &args.replay {
        Some(text) => text.parse().map_err(|e| format!("--replay: {e}"))?,
        None => ReplaySharing::from_env()?,
    };
    let queue = queue_config
        .open()
        .await
        .map_err(|e| format!("the task queue: {e}"))?;
    let mut endpoint = Endpoint::builder(config.clone());
    if let Some(store) = replay_store_for(&queue_config, sharing, &config)
        .await
        .map_err(|e| format!("the replay store: {e}"))?
    {
        endpoint = endpoint.replay_store(Arc::new(store));
    }
    let server = Arc::new(QueueServer::new(queue, queue_config.lease));
    if args.metrics.is_some() {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                // A failure is logged by the queue; the next round tries again.
                let _ = server.record_stats().await;
                tokio::time::sleep(STATS_INTERVAL).await;
            }
        });
    }
    Connector::with_endpoint(endpoint.build())
        .run_server(server)
        .await?;
    Ok(0)
}

/// How often `serve --metrics` records the queue's counts.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// Handler times' histogram buckets, in seconds: 50 µs to 10 s.
const HANDLER_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Serves the metrics in the Prometheus text format at `addr`.
fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), Failure> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("stream_rpc_handler_duration_seconds".to_owned()),
            &HANDLER_BUCKETS,
        )
        .map_err(|e| format!("--metrics: {e}"))?
        .install()
        .map_err(|e| format!("--metrics {addr}: {e}"))?;
    Ok(())
}

/// PEER:ID of a task packet.
fn task_ref(text: &str) -> Result<TaskRef, Failure> {
    let (peer, id) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected PEER:ID, got {text:?}"))?;
    Ok(TaskRef {
        peer: peer
            .parse()
            .map_err(|_| format!("{peer:?} is not a UUID (expected PEER:ID)"))?,
        id: id
            .parse()
            .map_err(|_| format!("{id:?} is not a packet id (expected PEER:ID)"))?,
    })
}

async fn queue(key_file: Option<PathBuf>, args: QueueArgs) -> Result<u8, Failure> {
    let action = match args.action {
        // Through a server.
        QueueAction::Tasks(action) => return tasks::run(key_file, action).await,
        direct => direct,
    };
    let mut config = QueueConfig::from_env()?;
    if let Some(queue) = args.queue {
        config.queue = queue;
    }
    if config.queue == "memory" {
        return Err(Failure(
            FAILED,
            "no queue to look at: give --queue redis://... (or set STREAM_RPC_QUEUE); a queue \
             in memory lives inside its server"
                .into(),
        ));
    }
    config.tls = queue_tls(args.queue_tls_ca)?;
    config.settings = QueueSettings::default();
    let queue = config.open().await?;
    let out = match action {
        QueueAction::Stats => {
            let stats = queue.stats().await?;
            serde_json::json!({
                "queued": stats.queued,
                "leased": stats.leased,
                "done": stats.done,
                "dead": stats.dead,
                "duplicates": stats.duplicates,
                "names_taken": stats.names_taken,
                "full": stats.full,
                "redeliveries": stats.redeliveries,
            })
        }
        QueueAction::Dead => {
            let dead = queue.dead_letters().await?;
            if dead.skipped > 0 {
                eprintln!(
                    "{} dead letter(s) could not be read and are not listed (stored by another \
                     version or by hand); `stream-rpc queue purge-dead` drops them",
                    dead.skipped
                );
            }
            Value::Array(
                dead.tasks
                    .into_iter()
                    .map(|dead| {
                        serde_json::json!({
                            "task": format!("{}:{}", dead.task.peer, dead.task.id),
                            "attempts": dead.attempts,
                            "packet": dead.task,
                        })
                    })
                    .collect(),
            )
        }
        QueueAction::Requeue { task } => {
            let task = task_ref(&task)?;
            if !queue.requeue(task).await? {
                eprintln!("no dead letter {}:{}", task.peer, task.id);
                return Ok(REFUSED);
            }
            serde_json::json!({ "requeued": format!("{}:{}", task.peer, task.id) })
        }
        QueueAction::PurgeDead => serde_json::json!({ "purged": queue.purge_dead().await? }),
        QueueAction::Tasks(action) => return tasks::run(key_file, action).await,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
