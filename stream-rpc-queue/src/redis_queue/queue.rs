//! [`TaskQueue`] on Redis: each method one script (see `scripts/`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use stream_rpc::Packet;
use stream_rpc::tasks::{
    DEFAULT_BACKOFF, MAX_ATTEMPTS_LIMIT, MethodLimit, MethodStats, Schedule, ScheduleInfo,
    TaskInfo, TaskOptions, TaskState,
};

use super::records::{self, Fields, band, ms, time};
use super::scripts::{YES, cancel_answer, fail_answer, put_answer, scripts};
use super::{MAX_LIMITS, RedisQueue, describe, error, millis};
use crate::{
    Acked, Cancel, DeadLetters, DeadTask, Failed, Fired, Lease, LeaseFilter, Leased, MAX_LIST, Put,
    QueueError, QueueEvents, Stats, TaskQueue, TaskRef, dedup_key,
};

/// How many stored tasks that cannot be decoded one lease moves to the
/// dead letters before it gives up for this call.
const MAX_UNDECODABLE_PER_LEASE: usize = 16;

/// What a lease script answers: a task, or when one may be due.
enum LeaseAnswer {
    Leased {
        task_ref: String,
        body: Vec<u8>,
        attempt: u32,
        due: i64,
        put: i64,
    },
    Empty(Option<i64>),
}

impl redis::FromRedisValue for LeaseAnswer {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let (kind, rest): (i64, Vec<redis::Value>) = match value {
            redis::Value::Array(mut items) if !items.is_empty() => {
                let kind = redis::from_redis_value(items.remove(0))?;
                (kind, items)
            }
            _ => return Err("lease: not an array".into()),
        };
        let mut rest = rest.into_iter();
        let mut next = || {
            rest.next()
                .ok_or_else(|| redis::ParsingError::from("lease: too short"))
        };
        if kind == YES {
            Ok(LeaseAnswer::Leased {
                task_ref: redis::from_redis_value(next()?)?,
                body: redis::from_redis_value(next()?)?,
                attempt: redis::from_redis_value(next()?)?,
                due: redis::from_redis_value(next()?)?,
                put: redis::from_redis_value(next()?)?,
            })
        } else {
            let at: i64 = redis::from_redis_value(next()?)?;
            Ok(LeaseAnswer::Empty((at >= 0).then_some(at)))
        }
    }
}

impl RedisQueue {
    /// The arguments of the `put` Lua function for `task` with `options`.
    pub(super) fn put_args(
        &self,
        task: &Packet,
        options: &TaskOptions,
    ) -> Result<Vec<String>, QueueError> {
        let body = records::body_of(task, options).map_err(QueueError::Task)?;
        let body = String::from_utf8(body).map_err(|e| QueueError::Task(e.to_string()))?;
        let backoff = options.backoff.unwrap_or(DEFAULT_BACKOFF);
        let attempts = options
            .max_attempts
            .unwrap_or(self.settings.max_attempts)
            .clamp(1, MAX_ATTEMPTS_LIMIT);
        Ok(vec![
            body,
            TaskRef::of(task).to_string(),
            crate::dedupe_key(task, options),
            task.method.clone(),
            band(options.priority).to_string(),
            attempts.to_string(),
            options
                .run_at
                .map(|at| ms(at).to_string())
                .unwrap_or_default(),
            millis(backoff.initial).to_string(),
            millis(backoff.max).to_string(),
            self.settings.max_tasks.to_string(),
            self.retention().to_string(),
        ])
    }

