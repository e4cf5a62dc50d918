//! Stopping gracefully: the [`ShutdownHandle`] of a connector or server,
//! and [`shutdown_signal`] for Ctrl-C and SIGTERM.

use std::future::Future;
use std::io;

use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use super::Server;

/// Stops a server or client gracefully from anywhere: it stops accepting,
/// lets running handlers finish within the grace period, flushes replies and
/// closes. Cloneable.
#[derive(Debug, Clone, Default)]
pub struct ShutdownHandle {
    pub(crate) token: CancellationToken,
}

impl ShutdownHandle {
    /// Starts the graceful shutdown.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Starts the graceful shutdown when `signal` completes (for example
    /// [`shutdown_signal`], for Ctrl-C and SIGTERM), from a task of its
    /// own: the way to stop clients, or everything a connector runs, on a
    /// signal ([`Server::with_graceful_shutdown`] does it for one server).
    ///
    /// ```no_run
    /// # fn example(connector: stream_rpc::Connector) {
    /// connector.shutdown_handle().shutdown_on(stream_rpc::shutdown_signal());
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    pub fn shutdown_on(&self, signal: impl Future<Output = ()> + Send + 'static) {
        let token = self.token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = signal => token.cancel(),
                () = token.cancelled() => {}
            }
        });
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Registers for Ctrl-C and (on Unix) SIGTERM at once, and returns a future
/// that completes when either arrives: the one-line graceful shutdown of a
/// server ([`Server::with_graceful_shutdown`]) or of anything else.
/// Registering happens in this call, before the first poll, so a signal sent
/// right after it is not missed.
///
/// ```no_run
/// # async fn example(connector: stream_rpc::Connector, protocol: ()) -> Result<(), stream_rpc::Error> {
/// connector
///     .bind()
///     .await?
///     .with_graceful_shutdown(stream_rpc::shutdown_signal())
///     .serve(protocol)
///     .await
/// # }
/// ```
///
/// # Panics
///
/// On Unix, when called outside a Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |registered: io::Result<tokio::signal::unix::Signal>| async move {
                match registered {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            let (interrupt, terminate) = signals;
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received");
    }
}
