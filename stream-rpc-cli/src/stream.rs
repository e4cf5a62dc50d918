//! `call --stream`: opens a stream and prints each item as one JSON line as
//! it arrives, until the stream ends, `--max-items` items were printed,
//! the reader of the output goes away, or Ctrl-C; every way but a clean
//! end cancels the stream on the server first.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use stream_rpc::{CallError, Caller, Client, Metadata, StreamError, StreamOptions, Value};

use crate::{FAILED, Failure, REFUSED};

/// Exit status after Ctrl-C (SIGINT): 128 + 2, as shells report a command
/// the signal ended.
pub const INTERRUPTED: u8 = 130;

/// How long the command waits, after cancelling, for the cancel to be
/// written before it exits anyway.
const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// What `call --stream` was asked.
pub struct Plan {
    /// The stream method.
    pub method: String,
    /// Its arguments.
    pub payload: Value,
    /// The whole stream's limit (none by default).
    pub timeout: Option<Duration>,
    /// The most time between two items (none by default).
    pub item_timeout: Option<Duration>,
    /// Stop (cancelling the stream) after this many items.
    pub max_items: Option<u64>,
    /// Items granted at once (the library's default when `None`).
    pub window: Option<u32>,
    /// Metadata sent with the open.
    pub meta: Metadata,
}

/// How the printing ended.
enum End {
    /// The server ended the stream.
    Ended,
    /// We stop: enough items, or nobody reads the output.
    Stopped,
    /// Ctrl-C.
    Interrupted,
    /// The stream failed.
    Failed(StreamError),
}

/// Opens the stream on `client`, prints its items, and closes the
/// connection; the exit status by how the stream ended.
pub async fn run(client: Client, plan: Plan) -> Result<u8, Failure> {
    let mut options = StreamOptions::new().meta(plan.meta);
    if let Some(window) = plan.window {
        options = options.window(window);
    }
    if let Some(timeout) = plan.timeout {
        options = options.timeout(timeout);
    }
    if let Some(limit) = plan.item_timeout {
        options = options.item_timeout(limit);
    }
    // Listening before the stream is open: from here on Ctrl-C cancels it
    // instead of killing the process.
    let mut interrupt = Interrupt::new()?;
    let opened = tokio::select! {
        opened = client.open_stream(&plan.method, plan.payload, options) => opened,
        () = interrupt.recv() => {
            eprintln!("interrupted before the stream was open");
            close(client).await;
            return Ok(INTERRUPTED);
        }
    };
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(e) => return call_failed(&plan.method, e),
    };
    let mut printed: u64 = 0;
    let end = loop {
        if plan.max_items.is_some_and(|most| printed >= most) {
            break End::Stopped;
        }
        let item = tokio::select! {
            item = stream.next() => item,
            () = interrupt.recv() => break End::Interrupted,
        };
        match item {
            None => break End::Ended,
            Some(Err(e)) => break End::Failed(e),
            Some(Ok(item)) => {
                if print(&item).is_err() {
                    // The reader went away (`| head -3`): stop quietly.
                    break End::Stopped;
                }
                printed += 1;
            }
        }
    };
    let status = match end {
        End::Ended => Ok(0),
        End::Stopped => {
            stream.cancel();
            Ok(0)
        }
        End::Interrupted => {
            stream.cancel();
            eprintln!("interrupted: the stream is cancelled after {printed} item(s)");
            Ok(INTERRUPTED)
        }
        End::Failed(e) => {
            drop(stream);
            stream_failed(&plan.method, printed, e)
        }
    };
    close(client).await;
    status
}

/// One item, one line of compact JSON, flushed at once.
fn print(item: &Value) -> std::io::Result<()> {
    let line = serde_json::to_string(item).map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Closes the connection, writing what is queued (a cancel) first, within
/// [`CLOSE_BOUND`].
async fn close(client: Client) {
    client.close();
    let _ = tokio::time::timeout(CLOSE_BOUND, client.join()).await;
}

/// The exit status of a stream that could not be opened: as for a call.
fn call_failed(method: &str, e: CallError) -> Result<u8, Failure> {
    match e {
        CallError::Remote {
            code,
            message,
            data,
            ..
        } => {
            eprintln!("{code}: {message}");
            if code.as_str() == "not_a_stream" {
                eprintln!("{method} is a plain method: call it without --stream");
            }
            if let Some(data) = data {
                eprintln!("data: {data}");
            }
            Ok(REFUSED)
        }
        e @ CallError::Timeout { .. } => Err(Failure(
            FAILED,
            format!("{e} (a server with another key answers nothing: check the key)"),
        )),
        e => Err(e.into()),
    }
}

/// The exit status of a stream that ended other than cleanly: the codes
/// calls use for the same failures.
fn stream_failed(method: &str, printed: u64, e: StreamError) -> Result<u8, Failure> {
    match e {
        StreamError::Call(e) => call_failed(method, e),
        StreamError::Cancelled => {
            eprintln!("the server cancelled the stream after {printed} item(s)");
            Ok(REFUSED)
        }
        StreamError::Disconnected { last_seq } => Err(Failure(
            FAILED,
            format!("the connection closed during the stream, after item {last_seq}"),
        )),
        StreamError::Timeout { after } => Err(Failure(
            FAILED,
            format!("the stream timed out after {after:?} ({printed} item(s) printed)"),
        )),
        other => Err(Failure(FAILED, format!("the stream failed: {other}"))),
    }
}

/// Ctrl-C, as a signal listened to from its creation.
struct Interrupt {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> Result<Interrupt, Failure> {
        #[cfg(unix)]
        {
            let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map_err(|e| format!("cannot listen for Ctrl-C: {e}"))?;
            Ok(Interrupt { signal })
        }
        #[cfg(not(unix))]
        Ok(Interrupt {})
    }

    /// Resolves at the next Ctrl-C.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            self.signal.recv().await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
