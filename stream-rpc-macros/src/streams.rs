//! Step 1, for streams: a method's stream argument (`IncomingItems<T>`)
//! and returned stream (`Streaming<T, E>`), each misuse spanned on its
//! token, and the client limits (`timeout`, `item_timeout`) checked against
//! what the method does.

use proc_macro2::Span;
use syn::{GenericArgument, Ident, Pat, PathArguments, PathSegment, ReturnType, Type};

use crate::attr::MethodArgs;
use crate::errors::Errors;
use crate::model::{Ret, plain_return_type};

/// The runtime's type of a stream returned by a service method.
pub const STREAMING: &str = "Streaming";
/// The runtime's type of a service method's stream argument.
pub const INCOMING_ITEMS: &str = "IncomingItems";

/// The stream argument of a method that takes one.
pub struct Input {
    /// The argument's name.
    pub ident: Ident,
    /// The type as written (`IncomingItems<Chunk>`).
    pub ty: Type,
    /// The items' type (`Chunk`).
    pub item: Type,
}

/// A stream returned: `Streaming<T>`, `Streaming<T, E>` or
/// `Result<Streaming<T, E>, E>`.
pub struct StreamRet {
    /// The items' type.
    pub item: Box<Type>,
    /// The error that may end the stream, when written.
    pub err: Option<Box<Type>>,
    /// The error of `Result<Streaming<T, E>, E>`, which fails before the
    /// first item.
    pub outer_err: Option<Box<Type>>,
}

/// A method with a stream argument answers with a value (the reply
/// `<method>.reply` that ends the stream): not a `Reply` or a `Message`,
/// which choose another packet.
pub fn check_input_answer(ret: &Ret, errors_here: &mut Errors) {
    let ty = match ret {
        Ret::Value(ty) | Ret::Result { ok: ty, .. } => ty,
        Ret::Unit | Ret::Stream(_) => return,
    };
    if let Some(segment) = named(ty, "Reply").or_else(|| named(ty, "Message")) {
        errors_here.spanned(
            segment,
            format!(
                "a method with a stream argument answers with a value, sent as `<method>.reply` once the input is read: return `T` or `Result<T, E>`, not `{}`",
                segment.ident
            ),
        );
    }
}

/// Checks that the client's limits fit the method: `item_timeout` only on a
/// method that returns a stream, `timeout` on anything the client waits for.
pub fn check_limits(args: &MethodArgs, input: bool, ret: &Ret, errors_here: &mut Errors) {
    let output = matches!(ret, Ret::Stream(_));
    if let Some(limit) = &args.item_timeout
        && !output
    {
        errors_here.at(
            limit.key,
            "`item_timeout` limits the time between two items of a stream this method returns, and it returns none: use `timeout` for the whole call",
        );
    }
    if let Some(limit) = &args.timeout
        && !output
        && !input
        && matches!(ret, Ret::Unit)
    {
        errors_here.at(
            limit.key,
            "`timeout` limits how long the client waits for the answer, and this method is a notification (it returns nothing): drop `timeout`, or return a value",
        );
    }
}

/// Reads the stream argument `items: IncomingItems<T>`.
pub fn stream_argument(
    pat: &Pat,
    ty: &Type,
    segment: &PathSegment,
    previous: &Option<Input>,
    errors_here: &mut Errors,
) -> Option<Input> {
    if let Some(first) = previous {
        errors_here.spanned(
            ty,
            format!(
                "a service method takes at most one stream argument (`{}` is the first): send one stream of a type that holds both, like an enum",
                first.ident
            ),
        );
        return None;
    }
    let item = match only_type_argument(segment) {
        Some(item) => item,
        None => {
            errors_here.spanned(
                segment,
                "write the items' type of the stream argument: `IncomingItems<T>`",
            );
            return None;
        }
    };
    if let Some(token) = find_named(item, STREAMING).or_else(|| find_named(item, INCOMING_ITEMS)) {
        errors_here.at(
            token,
            "the items of a stream are values: a stream of streams is not supported",
        );
        return None;
    }
    match pat {
        Pat::Ident(binding) if binding.by_ref.is_none() && binding.subpat.is_none() => {
            Some(Input {
                ident: binding.ident.clone(),
                ty: ty.clone(),
                item: item.clone(),
            })
        }
        other => {
            errors_here.spanned(
                other,
                "a stream argument must be a plain name, like `items: IncomingItems<T>`",
            );
            None
        }
    }
}

/// The error for `IncomingItems` written anywhere but as a whole argument's
/// type.
pub fn stream_argument_form(ty: &Type) -> &'static str {
    match ty {
        Type::Reference(_) => {
            "take the stream argument by value: `items: IncomingItems<T>` (it is read as the items arrive)"
        }
        _ => {
            "`IncomingItems<T>` is a whole argument's type (`items: IncomingItems<T>`), and cannot stand inside another type"
        }
    }
}

/// The one type argument of `Name<T>`, if written so.
fn only_type_argument(segment: &PathSegment) -> Option<&Type> {
    let PathArguments::AngleBracketed(generic) = &segment.arguments else {
        return None;
    };
    match generic.args.iter().collect::<Vec<_>>().as_slice() {
        [GenericArgument::Type(ty)] => Some(ty),
        _ => None,
    }
}

