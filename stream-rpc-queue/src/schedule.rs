//! Periodic tasks, for every backend alike: a schedule's checks, its ticks,
//! and the task each tick puts.

use chrono::{DateTime, TimeDelta, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use stream_rpc::Packet;
use stream_rpc::tasks::{Every, Schedule, ScheduleInfo, TaskOptions};
use uuid::Uuid;

use crate::{MAX_SCHEDULE_NAME, MIN_INTERVAL, QueueError};

/// Why `schedule` cannot be set: a bad name, method, interval, cron
/// expression or options ([`QueueError::Invalid`] naming the field).
pub(crate) fn check_schedule(schedule: &Schedule) -> Result<(), QueueError> {
    let invalid = |setting: &'static str, reason: String| QueueError::Invalid { setting, reason };
    let name = &schedule.name;
    if name.is_empty()
        || name.len() > MAX_SCHEDULE_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            "name",
            format!(
                "{:?}: give 1 to {MAX_SCHEDULE_NAME} bytes of a-z A-Z 0-9 - _ .",
                name.chars().take(MAX_SCHEDULE_NAME + 1).collect::<String>()
            ),
        ));
    }
    if schedule.method.is_empty() {
        return Err(invalid("method", "it is empty".into()));
    }
    schedule
        .options
        .check()
        .map_err(|reason| invalid("options", reason))?;
    match &schedule.every {
        Every::Interval { every } if *every < MIN_INTERVAL => Err(invalid(
            "every_ms",
            format!(
                "{} ms: give at least {} ms",
                every.as_millis(),
                MIN_INTERVAL.as_millis()
            ),
        )),
        Every::Interval { .. } => Ok(()),
        Every::Cron { cron } => parse_cron(cron).map(drop),
    }
}

/// A cron expression of 5 fields, or 6 with seconds first (PROTOCOL.md): a
/// 7th (year) field is refused, as a schedule whose years run out would
/// have no next tick.
fn parse_cron(cron: &str) -> Result<Cron, QueueError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(cron)
        .map_err(|e| QueueError::Invalid {
            setting: "cron",
            reason: format!("{:?}: {e}", cron.chars().take(100).collect::<String>()),
        })
}

fn interval(every: std::time::Duration) -> Result<TimeDelta, QueueError> {
    TimeDelta::from_std(every)
        .ok()
        .filter(|step| *step > TimeDelta::zero())
        .ok_or_else(|| QueueError::Invalid {
            setting: "every_ms",
            reason: "out of range".into(),
        })
}

/// The first tick of a schedule set at `now`: one interval from now, or the
/// cron expression's first time after now.
pub(crate) fn first_tick(every: &Every, now: DateTime<Utc>) -> Result<DateTime<Utc>, QueueError> {
    match every {
        Every::Interval { every } => now
            .checked_add_signed(interval(*every)?)
            .ok_or_else(out_of_range),
        Every::Cron { cron } => next_cron(cron, now),
    }
}

/// The tick after `tick` (which was due) that is after `now`: the
/// interval's next multiple from `tick` (ticks stay on their grid, and
/// those missed are skipped), or the cron expression's next time after
/// `now`.
pub(crate) fn next_tick(
    every: &Every,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, QueueError> {
    match every {
        Every::Interval { every } => {
            let step = interval(*every)?;
            let behind = (now - tick).num_milliseconds().max(0);
            let steps = behind / step.num_milliseconds().max(1) + 1;
            let ahead = step.checked_mul(i32::try_from(steps).unwrap_or(i32::MAX));
            ahead
                .and_then(|ahead| tick.checked_add_signed(ahead))
                .ok_or_else(out_of_range)
        }
        Every::Cron { cron } => next_cron(cron, now.max(tick)),
    }
}

fn next_cron(cron: &str, after: DateTime<Utc>) -> Result<DateTime<Utc>, QueueError> {
    parse_cron(cron)?
        .find_next_occurrence(&after, false)
        .map_err(|e| QueueError::Invalid {
            setting: "cron",
            reason: format!("{cron:?} has no next time: {e}"),
        })
}

fn out_of_range() -> QueueError {
    QueueError::Invalid {
        setting: "every_ms",
        reason: "the next tick is out of range".into(),
    }
}

/// A schedule just set, its first tick `next_at`. `ScheduleInfo` has no
/// constructor outside its crate (it is `non_exhaustive`): it is read
/// from its wire form.
pub(crate) fn schedule_info(
    schedule: &Schedule,
    next_at: DateTime<Utc>,
) -> Result<ScheduleInfo, QueueError> {
    let mut wire = serde_json::to_value(schedule).map_err(|e| QueueError::Task(e.to_string()))?;
    if let Some(fields) = wire.as_object_mut() {
        fields.insert("next_at".into(), serde_json::json!(next_at));
        fields.insert("fired".into(), 0.into());
    }
    serde_json::from_value(wire).map_err(|e| QueueError::Task(e.to_string()))
}

/// The peer that names the tasks a schedule puts: the same on every server
/// (a UUID v5 of the schedule's name).
pub(crate) fn schedule_peer(name: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("stream-rpc schedule {name}").as_bytes(),
    )
}

