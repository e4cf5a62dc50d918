//! The conformance suite (`stream_rpc_queue::testing`), run on both queues
//! through its public API, as a third-party queue runs it: `MemoryQueue`,
//! and `RedisQueue` on a real `redis-server` of each test's own. One test
//! per check and implementation: `memory::name` and `redis::name`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use stream_rpc::Packet;
use stream_rpc_queue::testing::QueueFactory;
use stream_rpc_queue::{
    Acked, DeadLetters, Leased, MemoryQueue, Put, QueueError, QueueSettings, RedisQueue,
    RedisSettings, Stats, TaskQueue, TaskRef,
};
use stream_rpc_test_support::RedisServer;

mod memory {
    use super::*;

    stream_rpc_queue::conformance_tests!(|settings: QueueSettings| async move {
        MemoryQueue::with_settings(settings)
    });
}

/// Queues on a Redis of their own, which lives as long as the factory (one
/// test).
struct OnRedis(RedisServer);

impl QueueFactory for OnRedis {
    type Queue = RedisQueue;

    async fn queue(&self, settings: QueueSettings) -> RedisQueue {
        // Queues of one test share nothing: a prefix each.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        RedisQueue::connect(
            RedisSettings::new(self.0.url())
                .with_prefix(prefix)
                .with_queue(settings),
        )
        .await
        .expect("the test's redis-server")
    }
}

mod redis {
    use super::*;

    stream_rpc_queue::conformance_tests!(OnRedis(RedisServer::start()));
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
    async fn put(&self, task: &Packet) -> Result<Put, QueueError> {
        Ok(match self.0.put(task).await? {
            Put::Duplicate => Put::Queued,
            put => put,
        })
    }
    async fn lease(&self, worker: &str, lease: Duration) -> Result<Option<Leased>, QueueError> {
        self.0.lease(worker, lease).await
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
#[should_panic(expected = "left: Queued")]
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
