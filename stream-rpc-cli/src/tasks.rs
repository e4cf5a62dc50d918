//! `stream-rpc queue put|show|cancel|list|schedules|schedule|unschedule|
//! limit|tasks`: the task methods of a queue server (PROTOCOL.md, "Tasks"),
//! asked through a server like `call` does, with the producer of
//! `stream_rpc::tasks`.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use stream_rpc::tasks::{
    CancelOutcome, Every, MethodLimit, Priority, Schedule, TaskError, TaskInfo, TaskOptions,
    TaskRef, TaskState, Tasks,
};
use stream_rpc::{CallError, Client, Connector, Value};

use crate::{FAILED, Failure, REFUSED, Target, duration};

/// How long connecting to a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most tasks `queue list` shows (the server's own cap).
const MOST_LISTED: u32 = 1000;

/// The queue server's task methods, asked through a server.
#[derive(Subcommand)]
pub(crate) enum TaskAction {
    /// Put a task (through a server); with --wait, await its result.
    #[command(after_help = PUT_HELP)]
    Put(PutArgs),
    /// What the queue knows of a task: its state, attempts, result or error.
    #[command(
        after_help = "Exit status 1 when the queue knows no such task (never put, \
                            or forgotten after its retention window).\n\
                            Example:\n  stream-rpc queue show 3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41:4"
    )]
    Show {
        /// The task, as PEER:ID (what `queue put` printed).
        task: String,
        #[command(flatten)]
        target: Target,
    },
    /// Cancel a task: at once if it waits, by asking its worker to stop if
    /// it runs.
    #[command(
        after_help = "Prints the outcome: cancelled (it never ran), requested (its \
                            worker is asked to stop), finished (too late: its state is \
                            given) or unknown. Exit status 0 for cancelled and requested, \
                            1 otherwise.\n\
                            Example:\n  stream-rpc queue cancel 3f0c2b8e-8f6a-4c39-9d1e-6b2f7f0d9a41:4"
    )]
    Cancel {
        /// The task, as PEER:ID.
        task: String,
        #[command(flatten)]
        target: Target,
    },
    /// The tasks in one state: waiting ones oldest first, finished ones
    /// newest first.
    #[command(after_help = "Examples:\n  stream-rpc queue list --state dead\n  \
                            stream-rpc queue list --state queued --limit 10 | jq -r '.[].task'")]
    List {
        /// The state: scheduled, queued, leased, done, dead or cancelled.
        #[arg(long, default_value = "queued", value_parser = state)]
        state: TaskState,
        /// The most tasks listed (1 to 1000).
        #[arg(long, default_value_t = 100,
              value_parser = clap::value_parser!(u32).range(1..=MOST_LISTED as i64))]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Counts per method: queued, scheduled, running, done, failed, retried,
    /// cancelled, dead, held back by a limit.
    #[command(after_help = "Example:\n  stream-rpc queue tasks | jq .parse_article")]
    Tasks {
        #[command(flatten)]
        target: Target,
    },
    /// The periodic tasks, with their next and last ticks.
    #[command(after_help = "Example:\n  stream-rpc queue schedules")]
    Schedules {
        #[command(flatten)]
        target: Target,
    },
    /// Put a task periodically (every interval, or at a cron expression's
    /// times, UTC), by exactly one server however many share the queue; a
    /// schedule of the same name is replaced.
    #[command(
        after_help = "Examples:\n  stream-rpc queue schedule nightly report '{\"kind\": \"daily\"}' --cron '0 0 3 * * *'\n  \
                            stream-rpc queue schedule refresh refresh_feeds --every 5m --priority high"
    )]
    Schedule(ScheduleArgs),
    /// Remove a periodic task.
    #[command(after_help = "Exit status 1 when there is no schedule of that name.\n\
                            Example:\n  stream-rpc queue unschedule nightly")]
    Unschedule {
        /// The schedule's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Limit a method across every worker of the queue: tasks running at
    /// once, tasks started per period.
    #[command(after_help = "Prints every method's limits.\n\
                            Examples:\n  stream-rpc queue limit fetch_page --rate 2/s\n  \
                            stream-rpc queue limit fetch_page --concurrency 4 --rate 100/m\n  \
                            stream-rpc queue limit fetch_page --clear")]
    Limit(LimitArgs),
}