    /// What the `put` Lua function answered.
    pub(super) fn put_outcome(answer: &[String]) -> Result<Put, QueueError> {
        let code: i64 = answer
            .first()
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| QueueError::Protocol(format!("put: unexpected answer {answer:?}")))?;
        Ok(match code {
            put_answer::QUEUED => Put::Queued,
            put_answer::SCHEDULED => Put::Scheduled,
            put_answer::DUPLICATE => Put::Duplicate {
                existing: answer.get(1).and_then(|held| held.parse().ok()),
            },
            put_answer::NAME_TAKEN => Put::NameTaken,
            put_answer::FULL => Put::Full,
            other => {
                return Err(QueueError::Protocol(format!(
                    "put: unexpected answer {other}"
                )));
            }
        })
    }

    async fn lease_once(
        &self,
        worker: &str,
        lease: Duration,
        filter: &LeaseFilter,
    ) -> Result<LeaseAnswer, QueueError> {
        let lease = millis(lease);
        let retention = millis(self.settings.retention);
        let mut args = args![worker, lease, retention].to_vec();
        if let Some(methods) = &filter.methods {
            if methods.is_empty() {
                return Ok(LeaseAnswer::Empty(None));
            }
            args.extend(methods.iter().cloned());
        }
        self.run(&scripts().lease, &args).await
    }

    fn retention(&self) -> u64 {
        millis(self.settings.retention)
    }
}

impl TaskQueue for RedisQueue {
    async fn put_with(&self, task: &Packet, options: &TaskOptions) -> Result<Put, QueueError> {
        let args = self.put_args(task, options)?;
        let answer: Vec<String> = self.run(&scripts().put, &args).await?;
        Self::put_outcome(&answer)
    }

    async fn lease_with(
        &self,
        worker: &str,
        lease: Duration,
        filter: &LeaseFilter,
    ) -> Result<Lease, QueueError> {
        // A stored task that cannot be decoded (an older version's, or one
        // written by hand) is made a dead letter at once, and the next one
        // is leased instead; a bounded number of times per call.
        for _ in 0..MAX_UNDECODABLE_PER_LEASE {
            let (task_ref, body, attempt, due, put) =
                match self.lease_once(worker, lease, filter).await? {
                    LeaseAnswer::Empty(at) => {
                        return Ok(Lease::Empty {
                            next_due: at.map(time),
                        });
                    }
                    LeaseAnswer::Leased {
                        task_ref,
                        body,
                        attempt,
                        due,
                        put,
                    } => (task_ref, body, attempt, due, put),
                };
            let (options, task) = records::body(&body);
            match Packet::from_json(task) {
                Ok(task) => {
                    return Ok(Lease::Leased(Leased::new(
                        task,
                        attempt,
                        options,
                        time(due),
                        time(put),
                    )));
                }
                Err(e) => {
                    tracing::warn!(
                        "redis queue: task {task_ref:?} cannot be decoded ({}): moved to the dead letters",
                        describe(&e)
                    );
                    let _: i64 = self.run(&scripts().bury, args![&task_ref, &worker]).await?;
                }
            }
        }
        tracing::warn!(
            "redis queue: {MAX_UNDECODABLE_PER_LEASE} tasks in a row could not be decoded; \
             none leased this time"
        );
        Ok(Lease::Empty { next_due: None })
    }

    async fn extend(
        &self,
        task: TaskRef,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        let extended: i64 = self
            .run(
                &scripts().extend,
                args![&task.to_string(), &worker, &millis(lease)],
            )
            .await?;
        Ok(extended == YES)
    }

    async fn ack(&self, task: TaskRef, worker: &str, result: &Value) -> Result<Acked, QueueError> {
        let result = result.to_string();
        if result.len() > self.settings.max_result_bytes {
            return Ok(Acked::TooLarge);
        }
        let acked: i64 = self
            .run(
                &scripts().ack,
                args![&task.to_string(), &worker, &result, &self.retention()],
            )
            .await?;
        Ok(flag(acked))
    }

    async fn nack(&self, task: TaskRef, worker: &str) -> Result<Acked, QueueError> {
        let given_back: i64 = self
            .run(&scripts().nack, args![&task.to_string(), &worker])
            .await?;
        Ok(flag(given_back))
    }

