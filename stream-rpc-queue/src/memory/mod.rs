//! [`MemoryQueue`]: the queue in this process's memory.
//!
//! One mutex over the whole state ([`state`]); every operation takes it
//! once, so each is atomic. Time is read once per operation: leases and
//! retention by the monotonic clock, the times a task is due and the
//! rates by the wall clock (they are compared with the `run_at` a
//! producer gives).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use stream_rpc::Packet;
use stream_rpc::tasks::{
    MethodLimit, MethodStats, Schedule, ScheduleInfo, TaskInfo, TaskOptions, TaskState,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::{
    Acked, Cancel, DeadLetters, EVENT_CAPACITY, Failed, Fired, Lease, LeaseFilter, Put, QueueError,
    QueueEvents, QueueSettings, Stats, TaskQueue, TaskRef, dedup_key,
};

mod limits;
mod ops;
mod state;
mod views;

use state::State;

/// The queue in this process's memory: the default, with no server to run.
/// The same semantics as [`RedisQueue`](crate::RedisQueue), but shared by
/// the connections of one process only, and gone when it stops.
///
/// A clone is another handle on the same queue (as a second server on
/// the same Redis is).
///
/// ```
/// use stream_rpc::Packet;
/// use stream_rpc_queue::{MemoryQueue, Put, TaskOptions, Priority, TaskQueue};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stream_rpc_queue::QueueError> {
/// let queue = MemoryQueue::new();
/// let task = Packet::new(uuid::Uuid::nil(), 1, "parse_article", serde_json::json!({"article_id": 1}));
/// let put = queue.put_with(&task, &TaskOptions::default().priority(Priority::High)).await?;
/// assert_eq!(put, Put::Queued);
/// let leased = queue.lease("worker-1", std::time::Duration::from_secs(30)).await?;
/// assert_eq!(leased.map(|leased| leased.task), Some(task));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    settings: QueueSettings,
    events: broadcast::Sender<crate::QueueEvent>,
    state: Mutex<State>,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        MemoryQueue::new()
    }
}

impl MemoryQueue {
    /// An empty queue with default settings.
    pub fn new() -> Self {
        MemoryQueue::with_settings(QueueSettings::default())
    }

