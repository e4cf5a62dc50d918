//! [`Endpoint`]: what one server or client is on the wire, across all its
//! connections: its peer id, the numbering of the packets it creates, and
//! its memory of the tokens it sent and accepted.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::Value;
use uuid::Uuid;

use crate::config::Config;
use crate::logging::Refusals;
use crate::packet::Packet;
use crate::replay::{MemoryReplayStore, ReplayStore};

/// One endpoint: a peer id, the request numbers of the packets it creates
/// (one sequence over all its connections, so that `(peer, id)` names one
/// packet), and its replay and reflection cache (when
/// [`ConfigBuilder::replay_protection`](crate::ConfigBuilder::replay_protection)
/// is on), with the [`Config`] it runs on.
///
/// A [`Connector`](crate::Connector) makes one and shares it with every
/// connection it serves or opens; clones of an `Endpoint` (and of a
/// `Connector`) are the same endpoint. Two endpoints made from one `Config`
/// are two peers: different ids, different caches, and each accepts the
/// other's tokens.
///
/// ```
/// use stream_rpc::{Config, Endpoint, Fernet};
///
/// let config = Config::builder().key(Fernet::generate_key()?).build()?;
/// let (a, b) = (Endpoint::new(config.clone()), Endpoint::new(config));
/// assert_ne!(a.local_id(), b.local_id());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    local_id: Uuid,
    next_id: AtomicU64,
    replay: Option<Arc<dyn ReplayStore>>,
    /// The log budgets of its refusals, shared by all its connections.
    refusals: Refusals,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_id", &self.inner.local_id)
            .field(
                "packets_created",
                &self.inner.next_id.load(Ordering::Relaxed),
            )
            .field("replay_protection", &self.inner.replay.is_some())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Endpoint {
    /// A new endpoint with a new random peer id.
    pub fn new(config: Config) -> Self {
        Endpoint::with_local_id(config, Uuid::new_v4())
    }

    /// A new endpoint with this peer id (for a process that keeps its
    /// identity across restarts). Its packets are numbered from 0 again, so
    /// two endpoints that live at the same time should never share an id.
    pub fn with_local_id(config: Config, local_id: Uuid) -> Self {
        Endpoint::builder(config).local_id(local_id).build()
    }

    /// A builder, for an endpoint with a peer id of its own choosing or a
    /// replay store shared with other endpoints.
    pub fn builder(config: Config) -> EndpointBuilder {
        EndpointBuilder {
            config,
            local_id: None,
            replay_store: None,
        }
    }

    /// The settings it runs on.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Its peer id, the `peer` of every packet it creates.
    pub fn local_id(&self) -> Uuid {
        self.inner.local_id
    }

    /// Takes the next request number: each packet this endpoint creates, on
    /// any connection, gets the next one, from 0 up.
    pub fn next_request_number(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A new packet from this endpoint with the next request number,
    /// created now (the Python package's `create_message_packet`).
    pub fn packet(&self, method: impl Into<String>, payload: Value) -> Packet {
        self.packet_at(method, payload, SystemTime::now())
    }

    /// [`packet`](Self::packet) stamped with a time already read.
    pub(crate) fn packet_at(
        &self,
        method: impl Into<String>,
        payload: Value,
        now: SystemTime,
    ) -> Packet {
        Packet::new_at(
            self.inner.local_id,
            self.next_request_number(),
            method,
            payload,
            now,
        )
    }

    pub(crate) fn config_arc(&self) -> &Arc<Config> {
        &self.inner.config
    }

    pub(crate) fn replay(&self) -> Option<&Arc<dyn ReplayStore>> {
        self.inner.replay.as_ref()
    }

    /// The log budgets of what it refuses.
    pub(crate) fn refusals(&self) -> &Refusals {
        &self.inner.refusals
    }
}

/// Builds an [`Endpoint`]; see [`Endpoint::builder`].
pub struct EndpointBuilder {
    config: Config,
    local_id: Option<Uuid>,
    replay_store: Option<Arc<dyn ReplayStore>>,
}

impl fmt::Debug for EndpointBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointBuilder")
            .field("local_id", &self.local_id)
            .field("replay_store", &self.replay_store)
            .finish_non_exhaustive()
    }
}

impl EndpointBuilder {
    /// The peer id (default: a new random UUID).
    pub fn local_id(mut self, local_id: Uuid) -> Self {
        self.local_id = Some(local_id);
        self
    }

    /// Where the endpoint remembers tokens (default: a new
    /// [`MemoryReplayStore`] sized by
    /// [`Limits::replay_cache_entries`](crate::Limits::replay_cache_entries)).
    /// Ignored when the configuration turns replay protection off.
    pub fn replay_store(mut self, store: Arc<dyn ReplayStore>) -> Self {
        self.replay_store = Some(store);
        self
    }

    /// The endpoint.
    pub fn build(self) -> Endpoint {
        let EndpointBuilder {
            config,
            local_id,
            replay_store,
        } = self;
        let replay = config.replay_protection.then(|| {
            replay_store.unwrap_or_else(|| {
                Arc::new(MemoryReplayStore::new(
                    config.replay_ttl,
                    config.limits().replay_cache_entries,
                ))
            })
        });
        Endpoint {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                local_id: local_id.unwrap_or_else(Uuid::new_v4),
                next_id: AtomicU64::new(0),
                replay,
                refusals: Refusals::default(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Fernet;
    use serde_json::json;

    fn config() -> Config {
        Config::builder()
            .key(Fernet::generate_key().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn packets_are_numbered_across_the_endpoint_and_clones_share_it() {
        let endpoint = Endpoint::new(config());
        let clone = endpoint.clone();
        let ids: Vec<u64> = (0..4)
            .map(|n| {
                let creator = if n % 2 == 0 { &endpoint } else { &clone };
                creator.packet("m", json!(null)).id
            })
            .collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        assert_eq!(clone.packet("m", json!(null)).peer, endpoint.local_id());
    }

    #[test]
    fn two_endpoints_of_one_config_are_two_peers() {
        let config = config();
        let (a, b) = (Endpoint::new(config.clone()), Endpoint::new(config));
        assert_ne!(a.local_id(), b.local_id());
        let (ra, rb) = (a.replay().unwrap(), b.replay().unwrap());
        assert!(!Arc::ptr_eq(ra, rb));
        // A store can be shared on purpose.
        let shared: Arc<dyn ReplayStore> = Arc::new(MemoryReplayStore::new(None, 64));
        let c = Endpoint::builder(a.config().clone())
            .replay_store(shared.clone())
            .build();
        assert!(Arc::ptr_eq(c.replay().unwrap(), &shared));
        let fixed = Uuid::new_v4();
        assert_eq!(
            Endpoint::with_local_id(a.config().clone(), fixed).local_id(),
            fixed
        );
    }

    #[test]
    fn without_replay_protection_there_is_no_cache() {
        let config = Config::builder()
            .key(Fernet::generate_key().unwrap())
            .replay_protection(false)
            .build()
            .unwrap();
        assert!(Endpoint::new(config).replay().is_none());
    }
}
