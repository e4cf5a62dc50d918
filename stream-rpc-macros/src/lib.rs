//! Procedural macros of [`stream-rpc`](https://docs.rs/stream-rpc).
//!
//! This crate is an implementation detail: depend on `stream-rpc` and use the
//! attribute through it. The `#[stream_rpc::service]` attribute lands here.

#![warn(missing_docs)]
