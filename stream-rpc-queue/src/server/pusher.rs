//! Push: a worker connection that said `task.subscribe` is fed its tasks as
//! calls on that connection, at most its concurrency at once; the reply of
//! each call acks its task (PROTOCOL.md, "Tasks").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use stream_rpc::tasks::{TASK_ATTEMPT_META, TASK_ID_META, TaskRef};
use stream_rpc::{Call, CallError, Caller, Connection, ErrorCode, Packet};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::Shared;
use crate::{Acked, Failed, Lease, LeaseFilter, Leased, QueueEvent, TaskQueue};

/// How long the pusher waits, when nothing wakes it, before it asks the
/// queue again (a fallback: events and `next_due` wake it sooner).
const FALLBACK: Duration = Duration::from_secs(1);
/// The shortest wait for a task's time ([`Lease::Empty`]'s `next_due`).
const MIN_WAIT: Duration = Duration::from_millis(5);
/// The shortest interval between two extensions of a running task's lease.
const MIN_EXTEND_EVERY: Duration = Duration::from_millis(10);
/// The share of the lease after which a running task's lease is extended
/// (every third of it).
const EXTEND_SHARE: u32 = 3;

/// What one worker connection asked for, and the tasks pushed to it that
/// run now.
#[derive(Debug, Default)]
pub(crate) struct Subscription {
    state: Mutex<SubState>,
    /// Woken when the subscription changes or a running task ends.
    changed: Notify,
}

#[derive(Debug, Default)]
struct SubState {
    methods: Vec<String>,
    concurrency: usize,
    /// After the worker answered `busy`: the most calls it runs at once,
    /// as far as this server knows (those in flight then); none is pushed
    /// beyond it until the next subscribe.
    busy_cap: Option<usize>,
    /// After a `busy` answer with no other call in flight (the worker's
    /// handlers run calls of others): nothing is pushed before then.
    busy_until: Option<Instant>,
    /// False after `task.unsubscribe`: no new task is pushed.
    active: bool,
    /// The tasks pushed and not finished, each with what cancels its call
    /// (taken when used) and the number of its attempt on this connection.
    running: HashMap<TaskRef, Running>,
    /// Numbers the attempts, so that an attempt ending removes itself only.
    next_attempt: u64,
}

#[derive(Debug)]
struct Running {
    number: u64,
    cancel: Option<oneshot::Sender<()>>,
}

impl Subscription {
    fn lock(&self) -> MutexGuard<'_, SubState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets what is pushed (a second subscribe replaces the first).
    pub(crate) fn set(&self, methods: Vec<String>, concurrency: u32) {
        {
            let mut state = self.lock();
            state.methods = methods;
            state.concurrency = usize::try_from(concurrency).unwrap_or(usize::MAX);
            state.active = true;
            state.busy_cap = None;
            state.busy_until = None;
        }
        self.changed.notify_one();
    }

    /// Stops pushing new tasks; answers how many run now.
    pub(crate) fn pause(&self) -> usize {
        let running = {
            let mut state = self.lock();
            state.active = false;
            state.running.len()
        };
        self.changed.notify_one();
        running
    }

    /// The filter of the next lease, when one may be pushed now.
    fn room(&self) -> Option<LeaseFilter> {
        let state = self.lock();
        let concurrency = state
            .busy_cap
            .map_or(state.concurrency, |cap| cap.min(state.concurrency));
        let held = state.busy_until.is_some_and(|until| Instant::now() < until);
        (state.active && !held && state.running.len() < concurrency)
            .then(|| LeaseFilter::methods(state.methods.iter().cloned()))
    }

    /// Whether tasks are pushed (no `task.unsubscribe` since the last
    /// subscribe).
    fn active(&self) -> bool {
        self.lock().active
    }

