//! The task server's numbers through the `metrics` facade (the `metrics`
//! feature; `docs/METRICS.md` lists the names), labelled by method, with a
//! bound on how many methods get a label of their own.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use stream_rpc::tasks::MethodStats;

/// The most methods that get a label of their own; the others are counted
/// under [`OTHER_METHOD`], so that a peer putting tasks of ever new methods
/// cannot grow the exporter's series without bound.
pub const MAX_LABELLED_METHODS: usize = 256;
/// The `method` label of the methods beyond [`MAX_LABELLED_METHODS`].
pub const OTHER_METHOD: &str = "other";

/// The methods labelled so far.
#[derive(Debug, Default)]
pub(crate) struct TaskMetrics {
    labelled: Mutex<HashSet<String>>,
}

impl TaskMetrics {
    /// The label of `method`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn label(&self, method: &str) -> String {
        let mut labelled = self
            .labelled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if labelled.contains(method) {
            return method.to_owned();
        }
        if labelled.len() < MAX_LABELLED_METHODS {
            labelled.insert(method.to_owned());
            return method.to_owned();
        }
        OTHER_METHOD.to_owned()
    }

    /// A task of `method`, due at `due_at`, was pushed to a worker at `now`.
    pub(crate) fn started(&self, method: &str, due_at: DateTime<Utc>, now: DateTime<Utc>) {
        #[cfg(feature = "metrics")]
        metrics::histogram!("stream_rpc_task_start_seconds", "method" => self.label(method))
            .record(seconds(due_at, now));
        #[cfg(not(feature = "metrics"))]
        let _ = (method, due_at, now);
    }

    /// A task of `method`, put at `put_at`, was acked at `now`.
    pub(crate) fn done(&self, method: &str, put_at: DateTime<Utc>, now: DateTime<Utc>) {
        #[cfg(feature = "metrics")]
        metrics::histogram!("stream_rpc_task_done_seconds", "method" => self.label(method))
            .record(seconds(put_at, now));
        #[cfg(not(feature = "metrics"))]
        let _ = (method, put_at, now);
    }

    /// Records the queue's counts per method: the tasks in each state as
    /// gauges, the events since the queue was created as counters set to
    /// their absolute values.
    pub(crate) fn record(&self, stats: &BTreeMap<String, MethodStats>) {
        #[cfg(feature = "metrics")]
        for (method, stats) in stats {
            let label = self.label(method);
            for (name, count) in [
                ("stream_rpc_tasks_queued", stats.queued),
                ("stream_rpc_tasks_scheduled", stats.scheduled),
                ("stream_rpc_tasks_running", stats.running),
            ] {
                metrics::gauge!(name, "method" => label.clone()).set(count as f64);
            }
            for (name, count) in [
                ("stream_rpc_tasks_done_total", stats.done),
                ("stream_rpc_tasks_failed_total", stats.failed),
                ("stream_rpc_tasks_retried_total", stats.retried),
                ("stream_rpc_tasks_cancelled_total", stats.cancelled),
                ("stream_rpc_tasks_limited_total", stats.limited),
            ] {
                metrics::counter!(name, "method" => label.clone()).absolute(count);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = stats;
    }
}

/// Seconds from `from` to `to` (0 when `to` is earlier: clocks of two
/// servers may disagree).
#[cfg(feature = "metrics")]
fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from)
        .to_std()
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let metrics = TaskMetrics::default();
        for n in 0..MAX_LABELLED_METHODS {
            assert_eq!(metrics.label(&format!("m{n}")), format!("m{n}"));
        }
        assert_eq!(metrics.label("one-more"), OTHER_METHOD);
        assert_eq!(metrics.label("m7"), "m7");
    }
}
