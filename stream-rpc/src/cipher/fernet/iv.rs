//! Initialisation vectors: a per-thread pool of operating system
//! randomness, refilled after a `fork()`.

use std::cell::RefCell;

use super::token::IV_LEN;
use crate::cipher::CipherError;

/// How many bytes of operating system randomness one system call fetches.
const POOL_LEN: usize = 16 * 1024;

/// A per-thread buffer of operating system randomness, so that one system
/// call provides 1,024 initialisation vectors. Used bytes are wiped.
///
/// A process made by `fork()` starts with a copy of its parent's buffer:
/// were it to take IVs from it, parent and child would seal with the same
/// IVs. So the buffer notes the count of forks (raised in every child by a
/// `pthread_atfork` handler) it was filled under, and is filled again when
/// that count has moved: a check of one atomic per IV, where asking the
/// process id would cost a system call each.
struct RandomPool {
    bytes: Box<[u8; POOL_LEN]>,
    used: usize,
    forks: u64,
}

thread_local! {
    static POOL: RefCell<RandomPool> = RefCell::new({
        fork::watch();
        RandomPool {
            bytes: Box::new([0; POOL_LEN]),
            used: POOL_LEN,
            forks: fork::count(),
        }
    });
}

/// A fresh initialisation vector from this thread's pool.
pub(super) fn random_iv() -> Result<[u8; IV_LEN], CipherError> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let forks = fork::count();
        if pool.used + IV_LEN > POOL_LEN || pool.forks != forks {
            getrandom::getrandom(&mut pool.bytes[..])
                .map_err(|e| CipherError::Randomness(e.to_string()))?;
            pool.used = 0;
            pool.forks = forks;
        }
        let start = pool.used;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&pool.bytes[start..start + IV_LEN]);
        pool.bytes[start..start + IV_LEN].fill(0);
        pool.used += IV_LEN;
        Ok(iv)
    })
}

/// Counts the forks of this process's ancestry line: raised in each child.
pub(super) mod fork {
    use std::sync::atomic::{AtomicU64, Ordering};

    static FORKS: AtomicU64 = AtomicU64::new(0);

    /// How many times this process (as a child, and its parents before it)
    /// was forked since the handler was registered.
    pub(in crate::cipher::fernet) fn count() -> u64 {
        FORKS.load(Ordering::Relaxed)
    }

    /// Registers the handler, once per process (a child inherits it).
    pub(super) fn watch() {
        #[cfg(unix)]
        {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                extern "C" fn in_child() {
                    FORKS.fetch_add(1, Ordering::Relaxed);
                }
                // SAFETY: registers a handler that only increments an
                // atomic, which is async-signal-safe, as the handlers run
                // in the child of a fork must be. Registration fails only
                // for want of memory; then forks go unnoticed, which
                // `random_iv` cannot do better about than without it.
                #[allow(unsafe_code)]
                let registered = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
                if registered != 0 {
                    tracing::warn!(
                        "could not watch for fork(): a forked child must not seal with Fernet"
                    );
                }
            });
        }
    }
}
