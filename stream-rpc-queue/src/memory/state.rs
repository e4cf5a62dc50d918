//! The memory queue's state: its tasks, the indexes that order them, and
//! the moves of a task from one state to another (each keeps the indexes
//! and the per-method counts in step).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde_json::Value;
use stream_rpc::Packet;
use stream_rpc::tasks::{
    MAX_ATTEMPTS_LIMIT, MethodLimit, Priority, ScheduleInfo, TaskInfo, TaskOptions, TaskRef,
    TaskState,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::{QueueEvent, QueueSettings};

/// A task the queue holds: scheduled, queued, leased or dead.
#[derive(Debug, Clone)]
pub(super) struct Task {
    pub(super) packet: Packet,
    /// Its dedupe key ([`crate::dedupe_key`]).
    pub(super) key: String,
    pub(super) options: TaskOptions,
    pub(super) state: TaskState,
    pub(super) attempts: u32,
    pub(super) max_attempts: u32,
    pub(super) put_at: DateTime<Utc>,
    /// When it may be handed out (scheduled), or when it became due.
    pub(super) due_at: DateTime<Utc>,
    /// Its place among the ready tasks of its method (queued).
    pub(super) seq: u64,
    /// The worker it was last handed to, and until when (while leased).
    pub(super) holder: Option<String>,
    pub(super) until: Option<Instant>,
    pub(super) cancel_requested: bool,
    pub(super) error: Option<Value>,
    /// When it died (dead).
    pub(super) dead_at: Option<DateTime<Utc>>,
}

impl Task {
    pub(super) fn name(&self) -> TaskRef {
        TaskRef::of(&self.packet)
    }

    pub(super) fn info(&self) -> TaskInfo {
        let mut info = TaskInfo::new(&self.packet, &self.options, self.max_attempts, self.put_at);
        info.state = self.state;
        info.attempts = self.attempts;
        info.run_at = (self.state == TaskState::Scheduled).then_some(self.due_at);
        info.worker = self.holder.clone();
        info.cancel_requested = self.cancel_requested;
        info.finished_at = self.dead_at;
        info.error = self.error.clone();
        info
    }
}

/// A dedupe key held: by which task, and until when once it is done
/// (`None` while the task is live).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hold {
    pub(super) task: TaskRef,
    pub(super) until: Option<Instant>,
}

/// What the retention window keeps, in the order it was kept.
#[derive(Debug, Clone)]
pub(super) enum Kept {
    /// A done task's dedupe key and content result.
    Key(String),
    /// A done or cancelled task's record.
    Record(TaskRef),
}

/// One method's counts: its tasks in each state now, and its events.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub(super) queued: u64,
    pub(super) scheduled: u64,
    pub(super) running: u64,
    pub(super) dead: u64,
    pub(super) done: u64,
    pub(super) failed: u64,
    pub(super) retried: u64,
    pub(super) cancelled: u64,
    pub(super) limited: u64,
}

/// How many methods' counts are kept before those of methods with no task
/// held are forgotten.
pub(super) const MAX_COUNTED_METHODS: usize = 10_000;

impl Counts {
    /// Whether a task of the method is held (scheduled, queued, leased or
    /// dead).
    fn holds_tasks(&self) -> bool {
        self.queued + self.scheduled + self.running + self.dead > 0
    }

    fn of(&mut self, state: TaskState) -> Option<&mut u64> {
        match state {
            TaskState::Queued => Some(&mut self.queued),
            TaskState::Scheduled => Some(&mut self.scheduled),
            TaskState::Leased => Some(&mut self.running),
            TaskState::Dead => Some(&mut self.dead),
            TaskState::Done | TaskState::Cancelled => None,
        }
    }
}

