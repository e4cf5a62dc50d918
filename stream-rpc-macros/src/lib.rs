//! Procedural macros of [`stream-rpc`](https://docs.rs/stream-rpc).
//!
//! This crate is an implementation detail: depend on `stream-rpc` and use the
//! attribute through it, as `#[stream_rpc::service]`. The attribute works in
//! three steps, one file each: `model` reads the impl block, `validate`
//! checks it as a whole, and `expand` generates the code.

#![warn(missing_docs)]

use proc_macro::TokenStream;

mod attr;
mod errors;
mod expand;
mod model;
mod validate;

/// Turns the `async fn`s of an inherent `impl` block into a stream-rpc
/// protocol dispatched by method name, with typed payloads, and generates a
/// typed client. See `stream_rpc::service` for the full documentation.
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::service(args.into(), input.into()).into()
}
