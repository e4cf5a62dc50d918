//! The checks of what a fleet of servers shares through the queue: limits
//! of concurrency and rate, periodic tasks put once per tick, counts per
//! method, events, and that nothing grows.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use stream_rpc::tasks::{Every, MethodLimit, Schedule, TaskOptions, TaskRef, TaskState};

use super::QueueFactory;
use super::tasks::{LEASE, SLACK, job, leased, next_event, sleep_until};
use crate::{Acked, Lease, LeaseFilter, Put, QueueError, QueueEvent, QueueSettings, TaskQueue};

/// How many servers race to fire one tick.
const RACERS: usize = 8;

/// Two handles on one backend: the factory's twin, or the same handle
/// twice when it has none.
async fn two_handles<F: QueueFactory>(
    factory: &F,
    settings: QueueSettings,
) -> (Arc<F::Queue>, Arc<F::Queue>) {
    let one = factory.queue(settings).await;
    let other = factory.twin(&one).await;
    let one = Arc::new(one);
    let other = other.map(Arc::new).unwrap_or_else(|| one.clone());
    (one, other)
}

pub(super) async fn a_concurrency_limit_holds_tasks_back_fleet_wide<F: QueueFactory>(factory: &F) {
    let (a, b) = two_handles(factory, QueueSettings::default()).await;
    let mut events = a.events();
    a.set_limit("api", MethodLimit::none().concurrency(2))
        .await
        .unwrap();
    assert_eq!(
        b.limits().await.unwrap().get("api"),
        Some(&MethodLimit::none().concurrency(2))
    );
    for id in 1..=3 {
        a.put(&job("api", id, json!(id))).await.unwrap();
    }
    let other = job("other", 9, json!(9));
    a.put(&other).await.unwrap();
    let first = leased(
        a.lease_with("w1", LEASE, &LeaseFilter::methods(["api"]))
            .await
            .unwrap(),
    );
    leased(
        b.lease_with("w2", LEASE, &LeaseFilter::methods(["api"]))
            .await
            .unwrap(),
    );
    // Two running, on two servers: the third waits, and says no time.
    assert_eq!(
        b.lease_with("w3", LEASE, &LeaseFilter::methods(["api"]))
            .await
            .unwrap(),
        Lease::Empty { next_due: None }
    );
    // Another method is not held back.
    assert_eq!(a.lease("w3", LEASE).await.unwrap().unwrap().task, other);
    assert!(a.method_stats().await.unwrap()["api"].limited >= 1);
    // One ends: the held-back method is ready again, and told.
    let ack = a
        .ack(TaskRef::of(&first.task), "w1", &json!(1))
        .await
        .unwrap();
    assert_eq!(ack, Acked::Done);
    loop {
        let event = next_event(&mut events).await;
        if event
            == (QueueEvent::Ready {
                method: "api".into(),
            })
        {
            break;
        }
    }
    let third = leased(
        b.lease_with("w3", LEASE, &LeaseFilter::any())
            .await
            .unwrap(),
    );
    assert_eq!(third.task.id, 3);
    // Removed, no limit holds.
    a.set_limit("api", MethodLimit::none()).await.unwrap();
    assert!(b.limits().await.unwrap().is_empty());
    let zero = a.set_limit("api", MethodLimit::none().concurrency(0)).await;
    assert!(matches!(zero, Err(QueueError::Invalid { .. })), "{zero:?}");
}

pub(super) async fn a_rate_limit_spaces_leases_fleet_wide<F: QueueFactory>(factory: &F) {
    const COUNT: u32 = 2;
    const PER: Duration = Duration::from_millis(200);
    const TASKS: u64 = 6;
    let (a, b) = two_handles(factory, QueueSettings::default()).await;
    a.set_limit("api", MethodLimit::none().rate(COUNT, PER))
        .await
        .unwrap();
    for id in 0..TASKS {
        a.put(&job("api", id, json!(id))).await.unwrap();
    }
    let start = Utc::now();
    let mut times = Vec::new();
    let mut waits = 0;
    while (times.len() as u64) < TASKS {
        // The servers take turns.
        let queue = if times.len() % 2 == 0 { &a } else { &b };
        match queue
            .lease_with("w", LEASE, &LeaseFilter::any())
            .await
            .unwrap()
        {
            Lease::Leased(_) => times.push(Utc::now()),
            Lease::Empty { next_due } => {
                let due = next_due.expect("a rate-limited method says when it may go");
                waits += 1;
                assert!(waits <= 2 * TASKS, "too many waits for {TASKS} tasks");
                let wait = (due - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait.min(PER)).await;
            }
        }
    }
    // A burst of COUNT at once, then one every PER / COUNT.
    let every = PER / COUNT;
    for (index, at) in times.iter().enumerate().skip(COUNT as usize) {
        let earliest = start + every * (index as u32 + 1 - COUNT);
        assert!(
            *at + SLACK / 4 >= earliest,
            "lease {index} at {at}, before {earliest}"
        );
    }
    let spent = (*times.last().unwrap() - start)
        .to_std()
        .unwrap_or_default();
    assert!(
        spent < every * (TASKS as u32) + PER,
        "the rate held them back too long: {spent:?}"
    );
    assert!(a.method_stats().await.unwrap()["api"].limited >= 1);
    a_limit_set_again_starts_a_full_bucket(&*a, &*b).await;
}

