//! The payloads of the task methods, read from JSON with the reason a bad
//! one is refused (`invalid_payload`), and the replies built from what the
//! queue answers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use stream_rpc::tasks::{MethodLimit, Rate, TaskOptions, TaskRef, TaskState};
use stream_rpc::{HandlerError, Packet};

use crate::{Cancel, Put};

/// The longest `task.wait` may wait (`timeout_ms`): a minute.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long `task.wait` waits when its payload says nothing: 30 s.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// How many tasks `task.list` answers when its payload says nothing.
pub const DEFAULT_LIST: usize = 100;
/// The most tasks one `task.list` answers.
pub const MAX_LIST: usize = 1000;
/// The most methods one `task.subscribe` names.
pub const MAX_SUBSCRIBED_METHODS: usize = 256;
/// The longest method name `task.subscribe` takes, in bytes.
pub const MAX_METHOD_LEN: usize = 256;
/// The most calls one subscribed worker connection is pushed at once.
pub const MAX_CONCURRENCY: u32 = 1024;
/// The longest delay `delay_ms` may ask: about ten years.
const MAX_DELAY: Duration = Duration::from_secs(10 * 366 * 24 * 60 * 60);

/// Reads `payload` as `T`, or refuses it as `invalid_payload` of `method`
/// with serde's reason. `null` reads as an empty object, so that a payload
/// of only optional fields may be left out.
pub(crate) fn read<T: for<'de> Deserialize<'de>>(
    method: &str,
    payload: Value,
) -> Result<T, HandlerError> {
    let payload = match payload {
        Value::Null => json!({}),
        other => other,
    };
    serde_json::from_value(payload).map_err(|e| HandlerError::invalid_payload(method, e))
}

/// `task.put`'s payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutRequest {
    pub(crate) task: Packet,
    #[serde(default)]
    pub(crate) options: Option<Value>,
    #[serde(default)]
    pub(crate) delay_ms: Option<u64>,
}

impl PutRequest {
    /// The task and its options, `delay_ms` (here or in the options) read
    /// into `run_at` from `now`; refused when both a delay and a `run_at`
    /// are given, or when the options do not [check](TaskOptions::check).
    pub(crate) fn options(&self, now: DateTime<Utc>) -> Result<TaskOptions, String> {
        let mut options = match self.options.clone() {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(map)) => map,
            Some(_) => return Err("options must be an object".into()),
        };
        let inner_delay = match options.remove("delay_ms") {
            None | Some(Value::Null) => None,
            Some(delay) => Some(
                delay
                    .as_u64()
                    .ok_or("options.delay_ms must be a whole number of milliseconds")?,
            ),
        };
        let mut options: TaskOptions =
            serde_json::from_value(Value::Object(options)).map_err(|e| format!("options: {e}"))?;
        let delay = match (self.delay_ms, inner_delay) {
            (Some(_), Some(_)) => return Err("give delay_ms once, not in options too".into()),
            (delay, inner) => delay.or(inner),
        };
        if let Some(ms) = delay {
            if options.run_at.is_some() {
                return Err("give delay_ms or run_at, not both".into());
            }
            let delay = Duration::from_millis(ms);
            let at = (delay <= MAX_DELAY)
                .then(|| chrono::Duration::from_std(delay).ok())
                .flatten()
                .and_then(|delay| now.checked_add_signed(delay))
                .ok_or_else(|| {
                    format!("delay_ms is {ms}: give at most {}", MAX_DELAY.as_millis())
                })?;
            options = options.run_at(at);
        }
        options.check()?;
        Ok(options)
    }
}

/// `task.put`'s reply to what the queue did with the task `task`.
pub(crate) fn put_reply(task: TaskRef, put: Put) -> Value {
    match put {
        Put::Queued => json!({ "task": task, "state": TaskState::Queued.as_str() }),
        Put::Scheduled => json!({ "task": task, "state": TaskState::Scheduled.as_str() }),
        Put::Duplicate { existing } => {
            json!({ "task": task, "refused": "duplicate", "existing": existing })
        }
        Put::NameTaken => json!({ "task": task, "refused": "name_taken" }),
        Put::Full => json!({ "task": task, "refused": "full" }),
    }
}

/// `{"task": REF}`: `task.show`'s and `task.cancel`'s payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskRequest {
    pub(crate) task: TaskRef,
}

/// `task.cancel`'s reply.
pub(crate) fn cancel_reply(cancel: &Cancel) -> Value {
    let (outcome, state) = match cancel {
        Cancel::Cancelled => ("cancelled", Some(TaskState::Cancelled)),
        Cancel::Requested { .. } => ("requested", Some(TaskState::Leased)),
        Cancel::Finished(state) => ("finished", Some(*state)),
        Cancel::Unknown => ("unknown", None),
    };
    json!({ "outcome": outcome, "state": state.map(TaskState::as_str) })
}

/// `task.wait`'s payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitRequest {
    pub(crate) task: TaskRef,
    #[serde(default)]
    pub(crate) timeout_ms: Option<u64>,
}

