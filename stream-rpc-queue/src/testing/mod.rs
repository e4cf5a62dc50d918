//! The conformance suite every [`TaskQueue`] of this crate passes, for a
//! queue of your own (the `testing` feature): the semantics of the crate
//! docs (at least once, duplicates and held names refused, bounds, stale
//! acks, dead letters, results kept and expired), each a check of its own.
//!
//! Give the suite a [`QueueFactory`] that makes empty queues of your
//! implementation with the settings a check asks for, and run it:
//!
//! - [`conformance_tests!`](crate::conformance_tests) makes one `#[test]`
//!   per check in the module where it is written (each on a runtime of its
//!   own, bounded by [`CHECK_BOUND`]), so a failure names its check;
//! - [`run_all`] runs every check at once from a test of your own (a
//!   failure prints the name of its check), [`run_check`] one by name.
//!
//! The checks wait for short leases (300 ms) and a short retention to run
//! out, and for periodic ticks (about 2 s), so the whole suite takes some
//! seconds; [`run_all`] takes as long as its longest check.
//!
//! ```
//! // In a test file of the crate that implements the queue (here the
//! // memory queue of this crate), with `stream-rpc-queue` as a
//! // dev-dependency with the `testing` feature:
//! use stream_rpc_queue::{MemoryQueue, QueueSettings};
//!
//! mod memory {
//!     use super::*;
//!
//!     // A closure is a factory: each call makes a queue that shares
//!     // nothing with the others (on a shared backend, a key prefix each).
//!     stream_rpc_queue::conformance_tests!(|settings: QueueSettings| async move {
//!         MemoryQueue::with_settings(settings)
//!     });
//! }
//! # fn main() {}
//! ```

mod checks;
mod fleet;
mod tasks;

use checks::*;
use fleet::*;
use tasks::*;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use serde_json::json;
use stream_rpc::Packet;
use uuid::Uuid;

use crate::{QueueSettings, TaskQueue};

/// The method of the tasks the checks put ([`task`]).
pub const ARTICLE: &str = "parse_article";

/// How long one check may take, waits for leases to run out included.
pub const CHECK_BOUND: Duration = Duration::from_secs(30);

/// How many worker threads the runtime of [`run_check_blocking`] has: more
/// than one, so that concurrent puts really race.
const WORKER_THREADS: usize = 2;

/// Makes the queues the checks run on.
///
/// Every call returns an empty queue with `settings` that shares nothing
/// with the queues made before (on a shared backend: a key prefix, a
/// database, or a server of its own each). A queue that cannot be made is
/// a failed check: panic with what went wrong.
///
/// Any `Fn(QueueSettings) -> impl Future<Output = Q>` is one (see the
/// module's example); a type of your own can hold what the queues need
/// (a connection string, a test server that lives as long as the suite):
///
/// ```
/// use stream_rpc_queue::testing::QueueFactory;
/// use stream_rpc_queue::{MemoryQueue, QueueSettings};
///
/// struct Memory;
///
/// impl QueueFactory for Memory {
///     type Queue = MemoryQueue;
///
///     async fn queue(&self, settings: QueueSettings) -> MemoryQueue {
///         MemoryQueue::with_settings(settings)
///     }
/// }
///
/// stream_rpc_queue::testing::run_check_blocking("the_oldest_task_is_handed_out_first", Memory);
/// ```
pub trait QueueFactory: Send + Sync {
    /// The queues it makes.
    type Queue: TaskQueue;

    /// A new, empty queue with `settings`.
    fn queue(&self, settings: QueueSettings) -> impl Future<Output = Self::Queue> + Send;

    /// A second handle on the backend of `queue`, as a second server
    /// sharing it sees it (on Redis: another connection with the same URL
    /// and prefix), for the checks of what servers racing on one backend
    /// do (a periodic task's tick put once). `None` (the default, and a
    /// closure's): those checks race tasks on the one handle instead.
    fn twin(&self, queue: &Self::Queue) -> impl Future<Output = Option<Self::Queue>> + Send {
        let _ = queue;
        async { None }
    }
}

