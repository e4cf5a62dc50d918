//! A connection's stream table: the streams open on it, the ones this side
//! opened by their open's `id`, the ones it accepted by their open's
//! `peer` and `id`; and the latest that ended, so that a frame still in
//! flight for one of them is recognised as a benign race.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use uuid::Uuid;

use super::connection::IdHasher;
use crate::packet::ReplyTo;
use crate::stream::state::{End, StreamState};
use crate::sync::lock;

/// How many ended streams a connection remembers (the latest).
pub(crate) const ENDED_KEPT: usize = 1024;

/// Why a stream could not be added to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// [`Limits::max_streams`](crate::Limits::max_streams) are open.
    Full,
    /// The connection is closing.
    Closed,
    /// A stream of that name is open already, or the name is one only
    /// this side may give (its own id: a peer's open can never carry it).
    Taken,
}

#[derive(Default)]
struct Table {
    opened: HashMap<u64, Arc<StreamState>, BuildHasherDefault<IdHasher>>,
    accepted: HashMap<ReplyTo, Arc<StreamState>>,
    ended: VecDeque<ReplyTo>,
    closed: bool,
}

/// The streams of one connection.
pub(crate) struct Streams {
    own_id: Uuid,
    max: usize,
    table: Mutex<Table>,
    /// How many streams are open: a reply is looked up here only when
    /// some are, so that calls pay one atomic load for streams.
    open: AtomicUsize,
}

impl Streams {
    pub(crate) fn new(own_id: Uuid, max: usize) -> Self {
        Streams {
            own_id,
            max,
            table: Mutex::new(Table::default()),
            open: AtomicUsize::new(0),
        }
    }

    /// Whether no stream is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    /// How many streams are open.
    pub(crate) fn len(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Adds a stream (opened by this side when its key's peer is this
    /// side's id).
    pub(crate) fn insert(&self, state: Arc<StreamState>) -> Result<(), Refused> {
        let mut table = lock(&self.table);
        if table.closed {
            return Err(Refused::Closed);
        }
        // A stream's name says which side opened it (its `peer`), and
        // frames are looked up by it: this side's opens carry its own id,
        // a peer's never may, and no name is given to two streams at once.
        if state.opener {
            if state.key.peer != self.own_id || table.opened.contains_key(&state.key.id) {
                return Err(Refused::Taken);
            }
            table.opened.insert(state.key.id, state);
        } else {
            if state.key.peer == self.own_id || table.accepted.contains_key(&state.key) {
                return Err(Refused::Taken);
            }
            if table.accepted.len() >= self.max {
                return Err(Refused::Full);
            }
            table.accepted.insert(state.key, state);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        crate::telemetry::streams_open(1.0);
        Ok(())
    }

    /// The stream named `key`, when it is open.
    pub(crate) fn get(&self, key: ReplyTo) -> Option<Arc<StreamState>> {
        let table = lock(&self.table);
        if key.peer == self.own_id {
            table.opened.get(&key.id).cloned()
        } else {
            table.accepted.get(&key).cloned()
        }
    }

    /// Takes the stream named `key` out of the table (remembering it as
    /// ended); `None` when it was not there.
    pub(crate) fn remove(&self, key: ReplyTo) -> Option<Arc<StreamState>> {
        let mut table = lock(&self.table);
        let removed = if key.peer == self.own_id {
            table.opened.remove(&key.id)
        } else {
            table.accepted.remove(&key)
        }?;
        if table.ended.len() == ENDED_KEPT {
            table.ended.pop_front();
        }
        table.ended.push_back(key);
        self.open.fetch_sub(1, Ordering::AcqRel);
        crate::telemetry::streams_open(-1.0);
        Some(removed)
    }

    /// Whether `key` is one of the latest streams that ended here.
    pub(crate) fn ended_recently(&self, key: ReplyTo) -> bool {
        lock(&self.table).ended.contains(&key)
    }

    /// The connection closed: every stream ends `Disconnected` at once,
    /// and no more can open; says how many were open.
    pub(crate) fn close_all(&self) -> usize {
        let states: Vec<Arc<StreamState>> = {
            let mut table = lock(&self.table);
            table.closed = true;
            let opened = std::mem::take(&mut table.opened);
            let accepted = std::mem::take(&mut table.accepted);
            opened.into_values().chain(accepted.into_values()).collect()
        };
        if !states.is_empty() {
            self.open.fetch_sub(states.len(), Ordering::AcqRel);
            crate::telemetry::streams_open(-(states.len() as f64));
        }
        let count = states.len();
        for state in states {
            state.end(End::Disconnected);
            state.abort.cancel();
        }
        count
    }
}
