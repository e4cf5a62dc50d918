//! What only Redis can do to the queue: die and come back, be shared by
//! several servers, hold many tasks. A real `redis-server` per test.

use std::time::Duration;

use serde_json::json;
use stream_rpc::Packet;
use stream_rpc_queue::testing::task;
use stream_rpc_queue::{
    Acked, Failed, LeaseFilter, Put, QueueError, QueueEvent, QueueSettings, RedisQueue,
    RedisSettings, TaskQueue, TaskRef, TaskState,
};
use stream_rpc_test_support::{RedisServer, free_port};

const LEASE: Duration = Duration::from_secs(30);

async fn queue(server: &RedisServer, settings: QueueSettings) -> RedisQueue {
    RedisQueue::connect(
        RedisSettings::new(server.url())
            .with_queue(settings)
            .with_response_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("the test's redis-server")
}

async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("the test exceeded its time bound")
}

/// Runs a Redis command on a connection of its own.
async fn command<T: redis::FromRedisValue>(server: &RedisServer, name: &str, args: &[&str]) -> T {
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut command = redis::cmd(name);
    for arg in args {
        command.arg(*arg);
    }
    command.query_async(&mut connection).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_redis_is_killed_and_restarted() {
    let mut server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default()).await;
        let tasks: Vec<Packet> = (0..200).map(task).collect();
        for put in &tasks {
            assert_eq!(queue.put(put).await.unwrap(), Put::Queued);
        }
        for _ in 0..100 {
            let leased = queue.lease("w", LEASE).await.unwrap().unwrap();
            let acked = queue
                .ack(TaskRef::of(&leased.task), "w", &json!(leased.task.id))
                .await
                .unwrap();
            assert_eq!(acked, Acked::Done);
        }

        server.kill();
        // While Redis is down, every operation fails, typed.
        let err = queue.put(&task(1_000)).await.unwrap_err();
        assert!(
            matches!(err, QueueError::Unavailable(_) | QueueError::Timeout(_)),
            "{err}"
        );
        server.restart();

        // The queue reconnects by itself.
        let stats = loop {
            match queue.stats().await {
                Ok(stats) => break stats,
                Err(QueueError::Unavailable(_) | QueueError::Timeout(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("{other}"),
            }
        };
        // Every acknowledged put and ack is still there.
        assert_eq!((stats.done, stats.queued + stats.leased), (100, 100));
        for done in &tasks[..100] {
            assert_eq!(
                queue.result("parse_article", &done.payload).await.unwrap(),
                Some(json!(done.id))
            );
            assert!(queue.put(done).await.unwrap().is_duplicate());
        }
        let mut rest = Vec::new();
        while let Some(leased) = queue.lease("w", LEASE).await.unwrap() {
            rest.push(leased.task.id);
        }
        rest.sort_unstable();
        assert_eq!(rest, (100..200).collect::<Vec<u64>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sharing_one_redis_share_the_queue_and_take_over_leases() {
    let server = RedisServer::start();
    bounded(async {
        let a = queue(&server, QueueSettings::default()).await;
        let b = queue(&server, QueueSettings::default()).await;
        let put = task(1);
        assert_eq!(a.put(&put).await.unwrap(), Put::Queued);
        // The same task put through the other server is a duplicate.
        assert_eq!(
            b.put(&task(1)).await.unwrap(),
            Put::Duplicate {
                existing: Some(TaskRef::of(&put))
            }
        );
        // Server A hands it to a worker, then dies holding the lease.
        let short = Duration::from_millis(300);
        assert_eq!(a.lease("w1", short).await.unwrap().unwrap().attempt, 1);
        drop(a);
        tokio::time::sleep(short + Duration::from_millis(100)).await;
        // Server B hands it out again, and the new worker's ack succeeds.
        let again = b.lease("w2", LEASE).await.unwrap().unwrap();
        assert_eq!((again.task.clone(), again.attempt), (put.clone(), 2));
        assert_eq!(
            b.ack(TaskRef::of(&put), "w2", &json!("parsed"))
                .await
                .unwrap(),
            Acked::Done
        );
        assert_eq!(
            b.ack(TaskRef::of(&put), "w1", &json!("late"))
                .await
                .unwrap(),
            Acked::Stale
        );
    })
    .await;
}

/// Puts, leases and acks the tasks `from..to`, eight at a time.
async fn put_lease_ack(queue: &RedisQueue, from: u64, to: u64) {
    let lanes: Vec<_> = (0..8u64)
        .map(|lane| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for n in (from + lane..to).step_by(8) {
                    queue.put(&task(n)).await.unwrap();
                    let leased = queue.lease("w", LEASE).await.unwrap().unwrap();
                    let acked = queue
                        .ack(TaskRef::of(&leased.task), "w", &json!(n))
                        .await
                        .unwrap();
                    assert_eq!(acked, Acked::Done);
                }
            })
        })
        .collect();
    for lane in lanes {
        lane.await.unwrap();
    }
}

/// The keys a queue keeps for good once done tasks expired, with one task
/// left leased: its body, record and dedupe key, the leases, the counts,
/// the counters and the methods counted, the sequence.
const KEPT_KEYS: [&str; 8] = [
    "body:*", "counted", "counts", "key:*", "leases", "seq", "stats", "task:*",
];

/// Waits until the names, results and records of done tasks have expired
/// and checks that only [`KEPT_KEYS`] are left.
async fn wait_for_expiry(server: &RedisServer, queue: &RedisQueue) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Trims the list of finished tasks, as any lease or count does.
        queue.stats().await.unwrap();
        let keys: u64 = command(server, "DBSIZE", &[]).await;
        if keys <= KEPT_KEYS.len() as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{keys} keys still there after the retention window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut keys: Vec<String> = command(server, "KEYS", &["*"]).await;
    keys.sort();
    let kept: Vec<String> = keys
        .iter()
        .map(|key| {
            let key = key.strip_prefix("{stream-rpc}:").unwrap_or(key);
            match key.split_once(':') {
                Some((kind, _)) => format!("{kind}:*"),
                None => key.to_owned(),
            }
        })
        .collect();
    assert_eq!(kept, KEPT_KEYS, "{keys:?}");
}

