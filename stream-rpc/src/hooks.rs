//! Connection hooks: what a [`Connector`](crate::Connector) runs when one
//! of its connections opens or ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::error::HookError;
use crate::lifecycle::EndReason;
use crate::session::Connection;

type OnConnect =
    dyn Fn(Connection) -> Pin<Box<dyn Future<Output = Result<(), HookError>> + Send>> + Send + Sync;
type OnDisconnect = dyn Fn(&Connection, &EndReason) + Send + Sync;

/// The hooks of a connector; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    on_connect: Option<Arc<OnConnect>>,
    on_disconnect: Option<Arc<OnDisconnect>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("on_connect", &self.on_connect.is_some())
            .field("on_disconnect", &self.on_disconnect.is_some())
            .finish()
    }
}

impl Hooks {
    pub(crate) fn set_on_connect<F, Fut>(&mut self, hook: F)
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HookError>> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |connection| Box::pin(hook(connection))));
    }

    pub(crate) fn set_on_disconnect<F>(&mut self, hook: F)
    where
        F: Fn(&Connection, &EndReason) + Send + Sync + 'static,
    {
        self.on_disconnect = Some(Arc::new(hook));
    }

    /// Runs the on-connect hook, if any, on a new connection, for at most
    /// `limit`: on a task of its own, so that a hook that panics fails like
    /// one that returns an error, and one that hangs fails when the limit
    /// passes.
    pub(crate) async fn connected(
        &self,
        connection: &Connection,
        limit: Duration,
    ) -> Result<(), HookError> {
        let Some(hook) = &self.on_connect else {
            return Ok(());
        };
        // Aborted however this ends: by the limit, or by being dropped (the
        // connection ended first).
        let mut running = AbortOnDrop(tokio::spawn(hook(connection.clone())));
        match tokio::time::timeout(limit, &mut running.0).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) if e.is_panic() => Err("the on-connect hook panicked".into()),
            Ok(Err(e)) => Err(format!("the on-connect hook did not finish: {e}").into()),
            Err(_) => Err(format!(
                "the on-connect hook did not finish within {}",
                crate::human::ShortDuration(limit)
            )
            .into()),
        }
    }

    /// Runs the on-disconnect hook, if any, on a connection that ended.
    pub(crate) fn disconnected(&self, connection: &Connection, end: &EndReason) {
        if let Some(hook) = &self.on_disconnect {
            hook(connection, end);
        }
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
