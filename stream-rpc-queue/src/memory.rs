//! [`MemoryQueue`]: the queue in this process's memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use stream_rpc::Packet;
use tokio::time::Instant;

use stream_rpc::tasks::{
    MethodLimit, MethodStats, Schedule, ScheduleInfo, TaskInfo, TaskOptions, TaskState,
};

use crate::{
    Acked, Cancel, DeadLetters, DeadTask, Failed, Fired, Lease, LeaseFilter, Leased, Put,
    QueueError, QueueEvents, QueueSettings, Stats, TaskQueue, TaskRef, dedup_key,
};

/// What the memory queue does not do yet (the API commit).
fn not_yet() -> QueueError {
    QueueError::Protocol("not yet".into())
}

/// The queue in this process's memory: the default, with no server to run.
/// The same semantics as [`RedisQueue`](crate::RedisQueue), but shared by
/// the connections of one process only, and gone when it stops.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    settings: QueueSettings,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The next task's place in the queue.
    next: u64,
    /// Tasks queued or leased, by place.
    tasks: BTreeMap<u64, Task>,
    /// Places of the tasks that are not leased, oldest first.
    available: BTreeSet<u64>,
    /// Leases by when they end, then place.
    leases: BTreeSet<(Instant, u64)>,
    /// Places of the tasks queued or leased, by task name.
    by_ref: HashMap<TaskRef, u64>,
    /// Places of the dead letters, by task name.
    dead_by_ref: HashMap<TaskRef, u64>,
    /// Dedup keys held: `None` while the task is queued, leased or dead;
    /// until when after it is done.
    keys: HashMap<String, Option<Instant>>,
    /// Results of done tasks, by dedup key, until when they are kept.
    results: HashMap<String, (Value, Instant)>,
    /// The keys of done tasks and until when they are kept, in the order
    /// they were done: as retention is one setting, the soonest to end
    /// first.
    retained: VecDeque<(Instant, String)>,
    /// Dead letters, by place.
    dead: BTreeMap<u64, (Task, u32)>,
    done: u64,
    duplicates: u64,
    names_taken: u64,
    full: u64,
    redeliveries: u64,
}

#[derive(Debug, Clone)]
struct Task {
    packet: Packet,
    key: String,
    attempts: u32,
    /// The worker it was last handed to, and until when (while leased).
    holder: Option<String>,
    until: Option<Instant>,
}

impl MemoryQueue {
    /// An empty queue with default settings.
    pub fn new() -> Self {
        MemoryQueue::with_settings(QueueSettings::default())
    }

