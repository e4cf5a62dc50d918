//! The checks of what a task is put with and what becomes of it: delays,
//! priorities, method filters, retries with backoff, dead letters by a
//! final error, custom dedupe keys, cancellation, show and list.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use stream_rpc::Packet;
use stream_rpc::tasks::{Backoff, Priority, TaskOptions, TaskRef, TaskState};
use uuid::Uuid;

use super::QueueFactory;
use crate::{
    Acked, Cancel, Failed, Lease, LeaseFilter, Put, QueueEvent, QueueEvents, QueueSettings,
    TaskQueue,
};

/// A lease that outlasts any check.
pub(super) const LEASE: Duration = Duration::from_secs(30);
/// A lease short enough to run out within a check.
pub(super) const SHORT: Duration = Duration::from_millis(300);
/// Room for the backing service's clock, and for a time that a backend
/// keeps in whole milliseconds.
pub(super) const SLACK: Duration = Duration::from_millis(100);
/// How long a check waits for an event that must come.
pub(super) const EVENT_BOUND: Duration = Duration::from_secs(2);

/// A task of `method` with `payload`, from a fresh peer.
pub(super) fn job(method: &str, id: u64, payload: Value) -> Packet {
    Packet::new(Uuid::new_v4(), id, method, payload)
}

/// Waits until `at` (and [`SLACK`]) has passed: the checks are about time
/// passing, this is what they test, not a way to wait for an event.
pub(super) async fn sleep_until(at: DateTime<Utc>) {
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + SLACK).await;
}

/// Panics unless `a` and `b` are within [`SLACK`] of each other.
#[track_caller]
pub(super) fn assert_near(a: DateTime<Utc>, b: DateTime<Utc>, what: &str) {
    assert_within(a, b, SLACK, what);
}

/// Panics unless `a` and `b` are within `tolerance` of each other.
#[track_caller]
fn assert_within(a: DateTime<Utc>, b: DateTime<Utc>, tolerance: Duration, what: &str) {
    let apart = (a - b).abs().to_std().unwrap_or(Duration::MAX);
    assert!(
        apart <= tolerance,
        "{what}: {a} and {b} are {apart:?} apart"
    );
}

/// How close a retry's time is to the backoff's: tighter than [`SLACK`],
/// so that the doubling and the cap show.
const BACKOFF_TOLERANCE: Duration = Duration::from_millis(50);

/// The next event other than a lag, within [`EVENT_BOUND`].
pub(super) async fn next_event(events: &mut QueueEvents) -> QueueEvent {
    loop {
        let event = tokio::time::timeout(EVENT_BOUND, events.next())
            .await
            .expect("an event within the bound")
            .expect("the queue's events go on");
        if !matches!(event, QueueEvent::Lagged { .. }) {
            return event;
        }
    }
}

/// The task leased, or a panic naming what came instead.
#[track_caller]
pub(super) fn leased(lease: Lease) -> crate::Leased {
    match lease {
        Lease::Leased(leased) => leased,
        Lease::Empty { next_due } => panic!("expected a task, got none (next due {next_due:?})"),
    }
}

pub(super) async fn a_delayed_task_is_scheduled_until_it_is_due<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let run_at = Utc::now() + Duration::from_millis(300);
    let later = job("report", 1, json!({"day": 1}));
    let options = TaskOptions::default().run_at(run_at);
    assert_eq!(
        queue.put_with(&later, &options).await.unwrap(),
        Put::Scheduled
    );
    // Due in the past: queued at once.
    let now = job("report", 2, json!({"day": 2}));
    let past = TaskOptions::default().run_at(Utc::now() - Duration::from_secs(60));
    assert_eq!(queue.put_with(&now, &past).await.unwrap(), Put::Queued);
    let info = queue.show(TaskRef::of(&later)).await.unwrap().unwrap();
    assert_eq!(info.state, TaskState::Scheduled);
    assert_near(info.run_at.expect("its run_at"), run_at, "run_at shown");
    let scheduled = queue.list(TaskState::Scheduled, 10).await.unwrap();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].task, TaskRef::of(&later));
    assert_eq!(
        leased(
            queue
                .lease_with("w", LEASE, &LeaseFilter::any())
                .await
                .unwrap()
        )
        .task,
        now
    );
    let Lease::Empty { next_due } = queue
        .lease_with("w", LEASE, &LeaseFilter::any())
        .await
        .unwrap()
    else {
        panic!("the delayed task was handed out early");
    };
    assert_near(next_due.expect("when it is due"), run_at, "next_due");
    let stats = queue.method_stats().await.unwrap();
    assert_eq!((stats["report"].scheduled, stats["report"].running), (1, 1));
    sleep_until(run_at).await;
    let due = leased(
        queue
            .lease_with("w", LEASE, &LeaseFilter::any())
            .await
            .unwrap(),
    );
    assert_eq!((due.task, due.attempt), (later, 1));
    assert_near(due.due_at, run_at, "due_at");
    assert!(due.put_at < run_at);
}

