//! [`RedisReplayStore`]: replay and reflection protection shared by every
//! server on one Redis, so that a token accepted by one server is refused
//! by all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use stream_rpc::{MemoryReplayStore, ReceivedToken, ReplayStore, ReplayWork, Verdict};

use crate::{QueueError, RedisSettings};

/// What the store does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WhenUnreachable {
    /// Go on with this server's own memory of the tokens it saw (the
    /// default): as safe as one server alone, but a token captured on its
    /// way to another server could be played here once during the outage.
    /// Logged when it starts and when Redis is back.
    #[default]
    Local,
    /// Refuse every token until Redis is back: no replay can pass, and no
    /// request either.
    Refuse,
}

/// Replay and reflection protection shared through Redis: each token a
/// server accepts or sends is remembered on Redis for the token's time to
/// live plus the clock skew, so that every server sharing the Redis (and
/// the prefix) refuses it afterwards. One round trip checks a whole read
/// turn (up to 16 tokens), and one records a whole batch of sent tokens.
///
/// Plug it into each server's endpoint:
/// `Endpoint::builder(config).replay_store(Arc::new(store)).build()`.
///
/// Every token is also remembered in this server's memory, which answers
/// alone while Redis is unreachable ([`WhenUnreachable::Local`], the
/// default) so that the server is never less protected than one alone.
///
/// Redis must not evict these keys (`maxmemory-policy noeviction`, or
/// enough memory): a token evicted before its time could be accepted again.
pub struct RedisReplayStore {
    connection: ConnectionManager,
    prefix: String,
    window_ms: u64,
    local: MemoryReplayStore,
    when_unreachable: WhenUnreachable,
    /// Whether the last call found Redis unreachable (for the log).
    down: AtomicBool,
}

impl std::fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplayStore")
            .field("prefix", &self.prefix)
            .field("window_ms", &self.window_ms)
            .field("when_unreachable", &self.when_unreachable)
            .finish_non_exhaustive()
    }
}

/// Checks a turn's tokens: each is set if absent (`r`, with the window as
/// its expiry); a present one answers what it was set to.
const RECEIVED: &str = r#"
-- KEYS: none (one per token, built from ARGV[1], all under one hash tag).
-- ARGV: key base, window ms, fingerprint...
local verdicts = {}
for i = 3, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  if redis.call('SET', key, 'r', 'NX', 'PX', ARGV[2]) then
    verdicts[#verdicts + 1] = 0
  elseif redis.call('GET', key) == 's' then
    verdicts[#verdicts + 1] = 2
  else
    verdicts[#verdicts + 1] = 1
  end
end
return verdicts
"#;

/// Records tokens about to be sent (`s`), for the window.
const SENT: &str = r#"
for i = 3, #ARGV do
  redis.call('SET', ARGV[1] .. ARGV[i], 's', 'PX', ARGV[2])
end
return #ARGV - 2
"#;

fn scripts() -> &'static (Script, Script) {
    static SCRIPTS: std::sync::OnceLock<(Script, Script)> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| (Script::new(RECEIVED), Script::new(SENT)))
}

impl RedisReplayStore {
    /// Connects to the Redis of `redis` (its URL, TLS and key prefix; keys
    /// under `{prefix}:replay:`), for tokens living at most `ttl`
    /// (remembered for `ttl` plus the 60 s clock skew). `local_capacity`
    /// bounds this server's own memory of tokens (see
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
        let window = ttl + stream_rpc::MAX_CLOCK_SKEW;
        Ok(RedisReplayStore {
            connection,
            prefix: format!("{{{prefix}}}:replay:"),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            local: MemoryReplayStore::new(Some(ttl), local_capacity),
            when_unreachable: WhenUnreachable::default(),
            down: AtomicBool::new(false),
        })
    }

    /// What the store does while Redis cannot be reached.
    #[must_use]
    pub fn when_unreachable(mut self, policy: WhenUnreachable) -> Self {
        self.when_unreachable = policy;
        self
    }

    /// Notes whether Redis answered, logging each change.
    fn note(&self, reachable: Result<(), &redis::RedisError>) {
        match reachable {
            Ok(()) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "replay store: Redis is reachable again; shared protection resumed"
                    );
                }
            }
            Err(e) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    let then = match self.when_unreachable {
                        WhenUnreachable::Local => {
                            "going on with this server's own memory of tokens"
                        }
                        WhenUnreachable::Refuse => "refusing every token until it is back",
                    };
                    tracing::warn!("replay store: Redis is unreachable ({e}); {then}");
                }
            }
        }
    }

    async fn check(&self, tokens: &[ReceivedToken], verdicts: &mut Vec<Verdict>) {
        let mut invocation = scripts().0.prepare_invoke();
        invocation.arg(&self.prefix).arg(self.window_ms);
        for token in tokens {
            invocation.arg(format!("{:016x}", token.fingerprint));
        }
        // This server remembers every token too, for the outages.
        let mut local = Vec::new();
        self.local.received(tokens, &mut local).await;
        let remote: Result<Vec<u8>, _> =
            invocation.invoke_async(&mut self.connection.clone()).await;
        self.note(remote.as_ref().map(|_| ()));
        verdicts.clear();
        match remote {
            Ok(answers) if answers.len() == tokens.len() => {
                // What this server knows of a token stands even where Redis
                // says new (a key it lost): the stricter of the two.
                verdicts.extend(answers.into_iter().zip(local).map(|(answer, local)| {
                    match (local, answer) {
                        (Verdict::New, 0) => Verdict::New,
                        (Verdict::New, 2) => Verdict::Reflection,
                        (Verdict::New, _) => Verdict::Replay,
                        (known, _) => known,
                    }
                }));
            }
            Ok(_) => verdicts.extend(tokens.iter().map(|_| Verdict::Unavailable)),
            Err(_) => match self.when_unreachable {
                WhenUnreachable::Local => verdicts.extend(local),
                WhenUnreachable::Refuse => {
                    verdicts.extend(tokens.iter().map(|_| Verdict::Unavailable))
                }
            },
        }
    }

    async fn record(&self, fingerprints: &[u64], sealed_by: u64) {
        self.local.sent(fingerprints, sealed_by).await;
        let mut invocation = scripts().1.prepare_invoke();
        invocation.arg(&self.prefix).arg(self.window_ms);
        for fingerprint in fingerprints {
            invocation.arg(format!("{fingerprint:016x}"));
        }
        let recorded: Result<u64, _> = invocation.invoke_async(&mut self.connection.clone()).await;
        self.note(recorded.as_ref().map(|_| ()));
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
