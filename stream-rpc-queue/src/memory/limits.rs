//! Fleet limits and periodic tasks of the memory queue.

use chrono::{DateTime, Utc};
use stream_rpc::tasks::{MethodLimit, Schedule, ScheduleInfo};
use tokio::time::Instant;

use super::ops::earliest;
use super::state::{Limit, State};
use crate::schedule::{check_schedule, first_tick, next_tick, schedule_info, tick_task};
use crate::{Fired, MAX_LIMITS, MAX_SCHEDULES, QueueError};

/// The rate's spacing and burst in µs: a lease every `per / count`
/// (rounded up: at least 1 µs, never faster than the rate), and at most
/// `count` at once.
fn spacing(limit: &Limit) -> Option<(i64, i64)> {
    let rate = limit.limit.rate?;
    let per = i64::try_from(rate.per.as_micros()).unwrap_or(i64::MAX);
    let count = i64::from(rate.count.max(1));
    let every = per.saturating_add(count - 1) / count;
    Some((every, per - every))
}

/// When the rate of `limit` lets the next lease go, if not now (a token
/// bucket of `count` tokens refilled `count` per `per`, kept as the
/// theoretical arrival time of the next lease: GCRA).
pub(super) fn rate_allows(limit: &Limit, wall: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let (_, burst) = spacing(limit)?;
    let allowed = limit.tat_us.saturating_sub(burst);
    (wall.timestamp_micros() < allowed)
        .then(|| DateTime::from_timestamp_micros(allowed).unwrap_or(DateTime::<Utc>::MAX_UTC))
}

/// Takes a token of `limit`'s rate for a lease at `wall`.
pub(super) fn take_token(limit: &mut Limit, wall: DateTime<Utc>) {
    if let Some((every, _)) = spacing(limit) {
        limit.tat_us = limit
            .tat_us
            .max(wall.timestamp_micros())
            .saturating_add(every);
    }
}

impl State {
    pub(super) fn set_limit(&mut self, method: &str, limit: MethodLimit) -> Result<(), QueueError> {
        let invalid = |reason: &str| QueueError::Invalid {
            setting: "limit",
            reason: reason.to_owned(),
        };
        if limit.concurrency == Some(0) {
            return Err(invalid("concurrency must be at least 1"));
        }
        if limit
            .rate
            .is_some_and(|rate| rate.count == 0 || rate.per.is_zero())
        {
            return Err(invalid("a rate needs a count and a period above 0"));
        }
        if limit == MethodLimit::none() {
            self.limits.remove(method);
            return Ok(());
        }
        if !self.limits.contains_key(method) && self.limits.len() >= MAX_LIMITS {
            return Err(invalid(&format!(
                "at most {MAX_LIMITS} methods have a limit"
            )));
        }
        // Set again, a rate starts afresh (a full bucket), as on Redis;
        // the tasks it held back may go.
        self.limits.insert(
            method.to_owned(),
            Limit {
                limit,
                ..Limit::default()
            },
        );
        if self.ready.contains_key(method) {
            self.tell(crate::QueueEvent::Ready {
                method: method.to_owned(),
            });
        }
        Ok(())
    }

    pub(super) fn put_schedule(
        &mut self,
        schedule: &Schedule,
        wall: DateTime<Utc>,
    ) -> Result<ScheduleInfo, QueueError> {
        check_schedule(schedule)?;
        if !self.schedules.contains_key(&schedule.name) && self.schedules.len() >= MAX_SCHEDULES {
            return Err(QueueError::Invalid {
                setting: "schedule",
                reason: format!("at most {MAX_SCHEDULES} schedules"),
            });
        }
        let info = schedule_info(schedule, first_tick(&schedule.every, wall)?)?;
        self.schedules.insert(schedule.name.clone(), info.clone());
        Ok(info)
    }

    pub(super) fn fire_schedules(&mut self, now: Instant, wall: DateTime<Utc>) -> Fired {
        let due: Vec<String> = self
            .schedules
            .iter()
            .filter(|(_, info)| info.next_at <= wall)
            .map(|(name, _)| name.clone())
            .collect();
        let mut fired = Fired::default();
        for name in due {
            let Some(info) = self.schedules.get(&name).cloned() else {
                continue;
            };
            let tick = info.next_at;
            // The due tick puts its task; a schedule with no tick after it
            // (its cron has no later time) is removed once it is put.
            let next = next_tick(&info.schedule.every, tick, wall)
                .inspect_err(|e| {
                    tracing::warn!("schedule {name}: no tick after {tick} ({e}); removed")
                })
                .ok();
            let (task, options) = tick_task(&info.schedule, tick);
            let put = self.put(&task, &options, now, wall);
            if put.is_taken() {
                fired.tasks.push(crate::TaskRef::of(&task));
            } else {
                tracing::warn!("schedule {name}: the tick {tick} was not put: {put:?}");
            }
            let Some(next) = next else {
                self.schedules.remove(&name);
                continue;
            };
            if let Some(kept) = self.schedules.get_mut(&name) {
                kept.next_at = next;
                if put.is_taken() {
                    kept.last_at = Some(tick);
                    kept.fired += 1;
                }
            }
        }
        fired.next_at = self
            .schedules
            .values()
            .map(|info| info.next_at)
            .fold(None, |a, b| earliest(a, Some(b)));
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::schedule_info;
    use serde_json::json;
    use std::time::Duration;
    use stream_rpc::tasks::Every;
    use tokio::sync::broadcast;

    /// A rate of more leases per period than it has µs still limits: a
    /// lease every µs at most, `count` at once.
    #[test]
    fn a_rate_faster_than_a_lease_per_us_still_limits() {
        let mut limit = Limit {
            limit: MethodLimit::none().rate(2_000, Duration::from_millis(1)),
            ..Limit::default()
        };
        let wall = Utc::now();
        assert_eq!(rate_allows(&limit, wall), None);
        for _ in 0..2_000 {
            take_token(&mut limit, wall);
        }
        assert!(rate_allows(&limit, wall).is_some());
    }

    /// A schedule with no tick after its due one (a year field, refused
    /// now when set, but kept from before) puts its due tick and is
    /// removed; the other due schedules fire all the same.
    #[test]
    fn a_schedule_with_no_next_tick_puts_its_tick_then_is_removed() {
        let (events, _) = broadcast::channel(16);
        let mut state = State::new(crate::QueueSettings::default(), events);
        let wall = Utc::now();
        let due = wall - chrono::TimeDelta::seconds(1);
        let last = Schedule::new(
            "last",
            "m",
            json!(1),
            Every::Cron {
                cron: "0 0 0 1 1 * 2020".into(),
            },
        );
        let every = Schedule::new(
            "every",
            "m",
            json!(2),
            Every::Interval {
                every: Duration::from_secs(60),
            },
        );
        for schedule in [&last, &every] {
            let info = schedule_info(schedule, due).unwrap();
            state.schedules.insert(schedule.name.clone(), info);
        }
        let fired = state.fire_schedules(Instant::now(), wall);
        assert_eq!(fired.tasks.len(), 2, "{fired:?}");
        assert!(!state.schedules.contains_key("last"));
        assert!(state.schedules["every"].next_at > wall);
    }
}
