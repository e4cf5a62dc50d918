//! Graceful shutdown under load: every call the server accepted is
//! answered, and the queue example loses no task it acknowledged.

mod common;

use stream_rpc::Caller;
use stream_rpc_example_queue as queue_server;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use serde_json::json;
use stream_rpc::{CallError, Client, Connection, Context, HandlerError, Packet, Protocol, Reply};
use stream_rpc_queue::TaskQueue;
use tokio::sync::Notify;

/// Counts the calls it executes; signals when `goal` have run.
struct Counted {
    executed: AtomicU64,
    goal: u64,
    reached: Notify,
}

impl Protocol for Counted {
    async fn process_message(&self, _ctx: Context, packet: Packet) -> Result<Reply, HandlerError> {
        match packet.method.as_str() {
            "work" => {
                // Some handlers are still running when the shutdown starts.
                for _ in 0..(packet.id % 4) {
                    tokio::task::yield_now().await;
                }
                if self.executed.fetch_add(1, Ordering::SeqCst) + 1 == self.goal {
                    self.reached.notify_one();
                }
                Ok(Reply::message("worked", packet.payload))
            }
            other => Err(HandlerError::unknown_method(other)),
        }
    }
}

/// How the calls of one caller ended.
#[derive(Default)]
struct Tally {
    answered: u64,
    lost: u64,
}