/// Redis's memory once two readings 200 ms apart agree within 4 KB
/// (bounded).
async fn settled_memory(server: &RedisServer) -> u64 {
    let mut last = used_memory(server).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = used_memory(server).await;
        if now.abs_diff(last) < 4 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

/// Checks that only the one task left leased is still in the queue.
async fn leftovers(server: &RedisServer, queue: &RedisQueue) {
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.queued, stats.leased), (0, 1));
    let tag = "{stream-rpc}";
    let leases: u64 = command(server, "ZCARD", &[&format!("{tag}:leases")]).await;
    let ready: u64 = command(server, "SCARD", &[&format!("{tag}:methods")]).await;
    assert_eq!((leases, ready), (1, 0), "only the one task left leased");
}

async fn used_memory(server: &RedisServer) -> u64 {
    let info: String = command(server, "INFO", &["memory"]).await;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("used_memory in INFO")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_put_and_acked_leave_nothing_behind() {
    let server = RedisServer::start();
    bounded(async {
        let retention = Duration::from_secs(1);
        let queue = queue(&server, QueueSettings::default().with_retention(retention)).await;
        // One task stays leased throughout (longer than the test, however
        // slow the machine).
        queue.put(&task(u64::MAX)).await.unwrap();
        queue
            .lease("w", Duration::from_secs(600))
            .await
            .unwrap()
            .unwrap();
        // A first round brings Redis's tables to their working size (and
        // every script and command the check uses is run once)...
        put_lease_ack(&queue, 0, 5_000).await;
        leftovers(&server, &queue).await;
        wait_for_expiry(&server, &queue).await;
        let before = settled_memory(&server).await;
        // ...and a second round of as many must leave memory where it was.
        put_lease_ack(&queue, 5_000, 10_000).await;
        assert_eq!(queue.stats().await.unwrap().done, 10_000);
        leftovers(&server, &queue).await;
        wait_for_expiry(&server, &queue).await;
        // Redis shrinks its tables a moment after the keys expired (its
        // cron runs ten times a second): wait, bounded, for memory to come
        // back. 5,000 tasks kept would be over 1 MB (names, results,
        // stream entries); measured over six rounds, memory stays within
        // 8 KB of one level.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let after = used_memory(&server).await;
            if after < before + 64 * 1024 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis memory grew from {before} to {after} bytes over 5,000 tasks"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// The most methods whose counters a queue keeps (as in memory).
const COUNTED_METHODS: u64 = 10_000;

/// Puts, leases and acks one task of each method `m<from>..m<to>`, eight
/// at a time.
async fn one_task_per_method(queue: &RedisQueue, from: u64, to: u64) {
    let lanes: Vec<_> = (0..8u64)
        .map(|lane| {
            let queue = queue.clone();
            tokio::spawn(async move {
                for n in (from + lane..to).step_by(8) {
                    let method = format!("m{n}");
                    let put = Packet::new(uuid::Uuid::nil(), n, &method, json!(n));
                    queue.put(&put).await.unwrap();
                    let leased = queue
                        .lease_with("w", LEASE, &LeaseFilter::methods([method]))
                        .await
                        .unwrap()
                        .leased()
                        .unwrap();
                    let acked = queue
                        .ack(TaskRef::of(&leased.task), "w", &json!(n))
                        .await
                        .unwrap();
                    assert_eq!(acked, Acked::Done);
                }
            })
        })
        .collect();
    for lane in lanes {
        lane.await.unwrap();
    }
}

/// A peer may put tasks under as many method names as it likes: the
/// counters per method stay bounded, those of a method that still holds a
/// task kept. The first 9,999 methods are written by hand, as the scripts
/// write them (10,000 tasks put, leased and acked one by one take half a
/// minute), and a hundred more as a version that did not list the methods
/// counted wrote them; the methods after are real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_per_method_are_bounded() {
    let server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default()).await;
        // A method with counters and a task held (waiting for its retry).
        let held = Packet::new(uuid::Uuid::nil(), 0, "held", json!(0));
        queue.put(&held).await.unwrap();
        let leased = queue.lease("w", LEASE).await.unwrap().unwrap();
        let failed = queue
            .fail(TaskRef::of(&leased.task), "w", &json!("no"), true)
            .await
            .unwrap();
        assert!(matches!(failed, Failed::Retrying { .. }), "{failed:?}");

        let stats_key = "{stream-rpc}:stats".to_owned();
        let counted_key = "{stream-rpc}:counted";
        let mut fields = vec![stats_key.clone()];
        let mut counted = vec![counted_key.to_owned()];
        for n in 1..COUNTED_METHODS {
            fields.extend([format!("done:m{n}"), "1".to_owned()]);
            counted.push(format!("m{n}"));
        }
        for n in 0..100 {
            fields.extend([format!("done:before{n}"), "1".to_owned()]);
        }
        fn args(all: &[String]) -> Vec<&str> {
            all.iter().map(String::as_str).collect()
        }
        let _: u64 = command(&server, "HSET", &args(&fields)).await;
        let _: u64 = command(&server, "SADD", &args(&counted)).await;
        let by_hand = queue.method_stats().await.unwrap().len() as u64;
        assert_eq!(by_hand, COUNTED_METHODS + 100);

        // The 10,001st method counted: those that hold no task are
        // forgotten.
        one_task_per_method(&queue, COUNTED_METHODS, COUNTED_METHODS + 50).await;

        let stats = queue.method_stats().await.unwrap();
        let names: Vec<&String> = stats.keys().take(5).collect();
        assert_eq!(stats.len(), 51, "held and m10000..m10049: {names:?}");
        let kept = &stats["held"];
        assert_eq!((kept.failed, kept.retried), (1, 1), "{kept:?}");
        assert_eq!(kept.scheduled + kept.queued, 1, "{kept:?}");
        assert_eq!(stats[&format!("m{}", COUNTED_METHODS + 49)].done, 1);
        let counted: u64 = command(&server, "SCARD", &[counted_key]).await;
        assert_eq!(counted, 51);
        // The counters of the whole queue are kept.
        let done: u64 = command(&server, "HGET", &[&stats_key, "done"]).await;
        assert_eq!(done, 50);
    })
    .await;
}

