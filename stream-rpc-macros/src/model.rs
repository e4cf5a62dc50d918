//! Step 1: read the impl block or trait definition into a small model of
//! the service, noting every misuse on the way (each spanned on the
//! smallest offending token).

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{
    Attribute, FnArg, GenericArgument, Generics, Ident, ImplItem, ItemImpl, ItemTrait, LitStr, Pat,
    PathArguments, ReceiverKind, ReturnType, Safety, Signature, TraitItem, Type, Visibility,
};

use crate::attr::{self, MethodArgs};
use crate::errors::Errors;
pub use crate::streams::StreamRet;
use crate::streams::{
    INCOMING_ITEMS, Input, STREAMING, check_input_answer, check_limits, find_named, named,
    return_type, stream_argument, stream_argument_form,
};

/// Where the service is written.
pub enum Kind {
    /// `impl QueueServer { ... }`: the type serves itself.
    Impl {
        /// The type the impl is for, as written (`QueueServer<T>`).
        self_ty: Box<Type>,
        /// The impl's generics.
        generics: Box<Generics>,
    },
    /// `trait Kv { ... }`: a generated server serves any implementation.
    Trait {
        /// The trait's visibility, given to everything generated for it.
        vis: Visibility,
    },
}

/// The service an impl block or a trait describes.
pub struct Service {
    /// Impl block or trait.
    pub kind: Kind,
    /// The type's or trait's name (`QueueServer`).
    pub ident: Ident,
    /// The methods that take part in dispatch, in order.
    pub methods: Vec<Method>,
    /// Every fn of the impl, service method or helper, for clash checks.
    pub all_fns: Vec<Ident>,
    /// Every fn meant as a service method (not `skip`), broken or not: what
    /// the fallback's typed client offers when there are errors.
    pub stubs: Vec<Stub>,
}

/// A service method's signature as written, for the fallback client
/// emitted next to errors (so that code calling it adds no error of its
/// own).
pub struct Stub {
    /// The Rust name.
    pub ident: Ident,
    /// Its generics, as written.
    pub generics: Generics,
    /// The types of its arguments after the receiver, without the context.
    pub params: Vec<Type>,
    /// Its `#[cfg]` attributes.
    pub cfgs: Vec<Attribute>,
}

impl Stub {
    fn of(sig: &Signature, attrs: &[Attribute]) -> Self {
        let params = sig
            .inputs
            .iter()
            .filter_map(|input| match input {
                // The client takes any stream for a stream argument.
                FnArg::Typed(typed) if named(&typed.ty, INCOMING_ITEMS).is_some() => {
                    Some(syn::parse_quote!(impl ::core::marker::Sized))
                }
                FnArg::Typed(typed) if !is_context(&typed.ty) => Some((*typed.ty).clone()),
                _ => None,
            })
            .collect();
        Stub {
            ident: sig.ident.clone(),
            generics: sig.generics.clone(),
            params,
            cfgs: attrs_named(attrs, "cfg"),
        }
    }
}

/// One service method.
pub struct Method {
    /// The Rust name.
    pub ident: Ident,
    /// The name on the wire.
    pub wire: String,
    /// Where the wire name is written (the `rename` literal, or the name).
    pub wire_span: Span,
    /// The method's visibility; the typed client's method gets the same.
    pub vis: Visibility,
    /// Its `#[cfg]` attributes, repeated on everything generated for it.
    pub cfgs: Vec<Attribute>,
    /// Its doc comments, repeated on the typed client's method.
    pub docs: Vec<Attribute>,
    /// Whether it takes the handler context first.
    pub context: bool,
    /// The arguments the payload fills.
    pub args: Vec<Arg>,
    /// The stream argument (`items: IncomingItems<T>`), if it takes one.
    pub input: Option<Input>,
    /// What it returns.
    pub ret: Ret,
    /// `timeout = "..."`: the typed client's limit on the whole call, in ms.
    pub timeout: Option<u64>,
    /// `item_timeout = "..."`: the typed client's limit between two output
    /// items, in ms.
    pub item_timeout: Option<u64>,
}

impl Method {
    /// Whether it is a stream method (a stream argument, a stream returned,
    /// or both): opened as a stream, never called.
    pub fn is_stream(&self) -> bool {
        self.input.is_some() || matches!(self.ret, Ret::Stream(_))
    }
}

/// One payload argument.
pub struct Arg {
    /// The argument's name as written (maybe raw, `r#type`).
    pub ident: Ident,
    /// Its key in the payload object (`type`).
    pub key: String,
    /// Its type.
    pub ty: Type,
}

