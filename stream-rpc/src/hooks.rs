//! Connection hooks: what a [`Connector`](crate::Connector) runs when one
//! of its connections opens or ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::lifecycle::EndReason;
use crate::session::Connection;

/// The error an on-connect hook returns: any error (`?` converts a
/// [`CallError`](crate::CallError) into it, and `"text".into()` makes one).
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

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

    /// Runs the on-connect hook, if any, on a new connection.
    pub(crate) async fn connected(&self, connection: &Connection) -> Result<(), HookError> {
        match &self.on_connect {
            Some(hook) => hook(connection.clone()).await,
            None => Ok(()),
        }
    }

    /// Runs the on-disconnect hook, if any, on a connection that ended.
    pub(crate) fn disconnected(&self, connection: &Connection, end: &EndReason) {
        if let Some(hook) = &self.on_disconnect {
            hook(connection, end);
        }
    }
}