impl WaitRequest {
    /// How long to wait, or why not.
    pub(crate) fn limit(&self) -> Result<Duration, String> {
        let Some(ms) = self.timeout_ms else {
            return Ok(DEFAULT_WAIT);
        };
        let limit = Duration::from_millis(ms);
        if ms == 0 || limit > MAX_WAIT {
            return Err(format!(
                "timeout_ms is {ms}: give 1 to {}",
                MAX_WAIT.as_millis()
            ));
        }
        Ok(limit)
    }
}

/// `task.list`'s payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListRequest {
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) limit: Option<usize>,
}

impl ListRequest {
    /// The state and the limit, or why not.
    pub(crate) fn read(&self) -> Result<(TaskState, usize), String> {
        let state = self.state.parse::<TaskState>()?;
        let limit = self.limit.unwrap_or(DEFAULT_LIST);
        if !(1..=MAX_LIST).contains(&limit) {
            return Err(format!("limit is {limit}: give 1 to {MAX_LIST}"));
        }
        Ok((state, limit))
    }
}

/// `task.limit`'s payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitRequest {
    pub(crate) method: String,
    #[serde(default)]
    pub(crate) concurrency: Option<u32>,
    #[serde(default)]
    pub(crate) rate: Option<Rate>,
}

impl LimitRequest {
    /// The limit it sets.
    pub(crate) fn limit(&self) -> MethodLimit {
        let mut limit = MethodLimit::none();
        if let Some(most) = self.concurrency {
            limit = limit.concurrency(most);
        }
        if let Some(rate) = self.rate {
            limit = limit.rate(rate.count, rate.per);
        }
        limit
    }
}

/// `task.subscribe`'s payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeRequest {
    pub(crate) methods: Vec<String>,
    pub(crate) concurrency: u32,
}

impl SubscribeRequest {
    /// Why it is refused, if it is.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.methods.is_empty() || self.methods.len() > MAX_SUBSCRIBED_METHODS {
            return Err(format!(
                "{} methods named: give 1 to {MAX_SUBSCRIBED_METHODS}",
                self.methods.len()
            ));
        }
        if let Some(bad) = self
            .methods
            .iter()
            .find(|method| method.is_empty() || method.len() > MAX_METHOD_LEN)
        {
            return Err(format!(
                "a method name of {} bytes: give 1 to {MAX_METHOD_LEN}",
                bad.len()
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "concurrency is {}: give 1 to {MAX_CONCURRENCY}",
                self.concurrency
            ));
        }
        Ok(())
    }
}

/// `schedule.remove`'s payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveScheduleRequest {
    pub(crate) name: String,
}

/// A payload that must be `null` (or `{}`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Nothing {}

#[cfg(test)]
mod tests {
    use super::*;
    use stream_rpc::tasks::Priority;

    fn put(payload: Value) -> Result<TaskOptions, String> {
        let mut payload = payload;
        payload["task"] = json!({
            "peer": "00000000-0000-0000-0000-000000000001", "id": 1,
            "created_at": "2026-01-01T00:00:00Z", "method": "m", "payload": null
        });
        let request: PutRequest = read("task.put", payload).map_err(|e| e.message)?;
        request.options(Utc::now())
    }

    #[test]
    fn put_options_read_a_delay_once() {
        let options = put(json!({"options": {"priority": "high"}, "delay_ms": 1000})).unwrap();
        assert_eq!(options.priority, Priority::High);
        assert!(options.run_at.is_some_and(|at| at > Utc::now()));
        assert!(
            put(json!({"options": {"delay_ms": 5}}))
                .unwrap()
                .run_at
                .is_some()
        );
        assert!(put(json!({})).unwrap().run_at.is_none());
        let both = put(json!({"options": {"run_at": "2030-01-01T00:00:00Z"}, "delay_ms": 1}));
        assert!(both.unwrap_err().contains("not both"));
        assert!(put(json!({"options": {"delay_ms": 1}, "delay_ms": 1})).is_err());
        assert!(put(json!({"options": {"max_attempts": 0}})).is_err());
        assert!(
            put(json!({"delay_ms": u64::MAX}))
                .unwrap_err()
                .contains("at most")
        );
        assert!(put(json!({"options": 3})).is_err());
        assert!(put(json!({"nope": 1})).is_err());
    }

    #[test]
    fn bounds_are_checked() {
        let wait = |ms: u64| WaitRequest {
            task: TaskRef {
                peer: uuid::Uuid::nil(),
                id: 1,
            },
            timeout_ms: Some(ms),
        };
        assert!(wait(0).limit().is_err());
        assert!(wait(60_001).limit().is_err());
        assert_eq!(wait(60_000).limit(), Ok(MAX_WAIT));
        let list = |limit| ListRequest {
            state: "queued".into(),
            limit,
        };
        assert_eq!(list(None).read(), Ok((TaskState::Queued, DEFAULT_LIST)));
        assert!(list(Some(1001)).read().is_err());
        assert!(list(Some(0)).read().is_err());
        let subscribe = |methods: Vec<&str>, concurrency| SubscribeRequest {
            methods: methods.into_iter().map(String::from).collect(),
            concurrency,
        };
        assert!(subscribe(vec!["m"], 1).check().is_ok());
        assert!(subscribe(vec![], 1).check().is_err());
        assert!(subscribe(vec!["m"], 0).check().is_err());
        assert!(subscribe(vec!["m"], 1025).check().is_err());
        assert!(subscribe(vec![""], 1).check().is_err());
    }
}