    /// The worker answered `busy` to a pushed call: it runs no more than
    /// the other calls in flight now, so no more than those are pushed
    /// until one ends (at least one, else nothing would be pushed again).
    /// With no other call in flight, none ends to free a handler: nothing
    /// is pushed for [`FALLBACK`].
    fn busy(&self) {
        let mut state = self.lock();
        let others = state.running.len().saturating_sub(1);
        if others == 0 {
            state.busy_until = Some(Instant::now() + FALLBACK);
        }
        let others = others.max(1);
        state.busy_cap = Some(state.busy_cap.map_or(others, |cap| cap.min(others)));
    }

    /// Until when nothing is pushed after a `busy` answer, if it is later.
    fn held_until(&self) -> Option<Instant> {
        self.lock()
            .busy_until
            .filter(|until| Instant::now() < *until)
    }

    /// Wakes the pusher if it pushes `method`.
    pub(crate) fn wake_for(&self, method: &str) {
        if self.wants(method) {
            self.changed.notify_one();
        }
    }

    fn wants(&self, method: &str) -> bool {
        let state = self.lock();
        state.active && state.methods.iter().any(|m| m == method)
    }

    /// Cancels the call of `task`, if it runs here; whether it did.
    fn cancel(&self, task: TaskRef) -> bool {
        let sender = self
            .lock()
            .running
            .get_mut(&task)
            .and_then(|running| running.cancel.take());
        sender.is_some_and(|sender| sender.send(()).is_ok())
    }

    fn running(&self) -> Vec<TaskRef> {
        self.lock().running.keys().copied().collect()
    }

    fn start(&self, task: TaskRef) -> (u64, oneshot::Receiver<()>) {
        let (sender, receiver) = oneshot::channel();
        let mut state = self.lock();
        state.next_attempt += 1;
        let number = state.next_attempt;
        state.running.insert(
            task,
            Running {
                number,
                cancel: Some(sender),
            },
        );
        (number, receiver)
    }

    fn end(&self, task: TaskRef, number: u64) {
        {
            let mut state = self.lock();
            if state.running.get(&task).is_some_and(|r| r.number == number) {
                state.running.remove(&task);
            }
        }
        self.changed.notify_one();
    }
}

/// The pusher of one worker connection: leases the tasks of its methods
/// while it has room, pushes each as a call, and waits for a reason to
/// look again (an event, a task's time, a slot freed, a change of the
/// subscription, the fallback tick); ends when the connection ends.
pub(crate) async fn push<Q: TaskQueue>(
    shared: Arc<Shared<Q>>,
    sub: Arc<Subscription>,
    connection: Connection,
    worker: String,
) {
    // Subscribed before the first lease, so that no event in between is
    // missed.
    let mut events = shared.queue.events();
    let mut events_open = true;
    // Whether the last lease failed: a queue that stays away is logged
    // once at WARN, then at DEBUG until a lease works again.
    let mut failing = false;
    let closed = connection.closed();
    tokio::pin!(closed);
    'push: loop {
        if connection.is_closed() {
            // Closing: a task leased now could not be pushed.
            break;
        }
        let mut wake_at = sub.held_until();
        if let Some(filter) = sub.room() {
            match shared
                .queue
                .lease_with(&worker, shared.lease, &filter)
                .await
            {
                Ok(Lease::Leased(leased)) => {
                    failing = false;
                    if !sub.active() || connection.is_closed() {
                        // Unsubscribed (or closing) while it was leased.
                        give_back(&shared, &worker, &leased).await;
                        continue;
                    }
                    start_attempt(&shared, &sub, &connection, &worker, leased);
                    continue;
                }
                Ok(Lease::Empty { next_due }) => {
                    failing = false;
                    // At least MIN_WAIT: a time the queue's clock has not
                    // reached yet, though this one has, must not spin.
                    wake_at = next_due.map(|at| {
                        let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                        Instant::now() + wait.max(MIN_WAIT)
                    });
                }
                Err(e) if failing => {
                    tracing::debug!(%worker, "pushing tasks: {e}; trying again in {FALLBACK:?}");
                }
                Err(e) => {
                    failing = true;
                    tracing::warn!(%worker, "pushing tasks: {e}; trying again every {FALLBACK:?}");
                }
            }
        }
        let fallback = Instant::now() + FALLBACK;
        let until = wake_at.map_or(fallback, |at| at.min(fallback));
        loop {
            tokio::select! {
                () = &mut closed => break 'push,
                () = sub.changed.notified() => break,
                () = tokio::time::sleep_until(until) => break,
                event = events.next(), if events_open => match event {
                    Some(QueueEvent::Ready { method }) => {
                        if sub.wants(&method) {
                            break;
                        }
                    }
                    Some(QueueEvent::CancelRequested { task }) => {
                        if sub.cancel(task) {
                            tracing::debug!(%worker, %task, "cancelling the running task");
                        }
                    }
                    Some(QueueEvent::Lagged { .. }) => {
                        recheck_cancels(&shared, &sub).await;
                        break;
                    }
                    Some(_) => {}
                    None => events_open = false,
                },
            }
        }
    }
    tracing::debug!(%worker, "the worker's connection ended: no more pushes");
}

