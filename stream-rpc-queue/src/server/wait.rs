//! `task.wait`: a long poll that answers when the task finishes (a queue
//! event), at its time limit, or shortly before the caller's deadline,
//! with the state then.

use std::time::Duration;

use stream_rpc::Context;
use stream_rpc::tasks::{TaskInfo, TaskRef};
use tokio::time::Instant;

use crate::{QueueError, QueueEvent, TaskQueue};

/// How often a waiting `task.wait` looks at its task even without an event
/// (events on Redis come through a subscription that may reconnect).
const RECHECK: Duration = Duration::from_secs(1);

/// Waits until `task` is final (done, dead or cancelled), `limit` passes,
/// or the handler should wrap up ([`Context::cancelled`]); answers what the
/// queue knows of it then (`None`: unknown).
pub(crate) async fn wait<Q: TaskQueue>(
    queue: &Q,
    ctx: &Context,
    task: TaskRef,
    limit: Duration,
) -> Result<Option<TaskInfo>, QueueError> {
    // Subscribed before the first look, so that a finish in between is not
    // missed.
    let mut events = queue.events();
    let mut events_open = true;
    let deadline = Instant::now() + limit;
    loop {
        let info = queue.show(task).await?;
        let pending = info.as_ref().is_some_and(|info| !info.state.is_final());
        if !pending || Instant::now() >= deadline {
            return Ok(info);
        }
        let recheck = (Instant::now() + RECHECK).min(deadline);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(recheck) => break,
                () = ctx.cancelled() => return Ok(info),
                event = events.next(), if events_open => match event {
                    Some(QueueEvent::Finished { task: finished, .. }) if finished == task => break,
                    Some(QueueEvent::Lagged { .. }) => break,
                    Some(_) => {}
                    None => events_open = false,
                },
            }
        }
    }
}
