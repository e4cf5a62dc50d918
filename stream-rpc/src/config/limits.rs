//! Bounds on what one process and one connection may hold, and their checks.

use super::ConfigError;
use crate::codec::DEFAULT_MAX_FRAME_LEN;

/// The default of [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The default of [`Limits::max_connections_per_ip`].
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// The largest connection limits (global and per address) a configuration
/// may ask for. Semaphores cap their permits far above: a configuration
/// stays far below.
pub const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;
/// The largest [`Limits::max_concurrent_handlers`],
/// [`Limits::max_in_flight_calls`] and [`Limits::outgoing_queue`] a
/// configuration may ask for.
pub const MAX_PER_CONNECTION_LIMIT: usize = 1 << 20;
/// The shortest [`Limits::max_frame_len`]: room for a small packet's token.
pub const MIN_FRAME_LEN: usize = 128;
/// The longest [`Limits::max_frame_len`] (1 GiB).
pub const MAX_FRAME_LEN_LIMIT: usize = 1 << 30;
/// The largest [`Limits::max_outbox_bytes`] (4 GiB).
pub const MAX_OUTBOX_BYTES_LIMIT: usize = 1 << 32;
/// The largest [`Limits::replay_cache_entries`] (256 MiB of tables, at 16
/// bytes an entry).
pub const MAX_REPLAY_CACHE_ENTRIES: usize = 1 << 24;

/// The default of [`Limits::max_concurrent_handlers`].
const DEFAULT_MAX_CONCURRENT_HANDLERS: usize = 256;
/// The default of [`Limits::max_in_flight_calls`].
const DEFAULT_MAX_IN_FLIGHT_CALLS: usize = 1024;
/// The default of [`Limits::max_bad_frames_in_row`].
const DEFAULT_MAX_BAD_FRAMES_IN_ROW: u32 = 3;
/// The default of [`Limits::outgoing_queue`].
const DEFAULT_OUTGOING_QUEUE: usize = 1024;
/// The default of [`Limits::max_outbox_bytes`] (4 MiB).
const DEFAULT_MAX_OUTBOX_BYTES: usize = 4 << 20;
/// The default of [`Limits::max_streams`].
const DEFAULT_MAX_STREAMS: usize = 256;
/// The default of [`Limits::stream_window`].
const DEFAULT_STREAM_WINDOW: u32 = 32;
/// The default of [`Limits::stream_window_bytes`] (1 MiB).
const DEFAULT_STREAM_WINDOW_BYTES: usize = 1 << 20;
/// The largest [`Limits::stream_window`]: the protocol's most outstanding
/// credit.
const MAX_STREAM_WINDOW: u32 = 65_536;
/// The default of [`Limits::replay_cache_entries`] (64 MiB of tables).
const DEFAULT_REPLAY_CACHE_ENTRIES: usize = 1 << 22;

/// Bounds on what one process and one connection may hold.
///
/// Build one from the defaults in one expression:
///
/// ```
/// use stream_rpc::Limits;
///
/// let limits = Limits::default()
///     .with_max_frame_len(64 * 1024)
///     .with_max_connections(100);
/// assert_eq!(limits.max_connections, 100);
/// ```
///
/// [`ConfigBuilder::build`](crate::ConfigBuilder::build) refuses a limit
/// outside its range (each field says it), naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Longest frame read or written, terminator excluded (default 1 MiB;
    /// 128 bytes to 1 GiB).
    pub max_frame_len: usize,
    /// Connections a server serves at once; more are closed at once (1024,
    /// at most 1,048,576).
    pub max_connections: usize,
    /// Connections a server serves at once from one remote IP address (an
    /// IPv4-mapped IPv6 address counts as its IPv4 address); more are closed
    /// at once (64, at most 1,048,576; from
    /// `STREAM_RPC_MAX_CONNECTIONS_PER_IP`). Keeps one host from taking
    /// every slot of [`max_connections`](Self::max_connections).
    pub max_connections_per_ip: usize,
    /// Handlers running at once on one connection; a request beyond gets a
    /// `busy` error packet (256, at most 1,048,576).
    pub max_concurrent_handlers: usize,
    /// Calls awaiting a reply at once on one session; more wait for a slot
    /// (1024, at most 1,048,576).
    pub max_in_flight_calls: usize,
    /// Frames in a row that fail to decrypt (or are too long) before the
    /// connection is closed (3).
    pub max_bad_frames_in_row: u32,
    /// Frames queued for the writer before senders wait (1024, at most
    /// 1,048,576).
    pub outgoing_queue: usize,
    /// Bytes queued for the writer before senders wait (4 MiB, at most 4
    /// GiB): with [`outgoing_queue`](Self::outgoing_queue), bounds what a
    /// peer that stops reading makes a connection hold. A message is queued
    /// whenever the queue is empty, even one larger than this; the writer
    /// holds at most one more such batch while it writes it. With Fernet
    /// the queue holds plaintexts, counted as such: their sealed frames,
    /// made as they are written, are about a third larger.
    pub max_outbox_bytes: usize,
    /// Token fingerprints (sent and received) the default replay store
    /// holds at most (4,194,304). Its tables start small and grow with the
    /// traffic, 16 bytes per entry, so this is a memory budget (64 MiB by
    /// default; at most 16,777,216 entries): below it the store remembers
    /// every token for its whole time to live plus the clock skew (360 s),
    /// which the default covers up to about 11,600 tokens a second; above
    /// it the store fails closed, refusing tokens older than what it still
    /// remembers (see [`MemoryReplayStore`](crate::MemoryReplayStore)). A
    /// burst that fills it in under two seconds may take it to twice this
    /// for those seconds, rather than refuse the tokens of this second.
    pub replay_cache_entries: usize,
    /// Streams the peer may have open at once on one connection (streams
    /// it opened); an open beyond is refused `busy` (256, at most
    /// 1,048,576).
    pub max_streams: usize,
    /// Items a receiver grants a stream at once, and keeps granted as its
    /// consumer takes them: the output window of a stream opened without
    /// [`StreamOptions::window`](crate::StreamOptions::window), and every
    /// input window (32, 1 to 65,536).
    pub stream_window: u32,
    /// Bytes of items (their packets' JSON) a receiver holds for a stream
    /// before it stops granting credit, until its consumer takes some (1
    /// MiB, at least 1). It stops further credit only: credit already
    /// granted lets a peer send the window's items whatever their size,
    /// so what one stream can make a receiver hold is at most
    /// `stream_window_bytes` plus a window of items of up to
    /// [`max_frame_len`](Self::max_frame_len) each, and a connection
    /// `max_streams` times that. With large frames, keep the window small
    /// (or `max_streams` low) where peers are not trusted to be modest.
    pub stream_window_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_concurrent_handlers: DEFAULT_MAX_CONCURRENT_HANDLERS,
            max_in_flight_calls: DEFAULT_MAX_IN_FLIGHT_CALLS,
            max_bad_frames_in_row: DEFAULT_MAX_BAD_FRAMES_IN_ROW,
            outgoing_queue: DEFAULT_OUTGOING_QUEUE,
            max_outbox_bytes: DEFAULT_MAX_OUTBOX_BYTES,
            replay_cache_entries: DEFAULT_REPLAY_CACHE_ENTRIES,
            max_streams: DEFAULT_MAX_STREAMS,
            stream_window: DEFAULT_STREAM_WINDOW,
            stream_window_bytes: DEFAULT_STREAM_WINDOW_BYTES,
        }
    }
}