/// How many tasks the memory measure puts.
const MEASURED_TASKS: u64 = 2_000;
/// The most memory a queued task may take on Redis, in bytes: its record
/// (the packet's JSON, about 200 bytes here, and a dozen small fields),
/// its place in the ready set, its dedupe key.
const MOST_BYTES_PER_TASK: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_queued_task_is_bounded() {
    let server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default()).await;
        // The scripts and tables warmed up by a first task.
        queue.put(&task(u64::MAX)).await.unwrap();
        let before = settled_memory(&server).await;
        let lanes: Vec<_> = (0..8u64)
            .map(|lane| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    for n in (lane..MEASURED_TASKS).step_by(8) {
                        assert_eq!(queue.put(&task(n)).await.unwrap(), Put::Queued);
                    }
                })
            })
            .collect();
        for lane in lanes {
            lane.await.unwrap();
        }
        let after = settled_memory(&server).await;
        for (kind, pattern) in [
            ("record", "task:*"),
            ("body", "body:*"),
            ("dedupe key", "key:*"),
        ] {
            let keys: Vec<String> =
                command(&server, "KEYS", &[&format!("{{stream-rpc}}:{pattern}")]).await;
            let usage: u64 = command(&server, "MEMORY", &["USAGE", &keys[0]]).await;
            eprintln!("memory of one task's {kind}: {usage} bytes");
        }
        let ready: u64 = command(
            &server,
            "MEMORY",
            &["USAGE", "{stream-rpc}:ready:parse_article"],
        )
        .await;
        eprintln!(
            "memory of the ready set per task: {} bytes",
            ready / MEASURED_TASKS
        );
        let per_task = after.saturating_sub(before) / MEASURED_TASKS;
        let json = serde_json::to_string(&task(1)).unwrap().len();
        eprintln!(
            "memory per queued task on Redis: {per_task} bytes \
             ({before} -> {after} over {MEASURED_TASKS} tasks of {json} bytes of JSON)"
        );
        assert!(
            per_task <= MOST_BYTES_PER_TASK,
            "{per_task} bytes per queued task"
        );
        assert_eq!(queue.stats().await.unwrap().queued, MEASURED_TASKS + 1);
    })
    .await;
}

