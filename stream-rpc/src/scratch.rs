//! Per-thread scratch buffers for the per-message path: a message is sealed
//! in buffers that stay with the thread, instead of in new allocations.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Runs `work` on the value kept in `slot`, taken out for the call: a nested
/// call (a custom cipher that sends from inside `encrypt`) or one while the
/// thread ends gets a fresh default value instead. The value is put back
/// afterwards if `keep` says so (a buffer that a large message grew is let
/// go rather than held by the thread).
pub(crate) fn with_taken<T: Default + 'static, R>(
    slot: &'static LocalKey<RefCell<T>>,
    work: impl FnOnce(&mut T) -> R,
    keep: impl FnOnce(&T) -> bool,
) -> R {
    let mut value = slot
        .try_with(|cell| {
            cell.try_borrow_mut()
                .map(|mut kept| std::mem::take(&mut *kept))
        })
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let result = work(&mut value);
    if keep(&value) {
        let _ = slot.try_with(|cell| {
            if let Ok(mut kept) = cell.try_borrow_mut() {
                *kept = value;
            }
        });
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SLOT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    #[test]
    fn a_kept_buffer_is_reused_and_a_nested_call_gets_its_own() {
        with_taken(&SLOT, |buf| buf.extend_from_slice(b"first"), |_| true);
        let seen = with_taken(
            &SLOT,
            |outer| {
                // Taken out: the nested call starts from an empty value.
                let nested = with_taken(&SLOT, |inner| inner.clone(), |_| false);
                (outer.clone(), nested)
            },
            |_| true,
        );
        assert_eq!(seen, (b"first".to_vec(), Vec::new()));
    }

    #[test]
    fn a_buffer_not_kept_is_let_go() {
        with_taken(&SLOT, |buf| buf.extend_from_slice(b"big"), |_| false);
        assert!(with_taken(&SLOT, |buf| buf.is_empty(), |_| true));
    }
}
