//! The memory queue's operations on tasks: put, lease, extend, ack, nack,
//! fail, cancel, requeue and purge.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use stream_rpc::Packet;
use stream_rpc::tasks::{DEFAULT_BACKOFF, TaskOptions, TaskRef, TaskState};
use tokio::time::Instant;

use super::state::{Hold, Kept, State, Task};
use crate::{Acked, Cancel, Failed, Lease, LeaseFilter, Leased, Put, QueueEvent, dedupe_key};

/// `at` plus `wait`, or the end of time when that overflows.
pub(super) fn later(at: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(wait)
        .ok()
        .and_then(|wait| at.checked_add_signed(wait))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl State {
    pub(super) fn put(
        &mut self,
        task: &Packet,
        options: &TaskOptions,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Put {
        self.catch_up(now, wall);
        let key = dedupe_key(task, options);
        let name = TaskRef::of(task);
        if let Some(hold) = self.keys.get(&key) {
            let existing = hold.task;
            // The holder's record may have expired before its key (a
            // cancelled one's key is released; a done one's expire
            // together): name it only while it is known.
            let known =
                self.by_ref.contains_key(&existing) || self.finished.contains_key(&existing);
            self.duplicates += 1;
            return Put::Duplicate {
                existing: known.then_some(existing),
            };
        }
        if self.by_ref.contains_key(&name) {
            self.names_taken += 1;
            return Put::NameTaken;
        }
        if self.held() >= self.settings.max_tasks {
            self.full += 1;
            return Put::Full;
        }
        let scheduled = options.run_at.is_some_and(|at| at > wall);
        let state = if scheduled {
            TaskState::Scheduled
        } else {
            TaskState::Queued
        };
        self.keys.insert(
            key.clone(),
            Hold {
                task: name,
                until: None,
            },
        );
        let max_attempts = self.max_attempts(options);
        self.insert(Task {
            packet: task.clone(),
            key,
            options: options.clone(),
            state,
            attempts: 0,
            max_attempts,
            put_at: wall,
            due_at: options.run_at.unwrap_or(wall),
            seq: 0,
            holder: None,
            until: None,
            cancel_requested: false,
            error: None,
            dead_at: None,
        });
        if scheduled {
            Put::Scheduled
        } else {
            self.tell(QueueEvent::Ready {
                method: task.method.clone(),
            });
            Put::Queued
        }
    }

    /// The first ready task of `method` that may be handed out (tasks that
    /// ran out of attempts become dead letters on the way), or why not.
    fn head(&mut self, method: &str, wall: DateTime<Utc>) -> Head {
        loop {
            let Some(&(priority, seq, uid)) = self.ready.get(method).and_then(|set| set.first())
            else {
                return Head::None;
            };
            let spent = self
                .tasks
                .get(&uid)
                .is_none_or(|task| task.attempts >= task.max_attempts);
            if spent {
                self.bury(uid, None, wall);
                continue;
            }
            if let Some(limit) = self.limits.get(method) {
                let running = self.counts.get(method).map_or(0, |counts| counts.running);
                if limit
                    .limit
                    .concurrency
                    .is_some_and(|most| running >= u64::from(most))
                {
                    return Head::Limited(None);
                }
                if let Some(allowed) = super::limits::rate_allows(limit, wall) {
                    return Head::Limited(Some(allowed));
                }
            }
            return Head::Ready((priority, seq, uid));
        }
    }

    pub(super) fn lease(
        &mut self,
        worker: &str,
        lease: Duration,
        filter: &LeaseFilter,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Lease {
        self.catch_up(now, wall);
        let methods: Vec<String> = match &filter.methods {
            Some(methods) => methods.clone(),
            None => self.ready.keys().cloned().collect(),
        };
        let mut best = None;
        let mut next_due: Option<DateTime<Utc>> = None;
        for method in &methods {
            match self.head(method, wall) {
                Head::None => {}
                Head::Limited(allowed) => {
                    self.counts(method).limited += 1;
                    next_due = earliest(next_due, allowed);
                }
                Head::Ready(entry) => {
                    if best.is_none_or(|(best, _)| entry < best) {
                        best = Some((entry, method));
                    }
                }
            }
        }
        let Some(((_, _, uid), method)) = best else {
            for (method, set) in &self.scheduled {
                if filter.admits(method) {
                    next_due = earliest(next_due, set.first().map(|(at, _)| *at));
                }
            }
            return Lease::Empty { next_due };
        };
        let method = method.clone();
        if let Some(limit) = self.limits.get_mut(&method) {
            super::limits::take_token(limit, wall);
        }
        let until = now + lease;
        let Some(task) = self.tasks.get_mut(&uid) else {
            return Lease::Empty { next_due };
        };
        task.attempts += 1;
        task.holder = Some(worker.to_owned());
        task.until = Some(until);
        let leased = Leased::new(
            task.packet.clone(),
            task.attempts,
            task.options.clone(),
            task.due_at,
            task.put_at,
        );
        // `until` is set: the move puts it among the leases.
        self.relink_leased(uid, until);
        if leased.attempt > 1 {
            self.redeliveries += 1;
        }
        Lease::Leased(leased)
    }

    /// Moves the task `uid` to leased until `until`.
    fn relink_leased(&mut self, uid: u64, until: Instant) {
        // Unlinking a leased task takes its `until`: set it after.
        self.relink(uid, TaskState::Leased);
        if let Some(task) = self.tasks.get_mut(&uid) {
            task.until = Some(until);
        }
        self.leases.insert((until, uid));
    }

    pub(super) fn extend(
        &mut self,
        task: TaskRef,
        worker: &str,
        lease: Duration,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> bool {
        self.catch_up(now, wall);
        let Some(uid) = self.held_by(task, worker) else {
            return false;
        };
        // A lease that ended but whose task went to nobody else yet is
        // taken up again.
        self.relink_leased(uid, now + lease);
        true
    }

    /// Ends the attempt of `worker` at `task` (it holds it): its number,
    /// taken out of its lease.
    fn end_attempt(&mut self, task: TaskRef, worker: &str) -> Option<u64> {
        let uid = self.held_by(task, worker)?;
        Some(uid)
    }

    pub(super) fn ack(
        &mut self,
        task: TaskRef,
        worker: &str,
        result: &Value,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Acked {
        // No catch-up of leases first: a lease that ended but whose task
        // went to nobody else yet still takes its ack.
        self.expire(now);
        let Some(uid) = self.end_attempt(task, worker) else {
            return Acked::Stale;
        };
        if self
            .tasks
            .get(&uid)
            .is_some_and(|task| task.cancel_requested)
        {
            self.end_cancelled(uid, Some(result.clone()), now, wall);
            return Acked::Done;
        }
        let Some(done) = self.remove(uid) else {
            return Acked::Stale;
        };
        let until = now + self.settings.retention;
        self.keys.insert(
            done.key.clone(),
            Hold {
                task,
                until: Some(until),
            },
        );
        self.results
            .insert(done.key.clone(), (result.clone(), until));
        self.retained
            .push_back((until, Kept::Key(done.key.clone())));
        let mut info = done.info();
        info.state = TaskState::Done;
        info.finished_at = Some(wall);
        info.result = Some(result.clone());
        self.keep_record(info, now);
        self.done += 1;
        self.counts(&done.packet.method).done += 1;
        self.tell(QueueEvent::Finished {
            task,
            state: TaskState::Done,
        });
        self.lease_ended(&done.packet.method, done.state);
        Acked::Done
    }

    pub(super) fn nack(
        &mut self,
        task: TaskRef,
        worker: &str,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Acked {
        self.catch_up(now, wall);
        let Some(uid) = self.end_attempt(task, worker) else {
            return Acked::Stale;
        };
        let Some(held) = self.tasks.get_mut(&uid) else {
            return Acked::Stale;
        };
        // Nobody holds it now: an ack from the last holder is stale.
        held.holder = None;
        self.give_back(uid, now, wall);
        Acked::Done
    }

    pub(super) fn fail(
        &mut self,
        task: TaskRef,
        worker: &str,
        error: &Value,
        retry: bool,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Failed {
        self.expire(now);
        let Some(uid) = self.end_attempt(task, worker) else {
            return Failed::Stale;
        };
        let Some(held) = self.tasks.get_mut(&uid) else {
            return Failed::Stale;
        };
        if held.cancel_requested {
            held.error = Some(error.clone());
            self.end_cancelled(uid, None, now, wall);
            return Failed::Cancelled;
        }
        held.error = Some(error.clone());
        let method = held.packet.method.clone();
        let was = held.state;
        let failed = if retry && held.attempts < held.max_attempts {
            let wait = held
                .options
                .backoff
                .unwrap_or(DEFAULT_BACKOFF)
                .after(held.attempts);
            let at = later(wall, wait);
            held.due_at = at;
            held.holder = None;
            self.relink(uid, TaskState::Scheduled);
            self.counts(&method).retried += 1;
            Failed::Retrying { at }
        } else {
            self.bury(uid, Some(error.clone()), wall);
            Failed::Dead
        };
        self.counts(&method).failed += 1;
        self.lease_ended(&method, was);
        failed
    }

    /// Makes the task `uid` a dead letter: its name and dedupe key stay
    /// held until it is requeued or purged.
    pub(super) fn bury(&mut self, uid: u64, error: Option<Value>, wall: DateTime<Utc>) {
        let Some(task) = self.tasks.get_mut(&uid) else {
            return;
        };
        if error.is_some() {
            task.error = error;
        }
        task.dead_at = Some(wall);
        let name = task.name();
        self.relink(uid, TaskState::Dead);
        self.tell(QueueEvent::Finished {
            task: name,
            state: TaskState::Dead,
        });
    }

    pub(super) fn cancel(&mut self, task: TaskRef, now: Instant, wall: DateTime<Utc>) -> Cancel {
        self.catch_up(now, wall);
        if let Some(&uid) = self.by_ref.get(&task)
            && let Some(held) = self.tasks.get_mut(&uid)
        {
            return match held.state {
                TaskState::Scheduled | TaskState::Queued => {
                    self.end_cancelled(uid, None, now, wall);
                    Cancel::Cancelled
                }
                TaskState::Leased => {
                    held.cancel_requested = true;
                    let worker = held.holder.clone().unwrap_or_default();
                    self.tell(QueueEvent::CancelRequested { task });
                    Cancel::Requested { worker }
                }
                state => Cancel::Finished(state),
            };
        }
        match self.finished.get(&task) {
            Some((info, _)) => Cancel::Finished(info.state),
            None => Cancel::Unknown,
        }
    }

    pub(super) fn requeue(&mut self, task: TaskRef) -> bool {
        let Some(&uid) = self.by_ref.get(&task) else {
            return false;
        };
        let Some(dead) = self.tasks.get_mut(&uid) else {
            return false;
        };
        if dead.state != TaskState::Dead {
            return false;
        }
        dead.attempts = 0;
        dead.holder = None;
        dead.until = None;
        dead.cancel_requested = false;
        dead.dead_at = None;
        let method = dead.packet.method.clone();
        // At the back of the queue, as a task put now.
        self.relink(uid, TaskState::Queued);
        self.tell(QueueEvent::Ready { method });
        true
    }

    pub(super) fn purge_dead(&mut self) -> u64 {
        let dead: Vec<u64> = self.dead.iter().map(|&(_, uid)| uid).collect();
        for &uid in &dead {
            if let Some(task) = self.remove(uid) {
                self.release_key(&task.key, task.name());
            }
        }
        dead.len() as u64
    }
}

/// What the head of a method's ready tasks is.
enum Head {
    /// None is ready.
    None,
    /// Held back by the method's limit; when its rate allows the next.
    Limited(Option<DateTime<Utc>>),
    /// This one may go.
    Ready((stream_rpc::tasks::Priority, u64, u64)),
}

/// The earlier of two times, either maybe absent.
pub(super) fn earliest(
    a: Option<DateTime<Utc>>,
    b: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