/// The help after `queue put`'s options.
const PUT_HELP: &str = "\
Prints {\"task\": \"PEER:ID\", \"state\": \"queued\"|\"scheduled\"}; a put that found \
the same task already held (same method and payload, or same --dedupe key) \
prints that task with \"deduplicated\": true.

With --wait, prints the task's result as JSON once a worker has done it. \
Exit status: 0 done; 1 failed for good, cancelled, or refused (the error on \
stderr); 2 not finished within --wait (the task goes on: `queue show` follows \
it), no server, or bad arguments.

Examples:
  stream-rpc queue put parse_article '{\"article_id\": 7}'
  stream-rpc queue put send_mail @mail.json --delay 10m --priority low
  stream-rpc queue put parse_article '{\"article_id\": 7}' --wait 30s | jq .title";

/// `queue put`'s arguments.
#[derive(Args)]
pub(crate) struct PutArgs {
    /// The task's method (what its worker runs).
    method: String,
    /// Its payload as JSON; `-` reads it from stdin, `@FILE` from a file
    /// [default: null].
    payload: Option<String>,
    /// Run no sooner than this from now (500ms, 2s, 1m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse,
          conflicts_with = "run_at")]
    delay: Option<Duration>,
    /// Run no sooner than this time (RFC 3339: 2026-12-24T18:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = time)]
    run_at: Option<DateTime<Utc>>,
    /// How soon among the waiting tasks: high, normal or low.
    #[arg(long, default_value = "normal", value_parser = priority)]
    priority: Priority,
    /// Times it is handed out at most [default: the queue's setting].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(stream_rpc::tasks::MAX_ATTEMPTS_LIMIT)))]
    max_attempts: Option<u32>,
    /// What makes two puts one task [default: the method and the payload].
    #[arg(long, value_name = "KEY")]
    dedupe: Option<String>,
    /// How long one attempt may run on a worker (30s, 10m)
    /// [default: the server's].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    timeout: Option<Duration>,
    /// Await the result this long at most (30s, 2m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    wait: Option<Duration>,
    #[command(flatten)]
    target: Target,
}

/// `queue schedule`'s arguments.
#[derive(Args)]
pub(crate) struct ScheduleArgs {
    /// Its name (letters, digits, `-`, `_`, `.`).
    name: String,
    /// The method of the task put at each tick.
    method: String,
    /// Its payload as JSON; `-` reads it from stdin, `@FILE` from a file
    /// [default: null].
    payload: Option<String>,
    /// Every so often (at least 1s): 30s, 5m, 1h.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse,
          required_unless_present = "cron", conflicts_with = "cron")]
    every: Option<Duration>,
    /// At a cron expression's times, UTC: `sec min hour day month weekday`
    /// or the usual five fields.
    #[arg(long, value_name = "EXPR")]
    cron: Option<String>,
    /// How soon each task runs among the waiting ones: high, normal or low.
    #[arg(long, default_value = "normal", value_parser = priority)]
    priority: Priority,
    /// Times each task is handed out at most [default: the queue's setting].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(stream_rpc::tasks::MAX_ATTEMPTS_LIMIT)))]
    max_attempts: Option<u32>,
    #[command(flatten)]
    target: Target,
}

/// `queue limit`'s arguments.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("limits").required(true).multiple(true)
    .args(["concurrency", "rate", "clear"])))]
pub(crate) struct LimitArgs {
    /// The method.
    method: String,
    /// The most of its tasks running at once, across every worker.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    /// The most of its tasks started per period: COUNT/PERIOD, as in 2/s,
    /// 100/m, 5/10s.
    #[arg(long, value_name = "COUNT/PERIOD", value_parser = rate)]
    rate: Option<(u32, Duration)>,
    /// Remove its limits.
    #[arg(long, conflicts_with_all = ["concurrency", "rate"])]
    clear: bool,
    #[command(flatten)]
    target: Target,
}

