//! [`RedisReplayStore`]: replay and reflection protection shared by every
//! server on one Redis, so that a token accepted by one server is refused
//! by all; and [`ReplaySharing`], how a server chooses it
//! ([`ENV_REPLAY`], [`replay_store_for`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use stream_rpc::{MemoryReplayStore, ReceivedToken, ReplayStore, ReplayWork, Verdict};

use crate::{QueueConfig, QueueError, RedisSettings};

/// The environment variable choosing where a server remembers tokens:
/// unset (or `auto`): on the queue's Redis when `STREAM_RPC_QUEUE` is a
/// Redis URL, in the server's memory otherwise; `local`: in the server's
/// memory even with the queue on Redis (logged as a warning: a token
/// captured on its way to another server can then be played here once);
/// `shared`: on the queue's Redis, an error when the queue is in memory.
pub const ENV_REPLAY: &str = "STREAM_RPC_REPLAY";

/// Where a server remembers the tokens it accepted and sent, as
/// [`ENV_REPLAY`] (or a command line) says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplaySharing {
    /// Shared through the queue's Redis when the queue is on Redis, in
    /// this server's memory otherwise (the default).
    #[default]
    Auto,
    /// In this server's memory only, even with the queue on Redis.
    Local,
    /// Shared through the queue's Redis; the queue must be on Redis.
    Shared,
}

impl ReplaySharing {
    /// Reads [`ENV_REPLAY`]; a value other than `auto`, `local` or `shared`
    /// is an error naming it.
    pub fn from_env() -> Result<Self, QueueError> {
        ReplaySharing::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any lookup of variables (empty
    /// counts as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, QueueError> {
        match lookup(ENV_REPLAY) {
            Some(text) if !text.trim().is_empty() => text.parse(),
            _ => Ok(ReplaySharing::Auto),
        }
    }
}

impl std::str::FromStr for ReplaySharing {
    type Err = QueueError;

    fn from_str(text: &str) -> Result<Self, QueueError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ReplaySharing::Auto),
            "local" => Ok(ReplaySharing::Local),
            "shared" => Ok(ReplaySharing::Shared),
            _ => Err(QueueError::Invalid {
                setting: ENV_REPLAY,
                reason: format!(
                    "expected `auto`, `local` or `shared`, got {:?}",
                    text.chars().take(40).collect::<String>()
                ),
            }),
        }
    }
}

/// The replay store a server on `queue` uses under `config`, as `sharing`
/// says: a [`RedisReplayStore`] on the queue's Redis (its URL, TLS and
/// prefix) for tokens of the configuration's time to live, or `None` for
/// the endpoint's own in-process store. Logs the choice; choosing `local`
/// with the queue on Redis is logged as a warning. `None` as well when the
/// configuration turns replay protection off.
pub async fn replay_store_for(
    queue: &QueueConfig,
    sharing: ReplaySharing,
    config: &stream_rpc::Config,
) -> Result<Option<RedisReplayStore>, QueueError> {
    let on_redis = queue.queue != "memory";
    let shared = match sharing {
        ReplaySharing::Auto => on_redis,
        ReplaySharing::Local => {
            if on_redis {
                tracing::warn!(
                    "{ENV_REPLAY}=local: replay protection is this server's alone although the \
                     queue is shared on Redis; a token captured on its way to another server \
                     can be played to this one once"
                );
            }
            false
        }
        ReplaySharing::Shared if !on_redis => {
            return Err(QueueError::Invalid {
                setting: ENV_REPLAY,
                reason: "`shared` needs the queue on Redis (STREAM_RPC_QUEUE=redis://...)"
                    .to_owned(),
            });
        }
        ReplaySharing::Shared => true,
    };
    if !shared || !config.replay_protection() {
        return Ok(None);
    }
    let ttl = config.token_ttl().unwrap_or_else(|| {
        tracing::warn!(
            "tokens never expire under this configuration: the shared replay store remembers \
             them {} s (plus the clock skew); an older token could be accepted again",
            stream_rpc::env::DEFAULT_TOKEN_TTL.as_secs()
        );
        stream_rpc::env::DEFAULT_TOKEN_TTL
    });
    let settings = RedisSettings::new(queue.queue.clone()).with_tls(queue.tls.clone());
    let store =
        RedisReplayStore::connect(&settings, ttl, config.limits().replay_cache_entries).await?;
    tracing::info!(
        "replay protection is shared through the queue's Redis (keys {}*)",
        store.prefix
    );
    Ok(Some(store))
}

