//! The attributes: `#[stream_rpc::service(...)]` on the impl block and
//! `#[stream_rpc(...)]` on its methods.

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Attribute, LitStr, Path};

use crate::errors::Errors;

/// The arguments of `#[stream_rpc::service(...)]`.
#[derive(Default)]
pub struct ServiceArgs {
    /// `name = "..."`: the protocol name shown in logs.
    pub name: Option<LitStr>,
    /// `crate = path`: where the runtime crate is, when not found by name.
    pub krate: Option<Path>,
}

/// The arguments of one method's `#[stream_rpc(...)]` attributes.
#[derive(Default)]
pub struct MethodArgs {
    /// `rename = "..."`: the method's name on the wire.
    pub rename: Option<LitStr>,
    /// `skip`: a helper, not a service method.
    pub skip: Option<Span>,
}

const SERVICE_KEYS: &str = "expected `name = \"...\"` or `crate = path`";
const METHOD_KEYS: &str = "expected `rename = \"...\"` or `skip`";

/// Parses the attribute's own arguments.
pub fn service_args(args: TokenStream, errors: &mut Errors) -> ServiceArgs {
    let mut parsed = ServiceArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let value = string_value(&meta, "name")?;
            once(&mut parsed.name, value, &meta, "name")
        } else if meta.path.is_ident("crate") {
            let value: Path = meta
                .value()?
                .parse()
                .map_err(|_| meta.error("`crate` takes a path, like `crate = my_rpc`"))?;
            once(&mut parsed.krate, value, &meta, "crate")
        } else {
            Err(unknown_key(&meta, "#[stream_rpc::service]", SERVICE_KEYS))
        }
    });
    if let Err(e) = parser.parse2(args) {
        errors.push(e);
    }
    parsed
}

/// Takes every `#[stream_rpc(...)]` attribute out of `attrs` and parses it.
pub fn take_method_args(attrs: &mut Vec<Attribute>, errors: &mut Errors) -> MethodArgs {
    let mut parsed = MethodArgs::default();
    let (ours, others): (Vec<_>, Vec<_>) = attrs
        .drain(..)
        .partition(|attr| attr.path().is_ident("stream_rpc"));
    *attrs = others;
    for attr in ours {
        let list = match attr.meta.require_list() {
            Ok(list) => list,
            Err(_) => {
                errors.spanned(
                    &attr,
                    format!("empty `#[stream_rpc]` attribute: {METHOD_KEYS}"),
                );
                continue;
            }
        };
        let result = list.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                let value = string_value(&meta, "rename")?;
                once(&mut parsed.rename, value, &meta, "rename")
            } else if meta.path.is_ident("skip") {
                if meta.input.peek(syn::Token![=]) || meta.input.peek(syn::token::Paren) {
                    return Err(meta.error("`skip` takes no value: write `#[stream_rpc(skip)]`"));
                }
                let span = meta.path.segments[0].ident.span();
                once(&mut parsed.skip, span, &meta, "skip")
            } else {
                Err(unknown_key(&meta, "#[stream_rpc(...)]", METHOD_KEYS))
            }
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }
    parsed
}

fn string_value(meta: &ParseNestedMeta, key: &str) -> syn::Result<LitStr> {
    let message = format!("`{key}` takes a string literal, like `{key} = \"...\"`");
    let value = meta.value().map_err(|_| meta.error(&message))?;
    value
        .parse::<LitStr>()
        .map_err(|e| syn::Error::new(e.span(), &message))
}

fn once<T>(slot: &mut Option<T>, value: T, meta: &ParseNestedMeta, key: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format!("`{key}` is given more than once")));
    }
    *slot = Some(value);
    Ok(())
}

fn unknown_key(meta: &ParseNestedMeta, attribute: &str, expected: &str) -> syn::Error {
    let key = quote::ToTokens::to_token_stream(&meta.path)
        .to_string()
        .replace(' ', "");
    meta.error(format!("unknown {attribute} argument `{key}`: {expected}"))
}
