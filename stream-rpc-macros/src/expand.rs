//! Step 3: generate the protocol implementation, the method list and the
//! typed client. Generated code names everything by absolute path (it must
//! compile under `#![no_implicit_prelude]`) and reaches serde_json through
//! the runtime's hidden `__private` module.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{ItemImpl, parse_quote};

use crate::attr::{self, ServiceArgs};
use crate::errors::Errors;
use crate::model::{self, Method, Ret, Service};
use crate::validate;

/// The whole attribute: parse, check, generate; on any error, the user's
/// impl block (without our attributes) and the errors, nothing else.
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut item: ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "#[stream_rpc::service] goes on an `impl` block, like `impl QueueServer { ... }`",
            );
            let error = error.into_compile_error();
            return quote!(#error #input);
        }
    };
    let mut errors = Errors::default();
    let args = attr::service_args(args, &mut errors);
    let service = model::parse(&mut item, &mut errors);
    if let Some(service) = &service {
        validate::check(service, &mut errors);
    }
    match service {
        Some(service) if errors.is_empty() => {
            let generated = generate(&service, &args);
            quote!(#item #generated)
        }
        _ => {
            let errors = errors.into_compile_errors();
            quote!(#item #errors)
        }
    }
}

/// The path of the runtime crate in the user's crate: `crate = path` if
/// given, else its name in the user's Cargo.toml (it may be renamed there),
/// else `::stream_rpc`.
fn runtime_path(args: &ServiceArgs) -> TokenStream {
    if let Some(path) = &args.krate {
        return quote!(#path);
    }
    match proc_macro_crate::crate_name("stream-rpc") {
        Ok(proc_macro_crate::FoundCrate::Name(name)) => {
            let ident = syn::Ident::new(&name, Span::call_site());
            quote!(::#ident)
        }
        // `Itself` means a test, example or doctest of the runtime crate,
        // which sees it under its own name.
        _ => quote!(::stream_rpc),
    }
}

fn generate(service: &Service, args: &ServiceArgs) -> TokenStream {
    let krate = runtime_path(args);
    let self_ty = &service.self_ty;
    let name = args
        .name
        .as_ref()
        .map_or_else(|| service.ident.unraw().to_string(), syn::LitStr::value);
    let (impl_generics, ty_generics, where_clause) = service.generics.split_for_impl();
    let mut protocol_generics = service.generics.clone();
    if !protocol_generics.params.is_empty() {
        protocol_generics
            .make_where_clause()
            .predicates
            .push(parse_quote!(Self: ::core::marker::Send + ::core::marker::Sync + 'static));
    }
    let protocol_where = &protocol_generics.where_clause;

    let checks = service.methods.iter().map(|m| type_checks(m, &krate));
    let arms = service.methods.iter().map(|m| dispatch_arm(m, &krate));
    let wires = service.methods.iter().map(|m| {
        let cfgs = &m.cfgs;
        let wire = model::wire_literal(m);
        quote!(#(#cfgs)* #wire)
    });

    let client = format_ident!("{}Client", service.ident.unraw());
    let client_doc = format!(
        "A typed client of [`{}`]: one method per service method, over a session to a peer that serves it.",
        service.ident.unraw()
    );
    let struct_generics = &service.generics;
    let client_methods = service.methods.iter().map(|m| client_method(m, &krate));

    quote! {
        impl #impl_generics #krate::Protocol for #self_ty #protocol_where {
            fn name(&self) -> &str {
                #name
            }

            async fn process_message(
                &self,
                __ctx: #krate::Context,
                __packet: #krate::Packet,
            ) -> ::core::result::Result<#krate::Reply, #krate::HandlerError> {
                #[allow(unused_imports)]
                use #krate::__private::{ViaDisplay as _, ViaHandlerError as _};
                #(#checks)*
                let #krate::Packet { method: __method, payload: __payload, .. } = __packet;
                match __method.as_str() {
                    #(#arms)*
                    _ => ::core::result::Result::Err(#krate::HandlerError::unknown_method(&__method)),
                }
            }
        }

        impl #impl_generics #self_ty #where_clause {
            /// The wire names of this service's methods.
            pub const METHODS: &'static [&'static str] = &[#(#wires),*];

            /// A typed client of this service over `session`: the connection
            /// to a peer that serves it (a server, or a worker called back
            /// from a handler through `ctx.session()`).
            pub fn client(session: &#krate::SessionHandle) -> #client #ty_generics {
                #client::new(::core::clone::Clone::clone(session))
            }
        }

        #[doc = #client_doc]
        pub struct #client #struct_generics #where_clause {
            session: #krate::SessionHandle,
            service: ::core::marker::PhantomData<fn() -> #self_ty>,
        }

        impl #impl_generics ::core::clone::Clone for #client #ty_generics #where_clause {
            fn clone(&self) -> Self {
                #client::new(::core::clone::Clone::clone(&self.session))
            }
        }

        impl #impl_generics ::core::fmt::Debug for #client #ty_generics #where_clause {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#client))
                    .field("session", &self.session)
                    .finish()
            }
        }

        impl #impl_generics #client #ty_generics #where_clause {
            /// A client over `session`.
            pub fn new(session: #krate::SessionHandle) -> Self {
                #client { session, service: ::core::marker::PhantomData }
            }

            /// The session the client calls over.
            pub fn session(&self) -> &#krate::SessionHandle {
                &self.session
            }

            #(#client_methods)*
        }
    }
}

