//! Periodic tasks on Redis: the schedules are kept in Redis (see
//! `scripts/schedules.rs`); their ticks are computed here (cron
//! expressions need this side), and fired by a compare-and-set in Redis,
//! so that each tick puts its task once however many servers call.

use chrono::Utc;
use serde_json::Value;
use stream_rpc::tasks::{Schedule, ScheduleInfo};

use super::records::{ms, time};
use super::scripts::{YES, scripts};
use super::{MAX_SCHEDULES, RedisQueue};
use crate::schedule::{check_schedule, first_tick, next_tick, tick_task};
use crate::{Fired, Put, QueueError, TaskRef};

/// How many due schedules one [`fire_due`](RedisQueue::fire_due) looks
/// at; the next call goes on with the others.
const MAX_DUE_PER_CALL: usize = 100;

/// A schedule as the scripts answer it: name, JSON, next tick, last tick
/// (-1: none), ticks fired, when it was set.
type Record = (String, String, i64, i64, u64, i64);

/// A schedule record as a [`ScheduleInfo`] (through its JSON form, which
/// is the wire's).
fn info(schedule: &Schedule, next: i64, last: i64, fired: u64) -> Result<ScheduleInfo, String> {
    let mut value = serde_json::to_value(schedule).map_err(|e| e.to_string())?;
    let Value::Object(fields) = &mut value else {
        return Err("a schedule is not an object".into());
    };
    fields.insert(
        "next_at".into(),
        serde_json::to_value(time(next)).map_err(|e| e.to_string())?,
    );
    if last >= 0 {
        fields.insert(
            "last_at".into(),
            serde_json::to_value(time(last)).map_err(|e| e.to_string())?,
        );
    }
    fields.insert("fired".into(), fired.into());
    serde_json::from_value(value).map_err(|e| e.to_string())
}

impl RedisQueue {
    /// [`TaskQueue::put_schedule`](crate::TaskQueue::put_schedule).
    pub(super) async fn set_schedule(
        &self,
        schedule: &Schedule,
    ) -> Result<ScheduleInfo, QueueError> {
        check_schedule(schedule)?;
        let now = Utc::now();
        let next = first_tick(&schedule.every, now)?;
        let json = serde_json::to_string(schedule).map_err(|e| QueueError::Task(e.to_string()))?;
        let set: i64 = self
            .run(
                &scripts().put_schedule,
                args![&schedule.name, &json, &ms(next), &ms(now), &MAX_SCHEDULES],
            )
            .await?;
        if set != YES {
            return Err(QueueError::Invalid {
                setting: "name",
                reason: format!("there are {MAX_SCHEDULES} schedules already: remove one first"),
            });
        }
        info(schedule, ms(next), -1, 0).map_err(QueueError::Task)
    }

    /// [`TaskQueue::schedules`](crate::TaskQueue::schedules): by name; one
    /// that cannot be read is skipped (logged).
    pub(super) async fn all_schedules(&self) -> Result<Vec<ScheduleInfo>, QueueError> {
        let records: Vec<Record> = self.run(&scripts().schedules, args![]).await?;
        let mut schedules: Vec<ScheduleInfo> = records
            .iter()
            .filter_map(|(name, json, next, last, fired, _)| {
                let read = serde_json::from_str::<Schedule>(json)
                    .map_err(|e| e.to_string())
                    .and_then(|schedule| info(&schedule, *next, *last, *fired));
                read.map_err(|e| {
                    tracing::warn!("redis queue: schedule {name:?} cannot be read: {e}")
                })
                .ok()
            })
            .collect();
        schedules.sort_by(|a, b| a.schedule.name.cmp(&b.schedule.name));
        Ok(schedules)
    }

    /// [`TaskQueue::fire_schedules`](crate::TaskQueue::fire_schedules).
    pub(super) async fn fire_due(&self) -> Result<Fired, QueueError> {
        let (now, soonest, due): (i64, i64, Vec<Record>) = self
            .run(&scripts().due_schedules, args![&MAX_DUE_PER_CALL])
            .await?;
        let mut fired = Fired::default();
        if due.is_empty() {
            fired.next_at = (soonest >= 0).then(|| time(soonest));
            return Ok(fired);
        }
        for (name, json, next, ..) in &due {
            if let Some(task) = self.fire_one(name, json, *next, now).await? {
                fired.tasks.push(task);
            }
        }
        let soonest: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(format!("{}ticks", self.base))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut self.connection())
            .await
            .map_err(super::error)?;
        fired.next_at = soonest.first().map(|(_, at)| time(*at));
        Ok(fired)
    }

    /// Fires the due tick `next` of the schedule `name` (its JSON `json`):
    /// the task it put, if any. A schedule that cannot be read is removed
    /// (it would be due forever, ahead of the others); one with no tick
    /// after this one puts it, then is removed. Both are logged.
    async fn fire_one(
        &self,
        name: &str,
        json: &str,
        next: i64,
        now: i64,
    ) -> Result<Option<TaskRef>, QueueError> {
        let tick = time(next);
        let read = serde_json::from_str::<Schedule>(json)
            .map_err(|e| QueueError::Task(e.to_string()))
            .and_then(|schedule| {
                let (task, options) = tick_task(&schedule, tick);
                let args = self.put_args(&task, &options)?;
                Ok((schedule, task, args))
            });
        let (schedule, task, put_args) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!("redis queue: schedule {name:?} cannot be read ({e}): removed");
                let _: i64 = self
                    .run(&scripts().drop_schedule, args![name, next])
                    .await?;
                return Ok(None);
            }
        };
        // The due tick puts its task; those missed since are skipped.
        let after = match next_tick(&schedule.every, tick, time(now)) {
            Ok(after) => ms(after).to_string(),
            Err(e) => {
                tracing::warn!(
                    "redis queue: schedule {name:?} has no tick after {tick} ({e}): removed"
                );
                String::new()
            }
        };
        let mut args = args![name, next, after, next].to_vec();
        args.extend(put_args);
        let answer: Vec<String> = self.run(&scripts().fire, &args).await?;
        if answer.first().map(String::as_str) == Some("-1") {
            // Another server fired this tick.
            return Ok(None);
        }
        match Self::put_outcome(&answer)? {
            Put::Queued | Put::Scheduled => Ok(Some(TaskRef::of(&task))),
            refused => {
                tracing::warn!(
                    "redis queue: the tick of schedule {name:?} at {tick} was not put: {}",
                    refused.reason().unwrap_or("?")
                );
                Ok(None)
            }
        }
    }
}
