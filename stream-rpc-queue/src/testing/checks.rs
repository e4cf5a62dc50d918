//! The checks of the conformance suite, each a function of a
//! [`QueueFactory`]: the semantics of the crate docs, one at a time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use stream_rpc::Packet;
use uuid::Uuid;

use super::{ARTICLE, QueueFactory, task};
use crate::{Acked, Put, QueueSettings, TaskQueue, TaskRef};

/// A lease that outlasts any check.
const LEASE: Duration = Duration::from_secs(30);
/// A lease short enough to run out within a check.
const SHORT: Duration = Duration::from_millis(300);
/// How far past a lease (or a retention) a check waits for it to have run
/// out: room for the backing service's clock.
const MARGIN: Duration = Duration::from_millis(100);
/// How many puts of one task race in `concurrent_puts_of_one_task_queue_it_once`.
const RACING_PUTS: usize = 16;
/// How many tasks `many_tasks_put_and_acked_leave_nothing_queued` puts.
const MANY: u64 = 500;

/// Panics unless `put` is a refusal as a duplicate.
#[track_caller]
fn assert_duplicate(put: Put) {
    assert!(put.is_duplicate(), "expected a duplicate, got {put:?}");
}

/// Waits until `lease` (from now) has run out. The checks are about time
/// passing: this is what they test, not a way to wait for an event.
async fn wait_past(lease: Duration) {
    tokio::time::sleep(lease + MARGIN).await;
}

pub(super) async fn a_task_is_put_leased_and_acked_with_its_result_kept<F: QueueFactory>(
    factory: &F,
) {
    let queue = factory.queue(QueueSettings::default()).await;
    let put = task(3249);
    assert_eq!(queue.put(&put).await.unwrap(), Put::Queued);
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.leased), (1, 0));
    let leased = queue.lease("w1", LEASE).await.unwrap().expect("a task");
    assert_eq!(leased.task, put, "the task comes back as it was put");
    assert_eq!(leased.attempt, 1);
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.leased), (0, 1));
    assert!(queue.lease("w2", LEASE).await.unwrap().is_none());
    let article = json!({"title": "On queues", "words": 1200});
    assert_eq!(
        queue.ack(TaskRef::of(&put), "w1", &article).await.unwrap(),
        Acked::Done
    );
    assert_eq!(
        queue
            .result(ARTICLE, &json!({"article_id": 3249}))
            .await
            .unwrap(),
        Some(article)
    );
    assert_eq!(
        queue
            .result(ARTICLE, &json!({"article_id": 1}))
            .await
            .unwrap(),
        None
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.leased, stats.done), (0, 0, 1));
    // Done is done: a second ack changes nothing.
    assert_eq!(
        queue.ack(TaskRef::of(&put), "w1", &json!(0)).await.unwrap(),
        Acked::Stale
    );
}

pub(super) async fn the_oldest_task_is_handed_out_first<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    for id in [1, 2, 3] {
        queue.put(&task(id)).await.unwrap();
    }
    for id in [1, 2, 3] {
        let leased = queue.lease("w", LEASE).await.unwrap().unwrap();
        assert_eq!(leased.task.id, id);
    }
    assert!(queue.lease("w", LEASE).await.unwrap().is_none());
}

pub(super) async fn a_duplicate_is_refused_while_queued_leased_and_done<F: QueueFactory>(
    factory: &F,
) {
    let queue = factory.queue(QueueSettings::default()).await;
    let first = task(7);
    assert_eq!(queue.put(&first).await.unwrap(), Put::Queued);
    // Another peer's task for the same article: the same task.
    let mut again = task(7);
    again.payload = json!({"article_id": 7});
    assert_duplicate(queue.put(&again).await.unwrap());
    queue.lease("w", LEASE).await.unwrap().unwrap();
    assert_duplicate(queue.put(&task(7)).await.unwrap());
    queue
        .ack(TaskRef::of(&first), "w", &json!("parsed"))
        .await
        .unwrap();
    assert_duplicate(queue.put(&task(7)).await.unwrap());
    // Another article is another task.
    assert_eq!(queue.put(&task(8)).await.unwrap(), Put::Queued);
    assert_eq!(queue.stats().await.unwrap().duplicates, 3);
}

