//! `stream-rpc bench`: a load generator against any stream-rpc server.
//!
//! Closed loop by default (each caller makes its next call when the last
//! one is answered); with `--rate`, open loop: calls are scheduled at the
//! rate whatever the answers do, and each call's latency counts from when
//! it was scheduled, so a server that falls behind shows it (no
//! coordinated omission).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stream_rpc::Caller;

use hdrhistogram::Histogram;
use stream_rpc::{CallError, Config, Connection, Connector, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// What to run.
pub struct Plan {
    pub method: String,
    pub payload: Value,
    pub connections: usize,
    pub concurrency: usize,
    /// Stop after this many calls, or
    pub calls: Option<u64>,
    /// after this long.
    pub duration: Duration,
    /// Calls per second in all, open loop; none for closed loop.
    pub rate: Option<f64>,
    /// Each call's time limit.
    pub timeout: Duration,
    pub progress: bool,
}

/// What happened.
pub struct Outcome {
    pub latencies: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl Outcome {
    fn ok(&self) -> u64 {
        self.latencies.len()
    }

    fn calls(&self) -> u64 {
        self.ok() + self.errors.values().sum::<u64>()
    }

    /// The summary as JSON (latencies in microseconds).
    pub fn to_json(&self) -> Value {
        let h = &self.latencies;
        let seconds = self.elapsed.as_secs_f64();
        serde_json::json!({
            "calls": self.calls(),
            "ok": self.ok(),
            "errors": self.errors,
            "seconds": seconds,
            "calls_per_second": self.calls() as f64 / seconds.max(1e-9),
            "latency_us": {
                "min": h.min(),
                "mean": h.mean(),
                "p50": h.value_at_quantile(0.50),
                "p90": h.value_at_quantile(0.90),
                "p99": h.value_at_quantile(0.99),
                "p99_9": h.value_at_quantile(0.999),
                "max": h.max(),
            },
        })
    }

    /// The summary for people, with a latency histogram drawn in text.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let h = &self.latencies;
        let seconds = self.elapsed.as_secs_f64();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} calls in {:.2} s: {:.0} calls/s; {} ok, {} errors",
            self.calls(),
            seconds,
            self.calls() as f64 / seconds.max(1e-9),
            self.ok(),
            self.calls() - self.ok()
        );
        if h.is_empty() {
            let _ = writeln!(out, "no call was answered");
        } else {
            let _ = writeln!(
                out,
                "latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0})",
                h.value_at_quantile(0.50),
                h.value_at_quantile(0.90),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                h.mean()
            );
            out.push_str(&draw(h));
        }
        for (code, count) in &self.errors {
            let _ = writeln!(out, "error {code}: {count}");
        }
        out
    }
}

/// Ten rows from the fastest to the slowest answer, each a latency range
/// (equal steps on a log scale) and a bar as long as its share of calls.
fn draw(h: &Histogram<u64>) -> String {
    use std::fmt::Write as _;
    const ROWS: usize = 10;
    const WIDTH: f64 = 40.0;
    let (low, high) = (h.min().max(1) as f64, h.max().max(1) as f64 + 1.0);
    let step = (high / low).powf(1.0 / ROWS as f64);
    let mut counts = [0u64; ROWS];
    for value in h.iter_recorded() {
        let at = value.value_iterated_to().max(1) as f64;
        let row = ((at / low).ln() / step.ln()).floor();
        let row = if row.is_finite() {
            row.clamp(0.0, (ROWS - 1) as f64) as usize
        } else {
            0
        };
        counts[row] += value.count_since_last_iteration();
    }
    let most = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut out = String::new();
    for (row, count) in counts.iter().enumerate() {
        let from = low * step.powi(row as i32);
        let to = low * step.powi(row as i32 + 1);
        let bar = "█".repeat(((*count as f64 / most) * WIDTH).round() as usize);
        let _ = writeln!(out, "{:>9.0} – {:<9.0} µs {:>8} {bar}", from, to, count);
    }
    out
}

/// The error code an outcome is counted under.
fn code(error: &CallError) -> String {
    match error {
        CallError::Remote { code, .. } => code.to_string(),
        CallError::Timeout { .. } => "timeout".to_owned(),
        CallError::ConnectionLost { .. } => "connection_lost".to_owned(),
        other => format!("send_failed ({other})"),
    }
}