/// Setting a limit again starts its rate afresh (a full bucket) and tells
/// the servers that its waiting tasks may go.
async fn a_limit_set_again_starts_a_full_bucket<Q: TaskQueue>(a: &Q, b: &Q) {
    let hourly = MethodLimit::none().rate(1, Duration::from_secs(3600));
    a.set_limit("hourly", hourly).await.unwrap();
    for id in 0..2 {
        a.put(&job("hourly", id, json!(id))).await.unwrap();
    }
    let only = LeaseFilter::methods(["hourly"]);
    leased(b.lease_with("w", LEASE, &only).await.unwrap());
    let held = b.lease_with("w", LEASE, &only).await.unwrap();
    assert!(matches!(held, Lease::Empty { .. }), "{held:?}");
    let mut events = b.events();
    a.set_limit("hourly", hourly).await.unwrap();
    while next_event(&mut events).await
        != (QueueEvent::Ready {
            method: "hourly".into(),
        })
    {}
    leased(b.lease_with("w", LEASE, &only).await.unwrap());
}

pub(super) async fn a_periodic_task_is_put_once_per_tick_across_servers<F: QueueFactory>(
    factory: &F,
) {
    let (a, b) = two_handles(factory, QueueSettings::default()).await;
    let every_second = Schedule::new(
        "cleanup",
        "cleanup",
        json!({"older_than": "1d"}),
        Every::Cron {
            cron: "* * * * * *".into(),
        },
    )
    .options(TaskOptions::default().max_attempts(2));
    let info = a.put_schedule(&every_second).await.unwrap();
    assert_eq!(info.fired, 0);
    assert!(info.next_at > Utc::now() - SLACK);
    // Replaced by name: still one schedule.
    let info = b.put_schedule(&every_second).await.unwrap();
    assert_eq!(b.schedules().await.unwrap().len(), 1);
    // Nothing is due yet (when there is time to tell).
    if Utc::now() + SLACK < info.next_at {
        assert!(a.fire_schedules().await.unwrap().tasks.is_empty());
    }
    // Two ticks pass with no server firing (all down): they fire once.
    sleep_until(info.next_at + Duration::from_secs(1)).await;
    let racers: Vec<_> = (0..RACERS)
        .map(|index| {
            let queue = if index % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { queue.fire_schedules().await.unwrap() })
        })
        .collect();
    let mut fired = Vec::new();
    for racer in racers {
        let racer = racer.await.unwrap();
        assert!(racer.next_at.expect("a schedule is set") > Utc::now() - SLACK);
        fired.extend(racer.tasks);
    }
    assert_eq!(fired.len(), 1, "one task for the ticks missed: {fired:?}");
    let task = leased(
        a.lease_with("w", LEASE, &LeaseFilter::methods(["cleanup"]))
            .await
            .unwrap(),
    );
    assert_eq!(task.task.payload, json!({"older_than": "1d"}));
    assert_eq!(task.options.max_attempts, Some(2));
    assert!(a.lease("w", LEASE).await.unwrap().is_none());
    let kept = b.schedules().await.unwrap();
    assert_eq!((kept[0].fired, kept[0].last_at.is_some()), (1, true));
    assert!(b.remove_schedule("cleanup").await.unwrap());
    assert!(!a.remove_schedule("cleanup").await.unwrap());
    assert_eq!(a.fire_schedules().await.unwrap().next_at, None);
    let mut bad = every_second.clone();
    bad.every = Every::Interval {
        every: Duration::from_millis(10),
    };
    assert!(matches!(
        a.put_schedule(&bad).await,
        Err(QueueError::Invalid { .. })
    ));
    bad.every = Every::Cron {
        cron: "not a cron".into(),
    };
    assert!(matches!(
        a.put_schedule(&bad).await,
        Err(QueueError::Invalid { .. })
    ));
}