/// What a method returns.
pub enum Ret {
    /// Nothing (no return type, or `()`): a notification.
    Unit,
    /// A value turned into a reply.
    Value(Box<Type>),
    /// `Result<T, E>` (or an alias `Result<T>`): `Ok` replies, `Err` is an
    /// error packet.
    Result {
        /// The `Ok` type.
        ok: Box<Type>,
        /// The `Err` type, when written.
        err: Option<Box<Type>>,
    },
    /// A stream of items.
    Stream(StreamRet),
}

const ALLOWED_ITEMS: &str = "only methods can stand in a #[stream_rpc::service] impl";

/// Reads the impl block. Strips the `#[stream_rpc]` attributes from `item`
/// so that it can be emitted as it is.
pub fn parse(item: &mut ItemImpl, errors: &mut Errors) -> Option<Service> {
    if let Some((path, _)) = &item.trait_ {
        errors.spanned(
            path,
            "#[stream_rpc::service] goes on an inherent impl (`impl Type`) or on a trait definition (`trait Kv { ... }`), not on a trait impl: put it on the definition of the trait",
        );
        strip_method_attrs(item);
        return None;
    }
    let ident = match &*item.self_ty {
        Type::Path(path) if path.qself.is_none() => {
            path.path.segments.last().map(|s| s.ident.clone())
        }
        _ => None,
    };
    let Some(ident) = ident else {
        errors.spanned(
            &item.self_ty,
            "#[stream_rpc::service] needs an impl of a named type, like `impl QueueServer`",
        );
        strip_method_attrs(item);
        return None;
    };

    let mut methods = Vec::new();
    let mut all_fns = Vec::new();
    let mut stubs = Vec::new();
    for impl_item in &mut item.items {
        match impl_item {
            ImplItem::Fn(function) => {
                all_fns.push(function.sig.ident.clone());
                let args = attr::take_method_args(&mut function.attrs, errors);
                if args.skip.is_none() {
                    stubs.push(Stub::of(&function.sig, &function.attrs));
                }
                if args.skip.is_some() {
                    if let Some(rename) = &args.rename {
                        errors.spanned(
                            rename,
                            "a skipped helper has no wire name: drop `rename` or `skip`",
                        );
                    }
                    continue;
                }
                let vis = function.vis.clone();
                if let Some(method) = method(&function.sig, &function.attrs, vis, args, errors) {
                    methods.push(method);
                }
            }
            ImplItem::Const(constant) => errors.spanned(
                &constant.ident,
                format!(
                    "{ALLOWED_ITEMS}: move `const {}` to another `impl` block",
                    constant.ident
                ),
            ),
            ImplItem::Type(alias) => errors.spanned(
                &alias.ident,
                format!(
                    "{ALLOWED_ITEMS}: move `type {}` to another `impl` block",
                    alias.ident
                ),
            ),
            other => errors.spanned(
                &*other,
                format!("{ALLOWED_ITEMS}: move this to another `impl` block"),
            ),
        }
    }
    // An associated type cannot stand in an inherent impl on stable Rust:
    // after reporting it, leave it out so that rustc does not report it again.
    item.items
        .retain(|impl_item| !matches!(impl_item, ImplItem::Type(_)));
    Some(Service {
        kind: Kind::Impl {
            self_ty: item.self_ty.clone(),
            generics: Box::new(item.generics.clone()),
        },
        ident,
        methods,
        all_fns,
        stubs,
    })
}

const TRAIT_ITEMS: &str =
    "only `async fn`s without a body can stand in a #[stream_rpc::service] trait";

/// Reads a trait definition. Strips the `#[stream_rpc]` attributes from
/// `item`; the caller rewrites its methods into `Send` futures.
pub fn parse_trait(item: &mut ItemTrait, errors: &mut Errors) -> Service {
    if let Some(token) = &item.unsafety {
        errors.spanned(token, "a service trait cannot be `unsafe`");
    }
    if let Some(token) = &item.modifiers.auto_token {
        errors.spanned(token, "a service trait cannot be an `auto` trait");
    }
    if !item.generics.params.is_empty() {
        errors.spanned(
            &item.generics.params,
            "a service trait cannot be generic: each argument and reply needs one concrete type on the wire",
        );
    } else if let Some(clause) = &item.generics.where_clause {
        errors.spanned(clause, "a service trait cannot have a `where` clause");
    }
    let mut methods = Vec::new();
    let mut all_fns = Vec::new();
    let mut stubs = Vec::new();
    for trait_item in &mut item.items {
        match trait_item {
            TraitItem::Fn(function) => {
                all_fns.push(function.sig.ident.clone());
                let args = attr::take_method_args(&mut function.attrs, errors);
                stubs.push(Stub::of(&function.sig, &function.attrs));
                if let Some(skip) = args.skip {
                    errors.at(
                        skip,
                        "`skip` is for helpers in an impl block; a service trait has only service methods",
                    );
                    continue;
                }
                if let Some(body) = &function.default {
                    errors.spanned(
                        body,
                        "service trait methods have no default body: each implementation writes its own (end the declaration with `;`)",
                    );
                    continue;
                }
                let vis = item.vis.clone();
                if let Some(method) = method(&function.sig, &function.attrs, vis, args, errors) {
                    methods.push(method);
                }
            }
            TraitItem::Const(constant) => errors.spanned(
                &constant.ident,
                format!("{TRAIT_ITEMS}: move `const {}` elsewhere", constant.ident),
            ),
            TraitItem::Type(alias) => errors.spanned(
                &alias.ident,
                format!(
                    "{TRAIT_ITEMS}: associated types are not supported, since the wire needs concrete types (`type {}`)",
                    alias.ident
                ),
            ),
            other => errors.spanned(&*other, format!("{TRAIT_ITEMS}: move this elsewhere")),
        }
    }
    Service {
        kind: Kind::Trait {
            vis: item.vis.clone(),
        },
        ident: item.ident.clone(),
        methods,
        all_fns,
        stubs,
    }
}

