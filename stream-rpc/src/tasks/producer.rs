//! [`Tasks`]: the producer side of a queue server's task methods, by
//! method name and JSON.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{CancelOutcome, TaskError};
use super::handle::{Decode, TaskHandle, decode_handler_error};
use super::methods;
use super::types::{
    MethodLimit, MethodStats, Schedule, ScheduleInfo, TaskInfo, TaskOptions, TaskRef, TaskState,
};
use super::{DynCaller, TaskFailure};
use crate::caller::{Call, Caller};
use crate::packet::Packet;
use crate::protocol::HandlerError;

/// The most tasks one [`Tasks::list`] asks for.
pub const MAX_LIST: usize = 1000;

/// A producer: puts tasks in the queue of the queue server its caller is
/// connected to, and asks about them (PROTOCOL.md, "Tasks").
///
/// Each `Tasks` names its tasks with a peer id of its own (a fresh UUID)
/// and ids from 1. Give it an owned caller (a [`Client`](crate::Client),
/// a [`ReconnectingClient`](crate::ReconnectingClient), a
/// [`Connection`](crate::Connection), an `Arc` of one): the handles it
/// gives keep it.
///
/// ```no_run
/// use stream_rpc::tasks::{TaskOptions, Tasks};
/// use stream_rpc::{Connector, json};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tasks = Tasks::new(Connector::from_env()?.connect(()).await?);
/// let handle = tasks
///     .put("parse_article", json!({"article_id": 7}), TaskOptions::default())
///     .await?;
/// println!("put {}", handle.id());
/// let parsed = handle.result().await?;
/// # Ok(())
/// # }
/// ```
pub struct Tasks<C: Caller> {
    caller: Arc<C>,
    peer: Uuid,
    next_id: AtomicU64,
}

impl<C: Caller> std::fmt::Debug for Tasks<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// The answer of `task.put`.
#[derive(Deserialize)]
struct PutReply {
    task: TaskRef,
    #[serde(default)]
    refused: Option<String>,
    #[serde(default)]
    existing: Option<TaskRef>,
}

#[derive(Deserialize)]
struct CancelReply {
    outcome: String,
    #[serde(default)]
    state: Option<TaskState>,
}

