//! Clients that reconnect by themselves, with capped exponential backoff
//! and jitter; see [`Connector::connect_reconnecting`](crate::Connector::connect_reconnecting).

use std::time::Duration;

use serde_json::Value;

use crate::config::ConfigError;

mod client;
mod supervisor;

pub use client::ReconnectingClient;
use supervisor::start;

use crate::connector::Connector;
use crate::error::Error;
use crate::protocol::Protocol;

/// The reconnecting client is built on the connector (not the other way
/// round), so its constructor lives here.
impl Connector {
    /// Connects to the configured host and port like [`connect`](Self::connect)
    /// (or to [`Reconnect::servers`](crate::Reconnect::servers), in turn),
    /// and keeps connecting again whenever the connection breaks (but not
    /// after [`ReconnectingClient::close`], a close of its connection
    /// through the handle, or the connector's shutdown),
    /// waiting between attempts as `reconnect` says. The
    /// [`on_connect`](Self::on_connect) hook runs on every new connection,
    /// before calls are let through.
    ///
    /// Returns at once; the first connection is made in the background, and
    /// calls wait for it. `protocol` handles what the server sends on every
    /// connection (`()` for a client that serves nothing). Fails only when
    /// `reconnect` is not valid.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use stream_rpc::{Caller, Connector, Reconnect, json};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = Connector::from_env()?.connect_reconnecting(
    ///     (),
    ///     Reconnect::default().with_servers([("10.0.0.1", 8888), ("10.0.0.2", 8888)]),
    /// )?;
    /// let pong = client.call_with_timeout("ping", json!(null), Duration::from_secs(3)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_reconnecting<P: Protocol>(
        &self,
        protocol: P,
        reconnect: Reconnect,
    ) -> Result<ReconnectingClient, Error> {
        start(self, protocol, reconnect)
    }
}

/// When and how a [`ReconnectingClient`] reconnects.
///
/// After a failed attempt, or a connection that broke before the server
/// sent anything, the client waits before trying again. The wait grows
/// exponentially: the ceiling for the `n`th consecutive failure is
/// `initial_delay × 2ⁿ`, capped at `max_delay`, and the actual wait is drawn
/// at random between half the ceiling and the ceiling ("equal jitter"), so
/// that clients cut off together do not all come back at the same instant.
/// A connection on which the server sent at least one packet counts as
/// good: when it breaks, the count starts again from zero.
///
/// With several [`servers`](Self::servers), every failed attempt and every
/// connection that breaks moves the client on to the next server in the
/// list (round robin), with the same waits: a client whose server goes away
/// fails over to another at once, and one that finds none comes back to the
/// first after a round, waiting longer each time.
///
/// `Reconnect` is `#[non_exhaustive]`: start from [`Reconnect::default`]
/// and use the builder methods (or set fields).
///
/// ```
/// use std::time::Duration;
/// use stream_rpc::{Reconnect, json};
///
/// let reconnect = Reconnect::default()
///     .hello("hello", json!({"worker": 1}))
///     .with_max_delay(Duration::from_secs(30))
///     .with_max_attempts(Some(20))
///     .with_servers([("10.0.0.1", 8888), ("10.0.0.2", 8888)]);
/// assert_eq!(reconnect.servers.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Reconnect {
    /// The ceiling of the first wait. Default 100 ms.
    pub initial_delay: Duration,
    /// The most any wait can be. Default 10 s.
    pub max_delay: Duration,
    /// How many attempts in a row may fail before the client gives up;
    /// `None` (the default) tries forever.
    pub max_attempts: Option<u32>,
    /// An untyped packet (method and payload) sent first on every new
    /// connection, as the Python `stream_rpc` client sends its hello.
    /// Default none. A typed first call, which can refuse the connection,
    /// is [`Connector::on_connect`](crate::Connector::on_connect).
    pub hello: Option<(String, Value)>,
    /// The servers to connect to, as host and port, tried in turn; empty
    /// (the default) means the connector's configured host and port.
    pub servers: Vec<(String, u16)>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: None,
            hello: None,
            servers: Vec::new(),
        }
    }
}

crate::config::with_setters!(Reconnect {
    /// Sets [`initial_delay`](Self::initial_delay).
    with_initial_delay => initial_delay: Duration,
    /// Sets [`max_delay`](Self::max_delay).
    with_max_delay => max_delay: Duration,
    /// Sets [`max_attempts`](Self::max_attempts); `None` tries forever.
    with_max_attempts => max_attempts: Option<u32>,
});

impl Reconnect {
    /// The servers to connect to, tried in turn (see the type's docs).
    pub fn with_servers<H: Into<String>>(
        mut self,
        servers: impl IntoIterator<Item = (H, u16)>,
    ) -> Self {
        self.servers = servers
            .into_iter()
            .map(|(host, port)| (host.into(), port))
            .collect();
        self
    }