/// The task the tick `tick` of `schedule` puts, and its options: named by
/// the schedule's peer and the tick's Unix time in ms, deduplicated by
/// `schedule:{name}:{tick_ms}`, due at the tick.
pub(crate) fn tick_task(schedule: &Schedule, tick: DateTime<Utc>) -> (Packet, TaskOptions) {
    let tick_ms = u64::try_from(tick.timestamp_millis()).unwrap_or(0);
    let packet = Packet::new(
        schedule_peer(&schedule.name),
        tick_ms,
        schedule.method.clone(),
        schedule.payload.clone(),
    );
    let mut options = schedule.options.clone();
    options.run_at = Some(tick);
    options.dedupe = Some(format!("schedule:{}:{tick_ms}", schedule.name));
    (packet, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn interval_ticks_stay_on_their_grid_and_skip_the_missed() {
        let every = Every::Interval {
            every: Duration::from_secs(10),
        };
        assert_eq!(first_tick(&every, at(1_000)).unwrap(), at(11_000));
        // Called on time.
        assert_eq!(
            next_tick(&every, at(11_000), at(11_000)).unwrap(),
            at(21_000)
        );
        // Called late, three ticks missed: the next on the grid after now.
        assert_eq!(
            next_tick(&every, at(11_000), at(45_500)).unwrap(),
            at(51_000)
        );
    }

    #[test]
    fn cron_ticks_with_five_or_six_fields() {
        let five = Every::Cron {
            cron: "*/5 * * * *".into(),
        };
        let six = Every::Cron {
            cron: "*/2 * * * * *".into(),
        };
        let now = at(1_700_000_001_500);
        assert_eq!(first_tick(&six, now).unwrap(), at(1_700_000_002_000));
        let next = first_tick(&five, now).unwrap();
        assert_eq!(next.timestamp() % 300, 0);
        assert!(next > now);
    }

    #[test]
    fn bad_schedules_are_refused_with_the_field_at_fault() {
        let good = Schedule::new(
            "nightly.report-1",
            "m",
            json!(null),
            Every::Interval {
                every: Duration::from_secs(1),
            },
        );
        assert!(check_schedule(&good).is_ok());
        let mut bad = good.clone();
        bad.name = "no spaces".into();
        assert!(matches!(
            check_schedule(&bad),
            Err(QueueError::Invalid {
                setting: "name",
                ..
            })
        ));
        let mut bad = good.clone();
        bad.every = Every::Interval {
            every: Duration::from_millis(999),
        };
        assert!(matches!(
            check_schedule(&bad),
            Err(QueueError::Invalid {
                setting: "every_ms",
                ..
            })
        ));
        for cron in ["every tuesday", "0 0 0 1 1 * 2030"] {
            let mut bad = good.clone();
            bad.every = Every::Cron { cron: cron.into() };
            assert!(
                matches!(
                    check_schedule(&bad),
                    Err(QueueError::Invalid {
                        setting: "cron",
                        ..
                    })
                ),
                "{cron}"
            );
        }
        let mut bad = good.clone();
        bad.every = Every::Cron {
            cron: "every tuesday".into(),
        };
        assert!(matches!(
            check_schedule(&bad),
            Err(QueueError::Invalid {
                setting: "cron",
                ..
            })
        ));
    }

    #[test]
    fn a_tick_names_its_task_alike_on_every_server() {
        let schedule = Schedule::new(
            "tick",
            "m",
            json!([1]),
            Every::Interval {
                every: Duration::from_secs(1),
            },
        );
        let (a, options) = tick_task(&schedule, at(5_000));
        let (b, _) = tick_task(&schedule, at(5_000));
        assert_eq!((a.peer, a.id), (b.peer, b.id));
        assert_eq!(a.id, 5_000);
        assert_eq!(options.dedupe.as_deref(), Some("schedule:tick:5000"));
        assert_eq!(options.run_at, Some(at(5_000)));
        let info = schedule_info(&schedule, at(6_000)).unwrap();
        assert_eq!(
            (info.schedule, info.next_at, info.fired),
            (schedule, at(6_000), 0)
        );
    }
}
