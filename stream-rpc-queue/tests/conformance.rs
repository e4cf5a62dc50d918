//! The conformance suite (`stream_rpc_queue::testing`), run on both queues
//! through its public API, as a third-party queue runs it: `MemoryQueue`,
//! and `RedisQueue` on a real `redis-server` of each test's own. One test
//! per check and implementation: `memory::name` and `redis::name`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use stream_rpc::Packet;
use stream_rpc_queue::testing::QueueFactory;
use stream_rpc_queue::{
    Acked, Cancel, DeadLetters, Failed, Fired, Lease, LeaseFilter, MemoryQueue, MethodLimit,
    MethodStats, Put, QueueError, QueueEvents, QueueSettings, RedisQueue, RedisSettings, Schedule,
    ScheduleInfo, Stats, TaskInfo, TaskOptions, TaskQueue, TaskRef, TaskState,
};
use stream_rpc_test_support::RedisServer;

/// Queues in memory; a twin is a clone (another handle on the same
/// queue, as a second server on one Redis).
struct InMemory;

impl QueueFactory for InMemory {
    type Queue = MemoryQueue;

    async fn queue(&self, settings: QueueSettings) -> MemoryQueue {
        MemoryQueue::with_settings(settings)
    }

    async fn twin(&self, queue: &MemoryQueue) -> Option<MemoryQueue> {
        Some(queue.clone())
    }
}

mod memory {
    use super::*;

    stream_rpc_queue::conformance_tests!(InMemory);
}

/// Queues on a Redis of their own, which lives as long as the factory (one
/// test); the prefix and settings of the last queue made, for its twin.
struct OnRedis(RedisServer, Mutex<Option<(String, QueueSettings)>>);

impl OnRedis {
    fn start() -> Self {
        OnRedis(RedisServer::start(), Mutex::new(None))
    }

    async fn connect(&self, prefix: String, settings: QueueSettings) -> RedisQueue {
        RedisQueue::connect(
            RedisSettings::new(self.0.url())
                .with_prefix(prefix)
                .with_queue(settings),
        )
        .await
        .expect("the test's redis-server")
    }
}

impl QueueFactory for OnRedis {
    type Queue = RedisQueue;

    async fn queue(&self, settings: QueueSettings) -> RedisQueue {
        // Queues of one test share nothing: a prefix each.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        *self.1.lock().unwrap() = Some((prefix.clone(), settings.clone()));
        self.connect(prefix, settings).await
    }

    /// A second connection to the prefix of the last queue made (the
    /// checks ask for the twin of the queue they just made).
    async fn twin(&self, _queue: &RedisQueue) -> Option<RedisQueue> {
        let (prefix, settings) = self.1.lock().unwrap().clone()?;
        Some(self.connect(prefix, settings).await)
    }
}

mod redis {
    use super::*;

    stream_rpc_queue::conformance_tests!(OnRedis::start());
}

/// The whole suite in one call, as a third party may run it from one test
/// of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_in_one_call() {
    stream_rpc_queue::testing::run_all(&|settings: QueueSettings| async move {
        MemoryQueue::with_settings(settings)
    })
    .await;
}

/// A queue that says it queued a duplicate (and does not queue it): the
/// suite must fail on it.
struct AcceptsDuplicates(MemoryQueue);

impl TaskQueue for AcceptsDuplicates {
    async fn put_with(&self, task: &Packet, options: &TaskOptions) -> Result<Put, QueueError> {
        Ok(match self.0.put_with(task, options).await? {
            Put::Duplicate { .. } => Put::Queued,
            put => put,
        })
    }
    async fn lease_with(
        &self,
        worker: &str,
        lease: Duration,
        filter: &LeaseFilter,
    ) -> Result<Lease, QueueError> {
        self.0.lease_with(worker, lease, filter).await
    }
    async fn extend(
        &self,
        task: TaskRef,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        self.0.extend(task, worker, lease).await
    }
    async fn ack(&self, task: TaskRef, worker: &str, result: &Value) -> Result<Acked, QueueError> {
        self.0.ack(task, worker, result).await
    }
    async fn nack(&self, task: TaskRef, worker: &str) -> Result<Acked, QueueError> {
        self.0.nack(task, worker).await
    }
    async fn fail(
        &self,
        task: TaskRef,
        worker: &str,
        error: &Value,
        retry: bool,
    ) -> Result<Failed, QueueError> {
        self.0.fail(task, worker, error, retry).await
    }
    async fn cancel(&self, task: TaskRef) -> Result<Cancel, QueueError> {
        self.0.cancel(task).await
    }
    async fn show(&self, task: TaskRef) -> Result<Option<TaskInfo>, QueueError> {
        self.0.show(task).await
    }
    async fn list(&self, state: TaskState, limit: usize) -> Result<Vec<TaskInfo>, QueueError> {
        self.0.list(state, limit).await
    }
    async fn set_limit(&self, method: &str, limit: MethodLimit) -> Result<(), QueueError> {
        self.0.set_limit(method, limit).await
    }
    async fn limits(&self) -> Result<BTreeMap<String, MethodLimit>, QueueError> {
        self.0.limits().await
    }
    async fn put_schedule(&self, schedule: &Schedule) -> Result<ScheduleInfo, QueueError> {
        self.0.put_schedule(schedule).await
    }
    async fn remove_schedule(&self, name: &str) -> Result<bool, QueueError> {
        self.0.remove_schedule(name).await
    }
    async fn schedules(&self) -> Result<Vec<ScheduleInfo>, QueueError> {
        self.0.schedules().await
    }
    async fn fire_schedules(&self) -> Result<Fired, QueueError> {
        self.0.fire_schedules().await
    }
    async fn method_stats(&self) -> Result<BTreeMap<String, MethodStats>, QueueError> {
        self.0.method_stats().await
    }
    fn events(&self) -> QueueEvents {
        self.0.events()
    }
    async fn result(&self, method: &str, payload: &Value) -> Result<Option<Value>, QueueError> {
        self.0.result(method, payload).await
    }
    async fn dead_letters(&self) -> Result<DeadLetters, QueueError> {
        self.0.dead_letters().await
    }
    async fn requeue(&self, task: TaskRef) -> Result<bool, QueueError> {
        self.0.requeue(task).await
    }
    async fn purge_dead(&self) -> Result<u64, QueueError> {
        self.0.purge_dead().await
    }
    async fn stats(&self) -> Result<Stats, QueueError> {
        self.0.stats().await
    }
}

#[test]
#[should_panic(expected = "expected a duplicate, got Queued")]
fn a_queue_that_breaks_a_rule_fails_the_suite() {
    stream_rpc_queue::testing::run_check_blocking(
        "a_duplicate_is_refused_while_queued_leased_and_done",
        |settings: QueueSettings| async move { AcceptsDuplicates(MemoryQueue::with_settings(settings)) },
    );
}

#[test]
#[should_panic(expected = "no conformance check is named")]
fn an_unknown_check_is_refused() {
    stream_rpc_queue::testing::run_check_blocking(
        "no_such_check",
        |settings: QueueSettings| async move { MemoryQueue::with_settings(settings) },
    );
}