/// What the typed client returns for a method returning `ty`: the
/// `IntoReply::Output` projection for `Reply` and `Message<T>`, and `ty`
/// itself otherwise (which is what the projection is for every other type).
/// Naming the type keeps the client's signature well-formed when `ty` is
/// not a valid reply, so the only error is the one spanned on `ty`.
fn client_output(ty: &syn::Type, krate: &TokenStream) -> TokenStream {
    let named = |name: &str| match ty {
        syn::Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == name),
        _ => false,
    };
    if named("Reply") || named("Message") {
        quote_spanned!(ty.span()=> <#ty as #krate::IntoReply>::Output)
    } else {
        quote!(#ty)
    }
}

/// Compile-time checks of the argument, return and error types, spanned on
/// the user's types so that rustc points there.
fn type_checks(method: &Method, krate: &TokenStream) -> TokenStream {
    let cfgs = &method.cfgs;
    let mut checks = Vec::new();
    for arg in &method.args {
        let ty = &arg.ty;
        checks.push(quote_spanned!(ty.span()=> #krate::__private::assert_argument::<#ty>();));
    }
    match &method.ret {
        Ret::Unit => {}
        Ret::Value(ty) | Ret::Result { ok: ty, err: None } => {
            checks.push(quote_spanned!(ty.span()=> #krate::__private::assert_reply::<#ty>();));
        }
        Ret::Result { ok, err: Some(err) } => {
            checks.push(quote_spanned!(ok.span()=> #krate::__private::assert_reply::<#ok>();));
            checks.push(quote_spanned!(err.span()=> #krate::__private::assert_error::<#err>();));
        }
    }
    quote!(#(#cfgs)* { #(#checks)* })
}

fn dispatch_arm(method: &Method, krate: &TokenStream) -> TokenStream {
    let cfgs = &method.cfgs;
    let ident = &method.ident;
    let wire = model::wire_literal(method);
    let idents: Vec<_> = method.args.iter().map(|arg| &arg.ident).collect();
    let decode = match method.args.as_slice() {
        [] => quote!(),
        [arg] => {
            let (name, ty) = (&arg.ident, &arg.ty);
            let decode = quote_spanned!(ty.span()=> #krate::__private::decode_whole::<#ty>);
            quote!(let #name: #ty = #decode(__payload, #wire)?;)
        }
        args => {
            let keys: Vec<_> = args.iter().map(|arg| &arg.key).collect();
            let fields = args.iter().map(|arg| {
                let (name, ty, key) = (&arg.ident, &arg.ty, &arg.key);
                let decode = quote_spanned!(ty.span()=> #krate::__private::decode_field::<#ty>);
                quote!(let #name: #ty = #decode(&mut __object, #key, #wire)?;)
            });
            quote! {
                let mut __object = #krate::__private::decode_object(__payload, #wire, &[#(#keys),*])?;
                #(#fields)*
            }
        }
    };
    let context = method.context.then(|| quote!(__ctx,));
    let call = quote!(self.#ident(#context #(#idents),*).await);
    let answer = match &method.ret {
        Ret::Unit => quote! {
            let () = #call;
            ::core::result::Result::Ok(#krate::Reply::Nothing)
        },
        Ret::Value(ty) => {
            let into_reply = quote_spanned!(ty.span()=> <#ty as #krate::IntoReply>::into_reply);
            quote!(#into_reply(#call, #wire))
        }
        Ret::Result { ok, err } => {
            let into_reply = quote_spanned!(ok.span()=> <#ok as #krate::IntoReply>::into_reply);
            let error_span = err.as_ref().map_or_else(Span::call_site, |err| err.span());
            let convert = quote_spanned!(error_span=>
                (&&#krate::__private::ErrorWrap(__error)).into_handler_error()
            );
            quote! {
            match #call {
                ::core::result::Result::Ok(__value) => #into_reply(__value, #wire),
                ::core::result::Result::Err(__error) => ::core::result::Result::Err(#convert),
            }
            }
        }
    };
    quote! {
        #(#cfgs)*
        #wire => {
            #decode
            #answer
        }
    }
}

fn client_method(method: &Method, krate: &TokenStream) -> TokenStream {
    let cfgs = &method.cfgs;
    let docs = &method.docs;
    let vis = &method.vis;
    let ident = &method.ident;
    let wire = model::wire_literal(method);
    let params = method.args.iter().map(|arg| {
        let (name, ty) = (&arg.ident, &arg.ty);
        quote!(#name: #ty)
    });
    let payload = match method.args.as_slice() {
        [] => quote!(#krate::__private::serde_json::Value::Null),
        [arg] => {
            let (name, ty) = (&arg.ident, &arg.ty);
            let encode = quote_spanned!(ty.span()=> #krate::__private::encode_argument::<#ty>);
            quote!(#encode(&#name)?)
        }
        args => {
            let inserts = args.iter().map(|arg| {
                let (name, key, ty) = (&arg.ident, &arg.key, &arg.ty);
                let insert = quote_spanned!(ty.span()=> #krate::__private::insert_argument::<#ty>);
                quote!(#insert(&mut __object, #key, &#name)?;)
            });
            quote!({
                let mut __object = #krate::__private::new_object();
                #(#inserts)*
                #krate::__private::serde_json::Value::Object(__object)
            })
        }
    };
    let wire_name = &method.wire;
    let (output, body, summary) = match &method.ret {
        Ret::Unit => (
            quote!(()),
            quote! {
                #krate::SessionHandle::notify(&self.session, #wire, __payload)
                    .await
                    .map_err(#krate::CallError::Send)
            },
            format!("Sends a notification to the peer's `{wire_name}`; returns once it is sent."),
        ),
        Ret::Value(ty) | Ret::Result { ok: ty, .. } => (
            client_output(ty, krate),
            {
                let decode = quote_spanned!(ty.span()=>
                    <#ty as #krate::IntoReply>::from_reply(__reply, #wire)
                );
                quote! {
                    let __reply = #krate::SessionHandle::call(&self.session, #wire, __payload).await?;
                    #decode
                }
            },
            format!("Calls the peer's `{wire_name}` and returns its typed answer."),
        ),
    };
    let separator = (!docs.is_empty()).then(|| quote!(#[doc = ""]));
    // The same checks as in the dispatcher, first: a wrong type then fails
    // with identical diagnostics here, which rustc shows once.
    let checks = type_checks(method, krate);
    quote! {
        #(#cfgs)*
        #(#docs)*
        #separator
        #[doc = #summary]
        #vis async fn #ident(&self, #(#params),*) -> ::core::result::Result<#output, #krate::CallError> {
            #checks
            let __payload = #payload;
            #body
        }
    }
}