/// What the store does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WhenUnreachable {
    /// Refuse every token until Redis is back (the default): no replay can
    /// pass, and no request either (a queue on the same Redis cannot serve
    /// then anyway).
    #[default]
    Refuse,
    /// Go on with this server's own memory of the tokens it saw: as safe
    /// as one server alone, but a token captured on its way to another
    /// server could be played here once during the outage. Only a
    /// connection failure counts: any other error of Redis refuses the
    /// turn's tokens in this mode too.
    Local,
}

/// Replay and reflection protection shared through Redis: each token a
/// server accepts or sends is remembered on Redis until its time to live
/// and the clock skew have passed, counted from the token's own time (an
/// absolute expiry, `PXAT`, not Redis's clock at the time of writing), so
/// that every server sharing the Redis (and the prefix) refuses it
/// afterwards. One round trip checks a whole read turn (up to 16 tokens),
/// and one records a whole batch of sent tokens before it is written: a
/// pipeline of plain commands (`SET key NX PXAT` and `GET` per token), no
/// script. Needs Redis 6.2 or later.
///
/// A server whose queue is on Redis uses it by default ([`replay_store_for`]
/// and [`ENV_REPLAY`]); to plug it in by hand:
/// `Endpoint::builder(config).replay_store(Arc::new(store)).build()`.
///
/// **Fails closed**: while Redis cannot be reached every token is refused
/// ([`WhenUnreachable::Refuse`], the default), logged once when the outage
/// starts and once when it ends. Any other error of Redis (out of memory,
/// a read-only replica after a failover) refuses the turn's tokens
/// whatever the policy, logged as what it is at most once per 10 s.
///
/// Every token is also remembered in this server's memory: a token it
/// knows is refused even where Redis says new (a key Redis lost), and that
/// memory answers alone during an outage under [`WhenUnreachable::Local`].
///
/// Redis must not evict these keys (`maxmemory-policy noeviction`, or
/// enough memory): a token evicted before its time could be accepted again.
pub struct RedisReplayStore {
    connection: ConnectionManager,
    prefix: String,
    /// The time to live plus the clock skew, and the second a token's time
    /// is counted in, in milliseconds: how long after its time a token is
    /// kept.
    keep_ms: u64,
    local: MemoryReplayStore,
    when_unreachable: WhenUnreachable,
    /// Whether Redis was found unreachable and not reached since.
    down: AtomicBool,
    /// When another error of Redis was last logged, and how many went
    /// unlogged since.
    errors: Mutex<(Option<Instant>, u64)>,
}

impl std::fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplayStore")
            .field("prefix", &self.prefix)
            .field("keep_ms", &self.keep_ms)
            .field("when_unreachable", &self.when_unreachable)
            .finish_non_exhaustive()
    }
}

/// How often another error of Redis is logged at most.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether a Redis error means Redis cannot be reached (no connection,
/// dropped, refused, timed out), as opposed to an answer that is an error.
fn unreachable(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error() || e.is_timeout() || e.is_connection_refusal()
}

impl RedisReplayStore {
    /// Connects to the Redis of `redis` (its URL, TLS and key prefix; keys
    /// under `{prefix}:replay:`), for tokens living at most `ttl`: each is
    /// kept until its own time plus `ttl` plus the 60 s clock skew.
    /// `local_capacity` bounds this server's own memory of tokens (see
    /// `Limits::replay_cache_entries`). Commands time out after 2 s, since
    /// every call waits on them, whatever `redis` says for the queue.
    pub async fn connect(
        redis: &RedisSettings,
        ttl: Duration,
        local_capacity: usize,
    ) -> Result<Self, QueueError> {
        let timeout = Duration::from_secs(2);
        let connection =
            crate::connect::connect(&redis.url, &redis.tls, timeout, timeout, 1).await?;
        let prefix = &redis.prefix;
        // Token times are whole seconds: a token is accepted until the end
        // of its last second.
        let keep = ttl + stream_rpc::MAX_CLOCK_SKEW + Duration::from_secs(1);
        Ok(RedisReplayStore {
            connection,
            prefix: format!("{{{prefix}}}:replay:"),
            keep_ms: u64::try_from(keep.as_millis()).unwrap_or(u64::MAX),
            local: MemoryReplayStore::new(Some(ttl), local_capacity),
            when_unreachable: WhenUnreachable::default(),
            down: AtomicBool::new(false),
            errors: Mutex::new((None, 0)),
        })
    }

