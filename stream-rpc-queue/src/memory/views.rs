//! What the memory queue tells of its tasks: show, list, counts, dead
//! letters.

use std::collections::BTreeMap;

use stream_rpc::tasks::{MethodStats, TaskInfo, TaskRef, TaskState};

use super::state::{Kept, State};
use crate::{DeadLetters, DeadTask, MAX_LIST, Stats};

impl State {
    pub(super) fn show(&self, task: TaskRef) -> Option<TaskInfo> {
        if let Some(held) = self.by_ref.get(&task).and_then(|uid| self.tasks.get(uid)) {
            return Some(held.info());
        }
        self.finished.get(&task).map(|(info, _)| info.clone())
    }

    pub(super) fn list(&self, state: TaskState, limit: usize) -> Vec<TaskInfo> {
        let limit = limit.min(MAX_LIST);
        match state {
            TaskState::Done | TaskState::Cancelled => self
                .retained
                .iter()
                .rev()
                .filter_map(|(until, kept)| match kept {
                    Kept::Record(name) => self
                        .finished
                        .get(name)
                        .filter(|(info, kept)| kept == until && info.state == state)
                        .map(|(info, _)| info.clone()),
                    Kept::Key(_) => None,
                })
                .take(limit)
                .collect(),
            TaskState::Dead => self
                .dead
                .iter()
                .filter_map(|(_, uid)| self.tasks.get(uid))
                .take(limit)
                .map(|task| task.info())
                .collect(),
            // The same orders as on Redis: scheduled by their time, queued
            // in the order they became available, leased by when their
            // lease ends.
            TaskState::Scheduled => {
                let mut due: Vec<_> = self
                    .scheduled
                    .values()
                    .flat_map(|method| method.iter().take(limit))
                    .collect();
                due.sort_unstable();
                self.infos(due.into_iter().map(|(_, uid)| uid), limit)
            }
            TaskState::Queued => {
                let mut ready: Vec<_> = self
                    .ready
                    .values()
                    .flat_map(|method| method.iter().take(limit))
                    .map(|(_, seq, uid)| (seq, uid))
                    .collect();
                ready.sort_unstable();
                self.infos(ready.into_iter().map(|(_, uid)| uid), limit)
            }
            TaskState::Leased => self.infos(self.leases.iter().map(|(_, uid)| uid), limit),
        }
    }

    /// The records of the tasks `uids` names, at most `limit`.
    fn infos<'a>(&self, uids: impl Iterator<Item = &'a u64>, limit: usize) -> Vec<TaskInfo> {
        uids.filter_map(|uid| self.tasks.get(uid))
            .take(limit)
            .map(|task| task.info())
            .collect()
    }

    pub(super) fn stats(&self) -> Stats {
        let (mut queued, mut leased, mut dead) = (0, 0, 0);
        for counts in self.counts.values() {
            queued += counts.queued;
            leased += counts.running;
            dead += counts.dead;
        }
        Stats {
            queued,
            leased,
            done: self.done,
            dead,
            duplicates: self.duplicates,
            names_taken: self.names_taken,
            full: self.full,
            redeliveries: self.redeliveries,
        }
    }

    pub(super) fn method_stats(&self) -> BTreeMap<String, MethodStats> {
        self.counts
            .iter()
            .map(|(method, counts)| {
                let mut stats = MethodStats::default();
                stats.queued = counts.queued;
                stats.scheduled = counts.scheduled;
                stats.running = counts.running;
                stats.done = counts.done;
                stats.failed = counts.failed;
                stats.retried = counts.retried;
                stats.cancelled = counts.cancelled;
                stats.dead = counts.dead;
                stats.limited = counts.limited;
                (method.clone(), stats)
            })
            .collect()
    }

    // A dead letter in memory is always a packet: nothing to skip.
    pub(super) fn dead_letters(&self) -> DeadLetters {
        let tasks = self
            .dead
            .iter()
            .filter_map(|(_, uid)| self.tasks.get(uid))
            .map(|task| DeadTask {
                task: task.packet.clone(),
                attempts: task.attempts,
            })
            .collect();
        DeadLetters { tasks, skipped: 0 }
    }
}