impl<C: Caller + 'static> Tasks<C> {
    /// A producer putting tasks through `caller`.
    pub fn new(caller: C) -> Self {
        Tasks {
            caller: Arc::new(caller),
            peer: Uuid::new_v4(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The caller it puts through.
    pub fn caller(&self) -> &C {
        &self.caller
    }

    /// The peer id its tasks carry.
    pub fn peer(&self) -> Uuid {
        self.peer
    }

    /// A new task packet of this producer.
    pub(super) fn packet(&self, method: &str, payload: Value) -> Packet {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Packet::new(self.peer, id, method, payload)
    }

    fn dyn_caller(&self) -> Arc<dyn DynCaller> {
        self.caller.clone()
    }

    /// Puts a task of `method` with `payload` and `options`; its handle
    /// reads the result as JSON, the error as a [`HandlerError`]. A put
    /// refused as a duplicate gives the handle of the task that holds the
    /// dedupe key ([`TaskHandle::deduplicated`]).
    pub async fn put(
        &self,
        method: &str,
        payload: Value,
        options: TaskOptions,
    ) -> Result<TaskHandle<Value, HandlerError>, TaskError> {
        self.put_decoding(method, payload, options, None, decode_handler_error)
            .await
    }

    /// Puts a task; `delay`, when given, is sent as `delay_ms` (counted by
    /// the server's clock).
    pub(super) async fn put_decoding<T, E>(
        &self,
        method: &str,
        payload: Value,
        options: TaskOptions,
        delay: Option<Duration>,
        decode: Decode<E>,
    ) -> Result<TaskHandle<T, E>, TaskError> {
        if let Err(reason) = options.check() {
            return Err(TaskError::Refused { reason });
        }
        let task = self.packet(method, payload);
        let mut body = json!({"task": task, "options": options});
        if let Some(delay) = delay {
            body["delay_ms"] = json!(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        }
        let reply: PutReply = self.ask(methods::PUT, body).await?;
        let (task, deduplicated) = match reply.refused.as_deref() {
            None => (reply.task, false),
            Some("duplicate") => match reply.existing {
                Some(existing) => (existing, true),
                None => {
                    return Err(TaskError::Refused {
                        reason: "duplicate".into(),
                    });
                }
            },
            Some(reason) => {
                return Err(TaskError::Refused {
                    reason: reason.to_owned(),
                });
            }
        };
        Ok(TaskHandle::new(
            self.dyn_caller(),
            task,
            method,
            deduplicated,
            decode,
        ))
    }

    /// The handle of a task put before (by this or another producer), its
    /// result read as `T`, its error as `E` (a [`HandlerError`], or a typed
    /// error from the error's `data`).
    pub fn handle<T, E: TaskFailure>(&self, task: TaskRef) -> TaskHandle<T, E> {
        TaskHandle::new(self.dyn_caller(), task, "", false, E::decode_failure)
    }

    /// What the queue knows of `task`; `None` when it does not know it.
    pub async fn show(&self, task: TaskRef) -> Result<Option<TaskInfo>, TaskError> {
        self.ask(methods::SHOW, json!({"task": task})).await
    }

    /// Cancels `task`: at once if it was not handed out yet; if it runs,
    /// its worker is asked to stop.
    pub async fn cancel(&self, task: TaskRef) -> Result<CancelOutcome, TaskError> {
        cancel_through(&*self.dyn_caller(), task).await
    }

    /// The tasks in `state`, at most `limit` (at most [`MAX_LIST`]): the
    /// oldest first, the newest first for done and cancelled.
    pub async fn list(&self, state: TaskState, limit: usize) -> Result<Vec<TaskInfo>, TaskError> {
        #[derive(Deserialize)]
        struct Listed {
            tasks: Vec<TaskInfo>,
        }
        let listed: Listed = self
            .ask(
                methods::LIST,
                json!({"state": state, "limit": limit.min(MAX_LIST)}),
            )
            .await?;
        Ok(listed.tasks)
    }

    /// Counts of each method's tasks.
    pub async fn stats(&self) -> Result<BTreeMap<String, MethodStats>, TaskError> {
        #[derive(Deserialize)]
        struct Stats {
            methods: BTreeMap<String, MethodStats>,
        }
        let stats: Stats = self.ask(methods::STATS, Value::Null).await?;
        Ok(stats.methods)
    }

    /// Sets the fleet-wide limit of `method` ([`MethodLimit::none`]
    /// removes it); gives every method's limit.
    pub async fn set_limit(
        &self,
        method: &str,
        limit: MethodLimit,
    ) -> Result<BTreeMap<String, MethodLimit>, TaskError> {
        #[derive(Deserialize)]
        struct Limits {
            limits: BTreeMap<String, MethodLimit>,
        }
        let body = json!({
            "method": method,
            "concurrency": limit.concurrency,
            "rate": limit.rate,
        });
        let limits: Limits = self.ask(methods::LIMIT, body).await?;
        Ok(limits.limits)
    }

    /// Sets a periodic task (replacing the schedule of the same name).
    pub async fn put_schedule(&self, schedule: Schedule) -> Result<ScheduleInfo, TaskError> {
        let body = serde_json::to_value(&schedule).map_err(|e| TaskError::Refused {
            reason: e.to_string(),
        })?;
        self.ask(methods::SCHEDULE_PUT, body).await
    }

    /// Removes the schedule `name`; whether there was one.
    pub async fn remove_schedule(&self, name: &str) -> Result<bool, TaskError> {
        #[derive(Deserialize)]
        struct Removed {
            removed: bool,
        }
        let removed: Removed = self
            .ask(methods::SCHEDULE_REMOVE, json!({"name": name}))
            .await?;
        Ok(removed.removed)
    }

    /// Every schedule.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>, TaskError> {
        #[derive(Deserialize)]
        struct Listed {
            schedules: Vec<ScheduleInfo>,
        }
        let listed: Listed = self.ask(methods::SCHEDULE_LIST, Value::Null).await?;
        Ok(listed.schedules)
    }

    async fn ask<R: DeserializeOwned>(&self, method: &str, body: Value) -> Result<R, TaskError> {
        ask(&*self.dyn_caller(), Call::new(method, body)).await
    }
}

/// Makes one call of a task method and reads its answer.
pub(super) async fn ask<R: DeserializeOwned>(
    caller: &dyn DynCaller,
    call: Call,
) -> Result<R, TaskError> {
    let method = call.method.clone();
    let reply = caller.call_boxed(call).await?;
    R::deserialize(reply.payload).map_err(|e| TaskError::InvalidResult {
        reason: format!("the answer to `{method}` does not read: {e}"),
    })
}

/// `task.cancel` of `task`.
pub(super) async fn cancel_through(
    caller: &dyn DynCaller,
    task: TaskRef,
) -> Result<CancelOutcome, TaskError> {
    let reply: CancelReply = ask(caller, Call::new(methods::CANCEL, json!({"task": task}))).await?;
    Ok(match (reply.outcome.as_str(), reply.state) {
        ("cancelled", _) => CancelOutcome::Cancelled,
        ("requested", _) => CancelOutcome::Requested,
        ("finished", Some(state)) => CancelOutcome::Finished(state),
        ("unknown", _) => CancelOutcome::Unknown,
        (other, state) => {
            return Err(TaskError::InvalidResult {
                reason: format!("`task.cancel` answered {other:?} with the state {state:?}"),
            });
        }
    })
}