pub(super) async fn a_done_tasks_name_and_result_expire_after_the_retention<F: QueueFactory>(
    factory: &F,
) {
    let retention = Duration::from_millis(300);
    let queue = factory
        .queue(QueueSettings::default().with_retention(retention))
        .await;
    let put = task(11);
    queue.put(&put).await.unwrap();
    queue.lease("w", LEASE).await.unwrap().unwrap();
    queue.ack(TaskRef::of(&put), "w", &json!(1)).await.unwrap();
    assert_duplicate(queue.put(&task(11)).await.unwrap());
    wait_past(retention).await;
    assert_eq!(
        queue
            .result(ARTICLE, &json!({"article_id": 11}))
            .await
            .unwrap(),
        None
    );
    assert_eq!(queue.put(&task(11)).await.unwrap(), Put::Queued);
}

pub(super) async fn concurrent_puts_of_one_task_queue_it_once<F: QueueFactory>(factory: &F) {
    let queue = Arc::new(factory.queue(QueueSettings::default()).await);
    let puts: Vec<_> = (0..RACING_PUTS)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.put(&task(42)).await.unwrap() })
        })
        .collect();
    let mut queued = 0;
    for put in puts {
        if put.await.unwrap() == Put::Queued {
            queued += 1;
        }
    }
    assert_eq!(queued, 1);
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.queued, stats.duplicates),
        (1, RACING_PUTS as u64 - 1)
    );
}

pub(super) async fn a_lease_that_runs_out_is_handed_out_again<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let put = task(5);
    queue.put(&put).await.unwrap();
    let first = queue.lease("crashed", SHORT).await.unwrap().unwrap();
    assert_eq!(first.attempt, 1);
    assert!(queue.lease("other", SHORT).await.unwrap().is_none());
    wait_past(SHORT).await;
    let second = queue.lease("other", LEASE).await.unwrap().unwrap();
    assert_eq!((second.task.id, second.attempt), (5, 2));
    assert_eq!(queue.stats().await.unwrap().redeliveries, 1);
    // The first worker's ack comes too late: stale, and changes nothing.
    assert_eq!(
        queue
            .ack(TaskRef::of(&put), "crashed", &json!("late"))
            .await
            .unwrap(),
        Acked::Stale
    );
    assert_eq!(
        queue
            .ack(TaskRef::of(&put), "other", &json!("on time"))
            .await
            .unwrap(),
        Acked::Done
    );
    assert_eq!(
        queue
            .result(ARTICLE, &json!({"article_id": 5}))
            .await
            .unwrap(),
        Some(json!("on time"))
    );
}

pub(super) async fn a_lease_runs_out_but_an_ack_before_the_next_lease_is_taken<F: QueueFactory>(
    factory: &F,
) {
    let queue = factory.queue(QueueSettings::default()).await;
    let put = task(6);
    queue.put(&put).await.unwrap();
    queue.lease("slow", SHORT).await.unwrap().unwrap();
    wait_past(SHORT).await;
    // Nobody took it in the meantime: the slow worker's ack still counts.
    assert_eq!(
        queue
            .ack(TaskRef::of(&put), "slow", &json!(1))
            .await
            .unwrap(),
        Acked::Done
    );
    assert!(queue.lease("other", LEASE).await.unwrap().is_none());
}

pub(super) async fn an_extended_lease_is_not_handed_out<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let put = task(9);
    queue.put(&put).await.unwrap();
    queue.lease("w", SHORT).await.unwrap().unwrap();
    tokio::time::sleep(SHORT * 2 / 3).await;
    assert!(queue.extend(TaskRef::of(&put), "w", SHORT).await.unwrap());
    assert!(
        !queue
            .extend(TaskRef::of(&put), "not-w", SHORT)
            .await
            .unwrap()
    );
    tokio::time::sleep(SHORT * 2 / 3).await;
    // Past the first lease, within the extension.
    assert!(queue.lease("other", SHORT).await.unwrap().is_none());
    assert_eq!(
        queue.ack(TaskRef::of(&put), "w", &json!(1)).await.unwrap(),
        Acked::Done
    );
}