/// The last segment of `ty` when `ty` is a path ending in `name`
/// (`Streaming<T>`, `stream_rpc::Streaming<T>`).
pub fn named<'a>(ty: &'a Type, name: &str) -> Option<&'a PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => {
            path.path.segments.last().filter(|last| last.ident == name)
        }
        Type::Group(group) => named(&group.elem, name),
        Type::Paren(paren) => named(&paren.elem, name),
        _ => None,
    }
}

/// Where a path segment called `name` is written anywhere in `ty`,
/// nested included.
pub fn find_named(ty: &Type, name: &str) -> Option<Span> {
    match ty {
        Type::Path(path) => {
            if let Some(qself) = &path.qself
                && let Some(span) = find_named(&qself.ty, name)
            {
                return Some(span);
            }
            path.path.segments.iter().find_map(|segment| {
                if segment.ident == name {
                    return Some(segment.ident.span());
                }
                match &segment.arguments {
                    PathArguments::AngleBracketed(generic) => {
                        generic.args.iter().find_map(|arg| match arg {
                            GenericArgument::Type(ty) => find_named(ty, name),
                            GenericArgument::AssocType(assoc) => find_named(&assoc.ty, name),
                            _ => None,
                        })
                    }
                    PathArguments::Parenthesized(args) => args
                        .inputs
                        .iter()
                        .find_map(|arg| find_named(&arg.ty, name))
                        .or_else(|| match &args.output {
                            ReturnType::Type(_, ty) => find_named(ty, name),
                            ReturnType::Default => None,
                        }),
                    PathArguments::None => None,
                }
            })
        }
        Type::Reference(reference) => find_named(&reference.elem, name),
        Type::Ptr(pointer) => find_named(&pointer.elem, name),
        Type::Slice(slice) => find_named(&slice.elem, name),
        Type::Array(array) => find_named(&array.elem, name),
        Type::Paren(paren) => find_named(&paren.elem, name),
        Type::Group(group) => find_named(&group.elem, name),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(|ty| find_named(ty, name)),
        _ => None,
    }
}

/// What a method returns, streams included.
pub fn return_type(ty: &Type, errors: &mut Errors) -> Ret {
    if let Some(token) = find_named(ty, INCOMING_ITEMS) {
        errors.at(
            token,
            "`IncomingItems<T>` is the type of a stream argument; a method returns a stream as `Streaming<T>` or `Streaming<T, E>`",
        );
        return Ret::Unit;
    }
    match plain_return_type(ty, errors) {
        Ret::Value(ty) => match named(&ty, STREAMING) {
            Some(segment) => streaming(segment, None, errors),
            None if nested_stream(&ty, errors) => Ret::Unit,
            None => Ret::Value(ty),
        },
        Ret::Result { ok, err } => match (named(&ok, STREAMING), err) {
            (Some(segment), Some(err)) if !nested_stream(&err, errors) => {
                streaming(segment, Some(err), errors)
            }
            (Some(_), Some(_)) => Ret::Unit,
            (Some(segment), None) => {
                errors.spanned(
                    segment,
                    "write the error type of a stream that may fail before its first item: `Result<Streaming<T, E>, E>`",
                );
                Ret::Unit
            }
            (None, err) => {
                let nested = nested_stream(&ok, errors)
                    | err.as_ref().is_some_and(|err| nested_stream(err, errors));
                if nested {
                    Ret::Unit
                } else {
                    Ret::Result { ok, err }
                }
            }
        },
        other => other,
    }
}

/// Reports `Streaming` written inside another type; whether it was.
fn nested_stream(ty: &Type, errors: &mut Errors) -> bool {
    match find_named(ty, STREAMING) {
        Some(token) => {
            errors.at(
                token,
                "`Streaming<T>` is a whole return type (or the `Ok` type of `Result<Streaming<T, E>, E>`), and cannot stand inside another type",
            );
            true
        }
        None => false,
    }
}

/// Reads `Streaming<T>` or `Streaming<T, E>`; `outer_err` is the `E` of
/// `Result<Streaming<T, E>, E>`.
fn streaming(segment: &PathSegment, outer_err: Option<Box<Type>>, errors: &mut Errors) -> Ret {
    let types: Option<Vec<&Type>> = match &segment.arguments {
        PathArguments::AngleBracketed(generic) => generic
            .args
            .iter()
            .map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        _ => None,
    };
    let (item, err) = match types.as_deref() {
        Some([item]) => (*item, None),
        Some([item, err]) => (*item, Some(*err)),
        _ => {
            errors.spanned(
                segment,
                "write a stream's items' type, and its error type if it may fail: `Streaming<T>` or `Streaming<T, E>`",
            );
            return Ret::Unit;
        }
    };
    if outer_err.is_some() && err.is_none() {
        errors.spanned(
            segment,
            "write the stream's error type, the same as the `Result`'s: `Result<Streaming<T, E>, E>`",
        );
        return Ret::Unit;
    }
    let nested = nested_stream(item, errors) | err.is_some_and(|err| nested_stream(err, errors));
    if nested {
        return Ret::Unit;
    }
    Ret::Stream(StreamRet {
        item: Box::new(item.clone()),
        err: err.map(|err| Box::new(err.clone())),
        outer_err,
    })
}