/// Gives back at once a task leased for a worker that no longer takes it.
async fn give_back<Q: TaskQueue>(shared: &Shared<Q>, worker: &str, leased: &Leased) {
    let task = TaskRef::of(&leased.task);
    tracing::debug!(%worker, %task, "the worker unsubscribed while a task was leased for it: given back");
    if let Err(e) = shared.queue.nack(task, worker).await {
        tracing::warn!(%worker, %task, "giving back a task leased for a worker that unsubscribed: {e}; its lease runs out and it is handed out again");
    }
}

/// After missed events: cancels the running tasks whose cancellation was
/// asked meanwhile.
async fn recheck_cancels<Q: TaskQueue>(shared: &Shared<Q>, sub: &Subscription) {
    for task in sub.running() {
        if let Ok(Some(info)) = shared.queue.show(task).await
            && info.cancel_requested
        {
            sub.cancel(task);
        }
    }
}

/// Pushes `leased` to the worker on a task of its own, which records the
/// outcome and frees the slot.
fn start_attempt<Q: TaskQueue>(
    shared: &Arc<Shared<Q>>,
    sub: &Arc<Subscription>,
    connection: &Connection,
    worker: &str,
    leased: Leased,
) {
    let task = TaskRef::of(&leased.task);
    let (number, cancel) = sub.start(task);
    shared
        .metrics
        .started(&leased.task.method, leased.due_at, Utc::now());
    let attempt = Attempt {
        shared: shared.clone(),
        sub: sub.clone(),
        connection: connection.clone(),
        worker: worker.to_owned(),
        task,
        number,
        leased,
    };
    tokio::spawn(attempt.run(cancel));
}

/// One task pushed to one worker.
struct Attempt<Q: TaskQueue> {
    shared: Arc<Shared<Q>>,
    sub: Arc<Subscription>,
    connection: Connection,
    worker: String,
    task: TaskRef,
    number: u64,
    leased: Leased,
}

/// How a pushed call ended.
#[derive(Debug)]
enum Outcome {
    /// The worker answered (or the call failed), after this long. Boxed:
    /// a packet and a call error are large beside the other outcomes.
    Answered(Box<Result<Packet, CallError>>, Duration),
    /// Its cancellation was asked: the call was dropped.
    Cancelled,
    /// The lease could not be extended: the task went to another worker.
    LeaseLost,
}

/// Frees the attempt's slot however the attempt ends (a panic too).
struct Slot<'a> {
    sub: &'a Subscription,
    task: TaskRef,
    number: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.sub.end(self.task, self.number);
    }
}

impl<Q: TaskQueue> Attempt<Q> {
    async fn run(self, cancel: oneshot::Receiver<()>) {
        let _slot = Slot {
            sub: &self.sub,
            task: self.task,
            number: self.number,
        };
        let outcome = self.call(cancel).await;
        self.record(outcome).await;
    }