    /// What the store does while Redis cannot be reached.
    #[must_use]
    pub fn when_unreachable(mut self, policy: WhenUnreachable) -> Self {
        self.when_unreachable = policy;
        self
    }

    /// The key of a fingerprint.
    fn key(&self, fingerprint: u64) -> String {
        format!("{}{fingerprint:016x}", self.prefix)
    }

    /// When the key of a token made at `time` (seconds since the epoch)
    /// expires, in milliseconds since the epoch.
    fn expire_at_ms(&self, time: u64) -> u64 {
        time.saturating_mul(1000).saturating_add(self.keep_ms)
    }

    /// Notes what Redis did for `what`, logging an outage once when it
    /// starts and once when it ends, other errors at most every
    /// [`ERROR_LOG_EVERY`]. Returns whether Redis was unreachable.
    fn note(&self, outcome: Result<(), &redis::RedisError>, what: &str) -> bool {
        let e = match outcome {
            Err(e) if unreachable(e) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    let then = match self.when_unreachable {
                        WhenUnreachable::Refuse => "refusing every token until it is back",
                        WhenUnreachable::Local => {
                            "going on with this server's own memory of tokens"
                        }
                    };
                    tracing::error!("replay store: Redis is unreachable ({e}); {then}");
                }
                return true;
            }
            Ok(()) => None,
            Err(e) => Some(e),
        };
        // Redis answered, if only with an error.
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::warn!("replay store: Redis is reachable again; shared protection resumed");
        }
        if let Some(e) = e {
            let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if errors
                .0
                .is_some_and(|last| now.duration_since(last) < ERROR_LOG_EVERY)
            {
                errors.1 += 1;
            } else {
                let unlogged = std::mem::take(&mut errors.1);
                errors.0 = Some(now);
                let more = if unlogged > 0 {
                    format!(" ({unlogged} more errors since the last report)")
                } else {
                    String::new()
                };
                tracing::error!(
                    "replay store: Redis answered an error {what} ({e}); the turn's tokens are \
                     refused{more}"
                );
            }
        }
        false
    }

    async fn check(&self, tokens: &[ReceivedToken], verdicts: &mut Vec<Verdict>) {
        // This server remembers every token too, for the outages and for
        // keys Redis lost.
        let mut local = Vec::with_capacity(tokens.len());
        self.local.received(tokens, &mut local).await;
        let mut pipe = redis::pipe();
        for token in tokens {
            let key = self.key(token.fingerprint);
            let set = pipe.cmd("SET").arg(&key).arg("r").arg("NX");
            match token.time {
                Some(time) => set.arg("PXAT").arg(self.expire_at_ms(time)),
                // A custom cipher's token carries no time: kept for the
                // window from now.
                None => set.arg("PX").arg(self.keep_ms),
            };
            pipe.cmd("GET").arg(key);
        }
        let remote: Result<Vec<Option<String>>, _> =
            pipe.query_async(&mut self.connection.clone()).await;
        let was_unreachable = self.note(
            remote.as_ref().map(|_| ()),
            "checking the tokens of a read turn",
        );
        verdicts.clear();
        match remote {
            Ok(answers) if answers.len() == tokens.len() * 2 => {
                // What this server knows of a token stands even where Redis
                // says new: the stricter of the two.
                verdicts.extend(answers.chunks_exact(2).zip(local).map(|(answer, local)| {
                    let remote = match (&answer[0], answer[1].as_deref()) {
                        (Some(_), _) => Verdict::New,
                        (None, Some("s")) => Verdict::Reflection,
                        // A key that existed, whatever it holds now.
                        (None, _) => Verdict::Replay,
                    };
                    match local {
                        Verdict::New => remote,
                        known => known,
                    }
                }));
            }
            Ok(_) => {
                self.note(
                    Err(&redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "a pipeline answered short",
                    ))),
                    "checking the tokens of a read turn",
                );
            }
            Err(_) if was_unreachable && self.when_unreachable == WhenUnreachable::Local => {
                verdicts.extend(local);
            }
            // Unreachable under `Refuse`, or any other error: refused (a
            // missing verdict counts as `Unavailable`).
            Err(_) => verdicts.extend(tokens.iter().map(|_| Verdict::Unavailable)),
        }
    }

    async fn record(&self, fingerprints: &[u64], sealed_by: u64) {
        self.local.sent(fingerprints, sealed_by).await;
        let expire_at = self.expire_at_ms(sealed_by);
        let mut pipe = redis::pipe();
        for &fingerprint in fingerprints {
            pipe.cmd("SET")
                .arg(self.key(fingerprint))
                .arg("s")
                .arg("PXAT")
                .arg(expire_at)
                .ignore();
        }
        let recorded: Result<(), _> = pipe.query_async(&mut self.connection.clone()).await;
        self.note(recorded.as_ref().copied(), "recording sent tokens");
    }
}