impl<F, Fut, Q> QueueFactory for F
where
    F: Fn(QueueSettings) -> Fut + Send + Sync,
    Fut: Future<Output = Q> + Send,
    Q: TaskQueue,
{
    type Queue = Q;

    fn queue(&self, settings: QueueSettings) -> impl Future<Output = Q> + Send {
        self(settings)
    }
}

/// An [`ARTICLE`] task for `article_id`, from a fresh peer, numbered by
/// its article: what the checks put (and what a worker of the article
/// example creates).
pub fn task(article_id: u64) -> Packet {
    Packet::new(
        Uuid::new_v4(),
        article_id,
        ARTICLE,
        json!({ "article_id": article_id }),
    )
}

/// Declares every check once: the names ([`CHECKS`]) and the dispatch of
/// [`run_check`].
macro_rules! checks {
    ($($check:ident),* $(,)?) => {
        /// The names of the checks.
        pub const CHECKS: &[&str] = &[$(stringify!($check)),*];

        /// Runs the check `name` (one of [`CHECKS`]) on queues of
        /// `factory`, bounded by [`CHECK_BOUND`]; panics when it fails,
        /// runs out of time, or no check has that name. Needs a Tokio
        /// runtime with its timer (and what the queue itself needs).
        pub async fn run_check<F: QueueFactory>(name: &str, factory: &F) {
            let check = async {
                match name {
                    $(stringify!($check) => $check(factory).await,)*
                    other => panic!("no conformance check is named {other:?}"),
                }
            };
            if tokio::time::timeout(CHECK_BOUND, check).await.is_err() {
                panic!("the conformance check {name} took longer than {CHECK_BOUND:?}");
            }
        }
    };
}

checks!(
    a_task_is_put_leased_and_acked_with_its_result_kept,
    the_oldest_task_is_handed_out_first,
    a_duplicate_is_refused_while_queued_leased_and_done,
    a_done_tasks_name_and_result_expire_after_the_retention,
    concurrent_puts_of_one_task_queue_it_once,
    a_lease_that_runs_out_is_handed_out_again,
    a_lease_runs_out_but_an_ack_before_the_next_lease_is_taken,
    an_extended_lease_is_not_handed_out,
    a_nack_gives_the_task_back_at_once,
    a_poison_task_becomes_a_dead_letter_and_can_be_requeued,
    an_unknown_task_is_stale,
    many_tasks_put_and_acked_leave_nothing_queued,
    a_different_task_under_a_held_name_is_refused_while_queued_leased_and_dead,
    dead_lettering_a_task_does_not_break_another,
    an_ack_of_a_name_acks_the_task_that_holds_it,
    a_full_queue_refuses_puts,
    a_result_too_large_is_refused_and_the_task_stays_leased,
    a_delayed_task_is_scheduled_until_it_is_due,
    higher_priorities_are_handed_out_first,
    a_lease_filter_hands_out_only_its_methods,
    a_failed_task_is_retried_after_its_backoff_then_dead,
    a_final_error_makes_a_dead_letter_at_once,
    a_custom_dedupe_key_is_held_and_names_its_task,
    a_waiting_task_is_cancelled_and_never_handed_out,
    a_running_task_is_cancelled_through_its_worker,
    show_and_list_tell_every_state,
    list_orders_waiting_tasks_by_time_and_availability,
    a_concurrency_limit_holds_tasks_back_fleet_wide,
    a_rate_limit_spaces_leases_fleet_wide,
    a_periodic_task_is_put_once_per_tick_across_servers,
    method_stats_count_each_methods_tasks,
    events_tell_what_a_server_waits_for,
    nothing_is_left_behind_after_the_retention,
);

/// Says which check failed when a panic unwinds through it.
struct Naming<'a>(&'a str);

impl Drop for Naming<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the conformance check {} failed", self.0);
        }
    }
}

