//! What only Redis can do to the queue: die and come back, be shared by
//! several servers, hold many tasks. A real `redis-server` per test.

use std::time::Duration;

use serde_json::json;
use stream_rpc::Packet;
use stream_rpc_queue::testing::task;
use stream_rpc_queue::{
    Acked, Put, QueueError, QueueSettings, RedisQueue, RedisSettings, TaskQueue, TaskRef,
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
        assert!(b.put(&task(1)).await.unwrap().is_duplicate());
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

/// Waits until the names and results of done tasks have expired: the
/// tasks stream, its refs and leases, the stats, and the one task left
/// leased and its name.
async fn wait_for_expiry(server: &RedisServer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let keys: u64 = command(server, "DBSIZE", &[]).await;
        if keys <= 5 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{keys} keys still there after the retention window"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let length: u64 = command(server, "XLEN", &[&format!("{tag}:tasks")]).await;
    let refs: u64 = command(server, "HLEN", &[&format!("{tag}:refs")]).await;
    let leases: u64 = command(server, "ZCARD", &[&format!("{tag}:leases")]).await;
    assert_eq!(
        (length, refs, leases),
        (1, 1, 1),
        "only the one task left leased"
    );
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
        // One task stays leased throughout, so the stream is never empty.
        queue.put(&task(u64::MAX)).await.unwrap();
        queue.lease("w", LEASE).await.unwrap().unwrap();
        // A first round brings Redis's tables to their working size (and
        // every script and command the check uses is run once)...
        put_lease_ack(&queue, 0, 5_000).await;
        leftovers(&server, &queue).await;
        wait_for_expiry(&server).await;
        let before = settled_memory(&server).await;
        // ...and a second round of as many must leave memory where it was.
        put_lease_ack(&queue, 5_000, 10_000).await;
        assert_eq!(queue.stats().await.unwrap().done, 10_000);
        leftovers(&server, &queue).await;
        wait_for_expiry(&server).await;
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

/// Adds an entry to a stream on a connection of its own; its id.
async fn xadd(server: &RedisServer, stream: &str, fields: &[(&str, &[u8])]) -> String {
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut command = redis::cmd("XADD");
    command.arg(stream).arg("*");
    for (name, value) in fields {
        command.arg(*name).arg(*value);
    }
    command.query_async(&mut connection).await.unwrap()
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
        // Dead letters no reader can decode, as an older version or a
        // hand could have left them: a time past year 9999 (what the
        // server once stored for `9999-12-31T23:59:59-01:00`), not JSON,
        // not UTF-8, and no task at all.
        let dead = "{stream-rpc}:dead";
        let mut year_10000 = serde_json::to_value(task(2)).unwrap();
        year_10000["created_at"] = json!("+10000-01-01T00:59:59Z");
        let year_10000 = year_10000.to_string();
        for fields in [
            vec![
                ("task", year_10000.as_bytes()),
                ("ref", b"x:2"),
                ("key", b"k2"),
            ],
            vec![
                ("task", b"garbage".as_slice()),
                ("ref", b"x:3"),
                ("key", b"k3"),
            ],
            vec![("task", b"\xff\xfe{".as_slice()), ("attempts", b"5")],
            vec![("attempts", b"1".as_slice())],
        ] {
            xadd(&server, dead, &fields).await;
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
        assert_eq!(queue.stats().await.unwrap().dead, 6);
        assert!(queue.requeue(TaskRef::of(&good)).await.unwrap());
        assert_eq!(queue.purge_dead().await.unwrap(), 5);
        assert!(queue.dead().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_task_is_a_dead_letter_at_once_and_the_next_is_leased() {
    let server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default()).await;
        // The stream and its group exist, as after any put.
        let first = task(1);
        queue.put(&first).await.unwrap();
        queue.lease("w", LEASE).await.unwrap().unwrap();
        queue
            .ack(TaskRef::of(&first), "w", &json!(1))
            .await
            .unwrap();
        // Tasks no reader can decode ahead of a good one: a time past year
        // 9999, garbage without a name, bytes that are not UTF-8.
        let mut year_10000 = serde_json::to_value(task(2)).unwrap();
        year_10000["created_at"] = json!("+10000-01-01T00:59:59Z");
        let year_10000 = year_10000.to_string();
        let tasks = "{stream-rpc}:tasks";
        xadd(
            &server,
            tasks,
            &[
                ("task", year_10000.as_bytes()),
                ("ref", b"x:2"),
                ("key", b"k2"),
            ],
        )
        .await;
        xadd(&server, tasks, &[("task", b"garbage".as_slice())]).await;
        xadd(
            &server,
            tasks,
            &[("task", b"\xff\xfe{".as_slice()), ("ref", b"x:4")],
        )
        .await;
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
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_collision_left_by_an_older_version_does_not_break_the_other_task() {
    let server = RedisServer::start();
    bounded(async {
        let queue = queue(&server, QueueSettings::default().with_max_attempts(1)).await;
        let first = task(1);
        queue.put(&first).await.unwrap();
        // What an older version did for a second task put under the same
        // name: a second entry, and the name's mapping pointed at it.
        let mut second = task(2);
        second.peer = first.peer;
        second.id = first.id;
        let name = TaskRef::of(&first).to_string();
        let json = serde_json::to_string(&second).unwrap();
        let key = stream_rpc_queue::dedup_key(&second.method, &second.payload);
        let id = xadd(
            &server,
            "{stream-rpc}:tasks",
            &[
                ("task", json.as_bytes()),
                ("ref", name.as_bytes()),
                ("key", key.as_bytes()),
            ],
        )
        .await;
        let _: () = command(&server, "HSET", &["{stream-rpc}:refs", &name, &id]).await;
        // The first task dies; dead-lettering it leaves the second's name.
        let short = Duration::from_millis(200);
        assert_eq!(queue.lease("w1", short).await.unwrap().unwrap().task, first);
        tokio::time::sleep(short + Duration::from_millis(100)).await;
        let leased = queue.lease("w2", LEASE).await.unwrap().unwrap();
        assert_eq!(leased.task, second);
        assert_eq!(queue.dead().await.unwrap()[0].task, first);
        assert_eq!(
            queue
                .ack(TaskRef::of(&second), "w2", &json!("second"))
                .await
                .unwrap(),
            Acked::Done,
            "the second task's name still names it"
        );
        // The first can still be requeued by its name, now that it is free.
        assert!(queue.requeue(TaskRef::of(&first)).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consumers_that_hold_nothing_are_removed() {
    let server = RedisServer::start();
    bounded(async {
        let idle = Duration::from_secs(1);
        let started = tokio::time::Instant::now();
        let queue = RedisQueue::connect(
            RedisSettings::new(server.url())
                .with_consumer_idle(idle)
                .with_response_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
        let held = task(1);
        queue.put(&held).await.unwrap();
        queue.lease("holder", LEASE).await.unwrap().unwrap();
        // Workers that did one task each and went away (Redis makes a
        // consumer when it first hands it an entry).
        for n in 0..20 {
            let worker = format!("gone-{n}");
            queue.put(&task(100 + n)).await.unwrap();
            let leased = queue.lease(&worker, LEASE).await.unwrap().unwrap();
            queue
                .ack(TaskRef::of(&leased.task), &worker, &json!(n))
                .await
                .unwrap();
        }
        let consumers = |server: &RedisServer| {
            let url = server.url();
            async move {
                let client = redis::Client::open(url).unwrap();
                let mut connection = client.get_multiplexed_async_connection().await.unwrap();
                let info: Vec<std::collections::HashMap<String, redis::Value>> =
                    redis::cmd("XINFO")
                        .arg("CONSUMERS")
                        .arg("{stream-rpc}:tasks")
                        .arg("workers")
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                let mut names: Vec<String> = info
                    .iter()
                    .map(|consumer| redis::from_redis_value_ref(&consumer["name"]).unwrap())
                    .collect();
                names.sort();
                names
            }
        };
        // (Unless this machine took longer than `idle` so far, when a sweep
        // may already have run.)
        if started.elapsed() < idle {
            assert_eq!(consumers(&server).await.len(), 21);
        }
        tokio::time::sleep(idle + Duration::from_millis(100)).await;
        // The next lease removes those idle with nothing pending; the one
        // holding a task stays, and its ack counts.
        queue.put(&task(2)).await.unwrap();
        assert!(queue.lease("next", LEASE).await.unwrap().is_some());
        assert_eq!(consumers(&server).await, ["holder", "next"]);
        assert_eq!(
            queue
                .ack(TaskRef::of(&held), "holder", &json!(1))
                .await
                .unwrap(),
            Acked::Done
        );
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