    /// The time limit of the attempt: its own, or the server's.
    fn limit(&self) -> Duration {
        self.leased
            .options
            .timeout
            .unwrap_or(self.shared.attempt_timeout)
    }

    /// Makes the call, extending the lease while it runs, until it is
    /// answered, cancelled, or the lease is lost.
    async fn call(&self, mut cancel: oneshot::Receiver<()>) -> Outcome {
        let packet = &self.leased.task;
        let call = Call::new(packet.method.clone(), packet.payload.clone())
            .with_meta(TASK_ID_META, self.task.to_string())
            .and_then(|call| call.with_meta(TASK_ATTEMPT_META, self.leased.attempt.to_string()));
        let call = match call {
            Ok(call) => call.timeout(self.limit()),
            // Fixed keys and plain values: cannot happen; give it back.
            Err(e) => {
                let reason = stream_rpc::SendError::Encode(e.to_string());
                let method = packet.method.clone();
                let error = CallError::NotSent { method, reason };
                return Outcome::Answered(Box::new(Err(error)), Duration::ZERO);
            }
        };
        let started = Instant::now();
        let calling = self.connection.call_with(call);
        tokio::pin!(calling);
        let every = (self.shared.lease / EXTEND_SHARE).max(MIN_EXTEND_EVERY);
        let mut extend = tokio::time::interval_at(Instant::now() + every, every);
        extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                answer = &mut calling => return Outcome::Answered(Box::new(answer), started.elapsed()),
                _ = &mut cancel => return Outcome::Cancelled,
                _ = extend.tick() => {
                    match self.shared.queue.extend(self.task, &self.worker, self.shared.lease).await {
                        Ok(true) => {}
                        Ok(false) => return Outcome::LeaseLost,
                        Err(e) => tracing::warn!(task = %self.task, "extending the lease of a running task: {e}"),
                    }
                }
            }
        }
    }

    /// Records the outcome in the queue: a reply acks, an error fails or
    /// gives the task back.
    async fn record(&self, outcome: Outcome) {
        let method = &self.leased.task.method;
        let done = match outcome {
            Outcome::Answered(answer, took) => match *answer {
                Err(CallError::Remote {
                    code: ErrorCode::Busy,
                    ..
                }) => {
                    // No more pushed until one of the others ends; then
                    // given back.
                    self.sub.busy();
                    tracing::debug!(task = %self.task, worker = %self.worker, "the worker is busy: no more tasks pushed to it than it runs now");
                    self.nack().await
                }
                Ok(reply) => self.ack(reply.payload).await,
                Err(error) => match judge(&error, self.limit(), took) {
                    Verdict::Fail { error, retry } => self.fail(&error, retry).await,
                    Verdict::GiveBack => self.nack().await,
                },
            },
            Outcome::Cancelled => {
                let error = error_json(
                    ErrorCode::Cancelled,
                    "the task was cancelled while it ran",
                    method,
                    None,
                    Some(false),
                );
                self.fail(&error, false).await
            }
            Outcome::LeaseLost => {
                tracing::debug!(task = %self.task, "the lease of a running task was lost: its call was dropped");
                Ok(())
            }
        };
        if let Err(e) = done {
            tracing::warn!(task = %self.task, worker = %self.worker, "recording a pushed task's outcome: {e}; its lease runs out and it is handed out again");
        }
    }

    async fn ack(&self, result: Value) -> Result<(), crate::QueueError> {
        match self
            .shared
            .queue
            .ack(self.task, &self.worker, &result)
            .await?
        {
            Acked::Done => {
                self.shared
                    .metrics
                    .done(&self.leased.task.method, self.leased.put_at, Utc::now());
                Ok(())
            }
            Acked::Stale => {
                tracing::debug!(task = %self.task, "a pushed task's result came after its lease went to another worker");
                Ok(())
            }
            Acked::TooLarge => {
                let error = error_json(
                    ErrorCode::HandlerError,
                    "the result is longer than the queue keeps (its max_result_bytes)",
                    &self.leased.task.method,
                    None,
                    Some(false),
                );
                self.fail(&error, false).await
            }
        }
    }

    async fn fail(&self, error: &Value, retry: bool) -> Result<(), crate::QueueError> {
        let failed = self
            .shared
            .queue
            .fail(self.task, &self.worker, error, retry)
            .await?;
        if failed == Failed::Stale {
            tracing::debug!(task = %self.task, "a pushed task failed after its lease went to another worker");
        }
        Ok(())
    }

    async fn nack(&self) -> Result<(), crate::QueueError> {
        self.shared.queue.nack(self.task, &self.worker).await?;
        Ok(())
    }
}

