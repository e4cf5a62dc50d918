//! What the stream-rpc workspace's tests share (and the queue benchmark,
//! which starts its Redis the same way):
//!
//! - [`RedisServer`]: a real `redis-server` of the test's own, on a free
//!   loopback port, in a temporary directory of its own, append-only file
//!   on; killed (as in a crash) and restarted on its file at will, stopped
//!   and its directory removed when dropped; optionally with a TLS port
//!   ([`tls_file`] names the test certificates);
//! - [`free_port`]: a loopback port nobody listens on;
//! - [`Process`]: a program (an example, the `stream-rpc` command) run as a
//!   child with its output read line by line, every wait bounded, killed
//!   when dropped; [`example`] finds an example's binary.
//!
//! Test code: a failure to set up panics with what to do about it.
//!
//! ```no_run
//! use stream_rpc_test_support::{RedisServer, free_port};
//!
//! let redis = RedisServer::start();
//! println!("Redis at {}, and nobody on 127.0.0.1:{}", redis.url(), free_port());
//! ```

#![warn(missing_docs)]

mod process;
mod redis;

pub use process::{BOUND, Process, example};
pub use redis::{RedisServer, tls_file};

use std::net::TcpListener;

/// A loopback port nobody listened on a moment ago (the system picked it
/// for a listener that is closed at once); panics when there is none.
///
/// Another program may take it before the test binds it: prefer binding
/// port 0 and reading the address where the code under test allows it.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// [`free_port`], saying what went wrong instead of panicking.
pub fn try_free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| format!("no free loopback port: {e}"))
        .map(|address| address.port())
}