/// The next event, within a bound that covers Redis's restart.
async fn next_event(events: &mut stream_rpc_queue::QueueEvents) -> Option<QueueEvent> {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_come_again_after_redis_restarts_and_the_gap_is_told() {
    let mut server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default()).await;
        let mut events = queue.events();
        queue.put(&task(1)).await.unwrap();
        let ready = QueueEvent::Ready {
            method: "parse_article".into(),
        };
        assert_eq!(next_event(&mut events).await, Some(ready.clone()));
        server.kill();
        server.restart();
        // Events published while the connection was down are lost: the
        // receiver is told to re-check once it is subscribed again.
        assert_eq!(
            next_event(&mut events).await,
            Some(QueueEvent::Lagged { missed: 0 })
        );
        // Redis came back from its AOF: the task is still there.
        let put = loop {
            match queue.put(&task(2)).await {
                Ok(put) => break put,
                Err(QueueError::Unavailable(_) | QueueError::Timeout(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("{other}"),
            }
        };
        assert_eq!(put, Put::Queued);
        assert_eq!(next_event(&mut events).await, Some(ready));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_out_is_told_and_seen_without_another_lease() {
    let server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default().with_max_attempts(2)).await;
        let mut events = queue.events();
        let put = task(1);
        queue.put(&put).await.unwrap();
        let ready = QueueEvent::Ready {
            method: "parse_article".into(),
        };
        assert_eq!(next_event(&mut events).await, Some(ready.clone()));
        let short = Duration::from_millis(200);
        queue.lease("w", short).await.unwrap().unwrap();
        tokio::time::sleep(short + Duration::from_millis(100)).await;
        // Seen by a look, with no lease since: queued again, and told.
        let info = queue.show(TaskRef::of(&put)).await.unwrap().unwrap();
        assert_eq!((info.state, info.attempts), (TaskState::Queued, 1));
        assert_eq!(next_event(&mut events).await, Some(ready.clone()));
        // Its last holder may still ack it until another takes it; here
        // it takes it up again, and lets it run out once more: no
        // attempts left, a dead letter at the next look.
        assert!(queue.extend(TaskRef::of(&put), "w", short).await.unwrap());
        tokio::time::sleep(short + Duration::from_millis(100)).await;
        let info = queue.show(TaskRef::of(&put)).await.unwrap().unwrap();
        assert_eq!((info.state, info.attempts), (TaskState::Queued, 1));
        assert_eq!(next_event(&mut events).await, Some(ready));
        queue.lease("w2", short).await.unwrap().unwrap();
        tokio::time::sleep(short + Duration::from_millis(100)).await;
        let info = queue.show(TaskRef::of(&put)).await.unwrap().unwrap();
        assert_eq!((info.state, info.attempts), (TaskState::Dead, 2));
        assert_eq!(
            next_event(&mut events).await,
            Some(QueueEvent::Finished {
                task: TaskRef::of(&put),
                state: TaskState::Dead
            })
        );
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_redis_is_a_typed_error() {
    let port = free_port();
    let settings = RedisSettings::new(format!("redis://127.0.0.1:{port}/"));
    let err = RedisQueue::connect(settings).await.unwrap_err();
    assert!(matches!(err, QueueError::Unavailable(_)), "{err}");
    let err = RedisQueue::connect(RedisSettings::new("http://nowhere"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, QueueError::Invalid { setting: "url", .. }),
        "{err}"
    );
}

/// Writes a task record by hand, as an older version or a hand could
/// have left it: `fields` of the hash `{stream-rpc}:task:<name>` (`task`
/// in `{stream-rpc}:body:<name>`), and the name in the sorted set `set`
/// (`ready:<method>`, `dead`) at `score`.
async fn hand_written(
    server: &RedisServer,
    name: &str,
    fields: &[(&str, &[u8])],
    set: &str,
    score: u64,
) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let tag = "{stream-rpc}";
    // The task itself (`task`) is kept beside the record, after its
    // options: here none.
    let (task, fields): (Vec<_>, Vec<_>) = fields.iter().partition(|(field, _)| *field == "task");
    if let Some((_, task)) = task.first() {
        let body = [b"{}\n".as_slice(), task].concat();
        let _: () = redis::cmd("SET")
            .arg(format!("{tag}:body:{name}"))
            .arg(body)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    if !fields.is_empty() {
        let mut hset = redis::cmd("HSET");
        hset.arg(format!("{tag}:task:{name}"));
        for (field, value) in fields {
            hset.arg(field.to_string()).arg(value.to_vec());
        }
        let _: () = hset.query_async(&mut connection).await.unwrap();
    }
    let _: () = redis::cmd("ZADD")
        .arg(format!("{tag}:{set}"))
        .arg(score)
        .arg(name)
        .query_async(&mut connection)
        .await
        .unwrap();
    if let Some(method) = set.strip_prefix("ready:") {
        let _: () = redis::cmd("SADD")
            .arg(format!("{tag}:methods"))
            .arg(method)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}

/// The fields of a hand-written task record.
type Fields<'a> = Vec<(&'a str, &'a [u8])>;

/// A task whose `created_at` is past year 9999 (what the server once
/// stored for `9999-12-31T23:59:59-01:00`): JSON no reader can decode.
fn year_10000(n: u64) -> String {
    let mut task = serde_json::to_value(task(n)).unwrap();
    task["created_at"] = json!("+10000-01-01T00:59:59Z");
    task.to_string()
}

/// A task put with a dedupe key of its own holds the key the crate names
/// (`stream_rpc_queue::dedupe_key`), as in memory: one helper, one prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_dedupe_key_is_held_under_the_crates_name() {
    use stream_rpc::tasks::TaskOptions;
    let server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default()).await;
        let job = task(1);
        let mut options = TaskOptions::default();
        options.dedupe = Some("report:2026-12".into());
        assert_eq!(queue.put_with(&job, &options).await.unwrap(), Put::Queued);
        let key = stream_rpc_queue::dedupe_key(&job, &options);
        assert!(key.starts_with("d:"), "{key}");
        let held: i64 = command(&server, "EXISTS", &[&format!("{{stream-rpc}}:key:{key}")]).await;
        assert_eq!(held, 1, "{key} is not held");
    })
    .await;
}

