//! Replay protection shared by servers through Redis: a token accepted by
//! one is refused by the other, in process and between two `server`
//! example processes on one Redis queue (the default there); while Redis
//! is away every token is refused (or, by choice, each server goes on with
//! its own memory); any other error of Redis refuses; keys expire by the
//! token's own time. A real `redis-server` per test.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stream_rpc::Caller;

use common::*;
use serde_json::json;
use stream_rpc::{Connector, Endpoint, ReceivedToken, ReplayStore, ShutdownHandle, Verdict};
use stream_rpc_queue::{RedisReplayStore, RedisSettings, RedisTls, WhenUnreachable};
use stream_rpc_test_support::{Process, RedisServer, tls_file};
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
    server_with(redis, key, WhenUnreachable::Refuse).await
}

/// A server whose replay store is on the Redis of `redis`, with `policy`.
async fn server_with(redis: RedisSettings, key: &str, policy: WhenUnreachable) -> Shared {
    let store = RedisReplayStore::connect(&redis, Duration::from_secs(300), 1 << 16)
        .await
        .expect("the test's redis-server")
        .when_unreachable(policy);
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
        let tls = RedisTls::new().with_ca_file(tls_file("ca.pem"));
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
async fn while_redis_is_away_a_server_goes_on_with_its_own_memory_when_told_to() {
    let mut redis = RedisServer::start();
    bounded(async {
        let key = new_key();
        let a = server_with(
            RedisSettings::new(redis.url()),
            &key,
            WhenUnreachable::Local,
        )
        .await;
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
            .connect(())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        for n in 0..calls {
            client.call("ping", json!(n)).await.unwrap();
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

/// The `server` example as a process ([`Process`]), waited for from async
/// tests: each blocking wait leaves the runtime's other tasks running.
struct ServerProcess {
    process: Process,
    port: u16,
}

impl ServerProcess {
    /// Starts the example on a free port with the queue on `queue` and
    /// `extra` settings, and waits until it serves.
    fn start(key: &str, queue: &str, extra: &[(&str, &str)]) -> ServerProcess {
        let mut env = vec![
            ("CRYPTO_KEY", key),
            ("STREAM_RPC_HOST", "127.0.0.1"),
            ("STREAM_RPC_PORT", "0"),
            ("STREAM_RPC_QUEUE", queue),
        ];
        env.extend_from_slice(extra);
        let mut process = Process::example("server", &env);
        let port = tokio::task::block_in_place(|| process.serving_port());
        ServerProcess { process, port }
    }

    /// Waits (bounded) until `count` lines hold `needle`; returns the last.
    fn wait_for(&mut self, needle: &str, count: usize) -> String {
        tokio::task::block_in_place(|| self.process.wait_for_count(needle, count))
    }

    /// Stops it (SIGTERM) and reads its output to the end, so that every
    /// line it wrote is seen.
    fn finish(&mut self) {
        self.process.signal("-TERM");
        tokio::task::block_in_place(|| self.process.wait_exit());
    }

    /// Every line seen so far.
    fn log(&self) -> String {
        self.process.output()
    }

    /// How many lines seen so far hold `needle`.
    fn count(&self, needle: &str) -> usize {
        self.process.count(needle)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sent_to_one_server_process_is_refused_by_another_on_the_same_queue() {
    let redis = RedisServer::start();
    bounded(async {
        let key = new_key();
        // Nothing but the queue's URL: the replay store is shared by default.
        let mut a = ServerProcess::start(&key, &redis.url(), &[]);
        let mut b = ServerProcess::start(&key, &redis.url(), &[]);
        for server in [&mut a, &mut b] {
            server.wait_for("replay protection is shared through the queue's Redis", 1);
        }
        // Three tasks queued, so that a lease answered twice would show.
        let mut to_a = RawPeer::connect(a.port, &key).await;
        for n in 0..3 {
            let task = to_a.packet("parse_article", json!({ "article_id": n }));
            let id = to_a
                .request("put_in_queue", serde_json::to_value(&task).unwrap())
                .await;
            assert_eq!(to_a.recv_reply(id).await.payload, json!({"queued": true}));
        }
        // A worker's lease request, captured on its way to A.
        let lease = to_a.packet("get_task_from_queue", json!(null));
        let line = format!("{}\n", to_a.fernet.encrypt(&lease.to_json().unwrap()));
        to_a.send_raw(line.as_bytes()).await;
        assert_eq!(to_a.recv().await.method, "parse_article");
        // Played verbatim to B: no answer, and B's log says why.
        let mut to_b = RawPeer::connect(b.port, &key).await;
        to_b.send_raw(line.as_bytes()).await;
        ping_is_next(&mut to_b).await;
        b.wait_for("dropped a replayed token (accepted before)", 1);
        // The second task was not handed out to the replay: a worker gets it.
        let mut worker = RawPeer::connect(b.port, &key).await;
        let id = worker.request("get_task_from_queue", json!(null)).await;
        let second = worker.recv_reply(id).await;
        assert_eq!(second.payload, json!({ "article_id": 1 }), "{second}");
        // STREAM_RPC_REPLAY=local turns sharing off, with a warning: the
        // same token is then answered by a third server.
        let mut c = ServerProcess::start(&key, &redis.url(), &[("STREAM_RPC_REPLAY", "local")]);
        c.wait_for(
            "STREAM_RPC_REPLAY=local: replay protection is this server's alone",
            1,
        );
        let mut to_c = RawPeer::connect(c.port, &key).await;
        to_c.send_raw(line.as_bytes()).await;
        assert_eq!(to_c.recv().await.method, "parse_article");
        // A value that means nothing stops the server at start.
        let status = Command::new(example("server"))
            .env_clear()
            .envs([
                ("CRYPTO_KEY", key.as_str()),
                ("STREAM_RPC_HOST", "127.0.0.1"),
                ("STREAM_RPC_PORT", "0"),
                ("STREAM_RPC_REPLAY", "off"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success());
    })
    .await;
}

/// Sends three pings on a new connection to `port`: each is answered
/// `unavailable` (nothing run, nothing counted against the peer), and the
/// connection stays open.
async fn three_refused(port: u16, key: &str) {
    let mut raw = RawPeer::connect(port, key).await;
    for _ in 0..3 {
        let id = raw.request("ping", json!("refused")).await;
        let reply = raw.recv_reply(id).await;
        assert_eq!(reply.method, "error", "{reply}");
        assert_eq!(reply.payload["code"], "unavailable", "{reply}");
    }
    let id = raw.request("ping", json!("still open")).await;
    assert_eq!(raw.recv_reply(id).await.payload["code"], "unavailable");
}

/// Pings on one connection until one is answered with its pong (bounded
/// by the test's limit): Redis is back once the store has reconnected.
/// Until then each ping is answered `unavailable`, which is what a worker
/// sees; the pause between tries is the worker's back-off.
async fn answered_again(port: u16, key: &str) {
    let mut raw = RawPeer::connect(port, key).await;
    loop {
        let id = raw.request("ping", json!("back?")).await;
        let reply = raw.recv_reply(id).await;
        if reply.method == "pong" {
            return;
        }
        assert_eq!(reply.payload["code"], "unavailable", "{reply}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_unreachable_a_server_refuses_every_token_and_says_so_once() {
    let mut redis = RedisServer::start();
    bounded(async {
        let key = new_key();
        let mut a = ServerProcess::start(&key, &redis.url(), &[]);
        let mut raw = RawPeer::connect(a.port, &key).await;
        let id = raw.request("ping", json!("before")).await;
        assert_eq!(raw.recv_reply(id).await.method, "pong");
        redis.kill();
        // Every token refused, on two connections: one line says why.
        three_refused(a.port, &key).await;
        three_refused(a.port, &key).await;
        a.wait_for("Redis is unreachable", 1);
        redis.restart();
        answered_again(a.port, &key).await;
        a.finish();
        let log = a.log();
        assert_eq!(a.count("Redis is unreachable"), 1, "{log}");
        assert_eq!(a.count("refusing every token until it is back"), 1, "{log}");
        assert_eq!(a.count("Redis is reachable again"), 1, "{log}");
    })
    .await;
}

/// A client on the test's Redis, for settings and looks behind the store.
async fn redis_client(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Makes every write of `redis` fail with OOM (`on`), or undoes it.
async fn out_of_memory(connection: &mut redis::aio::MultiplexedConnection, on: bool) {
    let (memory, policy) = if on {
        ("1", "noeviction")
    } else {
        ("0", "noeviction")
    };
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(memory)
        .arg("maxmemory-policy")
        .arg(policy)
        .query_async(connection)
        .await
        .unwrap();
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_error_of_redis_refuses_even_in_local_mode_and_is_logged_as_what_it_is() {
    let redis = RedisServer::start();
    bounded(async {
        let mut control = redis_client(&redis).await;
        // In process, with the policy that falls back to local memory when
        // Redis cannot be reached: an OOM is not that, and refuses.
        let store = RedisReplayStore::connect(
            &RedisSettings::new(redis.url()),
            Duration::from_secs(300),
            1 << 10,
        )
        .await
        .unwrap()
        .when_unreachable(WhenUnreachable::Local);
        let token = |n: u64| ReceivedToken {
            fingerprint: store.fingerprint(&n.to_le_bytes()),
            time: Some(now_secs()),
        };
        let mut verdicts = Vec::new();
        out_of_memory(&mut control, true).await;
        store.received(&[token(1), token(2)], &mut verdicts).await;
        assert_eq!(verdicts, [Verdict::Unavailable, Verdict::Unavailable]);
        out_of_memory(&mut control, false).await;
        store.received(&[token(3)], &mut verdicts).await;
        assert_eq!(verdicts, [Verdict::New]);
        // A server process: refused, and one line (not one per frame) names
        // the error.
        let key = new_key();
        let mut a = ServerProcess::start(&key, &redis.url(), &[]);
        out_of_memory(&mut control, true).await;
        three_refused(a.port, &key).await;
        three_refused(a.port, &key).await;
        let line = a.wait_for("replay store: Redis answered an error", 1);
        assert!(line.contains("OOM"), "{line}");
        out_of_memory(&mut control, false).await;
        answered_again(a.port, &key).await;
        a.finish();
        let log = a.log();
        assert_eq!(a.count("replay store: Redis answered an error"), 1, "{log}");
        assert_eq!(a.count("Redis is unreachable"), 0, "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_by_the_tokens_own_time_plus_the_ttl_and_the_skew() {
    let redis = RedisServer::start();
    bounded(async {
        let control = redis_client(&redis).await;
        let store = RedisReplayStore::connect(
            &RedisSettings::new(redis.url()),
            Duration::from_secs(300),
            1 << 10,
        )
        .await
        .unwrap();
        let expires = |fingerprint: u64| {
            let mut control = control.clone();
            async move {
                let at: i64 = redis::cmd("PEXPIRETIME")
                    .arg(format!("{{stream-rpc}}:replay:{fingerprint:016x}"))
                    .query_async(&mut control)
                    .await
                    .unwrap();
                at
            }
        };
        // A token made 200 s ago is kept until its own time + 300 s TTL +
        // 60 s skew (+ 1 s for the whole seconds of its time), not until
        // Redis's now + the window.
        let made = now_secs() - 200;
        let old = ReceivedToken {
            fingerprint: store.fingerprint(b"old"),
            time: Some(made),
        };
        let mut verdicts = Vec::new();
        store.received(&[old], &mut verdicts).await;
        assert_eq!(verdicts, [Verdict::New]);
        assert_eq!(expires(old.fingerprint).await, ((made + 361) * 1000) as i64);
        // Sent tokens: by the time they were sealed by.
        let sent = store.fingerprint(b"sent");
        store.sent(&[sent], made + 5).await;
        assert_eq!(expires(sent).await, ((made + 366) * 1000) as i64);
        store.received(&[old], &mut verdicts).await;
        assert_eq!(verdicts, [Verdict::Replay]);
    })
    .await;
}