/// A fleet limit and its rate's state: the theoretical arrival time of
/// the next lease (GCRA, in µs since the epoch), the token bucket's form.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Limit {
    pub(super) limit: MethodLimit,
    pub(super) tat_us: i64,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) settings: QueueSettings,
    pub(super) events: broadcast::Sender<QueueEvent>,
    next_uid: u64,
    next_seq: u64,
    next_dead: u64,
    /// The tasks held, by their number (the order they were put).
    pub(super) tasks: BTreeMap<u64, Task>,
    /// The numbers of the tasks held, by name.
    pub(super) by_ref: HashMap<TaskRef, u64>,
    /// Queued tasks per method, by priority and place.
    pub(super) ready: BTreeMap<String, BTreeSet<(Priority, u64, u64)>>,
    /// Scheduled tasks per method, by when they are due.
    pub(super) scheduled: BTreeMap<String, BTreeSet<(DateTime<Utc>, u64)>>,
    /// Leases by when they end.
    pub(super) leases: BTreeSet<(Instant, u64)>,
    /// Dead letters in the order they died.
    pub(super) dead: BTreeSet<(u64, u64)>,
    /// Dedupe keys held.
    pub(super) keys: HashMap<String, Hold>,
    /// Results of done tasks by dedupe key, until when they are kept.
    pub(super) results: HashMap<String, (Value, Instant)>,
    /// Records of done and cancelled tasks, until when they are kept.
    pub(super) finished: HashMap<TaskRef, (TaskInfo, Instant)>,
    /// The records of `finished` in the order they were kept (some
    /// replaced or expired since), to drop the oldest past `max_tasks`.
    finished_order: VecDeque<(TaskRef, Instant)>,
    /// What the retention window keeps, soonest to end first (retention
    /// is one setting).
    pub(super) retained: VecDeque<(Instant, Kept)>,
    pub(super) counts: HashMap<String, Counts>,
    pub(super) limits: BTreeMap<String, Limit>,
    pub(super) schedules: BTreeMap<String, ScheduleInfo>,
    pub(super) done: u64,
    pub(super) duplicates: u64,
    pub(super) names_taken: u64,
    pub(super) full: u64,
    pub(super) redeliveries: u64,
}

impl State {
    pub(super) fn new(settings: QueueSettings, events: broadcast::Sender<QueueEvent>) -> Self {
        State {
            settings,
            events,
            next_uid: 0,
            next_seq: 0,
            next_dead: 0,
            tasks: BTreeMap::new(),
            by_ref: HashMap::new(),
            ready: BTreeMap::new(),
            scheduled: BTreeMap::new(),
            leases: BTreeSet::new(),
            dead: BTreeSet::new(),
            keys: HashMap::new(),
            results: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            retained: VecDeque::new(),
            counts: HashMap::new(),
            limits: BTreeMap::new(),
            schedules: BTreeMap::new(),
            done: 0,
            duplicates: 0,
            names_taken: 0,
            full: 0,
            redeliveries: 0,
        }
    }

    /// Tells the subscribers, if any.
    pub(super) fn tell(&self, event: QueueEvent) {
        let _ = self.events.send(event);
    }

    pub(super) fn counts(&mut self, method: &str) -> &mut Counts {
        if self.counts.len() >= MAX_COUNTED_METHODS && !self.counts.contains_key(method) {
            // Bounded whatever methods peers put: the counters of methods
            // with no task held go first.
            self.counts.retain(|_, counts| counts.holds_tasks());
        }
        self.counts.entry(method.to_owned()).or_default()
    }

    /// The attempts a task put with `options` may have.
    pub(super) fn max_attempts(&self, options: &TaskOptions) -> u32 {
        options
            .max_attempts
            .map_or(self.settings.max_attempts, |most| {
                most.clamp(1, MAX_ATTEMPTS_LIMIT)
            })
    }

    /// Holds `task` under number `uid` in `state` (scheduled, queued or
    /// leased; see [`link`](Self::link)).
    pub(super) fn insert(&mut self, task: Task) -> u64 {
        let uid = self.next_uid;
        self.next_uid += 1;
        self.by_ref.insert(task.name(), uid);
        let state = task.state;
        self.tasks.insert(uid, task);
        self.link(uid, state);
        uid
    }

    /// Takes the task `uid` out of the index of its state.
    fn unlink(&mut self, uid: u64) {
        let Some(task) = self.tasks.get_mut(&uid) else {
            return;
        };
        let method = task.packet.method.clone();
        let state = task.state;
        match state {
            TaskState::Queued => {
                let entry = (task.options.priority, task.seq, uid);
                if let Some(set) = self.ready.get_mut(&method) {
                    set.remove(&entry);
                    if set.is_empty() {
                        self.ready.remove(&method);
                    }
                }
            }
            TaskState::Scheduled => {
                let entry = (task.due_at, uid);
                if let Some(set) = self.scheduled.get_mut(&method) {
                    set.remove(&entry);
                    if set.is_empty() {
                        self.scheduled.remove(&method);
                    }
                }
            }
            TaskState::Leased => {
                if let Some(until) = task.until.take() {
                    self.leases.remove(&(until, uid));
                }
            }
            TaskState::Dead => {
                let seq = task.seq;
                self.dead.remove(&(seq, uid));
            }
            TaskState::Done | TaskState::Cancelled => {}
        }
        if let Some(count) = self.counts(&method).of(state) {
            *count = count.saturating_sub(1);
        }
    }