/// Makes the schedule `name` due at 1 ms past the epoch, its record (`def`)
/// written by hand when given.
async fn due_schedule(server: &RedisServer, name: &str, def: Option<&str>) {
    let key = format!("{{stream-rpc}}:schedule:{name}");
    if let Some(def) = def {
        let _: i64 = command(server, "HSET", &[&key, "def", def, "origin", "0"]).await;
    }
    let _: i64 = command(server, "HSET", &[&key, "next", "1"]).await;
    let _: i64 = command(server, "ZADD", &["{stream-rpc}:ticks", "1", name]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_that_cannot_fire_again_does_not_block_the_others() {
    use stream_rpc::tasks::{Every, Schedule};
    let server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default()).await;
        let every = Every::Interval {
            every: Duration::from_secs(60),
        };
        queue
            .put_schedule(&Schedule::new("good", "m", json!(1), every))
            .await
            .unwrap();
        due_schedule(&server, "good", None).await;
        // Kept from before year fields were refused: no tick after 2020.
        let ended = Schedule::new(
            "ended",
            "m",
            json!(2),
            Every::Cron {
                cron: "0 0 0 1 1 * 2020".into(),
            },
        );
        let ended = serde_json::to_string(&ended).unwrap();
        due_schedule(&server, "ended", Some(&ended)).await;
        due_schedule(&server, "garbage", Some("not a schedule")).await;
        let fired = queue
            .fire_schedules()
            .await
            .expect("the others fire all the same");
        assert_eq!(fired.tasks.len(), 2, "{fired:?}");
        let left: Vec<String> = queue
            .schedules()
            .await
            .unwrap()
            .into_iter()
            .map(|info| info.schedule.name)
            .collect();
        assert_eq!(left, ["good"]);
        let ticks: i64 = command(&server, "ZCARD", &["{stream-rpc}:ticks"]).await;
        assert_eq!(ticks, 1);
        let again = queue.fire_schedules().await.unwrap();
        assert!(
            again.tasks.is_empty() && again.next_at.is_some(),
            "{again:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_dead_letter_is_skipped_and_the_others_listed() {
    let server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default().with_max_attempts(1)).await;
        let good = task(1);
        queue.put(&good).await.unwrap();
        let short = Duration::from_millis(200);
        queue.lease("w", short).await.unwrap().unwrap();
        tokio::time::sleep(short + Duration::from_millis(100)).await;
        assert!(queue.lease("w", LEASE).await.unwrap().is_none());
        // Dead letters no reader can decode: a time past year 9999, not
        // JSON, not UTF-8, and no record at all.
        let year_10000 = year_10000(2);
        let dead: [(&str, Fields); 4] = [
            (
                "x:2",
                vec![("task", year_10000.as_bytes()), ("s", b"dead"), ("a", b"5")],
            ),
            ("x:3", vec![("task", b"garbage".as_slice()), ("s", b"dead")]),
            ("x:4", vec![("task", b"\xff\xfe{".as_slice()), ("a", b"5")]),
            ("x:5", vec![]),
        ];
        for (n, (name, fields)) in dead.iter().enumerate() {
            hand_written(&server, name, fields, "dead", 1_000_000 + n as u64).await;
        }
        // A good one after them too.
        queue.put(&task(3)).await.unwrap();
        queue.lease("w", short).await.unwrap().unwrap();
        tokio::time::sleep(short + Duration::from_millis(100)).await;
        assert!(queue.lease("w", LEASE).await.unwrap().is_none());
        let letters = queue
            .dead_letters()
            .await
            .expect("the readable dead letters, the others skipped");
        let listed: Vec<u64> = letters.tasks.iter().map(|dead| dead.task.id).collect();
        assert_eq!((listed, letters.skipped), (vec![1, 3], 4));
        assert_eq!(queue.dead().await.unwrap().len(), 2);
        // Listing them skips those that cannot be read too.
        let listed = queue.list(TaskState::Dead, 100).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(queue.requeue(TaskRef::of(&good)).await.unwrap());
        assert_eq!(queue.purge_dead().await.unwrap(), 5);
        assert!(queue.dead().await.unwrap().is_empty());
        let left: Vec<String> = command(&server, "KEYS", &["{stream-rpc}:task:x:*"]).await;
        assert!(left.is_empty(), "{left:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_task_is_a_dead_letter_at_once_and_the_next_is_leased() {
    let server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default()).await;
        // Tasks no reader can decode ahead of a good one (scored before
        // any task put): a time past year 9999, garbage, bytes that are
        // not UTF-8, a name with no record.
        let year_10000 = year_10000(2);
        let queued = |task: &'static [u8]| {
            vec![
                ("task", task),
                ("s", b"queued".as_slice()),
                ("m", b"parse_article".as_slice()),
                ("x", b"5".as_slice()),
            ]
        };
        let year_10000: &'static [u8] = Box::leak(year_10000.into_bytes().into_boxed_slice());
        for (n, (name, fields)) in [
            ("x:2", queued(year_10000)),
            ("x:3", queued(b"garbage")),
            ("x:4", queued(b"\xff\xfe{")),
        ]
        .into_iter()
        .enumerate()
        {
            hand_written(&server, name, &fields, "ready:parse_article", n as u64).await;
        }
        let good = task(5);
        queue.put(&good).await.unwrap();
        let leased = queue
            .lease("w", LEASE)
            .await
            .expect("a lease past the undecodable tasks")
            .expect("the good task");
        assert_eq!((leased.task.clone(), leased.attempt), (good.clone(), 1));
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.queued, stats.leased, stats.dead), (0, 1, 3));
        let letters = queue.dead_letters().await.unwrap();
        assert_eq!((letters.tasks.len(), letters.skipped), (0, 3));
        assert_eq!(
            queue.ack(TaskRef::of(&good), "w", &json!(5)).await.unwrap(),
            Acked::Done
        );
        assert_eq!(queue.purge_dead().await.unwrap(), 3);
        assert!(queue.lease("w", LEASE).await.unwrap().is_none());
        // A name in the ready set with no record behind it is dropped.
        hand_written(&server, "x:9", &[], "ready:parse_article", 0).await;
        assert!(queue.lease("w", LEASE).await.unwrap().is_none());
    })
    .await;
}