pub(super) async fn higher_priorities_are_handed_out_first<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let order = [
        (1, Priority::Low),
        (2, Priority::Normal),
        (3, Priority::High),
        (4, Priority::Normal),
        (5, Priority::High),
    ];
    for (id, priority) in order {
        let options = TaskOptions::default().priority(priority);
        let put = queue
            .put_with(&job("m", id, json!(id)), &options)
            .await
            .unwrap();
        assert_eq!(put, Put::Queued);
    }
    let mut handed = Vec::new();
    // A bounded loop, so that a queue that hands a task out twice fails
    // rather than spins.
    for _ in 0..order.len() {
        let leased = queue.lease("w", LEASE).await.unwrap().expect("a task");
        assert_eq!(
            leased.options.priority,
            order[leased.task.id as usize - 1].1
        );
        handed.push(leased.task.id);
    }
    assert!(queue.lease("w", LEASE).await.unwrap().is_none());
    assert_eq!(
        handed,
        [3, 5, 2, 4, 1],
        "high, normal, low; oldest first in each"
    );
}

pub(super) async fn a_lease_filter_hands_out_only_its_methods<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let a = job("a", 1, json!(1));
    let b = job("b", 2, json!(2));
    queue.put(&a).await.unwrap();
    queue.put(&b).await.unwrap();
    let none = LeaseFilter::methods(["c"]);
    assert_eq!(
        queue.lease_with("w", LEASE, &none).await.unwrap(),
        Lease::Empty { next_due: None }
    );
    let only_b = LeaseFilter::methods(["b", "c"]);
    assert_eq!(
        leased(queue.lease_with("w", LEASE, &only_b).await.unwrap()).task,
        b
    );
    assert!(
        queue
            .lease_with("w", LEASE, &only_b)
            .await
            .unwrap()
            .leased()
            .is_none()
    );
    assert_eq!(queue.lease("w", LEASE).await.unwrap().unwrap().task, a);
}

pub(super) async fn a_failed_task_is_retried_after_its_backoff_then_dead<F: QueueFactory>(
    factory: &F,
) {
    let queue = factory.queue(QueueSettings::default()).await;
    let mut events = queue.events();
    let flaky = job("flaky", 1, json!({"n": 1}));
    let name = TaskRef::of(&flaky);
    // 200 ms after the first failure, 300 (400 capped) after the second.
    let backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_millis(300),
    };
    let options = TaskOptions::default().max_attempts(3).backoff(backoff);
    queue.put_with(&flaky, &options).await.unwrap();
    let error = json!({"code": "handler_error", "message": "try again"});
    for (attempt, wait) in [(1, backoff.initial), (2, backoff.max)] {
        let lease = leased(
            queue
                .lease_with("w", LEASE, &LeaseFilter::any())
                .await
                .unwrap(),
        );
        assert_eq!(
            (lease.attempt, lease.options.max_attempts),
            (attempt, Some(3))
        );
        // Only its holder may fail it.
        let stale = queue.fail(name, "other", &error, true).await.unwrap();
        assert_eq!(stale, Failed::Stale);
        let before = Utc::now();
        let Failed::Retrying { at } = queue.fail(name, "w", &error, true).await.unwrap() else {
            panic!("attempt {attempt} of 3 is retried");
        };
        assert_within(at, before + wait, BACKOFF_TOLERANCE, "the retry's time");
        let info = queue.show(name).await.unwrap().unwrap();
        assert_eq!((info.state, info.attempts), (TaskState::Scheduled, attempt));
        assert_eq!(info.error.as_ref(), Some(&error));
        let Lease::Empty { next_due } = queue
            .lease_with("w", LEASE, &LeaseFilter::any())
            .await
            .unwrap()
        else {
            panic!("a retry was handed out before its backoff");
        };
        assert_near(next_due.expect("the retry's time"), at, "next_due");
        sleep_until(at).await;
    }
    let last = leased(
        queue
            .lease_with("w", LEASE, &LeaseFilter::any())
            .await
            .unwrap(),
    );
    assert_eq!(last.attempt, 3);
    // The last attempt failed: dead, whatever the error says.
    assert_eq!(
        queue.fail(name, "w", &error, true).await.unwrap(),
        Failed::Dead
    );
    let info = queue.show(name).await.unwrap().unwrap();
    assert_eq!((info.state, info.attempts), (TaskState::Dead, 3));
    assert!(info.finished_at.is_some());
    assert_eq!(queue.dead().await.unwrap()[0].task, flaky);
    let stats = queue.method_stats().await.unwrap()["flaky"];
    assert_eq!((stats.failed, stats.retried, stats.dead), (3, 2, 1));
    loop {
        if let QueueEvent::Finished { task, state } = next_event(&mut events).await {
            assert_eq!((task, state), (name, TaskState::Dead));
            break;
        }
    }
}

