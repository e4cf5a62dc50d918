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
    /// `timeout = "5m"`: the typed client's limit on the whole call.
    pub timeout: Option<Limit>,
    /// `item_timeout = "30s"`: the typed client's limit between two output
    /// items of a stream.
    pub item_timeout: Option<Limit>,
}

/// A duration written in an attribute, in milliseconds, with where its key
/// is written (for errors about the key's use).
#[derive(Clone, Copy)]
pub struct Limit {
    /// The duration in milliseconds.
    pub millis: u64,
    /// The key (`timeout`, `item_timeout`).
    pub key: Span,
}

const SERVICE_KEYS: &str = "expected `name = \"...\"` or `crate = path`";
const METHOD_KEYS: &str =
    "expected `rename = \"...\"`, `skip`, `timeout = \"...\"` or `item_timeout = \"...\"`";

/// What a duration in an attribute looks like.
const DURATION_FORM: &str = "a duration is a whole number and a unit, `ms`, `s`, `m` or `h`, like \"500ms\", \"30s\" or \"5m\" (or several, like \"1m30s\"), and more than zero";

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
            } else if meta.path.is_ident("timeout") {
                let value = duration_value(&meta, "timeout")?;
                once(&mut parsed.timeout, value, &meta, "timeout")
            } else if meta.path.is_ident("item_timeout") {
                let value = duration_value(&meta, "item_timeout")?;
                once(&mut parsed.item_timeout, value, &meta, "item_timeout")
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

fn duration_value(meta: &ParseNestedMeta, key: &str) -> syn::Result<Limit> {
    let literal = string_value(meta, key)?;
    let millis = parse_duration(&literal.value()).ok_or_else(|| {
        syn::Error::new(
            literal.span(),
            format!(
                "`{key}`: {:?} is not a duration: {DURATION_FORM}",
                literal.value()
            ),
        )
    })?;
    Ok(Limit {
        millis,
        key: meta.path.segments[0].ident.span(),
    })
}

/// Reads "500ms", "30s", "5m", "1h" or a sequence of them ("1m30s") into
/// milliseconds; `None` for anything else, zero or an overflow.
pub fn parse_duration(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(number.checked_mul(scale)?)?;
    }
    (total > 0).then_some(total)
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

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_read_as_milliseconds() {
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("30s"), Some(30_000));
        assert_eq!(parse_duration("5m"), Some(300_000));
        assert_eq!(parse_duration("1h"), Some(3_600_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000));
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "5sec",
            "-5s",
            "0s",
            "1.5s",
            "99999999999999999999h",
            "5ms3",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
