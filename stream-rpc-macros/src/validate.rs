//! Step 2: checks across methods: wire names that are unique and usable,
//! and no clash with the generated items.

use std::collections::HashMap;

use crate::errors::Errors;
use crate::model::Service;

/// Names the attribute generates on the service type.
pub const GENERATED: [&str; 2] = ["client", "METHODS"];

/// Checks the service as a whole.
pub fn check(service: &Service, errors: &mut Errors) {
    if service.methods.is_empty() && errors.is_empty() {
        errors.spanned(
            &service.self_ty,
            "this impl has no service methods: add an `async fn name(&self, ...)`, or remove #[stream_rpc::service]",
        );
    }
    let mut seen: HashMap<&str, &syn::Ident> = HashMap::new();
    for method in &service.methods {
        let wire = method.wire.as_str();
        if wire.is_empty() || wire.chars().any(char::is_whitespace) {
            errors.at(
                method.wire_span,
                format!(
                    "{wire:?} cannot be a method name: it must be non-empty and have no whitespace"
                ),
            );
        } else if let Some(first) = seen.get(wire) {
            errors.at(
                method.wire_span,
                format!(
                    "`{first}` and `{}` are both called `{wire}` on the wire: give one another `#[stream_rpc(rename = \"...\")]`",
                    method.ident
                ),
            );
        } else {
            seen.insert(wire, &method.ident);
        }
    }
    for ident in &service.all_fns {
        if let Some(name) = GENERATED.iter().find(|name| ident == *name) {
            errors.spanned(
                ident,
                format!(
                    "`{name}` clashes with the `{}::{name}` that #[stream_rpc::service] generates: rename the fn (keep its wire name with `#[stream_rpc(rename = \"{name}\")]`)",
                    service.ident
                ),
            );
        }
    }
}