    /// Sends this untyped hello packet first on every new connection (after
    /// the connector's [`on_connect`](crate::Connector::on_connect) hook, if
    /// any). Prefer the hook: a typed call there is checked by the compiler,
    /// and its failure is seen.
    pub fn hello(mut self, method: impl Into<String>, payload: Value) -> Self {
        self.hello = Some((method.into(), payload));
        self
    }

    /// The ceiling of the wait after `failures` consecutive failures
    /// (`failures` ≥ 1): `initial_delay × 2^(failures − 1)`, capped at
    /// `max_delay`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let mut ceiling = self.initial_delay;
        for _ in 1..failures {
            if ceiling >= self.max_delay {
                break;
            }
            ceiling = ceiling.saturating_mul(2);
        }
        ceiling.min(self.max_delay)
    }

    /// The wait after `failures` consecutive failures, for a jitter drawn
    /// uniformly from `[0, 1)`: between half the [ceiling](Self::ceiling)
    /// and the ceiling.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(jitter.clamp(0.0, 1.0))
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.initial_delay.is_zero() {
            return Err(ConfigError::invalid(
                "initial_delay",
                "it must be more than zero",
            ));
        }
        if self.max_delay < self.initial_delay {
            return Err(ConfigError::invalid(
                "max_delay",
                format!(
                    "it must be at least initial_delay ({:?}), not {:?}",
                    self.initial_delay, self.max_delay
                ),
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(ConfigError::invalid(
                "max_attempts",
                "it must be at least 1, or None to try forever",
            ));
        }
        if let Some((host, _)) = self
            .servers
            .iter()
            .find(|(host, _)| host.is_empty() || host.chars().any(char::is_whitespace))
        {
            return Err(ConfigError::invalid(
                "servers",
                format!("expected host names or IP addresses, got {host:?}"),
            ));
        }
        Ok(())
    }
}

/// A small pseudo-random source for jitter (SplitMix64), seeded from the OS.
/// Jitter needs spread, not secrecy.
struct Jitter(u64);

impl Jitter {
    fn from_os() -> Self {
        let mut seed = [0u8; 8];
        if getrandom::getrandom(&mut seed).is_err() {
            // Any varying seed will do.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            seed = u64::from(nanos).to_le_bytes();
        }
        Jitter(u64::from_le_bytes(seed))
    }

    /// The next value, uniform in `[0, 1)`.
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits, as a fraction.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial_ms: u64, max_ms: u64) -> Reconnect {
        Reconnect {
            initial_delay: Duration::from_millis(initial_ms),
            max_delay: Duration::from_millis(max_ms),
            ..Reconnect::default()
        }
    }

    #[test]
    fn the_ceiling_doubles_per_failure_up_to_the_cap() {
        let reconnect = policy(100, 1_000);
        let ceilings: Vec<u64> = (1..=7)
            .map(|n| reconnect.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000, 1_000]);
        // No overflow however many failures.
        assert_eq!(reconnect.ceiling(u32::MAX), Duration::from_secs(1));
        let huge = policy(1, u64::MAX / 2);
        assert_eq!(huge.ceiling(11), Duration::from_millis(1_024));
        assert_eq!(huge.ceiling(u32::MAX), huge.max_delay);
    }

    #[test]
    fn jittered_delays_lie_between_half_the_ceiling_and_the_ceiling() {
        let reconnect = policy(100, 10_000);
        assert_eq!(reconnect.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(reconnect.delay(3, 0.5), Duration::from_millis(300));
        let mut jitter = Jitter(42);
        let mut seen = std::collections::HashSet::new();
        for failures in 1..=20 {
            for _ in 0..50 {
                let delay = reconnect.delay(failures, jitter.next());
                let ceiling = reconnect.ceiling(failures);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{delay:?} of {ceiling:?}"
                );
                seen.insert(delay);
            }
        }
        // Spread, not one value per ceiling.
        assert!(seen.len() > 500, "only {} distinct delays", seen.len());
    }

    #[test]
    fn jitter_is_uniform_enough_and_never_reaches_one() {
        let mut jitter = Jitter::from_os();
        let draws: Vec<f64> = (0..10_000).map(|_| jitter.next()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }

    #[test]
    fn bad_policies_are_refused_with_the_setting_named() {
        let zero = policy(0, 10);
        assert!(matches!(
            zero.check(),
            Err(ConfigError::Invalid {
                setting: "initial_delay",
                ..
            })
        ));
        let inverted = policy(100, 10);
        assert!(matches!(
            inverted.check(),
            Err(ConfigError::Invalid {
                setting: "max_delay",
                ..
            })
        ));
        let mut never = policy(10, 100);
        never.max_attempts = Some(0);
        assert!(matches!(
            never.check(),
            Err(ConfigError::Invalid {
                setting: "max_attempts",
                ..
            })
        ));
        assert_eq!(Reconnect::default().check(), Ok(()));
    }
}