    /// Puts the task `uid` in the index of `state` (its `due_at` set for
    /// scheduled, its `until` for leased).
    fn link(&mut self, uid: u64, state: TaskState) {
        let seq = match state {
            TaskState::Queued => {
                self.next_seq += 1;
                self.next_seq
            }
            TaskState::Dead => {
                self.next_dead += 1;
                self.next_dead
            }
            _ => 0,
        };
        let Some(task) = self.tasks.get_mut(&uid) else {
            return;
        };
        task.state = state;
        let method = task.packet.method.clone();
        match state {
            TaskState::Queued => {
                task.seq = seq;
                let entry = (task.options.priority, seq, uid);
                self.ready.entry(method.clone()).or_default().insert(entry);
            }
            TaskState::Scheduled => {
                let entry = (task.due_at, uid);
                self.scheduled
                    .entry(method.clone())
                    .or_default()
                    .insert(entry);
            }
            TaskState::Leased => {
                if let Some(until) = task.until {
                    self.leases.insert((until, uid));
                }
            }
            TaskState::Dead => {
                task.seq = seq;
                self.dead.insert((seq, uid));
            }
            TaskState::Done | TaskState::Cancelled => {}
        }
        if let Some(count) = self.counts(&method).of(state) {
            *count += 1;
        }
    }

    /// Moves the task `uid` to `state`.
    pub(super) fn relink(&mut self, uid: u64, state: TaskState) {
        self.unlink(uid);
        self.link(uid, state);
    }

    /// Drops the task `uid` (it finished, or was purged): out of its
    /// index, and its name released if it still names it. Its dedupe key
    /// is the caller's to keep or release.
    pub(super) fn remove(&mut self, uid: u64) -> Option<Task> {
        self.unlink(uid);
        let task = self.tasks.remove(&uid)?;
        let name = task.name();
        if self.by_ref.get(&name) == Some(&uid) {
            self.by_ref.remove(&name);
        }
        Some(task)
    }

    /// Releases `key` if `task` holds it while live.
    pub(super) fn release_key(&mut self, key: &str, task: TaskRef) {
        if self.keys.get(key) == Some(&Hold { task, until: None }) {
            self.keys.remove(key);
        }
    }

    /// Whether the record of `name` kept until `until` is still kept.
    fn live(
        finished: &HashMap<TaskRef, (TaskInfo, Instant)>,
        name: &TaskRef,
        until: Instant,
    ) -> bool {
        finished.get(name).is_some_and(|(_, kept)| *kept == until)
    }

    /// Keeps `info` (a done or cancelled task's record) for the retention
    /// window, and at most `max_tasks` such records: the oldest go first.
    pub(super) fn keep_record(&mut self, info: TaskInfo, now: Instant) {
        let until = super::ops::until(now, self.settings.retention);
        let name = info.task;
        self.finished.insert(name, (info, until));
        self.retained.push_back((until, Kept::Record(name)));
        self.finished_order.push_back((name, until));
        let most = usize::try_from(self.settings.max_tasks).unwrap_or(usize::MAX);
        let finished = &mut self.finished;
        while finished.len() > most
            && let Some((name, until)) = self.finished_order.pop_front()
        {
            if Self::live(finished, &name, until) {
                finished.remove(&name);
            }
        }
        // Entries of records replaced or expired since: dropped once they
        // are half of the order (amortised).
        if self.finished_order.len() > finished.len().saturating_mul(2).max(16) {
            self.finished_order
                .retain(|(name, until)| Self::live(finished, name, *until));
        }
    }