/// A task state as typed.
fn state(text: &str) -> Result<TaskState, String> {
    text.trim().to_ascii_lowercase().parse()
}

/// A priority as typed.
fn priority(text: &str) -> Result<Priority, String> {
    text.trim().to_ascii_lowercase().parse()
}

/// An RFC 3339 time.
fn time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| format!("expected a time such as 2026-12-24T18:00:00Z, got {text:?}: {e}"))
}

/// A rate as typed: COUNT/PERIOD, the period a duration or a bare unit
/// (`2/s`, `100/m`, `5/10s`, `1/500ms`).
pub(crate) fn rate(text: &str) -> Result<(u32, Duration), String> {
    let (count, per) = text.trim().split_once('/').ok_or_else(|| {
        format!("expected COUNT/PERIOD such as 2/s, 100/m or 5/10s, got {text:?}")
    })?;
    let count: u32 = count
        .trim()
        .parse()
        .ok()
        .filter(|count| *count > 0)
        .ok_or_else(|| format!("{text:?}: the count must be a whole number above 0"))?;
    let per = per.trim();
    if per.is_empty() {
        return Err(format!(
            "{text:?}: give the period after the slash, as in 2/s or 5/10s"
        ));
    }
    // A bare unit is one of it: `2/s` is 2 per second.
    let starts_with_digit = per.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    let per = if starts_with_digit {
        duration::parse(per)?
    } else {
        duration::parse(&format!("1{per}"))?
    };
    Ok((count, per))
}

/// Runs one of the task actions.
pub(crate) async fn run(key_file: Option<PathBuf>, action: TaskAction) -> Result<u8, Failure> {
    match action {
        TaskAction::Put(args) => put(key_file, args).await,
        TaskAction::Show { task, target } => {
            let task = task_ref(&task)?;
            let tasks = producer(key_file, &target).await?;
            match tasks.show(task).await.map_err(task_failure)? {
                Some(info) => print(&info_json(&info)),
                None => {
                    eprintln!(
                        "error: no task {task}: never put, or forgotten after the retention window"
                    );
                    Ok(REFUSED)
                }
            }
        }
        TaskAction::Cancel { task, target } => {
            let task = task_ref(&task)?;
            let tasks = producer(key_file, &target).await?;
            let outcome = tasks.cancel(task).await.map_err(task_failure)?;
            let forgotten =
                format!("no task {task}: never put, or forgotten after the retention window");
            let (name, state, complaint) = match outcome {
                CancelOutcome::Cancelled => ("cancelled", None, None),
                CancelOutcome::Requested => ("requested", None, None),
                CancelOutcome::Finished(state) => (
                    "finished",
                    Some(state),
                    Some(format!(
                        "task {task} had already finished: {}",
                        state.as_str()
                    )),
                ),
                CancelOutcome::Unknown => ("unknown", None, Some(forgotten)),
                #[allow(unreachable_patterns)]
                _ => ("unknown", None, Some(forgotten)),
            };
            print(&serde_json::json!({
                "task": task.to_string(),
                "outcome": name,
                "state": state.map(TaskState::as_str),
            }))?;
            let code = match complaint {
                Some(complaint) => {
                    eprintln!("error: {complaint}");
                    REFUSED
                }
                None => 0,
            };
            Ok(code)
        }
        TaskAction::List {
            state,
            limit,
            target,
        } => {
            let tasks = producer(key_file, &target).await?;
            let list = tasks
                .list(state, limit as usize)
                .await
                .map_err(task_failure)?;
            print(&Value::Array(list.iter().map(info_json).collect()))
        }
        TaskAction::Tasks { target } => {
            let tasks = producer(key_file, &target).await?;
            let stats = tasks.stats().await.map_err(task_failure)?;
            print(&serde_json::to_value(stats)?)
        }
        TaskAction::Schedules { target } => {
            let tasks = producer(key_file, &target).await?;
            let schedules = tasks.schedules().await.map_err(task_failure)?;
            print(&serde_json::to_value(schedules)?)
        }
        TaskAction::Schedule(args) => schedule(key_file, args).await,
        TaskAction::Unschedule { name, target } => {
            let tasks = producer(key_file, &target).await?;
            let removed = tasks.remove_schedule(&name).await.map_err(task_failure)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "removed": removed }))?
            );
            if removed {
                Ok(0)
            } else {
                eprintln!("error: no schedule {name:?}");
                Ok(REFUSED)
            }
        }
        TaskAction::Limit(args) => {
            let mut limit = MethodLimit::none();
            if let Some(most) = args.concurrency {
                limit = limit.concurrency(most);
            }
            if let Some((count, per)) = args.rate {
                limit = limit.rate(count, per);
            }
            let tasks = producer(key_file, &args.target).await?;
            let limits = tasks
                .set_limit(&args.method, limit)
                .await
                .map_err(task_failure)?;
            print(&serde_json::to_value(limits)?)
        }
    }
}