/// Removes our attributes from every method, for emitting the impl after an
/// error that stopped parsing early.
fn strip_method_attrs(item: &mut ItemImpl) {
    let mut ignored = Errors::default();
    for impl_item in &mut item.items {
        if let ImplItem::Fn(function) = impl_item {
            attr::take_method_args(&mut function.attrs, &mut ignored);
        }
    }
}

/// Reads one service method; `None` for one with errors.
fn method(
    sig: &Signature,
    attrs: &[Attribute],
    vis: Visibility,
    args: MethodArgs,
    errors: &mut Errors,
) -> Option<Method> {
    let ident = &sig.ident;
    let mut errors_here = Errors::default();
    check_signature(sig, &mut errors_here);
    let (context, payload_args, input) = payload_args(sig, &mut errors_here);

    let ret = match &sig.output {
        ReturnType::Default => Ret::Unit,
        ReturnType::Type(_, ty) => return_type(ty, &mut errors_here),
    };
    check_limits(&args, input.is_some(), &ret, &mut errors_here);
    if input.is_some() {
        check_input_answer(&ret, &mut errors_here);
    }

    let (wire, wire_span) = match &args.rename {
        Some(rename) => (rename.value(), rename.span()),
        None => (ident.unraw().to_string(), ident.span()),
    };
    let failed = !errors_here.is_empty();
    errors.merge(errors_here);
    if failed {
        return None;
    }
    Some(Method {
        ident: ident.clone(),
        wire,
        wire_span,
        vis,
        cfgs: attrs_named(attrs, "cfg"),
        docs: attrs_named(attrs, "doc"),
        context,
        args: payload_args,
        input,
        ret,
        timeout: args.timeout.map(|limit| limit.millis),
        item_timeout: args.item_timeout.map(|limit| limit.millis),
    })
}

/// Checks what a service method's signature must be: `async`, safe, no
/// ABI, not generic, `&self` first.
fn check_signature(sig: &Signature, errors_here: &mut Errors) {
    let ident = &sig.ident;
    if sig.asyncness.is_none() {
        errors_here.spanned(
            ident,
            "stream_rpc service methods must be `async fn`; mark helpers with `#[stream_rpc(skip)]`",
        );
    }
    if let Safety::Unsafe(token) = &sig.safety {
        errors_here.spanned(token, "stream_rpc service methods cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors_here.spanned(
            abi,
            "stream_rpc service methods cannot have an `extern` ABI",
        );
    }
    if !sig.generics.params.is_empty() {
        errors_here.spanned(
            &sig.generics.params,
            "stream_rpc service methods cannot be generic: each argument needs one concrete type to be read from the payload",
        );
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => match &receiver.kind {
            ReceiverKind::Reference(_, _, None) => {}
            ReceiverKind::Reference(_, _, Some(mutability)) => errors_here.spanned(
                mutability,
                "stream_rpc service methods take `&self`, not `&mut self`: handlers run concurrently, so keep state behind a `Mutex` or an atomic",
            ),
            _ => errors_here.spanned(
                receiver,
                "stream_rpc service methods take `&self`, not `self`: the service serves many packets",
            ),
        },
        _ => errors_here.spanned(
            ident,
            "stream_rpc service methods take `&self` as their first argument; mark associated functions with `#[stream_rpc(skip)]`",
        ),
    }
}