pub(super) async fn a_final_error_makes_a_dead_letter_at_once<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let bad = job("m", 1, json!("bad input"));
    let name = TaskRef::of(&bad);
    queue.put(&bad).await.unwrap();
    queue.lease("w", LEASE).await.unwrap().unwrap();
    let error = json!({"code": "invalid_payload", "message": "no"});
    assert_eq!(
        queue.fail(name, "w", &error, false).await.unwrap(),
        Failed::Dead
    );
    assert_eq!(
        queue.fail(name, "w", &error, false).await.unwrap(),
        Failed::Stale
    );
    assert_eq!(
        queue.cancel(name).await.unwrap(),
        Cancel::Finished(TaskState::Dead)
    );
    assert_eq!(queue.dead().await.unwrap()[0].attempts, 1);
    // A dead letter holds its content: a put again is a duplicate naming it.
    let again = job("m", 2, json!("bad input"));
    assert_eq!(
        queue.put(&again).await.unwrap(),
        Put::Duplicate {
            existing: Some(name)
        }
    );
    assert!(queue.requeue(name).await.unwrap());
    let back = queue.lease("w", LEASE).await.unwrap().unwrap();
    assert_eq!((back.task, back.attempt), (bad, 1));
}

pub(super) async fn a_custom_dedupe_key_is_held_and_names_its_task<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let keyed = TaskOptions::default().dedupe("invoice-77");
    let first = job("send", 1, json!({"to": "a"}));
    assert_eq!(queue.put_with(&first, &keyed).await.unwrap(), Put::Queued);
    // Another payload under the same key: the same task.
    let second = job("send", 2, json!({"to": "b"}));
    assert_eq!(
        queue.put_with(&second, &keyed).await.unwrap(),
        Put::Duplicate {
            existing: Some(TaskRef::of(&first))
        }
    );
    // A custom key never meets a content key: the same content without
    // the key is another task, and is deduplicated by its content.
    let plain = job("send", 3, json!({"to": "a"}));
    assert_eq!(queue.put(&plain).await.unwrap(), Put::Queued);
    let plain_again = job("send", 4, json!({"to": "a"}));
    assert_eq!(
        queue.put(&plain_again).await.unwrap(),
        Put::Duplicate {
            existing: Some(TaskRef::of(&plain))
        }
    );
    // Done, the key stays held for the retention window, naming the task
    // whose result a producer may read.
    let lease = queue
        .lease_with("w", LEASE, &LeaseFilter::any())
        .await
        .unwrap();
    assert_eq!(leased(lease).task, first);
    let ack = queue
        .ack(TaskRef::of(&first), "w", &json!("sent"))
        .await
        .unwrap();
    assert_eq!(ack, Acked::Done);
    let third = job("send", 5, json!({"to": "c"}));
    assert_eq!(
        queue.put_with(&third, &keyed).await.unwrap(),
        Put::Duplicate {
            existing: Some(TaskRef::of(&first))
        }
    );
    let info = queue.show(TaskRef::of(&first)).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.result),
        (TaskState::Done, Some(json!("sent")))
    );
}