pub(super) async fn method_stats_count_each_methods_tasks<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let later = TaskOptions::default().delay(Duration::from_secs(3600));
    queue.put(&job("a", 1, json!(1))).await.unwrap();
    queue.put(&job("a", 2, json!(2))).await.unwrap();
    queue
        .put_with(&job("a", 3, json!(3)), &later)
        .await
        .unwrap();
    queue.put(&job("b", 4, json!(4))).await.unwrap();
    let one = leased(
        queue
            .lease_with("w", LEASE, &LeaseFilter::methods(["a"]))
            .await
            .unwrap(),
    );
    queue
        .ack(TaskRef::of(&one.task), "w", &json!("ok"))
        .await
        .unwrap();
    leased(
        queue
            .lease_with("w", LEASE, &LeaseFilter::methods(["a"]))
            .await
            .unwrap(),
    );
    let stats = queue.method_stats().await.unwrap();
    let a = stats["a"];
    assert_eq!(
        (a.queued, a.scheduled, a.running, a.done, a.failed, a.dead),
        (0, 1, 1, 1, 0, 0)
    );
    let b = stats["b"];
    assert_eq!((b.queued, b.running, b.done), (1, 0, 0));
}

pub(super) async fn events_tell_what_a_server_waits_for<F: QueueFactory>(factory: &F) {
    let queue = factory.queue(QueueSettings::default()).await;
    let mut events = queue.events();
    let task = job("m", 1, json!(1));
    let name = TaskRef::of(&task);
    // A scheduled task is not told: the lease's next_due covers it.
    let later = TaskOptions::default().delay(Duration::from_secs(3600));
    queue
        .put_with(&job("m", 2, json!(2)), &later)
        .await
        .unwrap();
    queue.put(&task).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        QueueEvent::Ready { method: "m".into() }
    );
    queue.lease("w", LEASE).await.unwrap().unwrap();
    queue.nack(name, "w").await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        QueueEvent::Ready { method: "m".into() }
    );
    queue.lease("w", LEASE).await.unwrap().unwrap();
    queue.ack(name, "w", &json!("ok")).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        QueueEvent::Finished {
            task: name,
            state: TaskState::Done
        }
    );
}

pub(super) async fn nothing_is_left_behind_after_the_retention<F: QueueFactory>(factory: &F) {
    const TASKS: u64 = 40;
    let retention = Duration::from_millis(300);
    let queue = factory
        .queue(QueueSettings::default().with_retention(retention))
        .await;
    let mut names = Vec::new();
    for id in 0..TASKS {
        let task = job("m", id, json!(id));
        let options = match id % 4 {
            0 => TaskOptions::default().dedupe(format!("key-{id}")),
            1 => TaskOptions::default().max_attempts(1),
            _ => TaskOptions::default(),
        };
        assert_eq!(queue.put_with(&task, &options).await.unwrap(), Put::Queued);
        names.push(TaskRef::of(&task));
    }
    // A quarter cancelled, a quarter dead, the rest done.
    for name in names.iter().skip(3).step_by(4) {
        queue.cancel(*name).await.unwrap();
    }
    // A bounded loop, so that a queue that hands a task out twice fails
    // rather than spins.
    for _ in 0..TASKS - TASKS / 4 {
        let task = queue.lease("w", LEASE).await.unwrap().expect("a task");
        let name = TaskRef::of(&task.task);
        if task.task.id % 4 == 1 {
            queue.fail(name, "w", &json!("no"), true).await.unwrap();
        } else {
            queue.ack(name, "w", &json!("ok")).await.unwrap();
        }
    }
    assert!(queue.lease("w", LEASE).await.unwrap().is_none());
    assert_eq!(queue.purge_dead().await.unwrap(), TASKS / 4);
    tokio::time::sleep(retention + SLACK).await;
    for name in &names {
        assert_eq!(queue.show(*name).await.unwrap(), None, "{name} forgotten");
    }
    for state in [
        TaskState::Done,
        TaskState::Cancelled,
        TaskState::Dead,
        TaskState::Queued,
    ] {
        assert!(
            queue.list(state, 1000).await.unwrap().is_empty(),
            "{state:?}"
        );
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.leased, stats.dead), (0, 0, 0));
    // Every key was released: each task may be put again.
    let again = job("m", 0, json!(0));
    let keyed = TaskOptions::default().dedupe("key-0");
    assert_eq!(queue.put_with(&again, &keyed).await.unwrap(), Put::Queued);
    assert_eq!(
        queue.put(&job("m", 2, json!(2))).await.unwrap(),
        Put::Queued
    );
}