/// Redis over TLS (`rediss://`), with the test support's certificates.
#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use stream_rpc_queue::RedisTls;
    use stream_rpc_test_support::tls_file;

    /// Settings for the TLS port of `server`, trusting `ca` (a file of
    /// [`tls_file`]).
    fn over_tls(server: &RedisServer, ca: &str) -> RedisSettings {
        RedisSettings::new(server.tls_url())
            .with_tls(RedisTls::new().with_ca_file(tls_file(ca)))
            .with_response_timeout(Duration::from_secs(2))
    }

    #[tokio::test]
    async fn the_queue_works_over_tls_with_a_private_ca() {
        let server = RedisServer::start_tls(false);
        bounded(async {
            let secure = RedisQueue::connect(over_tls(&server, "ca.pem"))
                .await
                .expect("the TLS port, trusted through the test CA");
            put_lease_ack(&secure, 0, 20).await;
            let stats = secure.stats().await.unwrap();
            assert_eq!((stats.done, stats.queued, stats.leased), (20, 0, 0));
            // The same Redis, seen through its plain port: one queue.
            let plain = queue(&server, QueueSettings::default()).await;
            assert_eq!(plain.stats().await.unwrap().done, 20);
        })
        .await;
    }

    #[tokio::test]
    async fn a_redis_certificate_nobody_trusted_is_refused() {
        let server = RedisServer::start_tls(false);
        bounded(async {
            // A CA that did not sign Redis's certificate, then the system's
            // trust store, which does not hold the test CA.
            for settings in [
                over_tls(&server, "other-ca.pem"),
                RedisSettings::new(server.tls_url()),
            ] {
                let err = RedisQueue::connect(settings).await.unwrap_err();
                assert!(matches!(err, QueueError::Unavailable(_)), "{err}");
                assert!(err.to_string().contains("certificate"), "{err}");
            }
            // A host the certificate does not name.
            let wrong_host = server.tls_url().replace("127.0.0.1", "127.0.0.2");
            let settings = RedisSettings::new(wrong_host)
                .with_tls(RedisTls::new().with_ca_file(tls_file("ca.pem")));
            let err = RedisQueue::connect(settings).await.unwrap_err();
            assert!(err.to_string().contains("certificate"), "{err}");
            // A file that is not PEM, and one that is not there: named.
            let not_pem = RedisSettings::new(server.tls_url())
                .with_tls(RedisTls::new().with_ca_file(tls_file("README.md")));
            let err = RedisQueue::connect(not_pem).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    QueueError::Invalid {
                        setting: stream_rpc_queue::ENV_TLS_CA,
                        ..
                    }
                ),
                "{err}"
            );
            let key_swapped = RedisSettings::new(server.tls_url()).with_tls(
                RedisTls::new()
                    .with_client_identity(tls_file("client.pem"), tls_file("client.pem")),
            );
            let err = RedisQueue::connect(key_swapped).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    QueueError::Invalid {
                        setting: stream_rpc_queue::ENV_TLS_KEY,
                        ..
                    }
                ),
                "{err}"
            );
            let missing = RedisSettings::new(server.tls_url())
                .with_tls(RedisTls::new().with_ca_file(tls_file("missing.pem")));
            let err = RedisQueue::connect(missing).await.unwrap_err();
            assert!(err.to_string().contains("missing.pem"), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn a_redis_that_asks_for_a_client_certificate_gets_one() {
        let server = RedisServer::start_tls(true);
        bounded(async {
            let err = RedisQueue::connect(over_tls(&server, "ca.pem"))
                .await
                .unwrap_err();
            assert!(matches!(err, QueueError::Unavailable(_)), "{err}");
            let settings = RedisSettings::new(server.tls_url()).with_tls(
                RedisTls::new()
                    .with_ca_file(tls_file("ca.pem"))
                    .with_client_identity(tls_file("client.pem"), tls_file("client.key")),
            );
            let queue = RedisQueue::connect(settings)
                .await
                .expect("shown the client certificate, Redis lets the queue in");
            put_lease_ack(&queue, 0, 3).await;
            assert_eq!(queue.stats().await.unwrap().done, 3);
        })
        .await;
    }
}
