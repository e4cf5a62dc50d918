//! Soak tests: many connect/disconnect cycles leave no task, file
//! descriptor or memory behind on the server, and many calls over one
//! connection keep memory flat.
//!
//! CI runs small counts; the full counts of docs/TESTING.md are
//!
//! ```text
//! SOAK_CYCLES=10000 SOAK_CALLS=1000000 cargo test --release --test soak -- --nocapture
//! ```
//!
//! Both ends run in this process, so the figures cover both; the tests run
//! one at a time so that they do not measure each other.

mod common;

use std::time::Duration;
use stream_rpc::Caller;

use common::*;
use serde_json::json;
use stream_rpc::Limits;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// One soak test at a time: they measure the whole process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn count_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// What the process holds.
#[derive(Debug, Clone, Copy)]
struct Usage {
    tasks: usize,
    fds: usize,
    rss_kib: u64,
}

fn usage() -> Usage {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count());
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    Usage {
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        fds,
        rss_kib: pages * 4,
    }
}

/// Waits (bounded) until the process holds no more tasks and descriptors
/// than `baseline`: sessions end a moment after their peers leave.
async fn settle(baseline: Usage) -> Usage {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = usage();
        if (now.tasks <= baseline.tasks && now.fds <= baseline.fds)
            || tokio::time::Instant::now() > deadline
        {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A replay store budget that holds several seconds of the soak's traffic
/// (a smaller one fails closed and refuses it), reached within the warm-up
/// by the growing tables: after that they stay the same size, so growth
/// would be a leak.
fn soak_limits() -> Limits {
    Limits::default().with_replay_cache_entries(1 << 15)
}

/// One cycle, of three kinds in turn: a bare TCP connect and close; a
/// client that says hello and leaves at once; a client that makes a call
/// and closes gracefully.
async fn cycle(server: &TestServer, n: u64) {
    match n % 3 {
        0 => drop(
            TcpStream::connect(("127.0.0.1", server.port))
                .await
                .unwrap(),
        ),
        1 => {
            let client = server.client().await;
            client.notify("ping", json!(n)).await.unwrap();
            drop(client);
        }
        _ => {
            let client = server.client().await;
            let reply = client.call("ping", json!(n)).await.unwrap();
            assert_eq!(reply.payload, json!(n));
            client.close();
            client.join().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_disconnect_cycles_leave_no_task_fd_or_memory_behind() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let cycles = count_from_env("SOAK_CYCLES", 900);
    let server = TestServer::with(|c| c.limits(soak_limits())).await;
    for n in 0..300 {
        cycle(&server, n).await;
    }
    let before = settle(usage()).await;
    let started = std::time::Instant::now();
    for n in 0..cycles {
        cycle(&server, n).await;
    }
    let after = settle(before).await;
    println!(
        "{cycles} connect/disconnect cycles in {:.1?}: tasks {} -> {}, fds {} -> {}, RSS {} -> {} KiB",
        started.elapsed(),
        before.tasks,
        after.tasks,
        before.fds,
        after.fds,
        before.rss_kib,
        after.rss_kib
    );
    assert!(
        after.tasks <= before.tasks,
        "tasks left behind: {after:?} vs {before:?}"
    );
    assert!(
        after.fds <= before.fds,
        "descriptors left behind: {after:?} vs {before:?}"
    );
    let grown = after.rss_kib.saturating_sub(before.rss_kib);
    assert!(grown < 4 * 1024, "resident memory grew by {grown} KiB");
    server.assert_healthy().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_over_one_connection_keep_memory_flat() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let calls = count_from_env("SOAK_CALLS", 20_000);
    let lanes = 16;
    let server = TestServer::with(|c| c.limits(soak_limits())).await;
    let client = small_cache_client(&server).await;
    let run = |count: u64| {
        let session = client.connection().expect("connected");
        async move {
            let mut callers = Vec::new();
            for lane in 0..lanes {
                let session = session.clone();
                callers.push(tokio::spawn(async move {
                    for n in (lane..count).step_by(lanes as usize) {
                        let reply = session.call("ping", json!(n)).await.unwrap();
                        assert_eq!(reply.payload, json!(n));
                    }
                }));
            }
            for caller in callers {
                caller.await.unwrap();
            }
        }
    };
    // Warm-up: caches, buffers and the allocator reach their working size.
    run(calls / 4).await;
    let before = usage();
    let started = std::time::Instant::now();
    run(calls).await;
    let elapsed = started.elapsed();
    // A caller's task is counted until the runtime has released it, a
    // moment after its join handle returned.
    let after = settle(before).await;
    println!(
        "{calls} calls over one connection in {elapsed:.1?}: RSS {} -> {} KiB, tasks {} -> {}",
        before.rss_kib, after.rss_kib, before.tasks, after.tasks
    );
    let grown = after.rss_kib.saturating_sub(before.rss_kib);
    assert!(grown < 2 * 1024, "resident memory grew by {grown} KiB");
    assert!(after.tasks <= before.tasks);
    client.close();
    client.join().await;
    server.stop().await;
}

/// A client whose own replay cache is as small as the server's.
async fn small_cache_client(server: &TestServer) -> stream_rpc::Client {
    stream_rpc::Connector::new(
        config(&server.key, server.port)
            .limits(soak_limits())
            .build()
            .unwrap(),
    )
    .connect(TestService::default())
    .await
    .unwrap()
}