pub(super) async fn a_nack_gives_the_task_back_at_once<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let put = task(12);
    queue.put(&put).await.unwrap();
    queue.lease("w1", LEASE).await.unwrap().unwrap();
    assert_eq!(
        queue.nack(TaskRef::of(&put), "w2").await.unwrap(),
        Acked::Stale
    );
    assert_eq!(
        queue.nack(TaskRef::of(&put), "w1").await.unwrap(),
        Acked::Done
    );
    let again = queue
        .lease("w2", LEASE)
        .await
        .unwrap()
        .expect("given back at once");
    assert_eq!((again.task.id, again.attempt), (12, 2));
    assert_eq!(
        queue.ack(TaskRef::of(&put), "w1", &json!(1)).await.unwrap(),
        Acked::Stale
    );
    assert_eq!(
        queue.ack(TaskRef::of(&put), "w2", &json!(1)).await.unwrap(),
        Acked::Done
    );
}

pub(super) async fn a_poison_task_becomes_a_dead_letter_and_can_be_requeued<F: QueueFactory>(
    factory: &F,
) {
    let queue = factory
        .queue(QueueSettings::default().with_max_attempts(3))
        .await;
    let poison = task(13);
    queue.put(&poison).await.unwrap();
    for attempt in 1..=3 {
        let leased = queue.lease("w", LEASE).await.unwrap().unwrap();
        assert_eq!(leased.attempt, attempt);
        queue.nack(TaskRef::of(&poison), "w").await.unwrap();
    }
    assert!(queue.lease("w", LEASE).await.unwrap().is_none());
    let dead = queue.dead().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].task.clone(), dead[0].attempts),
        (poison.clone(), 3)
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.leased, stats.dead), (0, 0, 1));
    // While dead, its name is held.
    assert_duplicate(queue.put(&task(13)).await.unwrap());
    assert!(queue.requeue(TaskRef::of(&poison)).await.unwrap());
    assert!(!queue.requeue(TaskRef::of(&poison)).await.unwrap());
    let back = queue.lease("w", LEASE).await.unwrap().unwrap();
    assert_eq!((back.task.id, back.attempt), (13, 1));
    queue.nack(TaskRef::of(&poison), "w").await.unwrap();
    // Purged, its name is free again.
    for _ in 0..2 {
        queue.lease("w", LEASE).await.unwrap().unwrap();
        queue.nack(TaskRef::of(&poison), "w").await.unwrap();
    }
    assert!(queue.lease("w", LEASE).await.unwrap().is_none());
    assert_eq!(queue.purge_dead().await.unwrap(), 1);
    assert!(queue.dead().await.unwrap().is_empty());
    assert_eq!(queue.put(&task(13)).await.unwrap(), Put::Queued);
}

pub(super) async fn an_unknown_task_is_stale<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let nobody = TaskRef {
        peer: Uuid::new_v4(),
        id: 1,
    };
    assert_eq!(
        queue.ack(nobody, "w", &Value::Null).await.unwrap(),
        Acked::Stale
    );
    assert_eq!(queue.nack(nobody, "w").await.unwrap(), Acked::Stale);
    assert!(!queue.extend(nobody, "w", LEASE).await.unwrap());
    assert!(!queue.requeue(nobody).await.unwrap());
}

pub(super) async fn many_tasks_put_and_acked_leave_nothing_queued<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    for id in 0..MANY {
        assert_eq!(queue.put(&task(id)).await.unwrap(), Put::Queued);
    }
    let mut done = 0;
    while let Some(leased) = queue.lease("w", LEASE).await.unwrap() {
        let acked = queue
            .ack(TaskRef::of(&leased.task), "w", &json!(leased.task.id))
            .await
            .unwrap();
        assert_eq!(acked, Acked::Done);
        done += 1;
    }
    assert_eq!(done, MANY);
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.leased, stats.done), (0, 0, MANY));
}

/// An [`ARTICLE`] task for `article_id` named `peer`:`id`.
fn named(peer: Uuid, id: u64, article_id: u64) -> Packet {
    Packet::new(peer, id, ARTICLE, json!({"article_id": article_id}))
}

pub(super) async fn a_different_task_under_a_held_name_is_refused_while_queued_leased_and_dead<
    F: QueueFactory,