pub(super) async fn a_waiting_task_is_cancelled_and_never_handed_out<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let mut events = queue.events();
    let queued = job("m", 1, json!(1));
    let scheduled = job("m", 2, json!(2));
    queue.put(&queued).await.unwrap();
    let later = TaskOptions::default().delay(Duration::from_secs(3600));
    assert_eq!(
        queue.put_with(&scheduled, &later).await.unwrap(),
        Put::Scheduled
    );
    for task in [&queued, &scheduled] {
        let name = TaskRef::of(task);
        assert_eq!(queue.cancel(name).await.unwrap(), Cancel::Cancelled);
        assert_eq!(
            queue.cancel(name).await.unwrap(),
            Cancel::Finished(TaskState::Cancelled)
        );
        let info = queue
            .show(name)
            .await
            .unwrap()
            .expect("kept for the retention");
        assert_eq!(info.state, TaskState::Cancelled);
        assert!(info.finished_at.is_some());
    }
    assert!(queue.lease("w", LEASE).await.unwrap().is_none());
    let unknown = TaskRef {
        peer: Uuid::new_v4(),
        id: 1,
    };
    assert_eq!(queue.cancel(unknown).await.unwrap(), Cancel::Unknown);
    // Its dedupe key was released: the same task may be put again.
    let again = job("m", 3, json!(1));
    assert_eq!(queue.put(&again).await.unwrap(), Put::Queued);
    let cancelled = queue.list(TaskState::Cancelled, 10).await.unwrap();
    let names: Vec<TaskRef> = cancelled.iter().map(|info| info.task).collect();
    assert_eq!(
        names,
        [TaskRef::of(&scheduled), TaskRef::of(&queued)],
        "newest first"
    );
    assert_eq!(queue.method_stats().await.unwrap()["m"].cancelled, 2);
    let mut finished = Vec::new();
    while finished.len() < 2 {
        if let QueueEvent::Finished { task, state } = next_event(&mut events).await {
            assert_eq!(state, TaskState::Cancelled);
            finished.push(task);
        }
    }
    assert_eq!(finished, [TaskRef::of(&queued), TaskRef::of(&scheduled)]);
}

pub(super) async fn a_running_task_is_cancelled_through_its_worker<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let mut events = queue.events();
    let (acked, failed, expired) = (
        job("m", 1, json!(1)),
        job("m", 2, json!(2)),
        job("m", 3, json!(3)),
    );
    for task in [&acked, &failed, &expired] {
        queue.put(task).await.unwrap();
    }
    // Ended by an ack: cancelled, its result kept.
    queue.lease("w1", LEASE).await.unwrap().unwrap();
    let name = TaskRef::of(&acked);
    let asked = queue.cancel(name).await.unwrap();
    assert_eq!(
        asked,
        Cancel::Requested {
            worker: "w1".into()
        }
    );
    let info = queue.show(name).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.cancel_requested),
        (TaskState::Leased, true)
    );
    loop {
        if let QueueEvent::CancelRequested { task } = next_event(&mut events).await {
            assert_eq!(task, name);
            break;
        }
    }
    let ack = queue.ack(name, "w1", &json!("partial")).await.unwrap();
    assert_eq!(ack, Acked::Done);
    let info = queue.show(name).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.result),
        (TaskState::Cancelled, Some(json!("partial")))
    );
    // Ended by a failure: cancelled, not retried.
    queue.lease("w2", LEASE).await.unwrap().unwrap();
    let name = TaskRef::of(&failed);
    queue.cancel(name).await.unwrap();
    let fail = queue
        .fail(name, "w2", &json!({"code": "cancelled"}), true)
        .await
        .unwrap();
    assert_eq!(fail, Failed::Cancelled);
    // Ended by its lease running out (the worker is gone): cancelled, not
    // handed out again.
    queue.lease("w3", SHORT).await.unwrap().unwrap();
    let name = TaskRef::of(&expired);
    queue.cancel(name).await.unwrap();
    tokio::time::sleep(SHORT + SLACK).await;
    assert!(queue.lease("w4", LEASE).await.unwrap().is_none());
    assert_eq!(
        queue.show(name).await.unwrap().unwrap().state,
        TaskState::Cancelled
    );
    // A failure of a task asked to stop is its cancel, not a failure.
    let stats = queue.method_stats().await.unwrap()["m"];
    assert_eq!(
        (stats.cancelled, stats.failed, stats.running, stats.queued),
        (3, 0, 0, 0)
    );
}

