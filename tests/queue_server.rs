//! The example queue server on a shared Redis queue, over loopback: its
//! methods as a peer in any language calls them, two servers sharing one
//! queue, a server that goes away holding leases, a worker that never
//! saves. A real `redis-server` per test (`stream-rpc-test-support`).

mod common;

use std::time::Duration;
use stream_rpc::Caller;

use common::{TestServer, bounded, config, new_key};
use serde_json::json;
use stream_rpc::{Connection, Connector, Packet};
use stream_rpc_example_queue::QueueServer;
use stream_rpc_queue::{QueueConfig, QueueSettings};
use stream_rpc_test_support::RedisServer;

/// A queue server on the test's Redis, leasing tasks for `lease`.
async fn server_on(redis: &RedisServer, key: &str, lease: Duration) -> TestServer {
    server_with(redis, key, lease, QueueSettings::default()).await
}

/// [`server_on`] with these queue settings.
async fn server_with(
    redis: &RedisServer,
    key: &str,
    lease: Duration,
    settings: QueueSettings,
) -> TestServer {
    let queue = QueueConfig {
        queue: redis.url(),
        lease,
        settings,
        ..QueueConfig::default()
    }
    .open()
    .await
    .expect("the test's redis-server");
    TestServer::start(QueueServer::new(queue, lease), config(key, 0), key).await
}

/// A worker's connection to `server`: a client that serves nothing.
async fn worker(server: &TestServer) -> (stream_rpc::Client, Connection) {
    let client = Connector::new(config(&server.key, server.port).build().unwrap())
        .connect(())
        .await
        .unwrap();
    let session = client.connection().expect("connected");
    (client, session)
}

async fn put(session: &Connection, task: &Packet) -> serde_json::Value {
    let reply = session
        .call("put_in_queue", serde_json::to_value(task).unwrap())
        .await
        .unwrap();
    assert_eq!(reply.method, "pong");
    reply.payload
}

async fn take(session: &Connection) -> Option<Packet> {
    let reply = session
        .call("get_task_from_queue", json!(null))
        .await
        .unwrap();
    (reply.method != "pong").then(|| {
        let mut task = reply;
        task.reply_to = None;
        task
    })
}

async fn save(session: &Connection, task: &Packet, article: serde_json::Value) -> bool {
    save_answer(session, task, article).await["saved"] == json!(true)
}

