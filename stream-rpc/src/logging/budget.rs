//! Budgets of log lines: a flood of bad input writes a bounded number of
//! lines, then a count of the rest.

use std::fmt;

/// How long a log budget's window lasts: refusals are logged at most once
/// per window per reason, packet lines at most so many per window per
/// connection.
pub(crate) const LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// A budget of log lines: at most `per_window` lines per [`LOG_WINDOW`];
/// the lines past it are counted, and once the window is over one summary
/// line says how many were left out. Whatever the input, it writes at most
/// `per_window + 1` lines a window.
#[derive(Clone)]
pub(crate) struct Budget {
    per_window: u32,
    state: std::sync::Arc<std::sync::Mutex<BudgetState>>,
}

#[derive(Default)]
struct BudgetState {
    /// When the current window started; `None` before the first line.
    since: Option<tokio::time::Instant>,
    /// Lines written in the current window.
    used: u32,
    /// Lines left out since the last summary.
    left_out: u64,
    /// When the first of `left_out` was left out.
    left_out_since: Option<tokio::time::Instant>,
    /// Whether a summary is due (a task waits to write it).
    summary_due: bool,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("per_window", &self.per_window)
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// A budget of `per_window` lines a window (at least one).
    pub(crate) fn new(per_window: u32) -> Budget {
        Budget {
            per_window: per_window.max(1),
            state: Default::default(),
        }
    }

    /// Whether a line may be written now. When not, the line is counted,
    /// and `summary` is called once the window is over with how many lines
    /// were left out and over how long (from a task of its own; at once
    /// when there is no Tokio runtime).
    pub(crate) fn admit<S>(&self, summary: impl FnOnce() -> S) -> bool
    where
        S: FnOnce(u64, std::time::Duration) + Send + 'static,
    {
        let now = tokio::time::Instant::now();
        let mut state = crate::sync::lock(&self.state);
        if state.summary_due {
            // The summary to come counts this one too.
            state.left_out += 1;
            return false;
        }
        let since = *state.since.get_or_insert(now);
        if now.saturating_duration_since(since) >= LOG_WINDOW {
            state.since = Some(now);
            state.used = 0;
        }
        if state.used < self.per_window {
            state.used += 1;
            return true;
        }
        state.left_out += 1;
        state.left_out_since.get_or_insert(now);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to wait on: say it now (still at most one line per
            // line left out, and only where nothing runs Tokio).
            let (count, first) = (state.left_out, state.left_out_since.take());
            state.left_out = 0;
            drop(state);
            summary()(count, first.map_or_else(Default::default, |at| now - at));
            return false;
        };
        state.summary_due = true;
        let due = state.since.unwrap_or(now) + LOG_WINDOW;
        drop(state);
        let state = self.state.clone();
        let summary = summary();
        runtime.spawn(async move {
            tokio::time::sleep_until(due).await;
            let now = tokio::time::Instant::now();
            let (count, first) = {
                let mut state = crate::sync::lock(&state);
                state.summary_due = false;
                // The summary is the first line of the next window: under a
                // steady flood, a budget of one line a window writes the
                // summaries alone.
                state.since = Some(now);
                state.used = 1;
                let count = std::mem::take(&mut state.left_out);
                (count, state.left_out_since.take())
            };
            // A whole window at least: the count covers what was left out
            // since the window's lines ran out.
            let over = first.map_or(LOG_WINDOW, |at| (now - at).max(LOG_WINDOW));
            summary(count, over);
        });
        false
    }
}

/// What a server or client refuses, each logged at most once per
/// [`LOG_WINDOW`] (per endpoint) with a count of the rest: a flood of bad
/// input writes a bounded number of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A connection over [`Limits::max_connections`](crate::Limits::max_connections).
    ConnectionLimit,
    /// A connection over [`Limits::max_connections_per_ip`](crate::Limits::max_connections_per_ip).
    AddressLimit,
    /// A frame that does not open under the key.
    Undecryptable,
    /// A frame the replay check refused (replayed, reflected, forgotten...).
    Replayed,
    /// A frame longer than the limit.
    OverLong,
    /// A plaintext that opened but is not a valid packet.
    InvalidPacket,
    /// A request for a method nobody handles.
    UnknownMethod,
    /// A request refused because the connection's handlers are all busy.
    Busy,
    /// A frame the replay store could not check (its backing service is away).
    Unchecked,
    /// A connection closed for sending too many bad frames in a row.
    TooManyBadFrames,
    /// A connection closed for sending no authentic frame in time.
    NoFirstFrame,
    /// A connection closed because the on-connect hook failed on it.
    HookFailed,
    /// A stream frame that broke a rule of the protocol (beyond credit,
    /// after the end, out of order...): its stream ended.
    BrokenStreamRule,
    /// A stream frame for a stream this side does not know.
    UnknownStream,
}

