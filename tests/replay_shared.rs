//! Replay protection shared by two servers through Redis: a token accepted
//! by one is refused by the other; while Redis is away each server goes on
//! with its own memory. A real `redis-server` per test.

mod common;

#[path = "../stream-rpc-queue/tests/support/mod.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use redis_support::RedisServer;
use serde_json::json;
use stream_rpc::{Connector, Endpoint, ShutdownHandle};
use stream_rpc_queue::{RedisReplayStore, RedisSettings, RedisTls};
use tokio::task::JoinHandle;

struct Shared {
    port: u16,
    stop: ShutdownHandle,
    task: JoinHandle<Result<(), stream_rpc::Error>>,
}

/// A server whose replay store is on the test's Redis.
async fn server(redis: &RedisServer, key: &str) -> Shared {
    server_on(RedisSettings::new(redis.url()), key).await
}

/// A server whose replay store is on the Redis of `redis`.
async fn server_on(redis: RedisSettings, key: &str) -> Shared {
    let store = RedisReplayStore::connect(&redis, Duration::from_secs(300), 1 << 16)
        .await
        .expect("the test's redis-server");
    let endpoint = Endpoint::builder(config(key, 0).build().unwrap())
        .replay_store(Arc::new(store))
        .build();
    let server = Connector::with_endpoint(endpoint).bind().await.unwrap();
    let port = server.local_addr().port();
    let stop = server.shutdown_handle();
    let task = tokio::spawn(server.serve(TestService::default()));
    Shared { port, stop, task }
}

impl Shared {
    async fn stop(self) {
        self.stop.shutdown();
        self.task.await.unwrap().unwrap();
    }
}

/// A ping sealed once, as a line, and its id.
fn sealed_ping(raw: &mut RawPeer, text: &str) -> (String, u64) {
    let packet = raw.packet("ping", json!(text));
    (
        format!("{}\n", raw.fernet.encrypt(&packet.to_json().unwrap())),
        packet.id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_accepted_by_one_server_is_refused_by_the_other() {
    let redis = RedisServer::start_tls(false);
    bounded(async {
        let key = new_key();
        let a = server(&redis, &key).await;
        // The other server reaches the same Redis over TLS.
        let tls = RedisTls::new().with_ca_file(redis_support::tls_file("ca.pem"));
        let b = server_on(RedisSettings::new(redis.tls_url()).with_tls(tls), &key).await;
        let mut to_a = RawPeer::connect(a.port, &key).await;
        let (line, id) = sealed_ping(&mut to_a, "captured");
        to_a.send_raw(line.as_bytes()).await;
        assert_eq!(to_a.recv_reply(id).await.payload, json!("captured"));
        // The same bytes, played to the other server: no answer.
        let mut to_b = RawPeer::connect(b.port, &key).await;
        to_b.send_raw(line.as_bytes()).await;
        ping_is_next(&mut to_b).await;
        // A's own answer, reflected to B: refused as well (three refused
        // tokens in a row close the connection).
        let id = to_a.request("ping", json!("original")).await;
        let reply = to_a.recv_line().await.unwrap();
        let opened = stream_rpc::Packet::from_json(&to_a.fernet.decrypt(&reply).unwrap()).unwrap();
        assert_eq!(opened.reply_to.unwrap().id, id);
        let mut reflector = RawPeer::connect(b.port, &key).await;
        for _ in 0..3 {
            reflector.send_raw(format!("{reply}\n").as_bytes()).await;
        }
        reflector.expect_closed().await;
        a.stop().await;
        b.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_away_a_server_goes_on_with_its_own_memory() {
    let mut redis = RedisServer::start();
    bounded(async {
        let key = new_key();
        let a = server(&redis, &key).await;
        let mut raw = RawPeer::connect(a.port, &key).await;
        let (line, id) = sealed_ping(&mut raw, "before");
        raw.send_raw(line.as_bytes()).await;
        assert_eq!(raw.recv_reply(id).await.payload, json!("before"));
        redis.kill();
        // New tokens are still served...
        let (fresh, id) = sealed_ping(&mut raw, "during");
        raw.send_raw(fresh.as_bytes()).await;
        assert_eq!(raw.recv_reply(id).await.payload, json!("during"));
        // ...and a replay of one this server saw is still refused.
        raw.send_raw(line.as_bytes()).await;
        raw.send_raw(fresh.as_bytes()).await;
        ping_is_next(&mut raw).await;
        a.stop().await;
    })
    .await;
}

/// What the shared store costs a client making one call at a time:
/// `cargo test --release --test replay_shared -- --ignored --nocapture`.
/// It measures, asserts nothing; the figures are in docs/BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand in release"]
async fn measure_the_cost_of_the_shared_store() {
    let redis = RedisServer::start();
    let key = new_key();
    let calls = 5_000;
    for shared in [false, true] {
        let (port, stop) = if shared {
            let s = server(&redis, &key).await;
            (s.port, s.stop)
        } else {
            let s = TestServer::start(TestService::default(), config(&key, 0), &key).await;
            (s.port, s.shutdown)
        };
        let client = Connector::new(config(&key, port).build().unwrap())
            .connect_client()
            .await
            .unwrap();
        let started = std::time::Instant::now();
        for n in 0..calls {
            client.session().call("ping", json!(n)).await.unwrap();
        }
        let elapsed = started.elapsed();
        println!(
            "{}: {calls} sequential calls in {elapsed:.2?}: {:.0} calls/s, {:.1} µs per call",
            if shared {
                "Redis replay store"
            } else {
                "memory replay store"
            },
            f64::from(calls) / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / f64::from(calls)
        );
        stop.shutdown();
    }
}
