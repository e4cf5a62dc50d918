//! Step 2: checks across methods: wire names that are unique and usable,
//! and no clash with the generated items.

use std::collections::HashMap;

use crate::errors::Errors;
use crate::model::{Kind, Service};

/// Names the attribute generates on the service type (impl-block form).
pub const GENERATED: [&str; 1] = ["METHODS"];

/// Names the attribute generates on the typed client, besides the methods.
pub const CLIENT_ITEMS: [&str; 4] = ["new", "caller", "with_timeout", "METHODS"];

/// Checks the service as a whole.
pub fn check(service: &Service, errors: &mut Errors) {
    if service.methods.is_empty() && errors.is_empty() {
        match &service.kind {
            Kind::Impl { self_ty, .. } => errors.spanned(
                self_ty,
                "this impl has no service methods: add an `async fn name(&self, ...)`, or remove #[stream_rpc::service]",
            ),
            Kind::Trait { .. } => errors.spanned(
                &service.ident,
                "this trait has no service methods: add an `async fn name(&self, ...);`, or remove #[stream_rpc::service]",
            ),
        }
    }
    for method in &service.methods {
        if let Some(name) = CLIENT_ITEMS.iter().find(|name| method.ident == *name) {
            errors.spanned(
                &method.ident,
                format!(
                    "`{name}` clashes with the `{}Client::{name}` that #[stream_rpc::service] generates: rename the fn (keep its wire name with `#[stream_rpc(rename = \"{name}\")]`)",
                    service.ident
                ),
            );
        }
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
    // A service method named like one of them is reported above, as a clash
    // with the client's item; a helper here.
    let impl_form = matches!(service.kind, Kind::Impl { .. });
    let helpers = service
        .all_fns
        .iter()
        .filter(|ident| impl_form && !service.methods.iter().any(|m| m.ident == **ident));
    for ident in helpers {
        if let Some(name) = GENERATED.iter().find(|name| ident == *name) {
            errors.spanned(
                ident,
                format!(
                    "`{name}` clashes with the `{}::{name}` that #[stream_rpc::service] generates: rename the helper",
                    service.ident
                ),
            );
        }
    }
}