impl ReplayStore for RedisReplayStore {
    /// The first 8 bytes of the SHA-256 of the token's identity (for
    /// Fernet, the text of its HMAC): the same on every server, so that
    /// they agree on a token.
    fn fingerprint(&self, identity: &[u8]) -> u64 {
        let digest = Sha256::digest(identity);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn sent<'a>(&'a self, fingerprints: &'a [u64], sealed_by: u64) -> ReplayWork<'a> {
        ReplayWork::pending(self.record(fingerprints, sealed_by))
    }

    fn received<'a>(
        &'a self,
        tokens: &'a [ReceivedToken],
        verdicts: &'a mut Vec<Verdict>,
    ) -> ReplayWork<'a> {
        ReplayWork::pending(self.check(tokens, verdicts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sharing_setting_is_read_and_checked() {
        let lookup =
            |value: &'static str| move |name: &str| (name == ENV_REPLAY).then(|| value.to_owned());
        assert_eq!(
            ReplaySharing::from_lookup(|_| None).unwrap(),
            ReplaySharing::Auto
        );
        assert_eq!(
            ReplaySharing::from_lookup(lookup(" ")).unwrap(),
            ReplaySharing::Auto
        );
        assert_eq!(
            ReplaySharing::from_lookup(lookup("local")).unwrap(),
            ReplaySharing::Local
        );
        assert_eq!(
            ReplaySharing::from_lookup(lookup(" Shared ")).unwrap(),
            ReplaySharing::Shared
        );
        let e = ReplaySharing::from_lookup(lookup("off")).unwrap_err();
        assert!(
            matches!(&e, QueueError::Invalid { setting: ENV_REPLAY, reason } if reason.contains("\"off\"")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn shared_needs_the_queue_on_redis_and_local_or_memory_needs_no_redis() {
        let config = stream_rpc::Config::builder()
            .key(stream_rpc::Fernet::generate_key().unwrap())
            .build()
            .unwrap();
        let memory = QueueConfig::default();
        let e = replay_store_for(&memory, ReplaySharing::Shared, &config)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                QueueError::Invalid {
                    setting: ENV_REPLAY,
                    ..
                }
            ),
            "{e}"
        );
        for sharing in [ReplaySharing::Auto, ReplaySharing::Local] {
            assert!(
                replay_store_for(&memory, sharing, &config)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        // `local` with the queue on a Redis connects to nothing.
        let redis = QueueConfig {
            queue: "redis://127.0.0.1:1/".to_owned(),
            ..QueueConfig::default()
        };
        assert!(
            replay_store_for(&redis, ReplaySharing::Local, &config)
                .await
                .unwrap()
                .is_none()
        );
    }
}
