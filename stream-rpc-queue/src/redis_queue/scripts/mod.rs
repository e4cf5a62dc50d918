//! The Lua scripts the Redis queue runs (each one atomic on Redis), and
//! the numbers they answer with. Every script is [`common::constants`],
//! [`common::COMMON`] and the functions it needs, then its body; `KEYS[1]`
//! is the key base.

use redis::Script;

mod admin;
mod common;
mod finish;
mod schedules;
mod tasks;

pub(super) use finish::{cancel_answer, fail_answer};
pub(super) use tasks::put_answer;

/// What the scripts that answer yes or no (ack, nack, extend, requeue,
/// bury) answer for yes; anything else is no.
pub(super) const YES: i64 = 1;

/// The scripts, compiled once (their SHA-1 computed); Redis keeps them by
/// that name and they are sent whole again after a restart.
pub(super) struct Scripts {
    pub(super) put: Script,
    pub(super) lease: Script,
    pub(super) bury: Script,
    pub(super) extend: Script,
    pub(super) ack: Script,
    pub(super) nack: Script,
    pub(super) fail: Script,
    pub(super) cancel: Script,
    pub(super) show: Script,
    pub(super) list: Script,
    pub(super) stats: Script,
    pub(super) method_stats: Script,
    pub(super) dead_letters: Script,
    pub(super) requeue: Script,
    pub(super) purge_dead: Script,
    pub(super) set_limit: Script,
    pub(super) put_schedule: Script,
    pub(super) remove_schedule: Script,
    pub(super) schedules: Script,
    pub(super) due_schedules: Script,
    pub(super) fire: Script,
    pub(super) drop_schedule: Script,
}

pub(super) fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| {
        use common::COMMON;
        use finish::HELD_FN;
        use schedules::SCHEDULE_FN;
        use tasks::{LIMITS_FN, PUT_FN};
        let constants = common::constants();
        let with =
            |parts: &[&str]| Script::new(&[&[constants.as_str(), COMMON], parts].concat().concat());
        Scripts {
            put: with(&[PUT_FN, tasks::PUT]),
            lease: with(&[LIMITS_FN, tasks::LEASE]),
            bury: with(&[tasks::BURY]),
            extend: with(&[HELD_FN, finish::EXTEND]),
            ack: with(&[HELD_FN, finish::ACK]),
            nack: with(&[HELD_FN, finish::NACK]),
            fail: with(&[HELD_FN, finish::FAIL]),
            cancel: with(&[finish::CANCEL]),
            show: with(&[admin::SHOW]),
            list: with(&[admin::LIST]),
            stats: with(&[admin::STATS_SCRIPT]),
            method_stats: with(&[admin::METHOD_STATS]),
            dead_letters: with(&[admin::DEAD_LETTERS]),
            requeue: with(&[admin::REQUEUE]),
            purge_dead: with(&[admin::PURGE_DEAD]),
            set_limit: with(&[admin::SET_LIMIT]),
            put_schedule: with(&[SCHEDULE_FN, schedules::PUT_SCHEDULE]),
            remove_schedule: with(&[SCHEDULE_FN, schedules::REMOVE_SCHEDULE]),
            schedules: with(&[SCHEDULE_FN, schedules::SCHEDULES]),
            due_schedules: with(&[SCHEDULE_FN, schedules::DUE_SCHEDULES]),
            fire: with(&[PUT_FN, SCHEDULE_FN, schedules::FIRE]),
            drop_schedule: with(&[SCHEDULE_FN, schedules::DROP_SCHEDULE]),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_answers_are_the_ones_read() {
        let put = format!(
            "local QUEUED, DUPLICATE, NAME_TAKEN, FULL, SCHEDULED = {}, {}, {}, {}, {}\n",
            put_answer::QUEUED,
            put_answer::DUPLICATE,
            put_answer::NAME_TAKEN,
            put_answer::FULL,
            put_answer::SCHEDULED,
        );
        assert!(tasks::PUT_FN.contains(&put), "{put}");
        let fail = format!(
            "local STALE, RETRYING, DEAD, CANCELLED = {}, {}, {}, {}\n",
            fail_answer::STALE,
            fail_answer::RETRYING,
            fail_answer::DEAD,
            fail_answer::CANCELLED,
        );
        assert!(finish::FAIL.contains(&fail), "{fail}");
        let cancel = format!(
            "local UNKNOWN, CANCELLED, REQUESTED, FINISHED = {}, {}, {}, {}\n",
            cancel_answer::UNKNOWN,
            cancel_answer::CANCELLED,
            cancel_answer::REQUESTED,
            cancel_answer::FINISHED,
        );
        assert!(finish::CANCEL.contains(&cancel), "{cancel}");
    }
}