/// What a failed call means for its task.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The attempt failed: its error is kept; `retry` says whether it may
    /// be tried again.
    Fail { error: Value, retry: bool },
    /// The task did not run (or its worker is gone): given back at once.
    GiveBack,
}

/// The outcome of a pushed call that did not end with a reply, after
/// `took` of its time limit `limit`: a handler error fails the attempt
/// (retried unless the error says `"retry": false`), a payload or method
/// the worker does not take fails it for good, `busy`, `unavailable` and a
/// lost connection give it back, a time limit passed fails it (retried);
/// so does `cancelled` at the end of the limit (the handler gave up at its
/// deadline), while `cancelled` sooner gives it back (the worker stops).
pub(crate) fn judge(error: &CallError, limit: Duration, took: Duration) -> Verdict {
    if let CallError::Remote {
        method,
        code: ErrorCode::Cancelled,
        ..
    } = error
        && took + limit / DEADLINE_SHARE >= limit
    {
        return timed_out(method, limit);
    }
    match error {
        CallError::Remote {
            method,
            code,
            message,
            data,
            retry,
            ..
        } => match code {
            ErrorCode::UnknownMethod
            | ErrorCode::InvalidPayload
            | ErrorCode::InvalidPacket
            | ErrorCode::NotAStream
            | ErrorCode::StreamRequired => Verdict::Fail {
                error: error_json(*code, message, method, data.clone(), *retry),
                retry: false,
            },
            ErrorCode::HandlerError
            | ErrorCode::HandlerPanicked
            | ErrorCode::InvalidStream
            | ErrorCode::Unknown => Verdict::Fail {
                error: error_json(*code, message, method, data.clone(), *retry),
                retry: *retry != Some(false),
            },
            // busy, unavailable, cancelled (the worker gave it up: it is
            // draining), credentials refused.
            _ => Verdict::GiveBack,
        },
        CallError::Timeout { method, .. } => timed_out(method, limit),
        _ => Verdict::GiveBack,
    }
}

/// The share of an attempt's time limit before its end within which a
/// handler that answers `cancelled` is taken as having run out of time
/// (the runtime tells a handler to wrap up a tenth of its limit early).
const DEADLINE_SHARE: u32 = 10;

/// An attempt that ran out of its time limit `limit`: failed, retried.
fn timed_out(method: &str, limit: Duration) -> Verdict {
    Verdict::Fail {
        error: error_json(
            ErrorCode::HandlerError,
            &format!(
                "the attempt ran longer than its timeout of {} ms",
                limit.as_millis()
            ),
            method,
            None,
            None,
        ),
        retry: true,
    }
}

/// An error packet's payload as the queue keeps it (PROTOCOL.md §6).
fn error_json(
    code: ErrorCode,
    message: &str,
    method: &str,
    data: Option<Value>,
    retry: Option<bool>,
) -> Value {
    let mut error = json!({ "code": code, "message": message, "method": method });
    if let Some(data) = data {
        error["data"] = data;
    }
    if let Some(retry) = retry {
        error["retry"] = json!(retry);
    }
    error
}

#[cfg(test)]
#[path = "pusher_tests.rs"]
mod tests;