    /// An empty queue with these settings.
    pub fn with_settings(settings: QueueSettings) -> Self {
        MemoryQueue {
            settings,
            state: Mutex::default(),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Forgets the names and results whose retention ended: only the
    /// entries that ended are visited.
    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.retained.front()
            && *until <= now
        {
            let Some((until, key)) = self.retained.pop_front() else {
                break;
            };
            if self.keys.get(&key) == Some(&Some(until)) {
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
    }

    /// Makes the tasks whose lease ended available again.
    fn reclaim(&mut self, now: Instant) {
        while let Some(&(until, place)) = self.leases.first() {
            if until > now {
                break;
            }
            self.leases.pop_first();
            if let Some(task) = self.tasks.get_mut(&place) {
                task.until = None;
                self.available.insert(place);
            }
        }
    }

    /// The place of `task` if `worker` is the last worker it went to.
    fn held_by(&self, task: TaskRef, worker: &str) -> Option<u64> {
        let place = *self.by_ref.get(&task)?;
        let held = self.tasks.get(&place)?.holder.as_deref() == Some(worker);
        held.then_some(place)
    }

    /// Ends the lease of the task at `place`, if it has one.
    fn end_lease(&mut self, place: u64) {
        if let Some(task) = self.tasks.get_mut(&place)
            && let Some(until) = task.until.take()
        {
            self.leases.remove(&(until, place));
        }
    }
}

impl TaskQueue for MemoryQueue {
    async fn put_with(&self, task: &Packet, _options: &TaskOptions) -> Result<Put, QueueError> {
        let key = dedup_key(&task.method, &task.payload);
        let name = TaskRef::of(task);
        let mut state = self.lock();
        state.expire(Instant::now());
        if state.keys.contains_key(&key) {
            state.duplicates += 1;
            return Ok(Put::Duplicate { existing: None });
        }
        if state.by_ref.contains_key(&name) || state.dead_by_ref.contains_key(&name) {
            state.names_taken += 1;
            return Ok(Put::NameTaken);
        }
        if (state.tasks.len() + state.dead.len()) as u64 >= self.settings.max_tasks {
            state.full += 1;
            return Ok(Put::Full);
        }
        let place = state.next;
        state.next += 1;
        state.keys.insert(key.clone(), None);
        state.by_ref.insert(name, place);
        state.tasks.insert(
            place,
            Task {
                packet: task.clone(),
                key,
                attempts: 0,
                holder: None,
                until: None,
            },
        );
        state.available.insert(place);
        Ok(Put::Queued)
    }

    async fn lease_with(
        &self,
        worker: &str,
        lease: Duration,
        _filter: &LeaseFilter,
    ) -> Result<Lease, QueueError> {
        let now = Instant::now();
        let wall = chrono::Utc::now();
        let mut state = self.lock();
        state.reclaim(now);
        while let Some(place) = state.available.pop_first() {
            let Some(task) = state.tasks.get(&place) else {
                continue;
            };
            if task.attempts >= self.settings.max_attempts {
                // Handed out as often as allowed: a dead letter, not again.
                // Its name leaves the live tasks only if it still names
                // this very task, and names the dead letter unless it
                // names another already.
                let task_ref = TaskRef::of(&task.packet);
                if state.by_ref.get(&task_ref) == Some(&place) {
                    state.by_ref.remove(&task_ref);
                }
                state.dead_by_ref.entry(task_ref).or_insert(place);
                if let Some(task) = state.tasks.remove(&place) {
                    let attempts = task.attempts;
                    state.dead.insert(place, (task, attempts));
                }
                continue;
            }
            let Some(task) = state.tasks.get_mut(&place) else {
                continue;
            };
            task.attempts += 1;
            task.holder = Some(worker.to_owned());
            let until = now + lease;
            task.until = Some(until);
            let leased = Leased::new(
                task.packet.clone(),
                task.attempts,
                TaskOptions::default(),
                wall,
                wall,
            );
            if leased.attempt > 1 {
                state.redeliveries += 1;
            }
            state.leases.insert((until, place));
            return Ok(Lease::Leased(leased));
        }
        Ok(Lease::Empty { next_due: None })
    }

    async fn fail(
        &self,
        _task: TaskRef,
        _worker: &str,
        _error: &Value,
        _retry: bool,
    ) -> Result<Failed, QueueError> {
        Err(not_yet())
    }

    async fn cancel(&self, _task: TaskRef) -> Result<Cancel, QueueError> {
        Err(not_yet())
    }

    async fn show(&self, _task: TaskRef) -> Result<Option<TaskInfo>, QueueError> {
        Err(not_yet())
    }

    async fn list(&self, _state: TaskState, _limit: usize) -> Result<Vec<TaskInfo>, QueueError> {
        Err(not_yet())
    }

    async fn set_limit(&self, _method: &str, _limit: MethodLimit) -> Result<(), QueueError> {
        Err(not_yet())
    }

    async fn limits(&self) -> Result<BTreeMap<String, MethodLimit>, QueueError> {
        Err(not_yet())
    }

    async fn put_schedule(&self, _schedule: &Schedule) -> Result<ScheduleInfo, QueueError> {
        Err(not_yet())
    }

    async fn remove_schedule(&self, _name: &str) -> Result<bool, QueueError> {
        Err(not_yet())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleInfo>, QueueError> {
        Err(not_yet())
    }

    async fn fire_schedules(&self) -> Result<Fired, QueueError> {
        Err(not_yet())
    }

    async fn method_stats(&self) -> Result<BTreeMap<String, MethodStats>, QueueError> {
        Err(not_yet())
    }

    fn events(&self) -> QueueEvents {
        QueueEvents::new(tokio::sync::broadcast::channel(1).1)
    }

    async fn extend(
        &self,
        task: TaskRef,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, QueueError> {
        let now = Instant::now();
        let mut state = self.lock();
        state.reclaim(now);
        let Some(place) = state.held_by(task, worker) else {
            return Ok(false);
        };
        // A lease that ended but whose task went to nobody else yet is
        // taken up again.
        state.end_lease(place);
        state.available.remove(&place);
        let until = now + lease;
        if let Some(task) = state.tasks.get_mut(&place) {
            task.until = Some(until);
        }
        state.leases.insert((until, place));
        Ok(true)
    }

    async fn ack(&self, task: TaskRef, worker: &str, result: &Value) -> Result<Acked, QueueError> {
        if json_len(result) > self.settings.max_result_bytes {
            return Ok(Acked::TooLarge);
        }
        let now = Instant::now();
        let mut state = self.lock();
        let Some(place) = state.held_by(task, worker) else {
            return Ok(Acked::Stale);
        };
        state.end_lease(place);
        state.available.remove(&place);
        state.by_ref.remove(&task);
        let Some(done) = state.tasks.remove(&place) else {
            return Ok(Acked::Stale);
        };
        let until = now + self.settings.retention;
        state.keys.insert(done.key.clone(), Some(until));
        state
            .results
            .insert(done.key.clone(), (result.clone(), until));
        state.retained.push_back((until, done.key));
        state.done += 1;
        Ok(Acked::Done)
    }

    async fn nack(&self, task: TaskRef, worker: &str) -> Result<Acked, QueueError> {
        let mut state = self.lock();
        state.reclaim(Instant::now());
        let Some(place) = state.held_by(task, worker) else {
            return Ok(Acked::Stale);
        };
        state.end_lease(place);
        if let Some(task) = state.tasks.get_mut(&place) {
            // Nobody holds it now: an ack from the last holder is stale.
            task.holder = None;
        }
        state.available.insert(place);
        Ok(Acked::Done)
    }

    async fn result(&self, method: &str, payload: &Value) -> Result<Option<Value>, QueueError> {
        let key = dedup_key(method, payload);
        let mut state = self.lock();
        state.expire(Instant::now());
        Ok(state.results.get(&key).map(|(value, _)| value.clone()))
    }

    // A dead letter in memory is always a packet: nothing to skip.
    async fn dead_letters(&self) -> Result<DeadLetters, QueueError> {
        let state = self.lock();
        let tasks = state
            .dead
            .values()
            .map(|(task, attempts)| DeadTask {
                task: task.packet.clone(),
                attempts: *attempts,
            })
            .collect();
        Ok(DeadLetters { tasks, skipped: 0 })
    }

    async fn requeue(&self, task: TaskRef) -> Result<bool, QueueError> {
        let mut state = self.lock();
        if state.by_ref.contains_key(&task) {
            // Cannot happen (a put under a held name is refused), but a name
            // never stands for two tasks.
            return Ok(false);
        }
        let Some(place) = state.dead_by_ref.remove(&task) else {
            return Ok(false);
        };
        let Some((mut back, _)) = state.dead.remove(&place) else {
            return Ok(false);
        };
        back.attempts = 0;
        back.holder = None;
        back.until = None;
        // At the back of the queue, as a task put now.
        let place = state.next;
        state.next += 1;
        state.by_ref.insert(task, place);
        state.tasks.insert(place, back);
        state.available.insert(place);
        Ok(true)
    }

    async fn purge_dead(&self) -> Result<u64, QueueError> {
        let mut state = self.lock();
        let dead = std::mem::take(&mut state.dead);
        state.dead_by_ref.clear();
        for (task, _) in dead.values() {
            // Held with no end while dead.
            if state.keys.get(&task.key) == Some(&None) {
                state.keys.remove(&task.key);
            }
        }
        Ok(dead.len() as u64)
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        // A lease that ended counts as leased until the task is handed out
        // again, as on Redis.
        let state = self.lock();
        let leased = state.leases.len() as u64;
        Ok(Stats {
            queued: state.tasks.len() as u64 - leased,
            leased,
            done: state.done,
            dead: state.dead.len() as u64,
            duplicates: state.duplicates,
            names_taken: state.names_taken,
            full: state.full,
            redeliveries: state.redeliveries,
        })
    }
}

/// The length of `value` as compact JSON, counted without building it.
pub(crate) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