/// Calls `work` until the connection goes; any error but a lost
/// connection fails the test.
async fn keep_calling(session: Connection, caller: u64) -> Tally {
    let mut tally = Tally::default();
    for n in 0.. {
        match session.call("work", json!([caller, n])).await {
            Ok(reply) => {
                assert_eq!(reply.payload, json!([caller, n]), "another call's answer");
                tally.answered += 1;
            }
            Err(CallError::ConnectionLost { .. } | CallError::NotSent { .. }) => {
                tally.lost += 1;
                break;
            }
            Err(other) => panic!("a call failed with {other}"),
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_answers_every_call_it_executed() {
    bounded(async {
        let service = Arc::new(Counted {
            executed: AtomicU64::new(0),
            goal: 2_000,
            reached: Notify::new(),
        });
        let key = new_key();
        let server = TestServer::start(service.clone(), config(&key, 0), &key).await;
        let mut clients: Vec<Client> = Vec::new();
        let mut callers = Vec::new();
        for client_no in 0..6u64 {
            let client = server.client().await;
            for lane in 0..8 {
                let session = client.connection().expect("connected");
                callers.push(tokio::spawn(keep_calling(session, client_no * 8 + lane)));
            }
            clients.push(client);
        }
        let reached = service.reached.notified();
        reached.await;
        server.shutdown.shutdown();
        server.task.await.unwrap().unwrap();

        let mut total = Tally::default();
        for caller in callers {
            let tally = caller.await.unwrap();
            total.answered += tally.answered;
            total.lost += tally.lost;
        }
        let executed = service.executed.load(Ordering::SeqCst);
        // Each of the 48 callers ended on the lost connection...
        assert_eq!(total.lost, 48);
        // ...and every call that ran got its answer back: none ran unanswered.
        assert_eq!(total.answered, executed, "executed {executed}");
        assert!(executed >= 2_000);
        for client in clients {
            client.join().await;
        }
    })
    .await;
}

/// One worker of the queue test: puts tasks and takes tasks until the
/// connection goes; returns the tasks acknowledged and the tasks received.
async fn queue_worker(session: Connection, worker: u64) -> (Vec<u64>, Vec<u64>) {
    let (mut acknowledged, mut received) = (Vec::new(), Vec::new());
    for n in 0.. {
        let task_no = worker * 1_000_000 + n;
        let task = session.packet("parse_article", json!(task_no));
        let put = session
            .call("put_in_queue", serde_json::to_value(&task).unwrap())
            .await;
        match put {
            Ok(reply) => {
                assert_eq!(reply.method, "pong");
                assert_eq!(reply.payload, json!({"queued": true}));
                acknowledged.push(task_no);
            }
            Err(CallError::ConnectionLost { .. } | CallError::NotSent { .. }) => break,
            Err(other) => panic!("put_in_queue failed with {other}"),
        }
        // Take one every other put, so the queue keeps some.
        if n % 2 == 1 {
            match session.call("get_task_from_queue", json!(null)).await {
                Ok(reply) if reply.method == "parse_article" => {
                    received.push(reply.payload.as_u64().expect("a task number"));
                }
                Ok(reply) => assert_eq!(reply.method, "pong", "{reply}"),
                Err(CallError::ConnectionLost { .. } | CallError::NotSent { .. }) => break,
                Err(other) => panic!("get_task_from_queue failed with {other}"),
            }
        }
    }
    (acknowledged, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_loses_no_acknowledged_task_when_shut_down_under_load() {
    bounded(async {
        let queue = Arc::new(queue_server::QueueServer::default());
        let key = new_key();
        let server = TestServer::start(queue.clone(), config(&key, 0), &key).await;
        let mut clients = Vec::new();
        let mut workers = Vec::new();
        for worker in 0..8u64 {
            let client = server.client().await;
            workers.push(tokio::spawn(queue_worker(
                client.connection().expect("connected"),
                worker,
            )));
            clients.push(client);
        }
        // Under load until a good number of tasks went through.
        while queue.stats.tasks_put.load(Ordering::SeqCst) < 1_000 {
            tokio::task::yield_now().await;
        }
        server.shutdown.shutdown();
        server.task.await.unwrap().unwrap();

        let (mut acknowledged, mut received) = (Vec::new(), Vec::new());
        for worker in workers {
            let (acked, got) = worker.await.unwrap();
            acknowledged.extend(acked);
            received.extend(got);
        }
        // What is still queued, taken out by one last worker.
        let mut left = Vec::new();
        while let Some(leased) = queue
            .queue()
            .lease("drain", std::time::Duration::from_secs(30))
            .await
            .unwrap()
        {
            left.push(leased.task.payload.as_u64().unwrap());
        }
        let received_set: HashSet<u64> = received.iter().copied().collect();
        let left_set: HashSet<u64> = left.iter().copied().collect();
        // No task was handed out twice, or handed out and still queued.
        assert_eq!(received_set.len(), received.len(), "a task came twice");
        assert!(received_set.is_disjoint(&left_set));
        // Every acknowledged task reached a worker or is still queued.
        let lost: Vec<&u64> = acknowledged
            .iter()
            .filter(|task| !received_set.contains(task) && !left_set.contains(task))
            .collect();
        assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
        // Nothing was stored that the server did not count, and the
        // server's counters agree with what the workers saw.
        let put = queue.stats.tasks_put.load(Ordering::SeqCst);
        let handed_out = queue.stats.tasks_handed_out.load(Ordering::SeqCst);
        assert_eq!(put, handed_out + left.len() as u64);
        assert_eq!(
            handed_out,
            received.len() as u64,
            "a handed-out task got lost"
        );
        assert!(acknowledged.len() >= 1_000);
        for client in clients {
            client.join().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_still_sending_at_shutdown_gets_its_answers_and_a_clean_close() {
    bounded(async {
        let (server, probe) = TestServer::probed(|c| c).await;
        // A small receive window: the server's reply cannot all be on its
        // way before the server closes.
        let mut raw = RawPeer::connect_small(server.port, &server.key).await;
        let started = probe.started.notified();
        let big = "accepted ".repeat(20_000);
        let id = raw.request("wait", json!(big)).await;
        started.await;
        server.shutdown.shutdown();
        // The server no longer reads; what the peer sends now stays unread.
        for n in 0..50 {
            raw.request("ping", json!(n)).await;
        }
        probe.release.notify_one();
        let reply = raw.recv_reply(id).await;
        assert_eq!(reply.payload, json!(big));
        // The server read and discarded the rest rather than resetting the
        // connection, which would have destroyed the reply in flight.
        assert!(raw.ends_cleanly().await, "the connection was reset");
        drop(raw);
        server.task.await.unwrap().unwrap();
    })
    .await;
}