/// Reads the arguments after `&self`: whether the context comes first, and
/// the payload arguments.
fn payload_args(sig: &Signature, errors_here: &mut Errors) -> (bool, Vec<Arg>, Option<Input>) {
    let mut context = false;
    let mut payload_args = Vec::new();
    let mut stream_input: Option<Input> = None;
    let typed = sig.inputs.iter().filter_map(|input| match input {
        FnArg::Typed(typed) => Some(typed),
        FnArg::Receiver(_) => None,
    });
    for (position, input) in typed.enumerate() {
        if is_context(&input.ty) {
            if context {
                errors_here.spanned(
                    &input.ty,
                    "a service method takes at most one context argument",
                );
            } else if position != 0 {
                errors_here.spanned(
                    &input.ty,
                    "the context argument must come first, right after `&self`",
                );
            }
            context = true;
            continue;
        }
        if let Some(segment) = named(&input.ty, INCOMING_ITEMS) {
            if let Some(item) =
                stream_argument(&input.pat, &input.ty, segment, &stream_input, errors_here)
            {
                stream_input = Some(item);
            }
            continue;
        }
        if let Some(token) = find_named(&input.ty, STREAMING) {
            errors_here.at(
                token,
                "`Streaming` is what a method returns to send a stream; a stream argument is written `items: IncomingItems<T>`",
            );
            continue;
        }
        if let Some(token) = find_named(&input.ty, INCOMING_ITEMS) {
            errors_here.at(token, stream_argument_form(&input.ty));
            continue;
        }
        if let Type::Reference(reference) = &*input.ty
            && is_context(&reference.elem)
        {
            errors_here.spanned(&input.ty, "take the context by value: `ctx: Context`");
            continue;
        }
        if let Type::Reference(reference) = &*input.ty {
            errors_here.spanned(&input.ty, borrowed_argument(reference));
            continue;
        }
        if let Type::ImplTrait(_) = &*input.ty {
            errors_here.spanned(
                &input.ty,
                "`impl Trait` arguments are not supported: the payload is read into one concrete type",
            );
            continue;
        }
        match &*input.pat {
            Pat::Ident(binding) if binding.by_ref.is_none() && binding.subpat.is_none() => {
                payload_args.push(Arg {
                    ident: binding.ident.clone(),
                    key: binding.ident.unraw().to_string(),
                    ty: (*input.ty).clone(),
                });
            }
            Pat::Wild(wild) => errors_here.spanned(
                wild,
                "service method arguments need a name: it is their key in the payload",
            ),
            other => errors_here.spanned(
                other,
                "service method arguments must be plain names, like `task: Task`: the name is the key in the payload",
            ),
        }
    }
    (context, payload_args, stream_input)
}

/// The error for a borrowed argument, naming the owned type to take.
fn borrowed_argument(reference: &syn::TypeReference) -> String {
    let owned = match &*reference.elem {
        Type::Path(path) if path.qself.is_none() && path.path.is_ident("str") => {
            "String".to_owned()
        }
        Type::Slice(slice) => {
            let elem = &slice.elem;
            format!("Vec<{}>", quote::quote!(#elem)).replace(' ', "")
        }
        elem => quote::quote!(#elem).to_string().replace(' ', ""),
    };
    let written = quote::quote!(#reference).to_string().replace(' ', "");
    format!(
        "service method arguments are owned values, read from the payload: take `{owned}` instead of `{written}`"
    )
}

pub fn plain_return_type(ty: &Type, errors: &mut Errors) -> Ret {
    match ty {
        Type::Tuple(tuple) if tuple.elems.is_empty() => Ret::Unit,
        Type::ImplTrait(_) => {
            errors.spanned(
                ty,
                "service methods cannot return `impl Trait`: the reply needs a concrete type",
            );
            Ret::Unit
        }
        Type::Path(path) if path.qself.is_none() => {
            let Some(last) = path.path.segments.last() else {
                return Ret::Value(Box::new(ty.clone()));
            };
            if last.ident != "Result" {
                return Ret::Value(Box::new(ty.clone()));
            }
            let PathArguments::AngleBracketed(generic) = &last.arguments else {
                errors.spanned(
                    ty,
                    "write the `Ok` type of the result (`Result<T, E>`) so that the reply can be typed",
                );
                return Ret::Unit;
            };
            let mut types = generic.args.iter().filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(Box::new(ty.clone())),
                _ => None,
            });
            match types.next() {
                Some(ok) => Ret::Result {
                    ok,
                    err: types.next(),
                },
                None => {
                    errors.spanned(ty, "write the `Ok` type of the result (`Result<T, E>`)");
                    Ret::Unit
                }
            }
        }
        other => Ret::Value(Box::new(other.clone())),
    }
}

/// Whether a type is written as the handler context (`Context`, or a path
/// ending in `Context` such as `stream_rpc::Context`).
fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Context" && last.arguments.is_none()),
        _ => false,
    }
}

fn attrs_named(attrs: &[Attribute], name: &str) -> Vec<Attribute> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident(name))
        .cloned()
        .collect()
}

/// A literal for the wire name, spanned where it is written.
pub fn wire_literal(method: &Method) -> LitStr {
    LitStr::new(&method.wire, method.wire_span)
}
