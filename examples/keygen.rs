//! Prints a new Fernet key for `CRYPTO_KEY`: the one-line replacement for
//! the Python original's key step.
//!
//! ```text
//! export CRYPTO_KEY=$(cargo run -q --example keygen)
//! ```

fn main() -> Result<(), stream_rpc::CipherError> {
    println!("{}", stream_rpc::Fernet::generate_key()?);
    Ok(())
}