    async fn fail(
        &self,
        task: TaskRef,
        worker: &str,
        error: &Value,
        retry: bool,
    ) -> Result<Failed, QueueError> {
        let answer: Vec<i64> = self
            .run(
                &scripts().fail,
                args![
                    &task.to_string(),
                    &worker,
                    &error.to_string(),
                    &u8::from(retry),
                    &self.retention(),
                ],
            )
            .await?;
        Ok(match answer.as_slice() {
            [fail_answer::RETRYING, at] => Failed::Retrying { at: time(*at) },
            [fail_answer::DEAD] => Failed::Dead,
            [fail_answer::CANCELLED] => Failed::Cancelled,
            [fail_answer::STALE] => Failed::Stale,
            other => {
                return Err(QueueError::Protocol(format!(
                    "fail: unexpected answer {other:?}"
                )));
            }
        })
    }

    async fn cancel(&self, task: TaskRef) -> Result<Cancel, QueueError> {
        let answer: Vec<String> = self
            .run(
                &scripts().cancel,
                args![&task.to_string(), &self.retention()],
            )
            .await?;
        let code: Option<i64> = answer.first().and_then(|code| code.parse().ok());
        Ok(match (code, answer.get(1)) {
            (Some(cancel_answer::UNKNOWN), _) => Cancel::Unknown,
            (Some(cancel_answer::CANCELLED), _) => Cancel::Cancelled,
            (Some(cancel_answer::REQUESTED), worker) => Cancel::Requested {
                worker: worker.cloned().unwrap_or_default(),
            },
            (Some(cancel_answer::FINISHED), Some(state)) => match state.parse::<TaskState>() {
                Ok(state) => Cancel::Finished(state),
                Err(e) => return Err(QueueError::Protocol(format!("cancel: {e}"))),
            },
            _ => {
                return Err(QueueError::Protocol(format!(
                    "cancel: unexpected answer {answer:?}"
                )));
            }
        })
    }

    async fn show(&self, task: TaskRef) -> Result<Option<TaskInfo>, QueueError> {
        let fields: Option<Fields> = self.run(&scripts().show, args![&task.to_string()]).await?;
        match fields {
            None => Ok(None),
            Some(fields) => records::task_info(&fields).map(Some).map_err(|e| {
                tracing::warn!("redis queue: task {task} cannot be read: {e}");
                QueueError::Task(format!("task {task} cannot be read: {e}"))
            }),
        }
    }

    async fn list(&self, state: TaskState, limit: usize) -> Result<Vec<TaskInfo>, QueueError> {
        let limit = limit.min(MAX_LIST);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let records: Vec<Fields> = self
            .run(&scripts().list, args![&state.as_str(), &limit])
            .await?;
        let mut tasks = Vec::with_capacity(records.len());
        for record in &records {
            match records::task_info(record) {
                Ok(info) => tasks.push(info),
                Err(e) => tracing::warn!("redis queue: a task record skipped in a list: {e}"),
            }
        }
        Ok(tasks)
    }

    async fn set_limit(&self, method: &str, limit: MethodLimit) -> Result<(), QueueError> {
        let invalid = |reason: &str| QueueError::Invalid {
            setting: "limit",
            reason: reason.to_owned(),
        };
        if limit.concurrency == Some(0) {
            return Err(invalid("a concurrency of 0: give at least 1"));
        }
        if let Some(rate) = limit.rate
            && (rate.count == 0 || rate.per.is_zero())
        {
            return Err(invalid(
                "a rate of 0, or per 0 ms: give at least 1 per 1 ms",
            ));
        }
        let text = records::limit_text(&limit).unwrap_or_default();
        let set: i64 = self
            .run(&scripts().set_limit, args![&method, &text, &MAX_LIMITS])
            .await?;
        if set == YES {
            Ok(())
        } else {
            Err(QueueError::Invalid {
                setting: "limit",
                reason: format!("there are {MAX_LIMITS} limits already: remove one first"),
            })
        }
    }

