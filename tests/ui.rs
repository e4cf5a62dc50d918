//! Compile-time behaviour of `#[stream_rpc::service]`: `ui/pass` must build
//! and run; each `ui/fail` case must fail with exactly its `.stderr`.
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test --test ui`
//! and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