/// Shared by the callers.
struct Shared {
    plan: Plan,
    started: Instant,
    deadline: Instant,
    /// Calls begun (closed loop) or scheduled (open loop).
    begun: AtomicU64,
    done: AtomicU64,
    outcome: Mutex<(Histogram<u64>, BTreeMap<String, u64>)>,
}

impl Shared {
    /// The number of the next call, when another may begin.
    fn begin(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let n = self.begun.fetch_add(1, Ordering::Relaxed);
        self.plan.calls.is_none_or(|calls| n < calls).then_some(n)
    }

    /// The time the `n`th call is scheduled for, open loop.
    fn slot(&self, n: u64, rate: f64) -> Instant {
        self.started + Duration::from_secs_f64(n as f64 / rate)
    }
}

/// Connects, runs the plan, and returns what happened.
pub async fn run(config: Config, plan: Plan) -> Result<Outcome, String> {
    let connector = Connector::new(config);
    let mut clients = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let client = tokio::time::timeout(plan.timeout, connector.connect(()))
            .await
            .map_err(|_| "cannot connect within the call timeout".to_owned())?
            .map_err(|e| format!("cannot connect: {e}"))?;
        clients.push(client);
    }
    let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let total = plan.calls;
    let show = plan.progress;
    let shared = Arc::new(Shared {
        deadline: started + plan.duration,
        plan,
        started,
        begun: AtomicU64::new(0),
        done: AtomicU64::new(0),
        outcome: Mutex::new((histogram, BTreeMap::new())),
    });
    let bar = progress(show, total, shared.plan.duration);
    let ticker = {
        let (shared, bar) = (shared.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let done = shared.done.load(Ordering::Relaxed);
                match total {
                    Some(_) => bar.set_position(done),
                    None => bar.set_position(shared.started.elapsed().as_millis() as u64),
                }
                bar.set_message(format!("{done} calls"));
            }
        })
    };
    let mut callers = Vec::new();
    for client in &clients {
        for _ in 0..shared.plan.concurrency {
            let (shared, session) = (shared.clone(), client.connection().expect("connected"));
            callers.push(tokio::spawn(caller(shared, session)));
        }
    }
    for caller in callers {
        let _ = caller.await;
    }
    let elapsed = started.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    for client in &clients {
        client.close();
    }
    let (latencies, errors) = std::mem::replace(
        &mut *shared.outcome.lock().await,
        (
            Histogram::new(3).map_err(|e| e.to_string())?,
            BTreeMap::new(),
        ),
    );
    Ok(Outcome {
        latencies,
        errors,
        elapsed,
    })
}

/// One caller: calls one at a time until the plan is done; open loop, each
/// call waits for its scheduled time and counts its latency from it.
async fn caller(shared: Arc<Shared>, session: Connection) {
    let mut latencies =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let plan = &shared.plan;
    while let Some(n) = shared.begin() {
        let from = match plan.rate {
            Some(rate) => {
                let at = shared.slot(n, rate);
                if at >= shared.deadline {
                    break;
                }
                tokio::time::sleep_until(at).await;
                at
            }
            None => Instant::now(),
        };
        let result = session
            .call_with_timeout(&plan.method, plan.payload.clone(), plan.timeout)
            .await;
        match result {
            Ok(_) => {
                let micros = from.elapsed().as_micros().max(1);
                let _ = latencies.record(u64::try_from(micros).unwrap_or(u64::MAX));
            }
            Err(e) => *errors.entry(code(&e)).or_default() += 1,
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    let mut outcome = shared.outcome.lock().await;
    let _ = outcome.0.add(&latencies);
    for (code, count) in errors {
        *outcome.1.entry(code).or_default() += count;
    }
}

/// A progress bar on stderr (hidden when not wanted or not a terminal):
/// calls out of `--calls`, or time out of `--duration`.
fn progress(show: bool, total: Option<u64>, duration: Duration) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = match total {
        Some(calls) => ProgressBar::new(calls),
        None => ProgressBar::new(duration.as_millis() as u64),
    };
    if !show {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = match total {
        Some(_) => "{bar:40} {pos}/{len} calls {elapsed}",
        None => "{bar:40} {elapsed} of the run, {msg}",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