>(
    factory: &F,
) {
    let queue = factory
        .queue(QueueSettings::default().with_max_attempts(1))
        .await;
    let peer = Uuid::new_v4();
    let first = named(peer, 1, 100);
    assert_eq!(queue.put(&first).await.unwrap(), Put::Queued);
    // Queued: another article under the same peer and id is refused.
    assert_eq!(
        queue.put(&named(peer, 1, 101)).await.unwrap(),
        Put::NameTaken
    );
    // The same task again is a duplicate, not a collision (a put may be
    // repeated when its answer was lost).
    assert_duplicate(queue.put(&first).await.unwrap());
    // Leased.
    let leased = queue.lease("w", SHORT).await.unwrap().unwrap();
    assert_eq!(leased.task, first);
    assert_eq!(
        queue.put(&named(peer, 1, 102)).await.unwrap(),
        Put::NameTaken
    );
    // Dead (one attempt allowed; the lease ran out).
    wait_past(SHORT).await;
    assert!(queue.lease("w", LEASE).await.unwrap().is_none());
    assert_eq!(queue.dead().await.unwrap().len(), 1);
    assert_eq!(
        queue.put(&named(peer, 1, 103)).await.unwrap(),
        Put::NameTaken
    );
    // Nothing of the refused tasks was kept: the requeued name is the
    // first task's, and no other was queued.
    assert!(queue.requeue(TaskRef::of(&first)).await.unwrap());
    let back = queue.lease("w", LEASE).await.unwrap().unwrap();
    assert_eq!(back.task, first);
    assert!(queue.lease("w", LEASE).await.unwrap().is_none());
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.names_taken, stats.duplicates), (3, 1));
    // Done, the name is free again (its content stays held).
    assert_eq!(
        queue
            .ack(TaskRef::of(&first), "w", &json!("parsed"))
            .await
            .unwrap(),
        Acked::Done
    );
    assert_duplicate(queue.put(&first).await.unwrap());
    let reused = named(peer, 1, 104);
    assert_eq!(queue.put(&reused).await.unwrap(), Put::Queued);
    let leased = queue.lease("w", LEASE).await.unwrap().unwrap();
    assert_eq!(leased.task, reused);
}

pub(super) async fn dead_lettering_a_task_does_not_break_another<F: QueueFactory>(factory: &F) {
    let queue = factory
        .queue(QueueSettings::default().with_max_attempts(1))
        .await;
    let peer = Uuid::new_v4();
    let poison = named(peer, 1, 200);
    let refused = named(peer, 1, 201);
    let other = named(peer, 2, 202);
    assert_eq!(queue.put(&poison).await.unwrap(), Put::Queued);
    assert_eq!(queue.put(&refused).await.unwrap(), Put::NameTaken);
    assert_eq!(queue.put(&other).await.unwrap(), Put::Queued);
    // The poison task is leased, its lease runs out, and it dies at the
    // next lease, which hands out the other task.
    assert_eq!(
        queue.lease("w1", SHORT).await.unwrap().unwrap().task,
        poison
    );
    wait_past(SHORT).await;
    let leased = queue.lease("w2", LEASE).await.unwrap().unwrap();
    assert_eq!(leased.task, other);
    let dead = queue.dead().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].task, poison);
    // The other task is whole: extended, acked under its own name.
    assert!(
        queue
            .extend(TaskRef::of(&other), "w2", LEASE)
            .await
            .unwrap()
    );
    assert_eq!(
        queue
            .ack(TaskRef::of(&other), "w2", &json!("other"))
            .await
            .unwrap(),
        Acked::Done
    );
    // Purged, the name is free, and the task refused before can be put,
    // leased and acked under it.
    assert_eq!(queue.purge_dead().await.unwrap(), 1);
    assert_eq!(queue.put(&refused).await.unwrap(), Put::Queued);
    assert_eq!(
        queue.lease("w3", LEASE).await.unwrap().unwrap().task,
        refused
    );
    assert_eq!(
        queue
            .ack(TaskRef::of(&refused), "w3", &json!("refused, then put"))
            .await
            .unwrap(),
        Acked::Done
    );
    assert_eq!(
        queue
            .result(ARTICLE, &json!({"article_id": 201}))
            .await
            .unwrap(),
        Some(json!("refused, then put"))
    );
}

