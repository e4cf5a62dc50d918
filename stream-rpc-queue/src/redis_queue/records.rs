//! Reading what the scripts answer: a task's hash as a [`TaskInfo`],
//! times in ms, limits as text, per-method counts.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;
use stream_rpc::Packet;
use stream_rpc::tasks::{MethodLimit, MethodStats, Priority, TaskInfo, TaskOptions, TaskState};

use super::describe;

/// The priority band a task is ready in (its score's high part): high
/// first.
pub(super) fn band(priority: Priority) -> u8 {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

fn priority(band: &str) -> Priority {
    match band {
        "0" => Priority::High,
        "2" => Priority::Low,
        _ => Priority::Normal,
    }
}

/// A time in ms since the epoch (Redis's clock or a producer's).
pub(super) fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// ms since the epoch of a time, clamped to what the scripts take.
pub(super) fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis().max(0)
}

/// A task's body as stored (`OPTIONS\nPACKET`, both compact JSON, which
/// holds no raw newline): its options (the defaults when they cannot be
/// read, or for a body of a packet alone) and its packet's JSON.
pub(super) fn body(stored: &[u8]) -> (TaskOptions, &[u8]) {
    match stored.iter().position(|&b| b == b'\n') {
        Some(at) => (
            serde_json::from_slice(&stored[..at]).unwrap_or_default(),
            &stored[at + 1..],
        ),
        None => (TaskOptions::default(), stored),
    }
}

/// A task's body to store: its options and its packet, as JSON.
pub(super) fn body_of(task: &Packet, options: &TaskOptions) -> Result<Vec<u8>, String> {
    let mut body = serde_json::to_vec(options).map_err(|e| e.to_string())?;
    body.push(b'\n');
    body.extend(task.to_json().map_err(|e| e.to_string())?);
    Ok(body)
}

/// The fields of a hash as `HGETALL` answers them.
pub(super) type Fields = Vec<Vec<u8>>;

fn pairs(fields: &Fields) -> HashMap<&str, &[u8]> {
    fields
        .chunks(2)
        .filter_map(|pair| match pair {
            [name, value] => Some((std::str::from_utf8(name).ok()?, value.as_slice())),
            _ => None,
        })
        .collect()
}

/// A task's hash as the queue tells of it; what is wrong with it when it
/// cannot be read (without its content).
pub(super) fn task_info(fields: &Fields) -> Result<TaskInfo, String> {
    let fields = pairs(fields);
    let text = |name: &str| fields.get(name).and_then(|v| std::str::from_utf8(v).ok());
    let number = |name: &str| text(name).and_then(|v| v.parse::<i64>().ok());
    let json = |name: &str| {
        fields
            .get(name)
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
    };
    let stored = fields.get("body").ok_or("a task record without its task")?;
    let (options, task) = body(stored);
    let task = Packet::from_json(task)
        .map_err(|e| format!("its task cannot be decoded ({})", describe(&e)))?;
    let state: TaskState = text("s")
        .ok_or("a task record without its state")?
        .parse()?;
    let max = number("x").and_then(|x| u32::try_from(x).ok()).unwrap_or(1);
    let put_at = time(number("put").unwrap_or(0));
    let mut info = TaskInfo::new(&task, &options, max, put_at);
    info.state = state;
    info.priority = priority(text("p").unwrap_or("1"));
    info.attempts = number("a").and_then(|a| u32::try_from(a).ok()).unwrap_or(0);
    info.max_attempts = max;
    info.run_at = match state {
        TaskState::Scheduled => number("run").map(time),
        _ => None,
    };
    info.worker = text("w").map(str::to_owned);
    info.cancel_requested = text("c") == Some("1");
    info.finished_at = if state.is_final() {
        number("f").map(time)
    } else {
        None
    };
    info.result = json("r");
    info.error = json("e");
    Ok(info)
}

/// A limit as the scripts keep it: `concurrency|count|per_ms`, each part
/// empty for none; `None` for no limit at all.
pub(super) fn limit_text(limit: &MethodLimit) -> Option<String> {
    if limit.concurrency.is_none() && limit.rate.is_none() {
        return None;
    }
    let concurrency = limit.concurrency.map(|n| n.to_string()).unwrap_or_default();
    let (count, per) = match limit.rate {
        Some(rate) => (rate.count.to_string(), super::millis(rate.per).to_string()),
        None => (String::new(), String::new()),
    };
    Some(format!("{concurrency}|{count}|{per}"))
}

/// A limit read back; `None` when the text is not one.
pub(super) fn limit_of(text: &str) -> Option<MethodLimit> {
    let mut parts = text.split('|');
    let (concurrency, count, per) = (parts.next()?, parts.next()?, parts.next()?);
    let mut limit = MethodLimit::none();
    if !concurrency.is_empty() {
        limit = limit.concurrency(concurrency.parse().ok()?);
    }
    if !count.is_empty() {
        let per = std::time::Duration::from_millis(per.parse().ok()?);
        limit = limit.rate(count.parse().ok()?, per);
    }
    Some(limit)
}

/// The per-method counts of the `counts` and `stats` hashes (`name:method`
/// fields; those without a method are the whole queue's).
pub(super) fn method_stats(
    gauges: &[(String, i64)],
    counters: &[(String, i64)],
) -> BTreeMap<String, MethodStats> {
    let mut stats: BTreeMap<String, MethodStats> = BTreeMap::new();
    for (field, value) in gauges.iter().chain(counters) {
        let Some((name, method)) = field.split_once(':') else {
            continue;
        };
        let value = u64::try_from(*value).unwrap_or(0);
        let entry = stats.entry(method.to_owned()).or_default();
        match name {
            "queued" => entry.queued = value,
            "scheduled" => entry.scheduled = value,
            "leased" => entry.running = value,
            "dead" => entry.dead = value,
            "done" => entry.done = value,
            "failed" => entry.failed = value,
            "retried" => entry.retried = value,
            "cancelled" => entry.cancelled = value,
            "limited" => entry.limited = value,
            _ => {}
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_body_reads_back_its_options_and_packet() {
        let task = Packet::new(
            uuid::Uuid::from_u128(1),
            7,
            String::from("m"),
            serde_json::json!({"a": "b\nc"}),
        );
        let options = TaskOptions::default().max_attempts(3).dedupe("x\ny");
        let stored = body_of(&task, &options).unwrap();
        let (read, packet) = body(&stored);
        assert_eq!(read, options);
        assert_eq!(Packet::from_json(packet).unwrap(), task);
        // A packet alone (written by hand): the default options.
        let alone = task.to_json().unwrap();
        assert_eq!(body(&alone).0, TaskOptions::default());
    }

    #[test]
    fn limits_read_back_what_they_keep() {
        for limit in [
            MethodLimit::none().concurrency(3),
            MethodLimit::none().rate(2, Duration::from_secs(1)),
            MethodLimit::none()
                .concurrency(1)
                .rate(5, Duration::from_millis(250)),
        ] {
            let text = limit_text(&limit).unwrap();
            assert_eq!(limit_of(&text), Some(limit), "{text}");
        }
        assert_eq!(limit_text(&MethodLimit::none()), None);
        assert_eq!(limit_of("nonsense"), None);
    }
}