impl Refusal {
    const ALL: usize = 14;

    fn index(self) -> usize {
        self as usize
    }

    /// What was refused, as the summary line counts it.
    fn counted(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connections over the connection limit",
            Refusal::AddressLimit => "connections over the per-address limit",
            Refusal::Undecryptable => "frames that failed to decrypt",
            Refusal::Replayed => "frames refused by the replay check",
            Refusal::OverLong => "frames over the length limit",
            Refusal::InvalidPacket => "invalid packets",
            Refusal::UnknownMethod => "requests for unknown methods",
            Refusal::Busy => "requests while every handler slot was busy",
            Refusal::Unchecked => "frames the replay store could not check",
            Refusal::TooManyBadFrames => "connections after too many bad frames",
            Refusal::NoFirstFrame => "connections with no authentic first frame in time",
            Refusal::HookFailed => "connections the on-connect hook refused",
            Refusal::BrokenStreamRule => "stream frames that broke the protocol's rules",
            Refusal::UnknownStream => "frames for unknown streams",
        }
    }
}

/// One log budget per [`Refusal`]: an endpoint's refusals share them
/// across its connections.
pub(crate) struct Refusals {
    budgets: [Budget; Refusal::ALL],
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            budgets: std::array::from_fn(|_| Budget::new(1)),
        }
    }
}

impl Refusals {
    /// Whether the line of this refusal is written now; when not, it is
    /// counted, and a line `refused N <what> in the last T s` follows once
    /// the window is over, with these `protocol` and `peer` fields.
    pub(crate) fn admit(&self, refusal: Refusal, protocol: &str, peer: uuid::Uuid) -> bool {
        self.budgets[refusal.index()].admit(|| {
            let protocol: Box<str> = protocol.into();
            move |count, over| {
                tracing::warn!(
                    protocol = &*protocol,
                    peer = %peer,
                    "refused {count} {} in the last {:.1} s",
                    refusal.counted(),
                    over.as_secs_f64()
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_budget_writes_its_lines_then_one_summary_a_window() {
        let budget = Budget::new(3);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut written = 0;
        for _ in 0..1000 {
            let tx = tx.clone();
            if budget.admit(|| {
                move |count, over| {
                    let _ = tx.send((count, over));
                }
            }) {
                written += 1;
            }
        }
        assert_eq!(written, 3);
        // One summary, once the window is over, for all 997.
        let (count, over) = rx.recv().await.unwrap();
        assert_eq!(count, 997);
        assert!(over >= LOG_WINDOW, "{over:?}");
        assert!(rx.try_recv().is_err());
        // The summary was the first line of a new window: lines again.
        let tx2 = tx.clone();
        assert!(budget.admit(|| move |count, over| {
            let _ = tx2.send((count, over));
        }));
    }

    #[tokio::test]
    async fn a_budget_of_one_line_writes_only_summaries_under_a_steady_flood() {
        let budget = Budget::new(1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let admit = |budget: &Budget| {
            let tx = tx.clone();
            budget.admit(|| {
                move |count, _| {
                    let _ = tx.send(count);
                }
            })
        };
        assert!(admit(&budget));
        for _ in 0..9 {
            assert!(!admit(&budget));
        }
        assert_eq!(rx.recv().await, Some(9));
        // Right after the summary: counted for the next one, not written.
        for _ in 0..5 {
            assert!(!admit(&budget));
        }
        assert_eq!(rx.recv().await, Some(5));
        assert!(rx.try_recv().is_err());
    }
}
