//! Doc comments are kept, and the generated items are documented.
#![deny(missing_docs)]

/// A documented service.
pub struct Documented;

#[stream_rpc::service]
impl Documented {
    /// Says hello.
    ///
    /// A second paragraph.
    pub async fn hello(&self, name: String) -> String {
        format!("hello {name}")
    }

    /// Takes a note.
    pub async fn note(&self, text: String) {
        let _ = text;
    }
}

fn main() {
    let _ = Documented::METHODS;
    let _: fn(stream_rpc::Connection) -> DocumentedClient = DocumentedClient::new;
}