/// The payload of the answer to `save_parsed_article`.
async fn save_answer(
    session: &Connection,
    task: &Packet,
    article: serde_json::Value,
) -> serde_json::Value {
    let reply = session
        .call(
            "save_parsed_article",
            json!({"task": {"peer": task.peer, "id": task.id}, "article": article}),
        )
        .await
        .unwrap();
    assert_eq!(reply.method, "pong");
    reply.payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_methods_as_a_peer_calls_them() {
    let redis = RedisServer::start();
    bounded(async {
        let key = new_key();
        let server = server_on(&redis, &key, Duration::from_secs(30)).await;
        let (_client, session) = worker(&server).await;
        let task = session.packet("parse_article", json!({"article_id": 3249}));
        assert_eq!(put(&session, &task).await, json!({"queued": true}));
        let again = session.packet("parse_article", json!({"article_id": 3249}));
        assert_eq!(
            put(&session, &again).await,
            json!({"queued": false, "reason": "duplicate"})
        );
        // The task comes back as it was put.
        assert_eq!(take(&session).await, Some(task.clone()));
        assert_eq!(take(&session).await, None);
        let article = json!({"title": "Queues", "words": 900});
        assert!(save(&session, &task, article.clone()).await);
        assert_eq!(
            save_answer(&session, &task, article.clone()).await,
            json!({"saved": false, "reason": "stale"}),
            "saved twice"
        );
        let parsed = session
            .call("get_parsed_article", json!({"article_id": 3249}))
            .await
            .unwrap();
        assert_eq!(
            (parsed.method.as_str(), parsed.payload),
            ("get_parsed_article.reply", article)
        );
        let none = session
            .call("get_parsed_article", json!({"article_id": 1}))
            .await
            .unwrap();
        assert_eq!(none.payload, json!(null));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_worker_went_away_goes_to_another_through_another_server() {
    let redis = RedisServer::start();
    bounded(async {
        let key = new_key();
        let lease = Duration::from_millis(500);
        let first = server_on(&redis, &key, lease).await;
        let second = server_on(&redis, &key, lease).await;
        let (client, session) = worker(&first).await;
        let task = session.packet("parse_article", json!({"article_id": 7}));
        put(&session, &task).await;
        // The same task through the other server is a duplicate.
        let (_other, elsewhere) = worker(&second).await;
        let again = elsewhere.packet("parse_article", json!({"article_id": 7}));
        assert_eq!(
            put(&elsewhere, &again).await,
            json!({"queued": false, "reason": "duplicate"})
        );
        // A worker takes it through the first server, which then goes away
        // with the lease held; the worker is gone too.
        assert_eq!(take(&session).await, Some(task.clone()));
        drop(client);
        first.stop().await;
        // Nothing is handed out while the lease lasts...
        assert_eq!(take(&elsewhere).await, None);
        tokio::time::sleep(lease + Duration::from_millis(200)).await;
        // ...then the task goes to the other worker, through the other server.
        assert_eq!(take(&elsewhere).await, Some(task.clone()));
        assert!(save(&elsewhere, &task, json!("parsed")).await);
        second.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_after_the_lease_went_to_another_worker_is_refused() {
    let redis = RedisServer::start();
    bounded(async {
        let key = new_key();
        let lease = Duration::from_millis(300);
        let server = server_on(&redis, &key, lease).await;
        let (_slow_client, slow) = worker(&server).await;
        let (_quick_client, quick) = worker(&server).await;
        let task = slow.packet("parse_article", json!({"article_id": 8}));
        put(&slow, &task).await;
        assert_eq!(take(&slow).await, Some(task.clone()));
        tokio::time::sleep(lease + Duration::from_millis(100)).await;
        assert_eq!(take(&quick).await, Some(task.clone()));
        assert!(
            !save(&slow, &task, json!("late")).await,
            "a stale save was kept"
        );
        assert!(save(&quick, &task, json!("on time")).await);
        let parsed = quick
            .call("get_parsed_article", json!({"article_id": 8}))
            .await
            .unwrap();
        assert_eq!(parsed.payload, json!("on time"));
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_workers_putting_one_task_through_two_servers_queue_it_once() {
    let redis = RedisServer::start();
    bounded(async {
        let key = new_key();
        let servers = [
            server_on(&redis, &key, Duration::from_secs(30)).await,
            server_on(&redis, &key, Duration::from_secs(30)).await,
        ];
        let mut workers = Vec::new();
        for n in 0..16 {
            workers.push(worker(&servers[n % 2]).await);
        }
        let puts: Vec<_> = workers
            .iter()
            .map(|(_, session)| {
                let session = session.clone();
                tokio::spawn(async move {
                    let task = session.packet("parse_article", json!({"article_id": 99}));
                    put(&session, &task).await
                })
            })
            .collect();
        let mut queued = 0;
        for put in puts {
            if put.await.unwrap() == json!({"queued": true}) {
                queued += 1;
            }
        }
        assert_eq!(queued, 1);
        drop(workers);
        for server in servers {
            server.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_put_or_save_says_why() {
    let redis = RedisServer::start();
    bounded(async {
        let key = new_key();
        let settings = QueueSettings::default()
            .with_max_tasks(2)
            .with_max_result_bytes(64);
        let server = server_with(&redis, &key, Duration::from_secs(30), settings).await;
        let (_client, session) = worker(&server).await;
        let task = session.packet("parse_article", json!({"article_id": 1}));
        assert_eq!(put(&session, &task).await, json!({"queued": true}));
        // Another task under the same peer and id (a peer that counts from
        // the start again): refused, the first one untouched.
        let mut same_name = session.packet("parse_article", json!({"article_id": 2}));
        same_name.id = task.id;
        assert_eq!(
            put(&session, &same_name).await,
            json!({"queued": false, "reason": "name_taken"})
        );
        // The queue holds two at most.
        let second = session.packet("parse_article", json!({"article_id": 3}));
        assert_eq!(put(&session, &second).await, json!({"queued": true}));
        let third = session.packet("parse_article", json!({"article_id": 4}));
        assert_eq!(
            put(&session, &third).await,
            json!({"queued": false, "reason": "full"})
        );
        // An article longer than the queue keeps is refused; the task stays
        // leased, and a shorter save of it counts.
        assert_eq!(take(&session).await, Some(task.clone()));
        assert_eq!(
            save_answer(&session, &task, json!("x".repeat(100))).await,
            json!({"saved": false, "reason": "too_large", "max_bytes": 64})
        );
        assert!(save(&session, &task, json!("short")).await);
        // Done, its name is free again; and there is room for one more.
        assert_eq!(put(&session, &same_name).await, json!({"queued": true}));
        server.stop().await;
    })
    .await;
}