pub(super) async fn show_and_list_tell_every_state<F: QueueFactory>(factory: &F) {
    let retention = Duration::from_millis(400);
    let queue = factory
        .queue(QueueSettings::default().with_retention(retention))
        .await;
    let tasks: Vec<Packet> = (1..=6).map(|id| job("m", id, json!(id))).collect();
    let names: Vec<TaskRef> = tasks.iter().map(TaskRef::of).collect();
    // 1 and 2 done (in that order), 3 dead, 4 leased, 5 queued, 6 scheduled.
    for task in &tasks[..5] {
        queue.put(task).await.unwrap();
    }
    let later = TaskOptions::default().delay(Duration::from_secs(3600));
    queue.put_with(&tasks[5], &later).await.unwrap();
    for (index, name) in names[..4].iter().enumerate() {
        let lease = queue.lease("w", LEASE).await.unwrap().unwrap();
        assert_eq!(TaskRef::of(&lease.task), *name);
        match index {
            0 | 1 => assert_eq!(
                queue.ack(*name, "w", &json!(index)).await.unwrap(),
                Acked::Done
            ),
            2 => assert_eq!(
                queue.fail(*name, "w", &json!("no"), false).await.unwrap(),
                Failed::Dead
            ),
            _ => {}
        }
    }
    let expect = [
        (TaskState::Done, vec![names[1], names[0]]),
        (TaskState::Dead, vec![names[2]]),
        (TaskState::Leased, vec![names[3]]),
        (TaskState::Queued, vec![names[4]]),
        (TaskState::Scheduled, vec![names[5]]),
        (TaskState::Cancelled, vec![]),
    ];
    for (state, want) in &expect {
        let listed: Vec<TaskRef> = queue
            .list(*state, 10)
            .await
            .unwrap()
            .iter()
            .map(|info| info.task)
            .collect();
        assert_eq!(&listed, want, "list({state:?})");
        for name in want {
            let info = queue.show(*name).await.unwrap().unwrap();
            assert_eq!((info.state, info.method.as_str()), (*state, "m"));
        }
    }
    let leased_info = queue.show(names[3]).await.unwrap().unwrap();
    assert_eq!(
        (leased_info.worker.as_deref(), leased_info.attempts),
        (Some("w"), 1)
    );
    assert_eq!(queue.list(TaskState::Done, 1).await.unwrap().len(), 1);
    let nobody = TaskRef {
        peer: Uuid::new_v4(),
        id: 9,
    };
    assert_eq!(queue.show(nobody).await.unwrap(), None);
    // After the retention window, done tasks are forgotten.
    tokio::time::sleep(retention + SLACK).await;
    assert_eq!(queue.show(names[0]).await.unwrap(), None);
    assert!(queue.list(TaskState::Done, 10).await.unwrap().is_empty());
    assert_eq!(
        queue.show(names[2]).await.unwrap().unwrap().state,
        TaskState::Dead
    );
}

/// `list` gives waiting tasks in the same order on every queue: scheduled
/// ones by their time (not the order they were put), queued ones in the
/// order they became available (whatever their priority or method),
/// leased ones by when their lease ends.
pub(super) async fn list_orders_waiting_tasks_by_time_and_availability<F: QueueFactory>(
    factory: &F,
) {
    let queue = factory.queue(QueueSettings::default()).await;
    let soon = Utc::now() + Duration::from_secs(60);
    let later = job("report", 1, json!({"day": 1}));
    let sooner = job("report", 2, json!({"day": 2}));
    for (task, at) in [(&later, soon + Duration::from_secs(60)), (&sooner, soon)] {
        let options = TaskOptions::default().run_at(at);
        assert_eq!(
            queue.put_with(task, &options).await.unwrap(),
            Put::Scheduled
        );
    }
    let names = |infos: Vec<stream_rpc::tasks::TaskInfo>| -> Vec<TaskRef> {
        infos.into_iter().map(|info| info.task).collect()
    };
    assert_eq!(
        names(queue.list(TaskState::Scheduled, 10).await.unwrap()),
        [TaskRef::of(&sooner), TaskRef::of(&later)],
        "scheduled: by time"
    );
    let low = job("mail", 3, json!(3));
    let high = job("parse", 4, json!(4));
    let normal = job("mail", 5, json!(5));
    for (task, priority) in [
        (&low, Priority::Low),
        (&high, Priority::High),
        (&normal, Priority::Normal),
    ] {
        let options = TaskOptions::default().priority(priority);
        assert_eq!(queue.put_with(task, &options).await.unwrap(), Put::Queued);
    }
    assert_eq!(
        names(queue.list(TaskState::Queued, 10).await.unwrap()),
        [TaskRef::of(&low), TaskRef::of(&high), TaskRef::of(&normal)],
        "queued: in the order they became available"
    );
    assert_eq!(
        names(queue.list(TaskState::Queued, 2).await.unwrap()).len(),
        2,
        "at most the limit"
    );
    // Leased: the longer lease last, though it was taken first.
    let first = leased(
        queue
            .lease_with("w", LEASE * 2, &LeaseFilter::any())
            .await
            .unwrap(),
    );
    let second = leased(
        queue
            .lease_with("w", LEASE, &LeaseFilter::any())
            .await
            .unwrap(),
    );
    assert_eq!(
        names(queue.list(TaskState::Leased, 10).await.unwrap()),
        [TaskRef::of(&second.task), TaskRef::of(&first.task)],
        "leased: by when their lease ends"
    );
}
