//! Deadlines that keep slow or silent peers from holding resources.

use std::time::Duration;

use super::ConfigError;

/// Deadlines that keep slow or silent peers from holding resources.
///
/// ```
/// use std::time::Duration;
/// use stream_rpc::Timeouts;
///
/// let timeouts = Timeouts::default()
///     .with_call(Duration::from_secs(5))
///     .with_idle(None);
/// assert_eq!(timeouts.idle, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// A new connection must send its first good frame (one that opens
    /// under the key and passes the replay check) within this (10 s);
    /// frames that do not open do not count.
    pub first_frame: Duration,
    /// A connection with no good frame received, no handler running and no
    /// call pending for this long is closed (5 min); `None` never closes
    /// it. Frames that do not open under the key do not restart it.
    pub idle: Option<Duration>,
    /// One write to the socket must finish within this (10 s).
    pub write: Duration,
    /// How long a call waits for a reply unless it sets its own limit (30 s).
    pub call: Duration,
    /// How long a client waits for the TCP connection (10 s).
    pub connect: Duration,
    /// On shutdown, how long running handlers get to finish (10 s).
    pub shutdown_grace: Duration,
}

/// The default of most timeouts: [`Timeouts::first_frame`],
/// [`Timeouts::write`], [`Timeouts::connect`], [`Timeouts::shutdown_grace`].
const TEN_SECONDS: Duration = Duration::from_secs(10);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            first_frame: TEN_SECONDS,
            idle: Some(Duration::from_secs(5 * 60)),
            write: TEN_SECONDS,
            call: Duration::from_secs(30),
            connect: TEN_SECONDS,
            shutdown_grace: TEN_SECONDS,
        }
    }
}

super::with_setters!(Timeouts {
    /// Sets [`first_frame`](Self::first_frame).
    with_first_frame => first_frame: Duration,
    /// Sets [`idle`](Self::idle); `None` never closes an idle connection.
    with_idle => idle: Option<Duration>,
    /// Sets [`write`](Self::write).
    with_write => write: Duration,
    /// Sets [`call`](Self::call).
    with_call => call: Duration,
    /// Sets [`connect`](Self::connect).
    with_connect => connect: Duration,
    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    with_shutdown_grace => shutdown_grace: Duration,
});

impl Timeouts {
    /// Refuses a zero timeout, naming it.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let positive = [
            ("first_frame", self.first_frame),
            ("write", self.write),
            ("call", self.call),
            ("connect", self.connect),
        ];
        for (setting, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::invalid(
                    setting,
                    "a timeout must be above zero",
                ));
            }
        }
        if self.idle.is_some_and(|idle| idle.is_zero()) {
            return Err(ConfigError::invalid(
                "idle",
                "a timeout must be above zero (use None to disable it)",
            ));
        }
        Ok(())
    }
}