/// Runs every check ([`CHECKS`]) on queues of `factory`, all at once (the
/// queues of each check are its own, and the checks mostly wait for time
/// to pass: together they take as long as the longest, about 2 s); panics
/// at the first that fails, after printing its name. Needs a Tokio runtime
/// with its timer.
///
/// ```
/// use stream_rpc_queue::{MemoryQueue, QueueSettings, testing};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// testing::run_all(&|settings: QueueSettings| async move {
///     MemoryQueue::with_settings(settings)
/// })
/// .await;
/// # }
/// ```
pub async fn run_all<F: QueueFactory>(factory: &F) {
    type Check<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
    let mut running: Vec<(&str, Check<'_>)> = CHECKS
        .iter()
        .map(|name| (*name, Box::pin(run_check(name, factory)) as Check<'_>))
        .collect();
    // Polled in turn on this task: a panic unwinds through the poll of its
    // check, which names it.
    std::future::poll_fn(|cx| {
        running.retain_mut(|(name, check)| {
            let naming = Naming(name);
            let pending = check.as_mut().poll(cx).is_pending();
            drop(naming);
            pending
        });
        if running.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// Runs the check `name` ([`run_check`]) on a multi-threaded Tokio runtime
/// of its own: the body of each test that
/// [`conformance_tests!`](crate::conformance_tests) makes, for use from a
/// plain `#[test]`.
pub fn run_check_blocking<F: QueueFactory>(name: &str, factory: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .expect("a Tokio runtime for the conformance check");
    runtime.block_on(run_check(name, &factory));
}

/// Makes one `#[test]` per conformance check ([`testing::CHECKS`]) in the
/// module where it is written, each running the check on queues of the
/// factory `$factory` (an expression evaluated afresh for each test, so it
/// may start a server of its own), and one test that the list is whole.
/// The `testing` feature.
///
/// See the [`testing`] module for an example.
///
/// [`testing`]: crate::testing
/// [`testing::CHECKS`]: crate::testing::CHECKS
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr $(,)?) => {
        $crate::conformance_tests!(@each ($factory)
            a_task_is_put_leased_and_acked_with_its_result_kept,
            the_oldest_task_is_handed_out_first,
            a_duplicate_is_refused_while_queued_leased_and_done,
            a_done_tasks_name_and_result_expire_after_the_retention,
            concurrent_puts_of_one_task_queue_it_once,
            a_lease_that_runs_out_is_handed_out_again,
            a_lease_runs_out_but_an_ack_before_the_next_lease_is_taken,
            an_extended_lease_is_not_handed_out,
            a_nack_gives_the_task_back_at_once,
            a_poison_task_becomes_a_dead_letter_and_can_be_requeued,
            an_unknown_task_is_stale,
            many_tasks_put_and_acked_leave_nothing_queued,
            a_different_task_under_a_held_name_is_refused_while_queued_leased_and_dead,
            dead_lettering_a_task_does_not_break_another,
            an_ack_of_a_name_acks_the_task_that_holds_it,
            a_full_queue_refuses_puts,
            a_result_too_large_is_refused_and_the_task_stays_leased,
            a_delayed_task_is_scheduled_until_it_is_due,
            higher_priorities_are_handed_out_first,
            a_lease_filter_hands_out_only_its_methods,
            a_failed_task_is_retried_after_its_backoff_then_dead,
            a_final_error_makes_a_dead_letter_at_once,
            a_custom_dedupe_key_is_held_and_names_its_task,
            a_waiting_task_is_cancelled_and_never_handed_out,
            a_running_task_is_cancelled_through_its_worker,
            show_and_list_tell_every_state,
            list_orders_waiting_tasks_by_time_and_availability,
            a_concurrency_limit_holds_tasks_back_fleet_wide,
            a_rate_limit_spaces_leases_fleet_wide,
            a_periodic_task_is_put_once_per_tick_across_servers,
            method_stats_count_each_methods_tasks,
            events_tell_what_a_server_waits_for,
            nothing_is_left_behind_after_the_retention,
        );
    };
    (@each ($factory:expr) $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                $crate::testing::run_check_blocking(stringify!($check), $factory);
            }
        )*

        /// The tests above are the suite's checks, all of them.
        #[test]
        fn conformance_tests_cover_every_check() {
            assert_eq!(&[$(stringify!($check)),*], $crate::testing::CHECKS);
        }
    };
}