pub(super) async fn an_ack_of_a_name_acks_the_task_that_holds_it<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let peer = Uuid::new_v4();
    let holder = named(peer, 7, 300);
    let intruder = named(peer, 7, 301);
    assert_eq!(queue.put(&holder).await.unwrap(), Put::Queued);
    assert_eq!(queue.put(&intruder).await.unwrap(), Put::NameTaken);
    let leased = queue.lease("w", LEASE).await.unwrap().unwrap();
    assert_eq!(leased.task, holder);
    assert_eq!(
        queue
            .ack(TaskRef { peer, id: 7 }, "w", &json!("holder's"))
            .await
            .unwrap(),
        Acked::Done
    );
    // The result is the holder's; the intruder was never queued.
    assert_eq!(
        queue
            .result(ARTICLE, &json!({"article_id": 300}))
            .await
            .unwrap(),
        Some(json!("holder's"))
    );
    assert_eq!(
        queue
            .result(ARTICLE, &json!({"article_id": 301}))
            .await
            .unwrap(),
        None
    );
    assert!(queue.lease("w", LEASE).await.unwrap().is_none());
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.leased, stats.done), (0, 0, 1));
}

pub(super) async fn a_full_queue_refuses_puts<F: QueueFactory>(factory: &F) {
    let queue = factory
        .queue(
            QueueSettings::default()
                .with_max_tasks(3)
                .with_max_attempts(1),
        )
        .await;
    let tasks: Vec<_> = (0..3).map(task).collect();
    for put in &tasks {
        assert_eq!(queue.put(put).await.unwrap(), Put::Queued);
    }
    assert_eq!(queue.put(&task(3)).await.unwrap(), Put::Full);
    // A duplicate is still named as one.
    assert_duplicate(queue.put(&task(0)).await.unwrap());
    // Leased tasks count.
    let first = queue.lease("w", SHORT).await.unwrap().unwrap();
    assert_eq!(queue.put(&task(3)).await.unwrap(), Put::Full);
    // Dead letters count too.
    wait_past(SHORT).await;
    let second = queue.lease("w", LEASE).await.unwrap().unwrap();
    assert_eq!(queue.dead().await.unwrap()[0].task, first.task);
    assert_eq!(queue.put(&task(3)).await.unwrap(), Put::Full);
    // A task done makes room for one.
    queue
        .ack(TaskRef::of(&second.task), "w", &json!(1))
        .await
        .unwrap();
    assert_eq!(queue.put(&task(3)).await.unwrap(), Put::Queued);
    assert_eq!(queue.put(&task(4)).await.unwrap(), Put::Full);
    // And so does a dead letter purged.
    assert_eq!(queue.purge_dead().await.unwrap(), 1);
    assert_eq!(queue.put(&task(4)).await.unwrap(), Put::Queued);
    assert_eq!(queue.stats().await.unwrap().full, 4);
}

pub(super) async fn a_result_too_large_is_refused_and_the_task_stays_leased<F: QueueFactory>(
    factory: &F,
) {
    let queue = factory
        .queue(QueueSettings::default().with_max_result_bytes(100))
        .await;
    let put = task(21);
    queue.put(&put).await.unwrap();
    queue.lease("w", LEASE).await.unwrap().unwrap();
    // 100 bytes of JSON pass; 101 do not.
    let fits = json!("x".repeat(98));
    let too_large = json!("x".repeat(99));
    assert_eq!(
        queue.ack(TaskRef::of(&put), "w", &too_large).await.unwrap(),
        Acked::TooLarge
    );
    assert_eq!(
        queue
            .result(ARTICLE, &json!({"article_id": 21}))
            .await
            .unwrap(),
        None
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.leased, stats.done), (1, 0), "still leased, not done");
    assert!(queue.lease("other", LEASE).await.unwrap().is_none());
    assert_eq!(
        queue.ack(TaskRef::of(&put), "w", &fits).await.unwrap(),
        Acked::Done
    );
    assert_eq!(
        queue
            .result(ARTICLE, &json!({"article_id": 21}))
            .await
            .unwrap(),
        Some(fits)
    );
}