    /// An empty queue with these settings.
    pub fn with_settings(settings: QueueSettings) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        MemoryQueue {
            shared: Arc::new(Shared {
                settings: settings.clone(),
                state: Mutex::new(State::new(settings, events.clone())),
                events,
            }),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.shared.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TaskQueue for MemoryQueue {
    async fn put_with(&self, task: &Packet, options: &TaskOptions) -> Result<Put, QueueError> {
        Ok(self.lock().put(task, options, Instant::now(), Utc::now()))
    }

    async fn lease_with(
        &self,
        worker: &str,
        lease: Duration,
        filter: &LeaseFilter,
    ) -> Result<Lease, QueueError> {
        Ok(self
            .lock()
            .lease(worker, lease, filter, Instant::now(), Utc::now()))
    }

    async fn extend(
        &self,
        task: TaskRef,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        Ok(self
            .lock()
            .extend(task, worker, lease, Instant::now(), Utc::now()))
    }

    async fn ack(&self, task: TaskRef, worker: &str, result: &Value) -> Result<Acked, QueueError> {
        if json_len(result) > self.settings().max_result_bytes {
            return Ok(Acked::TooLarge);
        }
        Ok(self
            .lock()
            .ack(task, worker, result, Instant::now(), Utc::now()))
    }

    async fn nack(&self, task: TaskRef, worker: &str) -> Result<Acked, QueueError> {
        Ok(self.lock().nack(task, worker, Instant::now(), Utc::now()))
    }

    async fn fail(
        &self,
        task: TaskRef,
        worker: &str,
        error: &Value,
        retry: bool,
    ) -> Result<Failed, QueueError> {
        Ok(self
            .lock()
            .fail(task, worker, error, retry, Instant::now(), Utc::now()))
    }

    async fn cancel(&self, task: TaskRef) -> Result<Cancel, QueueError> {
        Ok(self.lock().cancel(task, Instant::now(), Utc::now()))
    }

    async fn show(&self, task: TaskRef) -> Result<Option<TaskInfo>, QueueError> {
        let mut state = self.lock();
        state.catch_up(Instant::now(), Utc::now());
        Ok(state.show(task))
    }

    async fn list(&self, state: TaskState, limit: usize) -> Result<Vec<TaskInfo>, QueueError> {
        let mut queue = self.lock();
        queue.catch_up(Instant::now(), Utc::now());
        Ok(queue.list(state, limit))
    }

    async fn set_limit(&self, method: &str, limit: MethodLimit) -> Result<(), QueueError> {
        self.lock().set_limit(method, limit)
    }

    async fn limits(&self) -> Result<BTreeMap<String, MethodLimit>, QueueError> {
        let state = self.lock();
        Ok(state
            .limits
            .iter()
            .map(|(method, limit)| (method.clone(), limit.limit))
            .collect())
    }

    async fn put_schedule(&self, schedule: &Schedule) -> Result<ScheduleInfo, QueueError> {
        self.lock().put_schedule(schedule, Utc::now())
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, QueueError> {
        Ok(self.lock().schedules.remove(name).is_some())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleInfo>, QueueError> {
        Ok(self.lock().schedules.values().cloned().collect())
    }

    async fn fire_schedules(&self) -> Result<Fired, QueueError> {
        Ok(self.lock().fire_schedules(Instant::now(), Utc::now()))
    }

    async fn method_stats(&self) -> Result<BTreeMap<String, MethodStats>, QueueError> {
        let mut state = self.lock();
        state.catch_up(Instant::now(), Utc::now());
        Ok(state.method_stats())
    }

    fn events(&self) -> QueueEvents {
        QueueEvents::new(self.shared.events.subscribe())
    }

    async fn result(&self, method: &str, payload: &Value) -> Result<Option<Value>, QueueError> {
        let key = dedup_key(method, payload);
        let mut state = self.lock();
        state.expire(Instant::now());
        Ok(state.results.get(&key).map(|(value, _)| value.clone()))
    }

    async fn dead_letters(&self) -> Result<DeadLetters, QueueError> {
        Ok(self.lock().dead_letters())
    }

    async fn requeue(&self, task: TaskRef) -> Result<bool, QueueError> {
        Ok(self.lock().requeue(task))
    }

    async fn purge_dead(&self) -> Result<u64, QueueError> {
        Ok(self.lock().purge_dead())
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        let mut state = self.lock();
        state.catch_up(Instant::now(), Utc::now());
        Ok(state.stats())
    }
}

/// The length of `value` as compact JSON, counted without building it.
pub(crate) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Peers may put tasks of as many methods as they like: the counts
    /// per method stay bounded, those of methods still holding tasks kept.
    #[tokio::test]
    async fn the_counts_per_method_are_bounded() {
        let queue = MemoryQueue::new();
        let held = Packet::new(uuid::Uuid::nil(), 0, "held", json!(0));
        queue.put(&held).await.unwrap();
        for id in 1..=state::MAX_COUNTED_METHODS as u64 + 10 {
            let task = Packet::new(uuid::Uuid::nil(), id, format!("m{id}"), json!(id));
            queue.put(&task).await.unwrap();
            queue.cancel(TaskRef::of(&task)).await.unwrap();
        }
        let stats = queue.method_stats().await.unwrap();
        assert!(stats.len() <= state::MAX_COUNTED_METHODS, "{}", stats.len());
        assert_eq!(stats["held"].queued, 1);
    }

    /// Finished records are kept for the retention window, but at most
    /// `max_tasks` of them: the oldest are dropped first.
    #[tokio::test]
    async fn finished_records_are_bounded_by_max_tasks() {
        let queue = MemoryQueue::with_settings(QueueSettings::default().with_max_tasks(3));
        let tasks: Vec<Packet> = (1..=5)
            .map(|id| Packet::new(uuid::Uuid::nil(), id, "m", json!(id)))
            .collect();
        for task in &tasks {
            queue.put(task).await.unwrap();
            queue.cancel(TaskRef::of(task)).await.unwrap();
        }
        assert_eq!(queue.lock().finished.len(), 3);
        for (i, task) in tasks.iter().enumerate() {
            let kept = queue.show(TaskRef::of(task)).await.unwrap();
            assert_eq!(kept.is_some(), i >= 2, "task {i}");
        }
    }

    /// A lease or a retention beyond what the clock can add is taken as
    /// "for ever", not a panic.
    #[tokio::test]
    async fn a_lease_of_centuries_does_not_panic() {
        let queue =
            MemoryQueue::with_settings(QueueSettings::default().with_retention(Duration::MAX));
        let task = Packet::new(uuid::Uuid::nil(), 1, "m", json!(1));
        queue.put(&task).await.unwrap();
        let leased = queue.lease("w", Duration::MAX).await.unwrap().unwrap();
        assert!(
            queue
                .extend(TaskRef::of(&leased.task), "w", Duration::MAX)
                .await
                .unwrap()
        );
        let acked = queue
            .ack(TaskRef::of(&task), "w", &json!("ok"))
            .await
            .unwrap();
        assert_eq!(acked, Acked::Done);
        assert!(queue.put(&task).await.unwrap().is_duplicate());
    }
}