    /// Forgets what the retention window kept and that ended: only the
    /// entries that ended are visited.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.retained.front()
            && *until <= now
        {
            let Some((until, kept)) = self.retained.pop_front() else {
                break;
            };
            match kept {
                Kept::Key(key) => {
                    if self
                        .keys
                        .get(&key)
                        .is_some_and(|hold| hold.until == Some(until))
                    {
                        self.keys.remove(&key);
                    }
                    if self
                        .results
                        .get(&key)
                        .is_some_and(|(_, kept)| *kept == until)
                    {
                        self.results.remove(&key);
                    }
                }
                Kept::Record(name) => {
                    if self
                        .finished
                        .get(&name)
                        .is_some_and(|(_, kept)| *kept == until)
                    {
                        self.finished.remove(&name);
                    }
                }
            }
        }
    }

    /// The number of the task named `task` if `worker` is the last worker
    /// it went to and it is not finished.
    pub(super) fn held_by(&self, task: TaskRef, worker: &str) -> Option<u64> {
        let uid = *self.by_ref.get(&task)?;
        let held = self.tasks.get(&uid).is_some_and(|task| {
            task.holder.as_deref() == Some(worker)
                && matches!(task.state, TaskState::Leased | TaskState::Queued)
        });
        held.then_some(uid)
    }

    /// Brings the queue up to `now`: leases that ended are given back (or
    /// end cancelled, when that was asked), scheduled tasks that are due
    /// are queued (in the order they were due), and what the retention
    /// window kept and that ended is forgotten.
    pub(super) fn catch_up(&mut self, now: Instant, wall: DateTime<Utc>) {
        self.expire(now);
        while let Some(&(until, uid)) = self.leases.first() {
            if until > now {
                break;
            }
            self.give_back(uid, now, wall);
        }
        let mut due: Vec<(DateTime<Utc>, u64)> = Vec::new();
        for set in self.scheduled.values() {
            due.extend(set.iter().take_while(|(at, _)| *at <= wall).copied());
        }
        due.sort_unstable();
        for (_, uid) in due {
            self.relink(uid, TaskState::Queued);
        }
    }

    /// Ends an attempt at the task `uid` without its outcome (its lease
    /// ran out, or its worker gave it back): cancelled, when that was
    /// asked; a dead letter, when it has no attempts left; else queued
    /// again at the back of its priority (its last holder may still ack it
    /// until it is handed out again).
    pub(super) fn give_back(&mut self, uid: u64, now: Instant, wall: DateTime<Utc>) {
        let Some(task) = self.tasks.get(&uid) else {
            return;
        };
        let method = task.packet.method.clone();
        let was = task.state;
        if task.cancel_requested {
            self.end_cancelled(uid, None, now, wall);
        } else if task.attempts >= task.max_attempts {
            self.bury(uid, None, wall);
            self.lease_ended(&method, was);
        } else {
            self.relink(uid, TaskState::Queued);
            self.tell(QueueEvent::Ready {
                method: method.clone(),
            });
            self.lease_ended(&method, was);
        }
    }

    /// Ends the task `uid` as cancelled (its attempt's end, when its
    /// cancellation was asked while it ran; or at once, when it waited):
    /// its record kept with `result`, its dedupe key released.
    pub(super) fn end_cancelled(
        &mut self,
        uid: u64,
        result: Option<Value>,
        now: Instant,
        wall: DateTime<Utc>,
    ) {
        let Some(task) = self.remove(uid) else {
            return;
        };
        let name = task.name();
        self.release_key(&task.key, name);
        let mut info = task.info();
        info.state = TaskState::Cancelled;
        info.run_at = None;
        info.finished_at = Some(wall);
        info.result = result;
        self.counts(&task.packet.method).cancelled += 1;
        self.keep_record(info, now);
        self.tell(QueueEvent::Finished {
            task: name,
            state: TaskState::Cancelled,
        });
        self.lease_ended(&task.packet.method, task.state);
    }

    /// After a task of `method` left state `was`: a lease that ended frees
    /// a place under a concurrency limit, which may let a held-back task
    /// go.
    pub(super) fn lease_ended(&self, method: &str, was: TaskState) {
        if was == TaskState::Leased
            && self
                .limits
                .get(method)
                .is_some_and(|limit| limit.limit.concurrency.is_some())
            && self.ready.contains_key(method)
        {
            self.tell(QueueEvent::Ready {
                method: method.to_owned(),
            });
        }
    }

    /// How many tasks are held (scheduled, queued, leased and dead).
    pub(super) fn held(&self) -> u64 {
        self.tasks.len() as u64
    }
}