    async fn limits(&self) -> Result<BTreeMap<String, MethodLimit>, QueueError> {
        let stored: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(format!("{}limits", self.base))
            .query_async(&mut self.connection())
            .await
            .map_err(error)?;
        Ok(stored
            .into_iter()
            .filter_map(|(method, text)| match records::limit_of(&text) {
                Some(limit) => Some((method, limit)),
                None => {
                    tracing::warn!("redis queue: the limit of {method:?} cannot be read: skipped");
                    None
                }
            })
            .collect())
    }

    async fn put_schedule(&self, schedule: &Schedule) -> Result<ScheduleInfo, QueueError> {
        self.set_schedule(schedule).await
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, QueueError> {
        let removed: i64 = self.run(&scripts().remove_schedule, args![&name]).await?;
        Ok(removed == YES)
    }

    async fn schedules(&self) -> Result<Vec<ScheduleInfo>, QueueError> {
        self.all_schedules().await
    }

    async fn fire_schedules(&self) -> Result<Fired, QueueError> {
        self.fire_due().await
    }

    async fn method_stats(&self) -> Result<BTreeMap<String, MethodStats>, QueueError> {
        type Pairs = Vec<(String, i64)>;
        let (gauges, counters): (Pairs, Pairs) = self.run(&scripts().method_stats, args![]).await?;
        Ok(records::method_stats(&gauges, &counters))
    }

    fn events(&self) -> QueueEvents {
        self.events.subscribe()
    }

    async fn result(&self, method: &str, payload: &Value) -> Result<Option<Value>, QueueError> {
        let key = format!("{}result:{}", self.base, dedup_key(method, payload));
        let text: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.connection())
            .await
            .map_err(error)?;
        text.map(|text| serde_json::from_str(&text).map_err(|e| QueueError::Task(e.to_string())))
            .transpose()
    }

    async fn dead_letters(&self) -> Result<DeadLetters, QueueError> {
        let letters: Vec<(String, Vec<u8>, u32)> =
            self.run(&scripts().dead_letters, args![]).await?;
        let mut dead = Vec::with_capacity(letters.len());
        let mut skipped = 0u64;
        for (task_ref, body, attempts) in &letters {
            match Packet::from_json(records::body(body).1) {
                Ok(task) => dead.push(DeadTask {
                    task,
                    attempts: *attempts,
                }),
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(
                        "redis queue: dead letter {task_ref:?} skipped: its task cannot be decoded ({})",
                        describe(&e)
                    );
                }
            }
        }
        if skipped > 0 {
            tracing::warn!(
                "redis queue: {skipped} of {} dead letters could not be read and were skipped",
                letters.len()
            );
        }
        Ok(DeadLetters {
            tasks: dead,
            skipped,
        })
    }

    async fn requeue(&self, task: TaskRef) -> Result<bool, QueueError> {
        let requeued: i64 = self
            .run(&scripts().requeue, args![&task.to_string()])
            .await?;
        Ok(requeued == YES)
    }

    async fn purge_dead(&self) -> Result<u64, QueueError> {
        self.run(&scripts().purge_dead, args![]).await
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        let counts: Vec<i64> = self.run(&scripts().stats, args![]).await?;
        // queued, leased, done, dead, duplicates, redeliveries, names
        // taken, full, scheduled: in the script's order.
        const COUNTS: usize = 9;
        if counts.len() != COUNTS {
            return Err(QueueError::Protocol(format!(
                "stats: expected {COUNTS} counts, got {counts:?}"
            )));
        }
        let count = |index: usize| u64::try_from(counts[index]).unwrap_or(0);
        Ok(Stats {
            queued: count(0),
            leased: count(1),
            done: count(2),
            dead: count(3),
            duplicates: count(4),
            redeliveries: count(5),
            names_taken: count(6),
            full: count(7),
        })
    }
}

fn flag(value: i64) -> Acked {
    if value == YES {
        Acked::Done
    } else {
        Acked::Stale
    }
}
