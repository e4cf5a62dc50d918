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

#[cfg(test)]
mod tests {
    use super::*;

    /// A forked child takes IVs of its own, never the ones left in the
    /// parent's buffer.
    #[cfg(unix)]
    #[test]
    fn a_forked_child_never_reuses_the_parents_ivs() {
        // Fill this thread's buffer and take one IV, so that the buffer
        // holds unused IVs when the process forks.
        random_iv().unwrap();
        let mut pipe = [0i32; 2];
        // SAFETY: `pipe` has room for the two descriptors.
        #[allow(unsafe_code)]
        let piped = unsafe { libc::pipe(pipe.as_mut_ptr()) };
        assert_eq!(piped, 0);
        // SAFETY: the child only takes IVs (no allocation: the buffer
        // exists, refilling it is a system call into it), writes them to the
        // pipe and leaves with `_exit`, so it never touches a lock another
        // thread of the test harness may have held at the fork.
        #[allow(unsafe_code)]
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let mut ivs = [0u8; 64];
            for chunk in ivs.chunks_exact_mut(16) {
                match random_iv() {
                    Ok(iv) => chunk.copy_from_slice(&iv),
                    // SAFETY: leaving the child at once.
                    #[allow(unsafe_code)]
                    Err(_) => unsafe { libc::_exit(2) },
                }
            }
            // SAFETY: writes the 64 bytes of `ivs` to the pipe, then leaves.
            #[allow(unsafe_code)]
            unsafe {
                libc::write(pipe[1], ivs.as_ptr().cast(), ivs.len());
                libc::_exit(0);
            }
        }
        let parent: Vec<[u8; 16]> = (0..4).map(|_| random_iv().unwrap()).collect();
        let mut from_child = [0u8; 64];
        let mut got = 0;
        while got < from_child.len() {
            // SAFETY: reads into the unfilled rest of `from_child`.
            #[allow(unsafe_code)]
            let read = unsafe {
                libc::read(
                    pipe[0],
                    from_child[got..].as_mut_ptr().cast(),
                    from_child.len() - got,
                )
            };
            assert!(read > 0, "the child wrote no IVs");
            got += read as usize;
        }
        let mut status = 0;
        // SAFETY: waits for the child made above; closes our descriptors.
        #[allow(unsafe_code)]
        unsafe {
            libc::waitpid(child, &mut status, 0);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        let child_ivs: Vec<&[u8]> = from_child.chunks_exact(16).collect();
        for iv in &parent {
            assert!(!child_ivs.contains(&&iv[..]), "the child reused {iv:?}");
        }
        assert_eq!(fork::count(), 0, "the parent's count never moves");
    }
}