super::with_setters!(Limits {
    /// Sets [`max_frame_len`](Self::max_frame_len).
    with_max_frame_len => max_frame_len: usize,
    /// Sets [`max_connections`](Self::max_connections).
    with_max_connections => max_connections: usize,
    /// Sets [`max_connections_per_ip`](Self::max_connections_per_ip).
    with_max_connections_per_ip => max_connections_per_ip: usize,
    /// Sets [`max_concurrent_handlers`](Self::max_concurrent_handlers).
    with_max_concurrent_handlers => max_concurrent_handlers: usize,
    /// Sets [`max_in_flight_calls`](Self::max_in_flight_calls).
    with_max_in_flight_calls => max_in_flight_calls: usize,
    /// Sets [`max_bad_frames_in_row`](Self::max_bad_frames_in_row).
    with_max_bad_frames_in_row => max_bad_frames_in_row: u32,
    /// Sets [`outgoing_queue`](Self::outgoing_queue).
    with_outgoing_queue => outgoing_queue: usize,
    /// Sets [`max_outbox_bytes`](Self::max_outbox_bytes).
    with_max_outbox_bytes => max_outbox_bytes: usize,
    /// Sets [`replay_cache_entries`](Self::replay_cache_entries).
    with_replay_cache_entries => replay_cache_entries: usize,
    /// Sets [`max_streams`](Self::max_streams).
    with_max_streams => max_streams: usize,
    /// Sets [`stream_window`](Self::stream_window).
    with_stream_window => stream_window: u32,
    /// Sets [`stream_window_bytes`](Self::stream_window_bytes).
    with_stream_window_bytes => stream_window_bytes: usize,
});

impl Limits {
    /// Each limit with its name and the range it must be in.
    fn ranges(&self) -> [(&'static str, usize, usize, usize); 12] {
        [
            (
                "max_frame_len",
                self.max_frame_len,
                MIN_FRAME_LEN,
                MAX_FRAME_LEN_LIMIT,
            ),
            (
                "max_connections",
                self.max_connections,
                1,
                MAX_CONNECTIONS_LIMIT,
            ),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip,
                1,
                MAX_CONNECTIONS_LIMIT,
            ),
            (
                "max_concurrent_handlers",
                self.max_concurrent_handlers,
                1,
                MAX_PER_CONNECTION_LIMIT,
            ),
            (
                "max_in_flight_calls",
                self.max_in_flight_calls,
                1,
                MAX_PER_CONNECTION_LIMIT,
            ),
            (
                "max_bad_frames_in_row",
                self.max_bad_frames_in_row as usize,
                1,
                u32::MAX as usize,
            ),
            (
                "outgoing_queue",
                self.outgoing_queue,
                1,
                MAX_PER_CONNECTION_LIMIT,
            ),
            (
                "max_outbox_bytes",
                self.max_outbox_bytes,
                1,
                MAX_OUTBOX_BYTES_LIMIT,
            ),
            (
                "replay_cache_entries",
                self.replay_cache_entries,
                1,
                MAX_REPLAY_CACHE_ENTRIES,
            ),
            ("max_streams", self.max_streams, 1, MAX_PER_CONNECTION_LIMIT),
            (
                "stream_window",
                self.stream_window as usize,
                1,
                MAX_STREAM_WINDOW as usize,
            ),
            (
                "stream_window_bytes",
                self.stream_window_bytes,
                1,
                usize::MAX,
            ),
        ]
    }

    /// Refuses a limit outside its range, naming it: none reaches a
    /// semaphore or an allocation it would make panic.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        for (setting, value, least, most) in self.ranges() {
            if !(least..=most).contains(&value) {
                return Err(ConfigError::invalid(
                    setting,
                    format!("it must be from {least} to {most}, not {value}"),
                ));
            }
        }
        Ok(())
    }
}