async fn put(key_file: Option<PathBuf>, args: PutArgs) -> Result<u8, Failure> {
    let body = crate::payload(args.payload.as_deref())?;
    let mut options = TaskOptions::default().priority(args.priority);
    if let Some(delay) = args.delay {
        options = options.delay(delay);
    }
    if let Some(at) = args.run_at {
        options = options.run_at(at);
    }
    if let Some(attempts) = args.max_attempts {
        options = options.max_attempts(attempts);
    }
    if let Some(key) = args.dedupe {
        options = options.dedupe(key);
    }
    if let Some(limit) = args.timeout {
        options = options.timeout(limit);
    }
    options.check().map_err(|e| Failure(FAILED, e))?;
    let tasks = producer(key_file, &args.target).await?;
    let handle = match tasks.put(&args.method, body, options).await {
        Ok(handle) => handle,
        Err(TaskError::Refused { reason }) => {
            eprintln!("error: the queue refused the task: {}", refusal(&reason));
            return Ok(REFUSED);
        }
        Err(e) => return Err(task_failure(e)),
    };
    let Some(limit) = args.wait else {
        let info = handle.state().await.map_err(task_failure)?;
        let mut shown = serde_json::json!({
            "task": handle.id().to_string(),
            "state": info.state.as_str(),
        });
        if handle.deduplicated() {
            shown["deduplicated"] = Value::Bool(true);
        }
        return print(&shown);
    };
    let task = handle.id();
    match handle.result_within(limit).await {
        Ok(Ok(result)) => print(&result),
        Ok(Err(error)) => {
            eprintln!("error: task {task} failed: {error}");
            Ok(REFUSED)
        }
        Err(TaskError::Timeout { after }) => Err(Failure(
            FAILED,
            format!(
                "task {task} has not finished within {after:?}; it goes on \
                 (`stream-rpc queue show {task}` follows it)"
            ),
        )),
        Err(TaskError::Cancelled) => {
            eprintln!("error: task {task} was cancelled");
            Ok(REFUSED)
        }
        Err(TaskError::Dead { attempts, error }) => {
            let why = error
                .map(|error| format!("{}: {}", error.code, error.message))
                .unwrap_or_else(|| "no error recorded".to_owned());
            eprintln!("error: task {task} failed for good after {attempts} attempt(s): {why}");
            Ok(REFUSED)
        }
        Err(e) => Err(task_failure(e)),
    }
}

async fn schedule(key_file: Option<PathBuf>, args: ScheduleArgs) -> Result<u8, Failure> {
    let body = crate::payload(args.payload.as_deref())?;
    let every = match (args.every, args.cron) {
        (Some(every), None) => Every::Interval { every },
        (None, Some(cron)) => Every::Cron { cron },
        // clap requires exactly one.
        _ => return Err(Failure(FAILED, "give --every or --cron".into())),
    };
    let mut options = TaskOptions::default().priority(args.priority);
    if let Some(attempts) = args.max_attempts {
        options = options.max_attempts(attempts);
    }
    let schedule = Schedule::new(args.name, args.method, body, every).options(options);
    let tasks = producer(key_file, &args.target).await?;
    let info = tasks.put_schedule(schedule).await.map_err(task_failure)?;
    print(&serde_json::to_value(info)?)
}

/// Prints `value` as pretty JSON; exit status 0.
fn print(value: &Value) -> Result<u8, Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(0)
}

