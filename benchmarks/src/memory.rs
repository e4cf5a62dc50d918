//! Resident memory: per idle connection, and over a million calls on one
//! connection.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::time::Duration;

use stream_rpc::{Cipher, Fernet, Packet};

use crate::systems::{self, System};

/// The process's resident set size in KiB, from /proc/self/status.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Raises the open-file limit to at least `wanted` (as root the hard limit
/// can be raised too); returns the limit in force.
fn raise_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur >= wanted {
            return limit.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return wanted;
        }
        let within = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &within) == 0 {
            return limit.rlim_max;
        }
        limit.rlim_cur
    }
}

pub fn report(smoke: bool) {
    let idle = if smoke { 200 } else { 10_000 };
    let calls = if smoke { 20_000 } else { 1_000_000 };
    idle_connections(idle);
    flat_over_calls(calls);
}

/// Opens `count` connections to a stream-rpc server, each saying hello once
/// (so that its session is fully set up), then holds them idle and measures
/// how much the resident memory grew.
fn idle_connections(count: usize) {
    let limit = raise_fd_limit(2 * count as u64 + 1_000);
    let count = count.min((limit.saturating_sub(1_000) / 2) as usize);
    let config = systems::rpc_config(0, |_, timeouts| {
        timeouts.first_frame = Duration::from_secs(600);
        timeouts.idle = None;
    });
    let server = systems::start_server_with(System::StreamRpc, config);
    let fernet = Fernet::new(systems::key()).expect("key");
    let peer = uuid::Uuid::new_v4();
    let before = rss_kib();
    let mut held = Vec::with_capacity(count);
    let mut reply = [0u8; 1024];
    for id in 0..count {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        let hello = Packet::new(peer, id as u64, "ping", serde_json::json!(""));
        let mut frame = fernet
            .encrypt(&hello.to_json().expect("json"))
            .expect("seal");
        frame.push(b'\n');
        stream.write_all(&frame).expect("hello");
        // Read until the end of the reply line.
        let mut got = 0;
        while !reply[..got].contains(&b'\n') {
            let n = stream.read(&mut reply[got..]).expect("reply");
            assert!(n > 0, "server closed a connection");
            got += n;
        }
        held.push(stream);
    }
    let after = rss_kib();
    let grown = after.saturating_sub(before);
    println!(
        "Idle connections: {count} held after a hello each; resident memory grew by {grown} KiB, \
         {:.1} KiB per connection (target ≤ 32 KiB)",
        grown as f64 / count as f64
    );
    drop(held);
    drop(server);
}

/// Makes `calls` calls over one connection, 64 in flight, and samples the
/// resident memory after each tenth.
fn flat_over_calls(calls: usize) {
    let server = systems::start_server(System::StreamRpc);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let samples = runtime.block_on(async {
        let client = systems::Clients::new(System::StreamRpc, server.addr)
            .connect()
            .await;
        let mut samples = Vec::new();
        let tenth = (calls / 10).max(1);
        for _ in 0..10 {
            let left = Rc::new(Cell::new(tenth));
            let local = tokio::task::LocalSet::new();
            for _ in 0..64 {
                let (client, left) = (client.clone(), left.clone());
                local.spawn_local(async move {
                    while left.get() > 0 {
                        left.set(left.get() - 1);
                        client.call("", b"").await;
                    }
                });
            }
            local.await;
            samples.push(rss_kib());
        }
        samples
    });
    let first = samples[0];
    let last = *samples.last().unwrap_or(&first);
    let peak = samples.iter().copied().max().unwrap_or(first);
    println!(
        "One connection, {calls} calls (64 in flight): resident memory after the first tenth {first} KiB, \
         at the end {last} KiB (change {:+} KiB, peak {peak} KiB); samples: {samples:?}",
        last as i64 - first as i64
    );
}