/// A task's record as the command shows it: its name as PEER:ID.
fn info_json(info: &TaskInfo) -> Value {
    let mut shown = serde_json::to_value(info).unwrap_or(Value::Null);
    if let Some(fields) = shown.as_object_mut() {
        fields.insert("task".into(), Value::String(info.task.to_string()));
    }
    shown
}

/// PEER:ID as typed.
fn task_ref(text: &str) -> Result<TaskRef, Failure> {
    text.trim()
        .parse::<TaskRef>()
        .map_err(|e| Failure(FAILED, e.to_string()))
}

/// Why the queue refused a put, said for people.
fn refusal(reason: &str) -> String {
    match reason {
        "full" => "the queue is full; try again later".to_owned(),
        "name_taken" => {
            "another task holds this task's name (PEER:ID); a new put takes a new id".to_owned()
        }
        other => other.to_owned(),
    }
}

/// A producer's failure as the command ends with it: 1 when the server
/// answered (an error packet), 2 when it could not be asked.
fn task_failure(e: TaskError) -> Failure {
    match e {
        TaskError::Call(CallError::Remote { code, message, .. }) => {
            Failure(REFUSED, format!("{code}: {message}"))
        }
        TaskError::Call(e @ CallError::Timeout { .. }) => Failure(
            FAILED,
            format!("{e} (a server with another key answers nothing: check the key)"),
        ),
        TaskError::Refused { reason } => Failure(REFUSED, refusal(&reason)),
        TaskError::Unknown { task } => Failure(
            REFUSED,
            format!("no task {task}: never put, or forgotten after the retention window"),
        ),
        other => Failure(FAILED, other.to_string()),
    }
}

/// A producer connected to the target: `--addr`, else the first of
/// STREAM_RPC_SERVERS that answers, else STREAM_RPC_HOST/STREAM_RPC_PORT.
async fn producer(key_file: Option<PathBuf>, target: &Target) -> Result<Tasks<Client>, Failure> {
    let servers = match (&target.addr, std::env::var(stream_rpc::env::ENV_SERVERS)) {
        (None, Ok(list)) if !list.trim().is_empty() => {
            stream_rpc::env::parse_servers(&list).map_err(|e| format!("STREAM_RPC_SERVERS: {e}"))?
        }
        _ => vec![crate::address(target)?],
    };
    let mut last = String::new();
    for (host, port) in servers {
        let config = crate::settings(key_file.clone())?
            .host(host.clone())
            .port(port)
            .build()
            .map_err(crate::config_failure)?;
        let connector = Connector::new(config);
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(())).await {
            Ok(Ok(client)) => return Ok(Tasks::new(client)),
            Ok(Err(unreachable @ stream_rpc::Error::Unreachable { .. })) => {
                last = unreachable.to_string();
            }
            Ok(Err(other)) => last = format!("cannot connect to {host}:{port}: {other}"),
            Err(_) => last = format!("cannot connect to {host}:{port} within {CONNECT_TIMEOUT:?}"),
        }
    }
    Err(Failure(FAILED, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_as_people_type_them() {
        for (text, expected) in [
            ("2/s", (2, Duration::from_secs(1))),
            ("100/m", (100, Duration::from_secs(60))),
            ("5/10s", (5, Duration::from_secs(10))),
            ("1/500ms", (1, Duration::from_millis(500))),
            (" 3 / h ", (3, Duration::from_secs(3600))),
        ] {
            assert_eq!(rate(text), Ok(expected), "{text}");
        }
        for bad in [
            "", "2", "/s", "0/s", "-1/s", "2/", "2/x", "2/0s", "a/s", "2/s/s",
        ] {
            assert!(rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn states_priorities_and_times() {
        assert_eq!(state("Dead"), Ok(TaskState::Dead));
        assert!(state("gone").is_err());
        assert_eq!(priority("HIGH"), Ok(Priority::High));
        assert!(priority("urgent").is_err());
        assert!(time("2026-12-24T18:00:00Z").is_ok());
        assert!(time("2026-12-24T18:00:00+01:00").is_ok());
        assert!(time("tomorrow").is_err());
    }
}
