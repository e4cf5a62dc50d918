//! The caller's side of the generated code: the typed client, its struct
//! over any `Caller`, and one async method per service method.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, parse_quote};

use crate::dispatch::type_checks;
use crate::model::{self, Method, Ret, Service};

/// The name of the typed client's caller parameter: one no user code
/// names, so that it shadows nothing (a service called `C` included).
pub const CALLER_PARAM: &str = "__StreamRpcCaller";

/// The name of the typed client: `KvClient` for `Kv`.
pub fn client_ident(service: &Service) -> Ident {
    format_ident!("{}Client", service.ident.unraw())
}

/// The typed client over a `Connection` (the caller parameter's
/// default), with the service type's generics.
pub fn session_client(
    client: &Ident,
    generics: &syn::Generics,
    krate: &TokenStream,
) -> TokenStream {
    let args = generics.params.iter().map(|param| match param {
        syn::GenericParam::Type(ty) => {
            let ident = &ty.ident;
            quote!(#ident)
        }
        syn::GenericParam::Lifetime(lifetime) => {
            let lifetime = &lifetime.lifetime;
            quote!(#lifetime)
        }
        syn::GenericParam::Const(constant) => {
            let ident = &constant.ident;
            quote!(#ident)
        }
    });
    quote!(#client<#(#args,)* #krate::Connection>)
}

/// Everything the typed client is made of, in both forms.
pub struct ClientParts<'a> {
    /// The client's visibility.
    pub vis: &'a syn::Visibility,
    /// The service type's generics (the impl form's; none for a trait),
    /// which come before the caller parameter.
    pub generics: &'a syn::Generics,
    /// The impl form's type, held as a marker.
    pub service_ty: Option<&'a syn::Type>,
    /// Its methods, generated (or stubs in the fallback).
    pub methods: &'a [TokenStream],
    /// The wire names, for `METHODS`.
    pub wires: &'a [TokenStream],
}

/// The typed client: its struct over a caller, `Clone` and `Debug`, its
/// constructor and settings, `METHODS`, and one method per service method.
pub fn client_items(service: &Service, krate: &TokenStream, parts: &ClientParts) -> TokenStream {
    let client = client_ident(service);
    let caller = Ident::new(CALLER_PARAM, Span::call_site());
    let client_doc = format!(
        "A typed client of [`{}`]: one method per service method, over any [`Caller`](trait@::stream_rpc::Caller) to a peer that serves it (a `Connection`, a `Client`, a `ReconnectingClient`, or a reference to one).",
        service.ident.unraw()
    );
    let mut generics = parts.generics.clone();
    generics
        .params
        .push(parse_quote!(#caller = #krate::Connection));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let marker_field = parts
        .service_ty
        .map(|ty| quote!(service: ::core::marker::PhantomData<fn() -> #ty>,));
    let marker_init = parts
        .service_ty
        .map(|_| quote!(service: ::core::marker::PhantomData,));
    let bounded = |bound: TokenStream| {
        let mut bounded = generics.clone();
        bounded
            .make_where_clause()
            .predicates
            .push(parse_quote!(#caller: #bound));
        bounded.where_clause
    };
    let calling_where = bounded(quote!(#krate::Caller));
    let cloning_where = bounded(quote!(::core::clone::Clone));
    let debugging_where = bounded(quote!(::core::fmt::Debug));
    let (service_impl_generics, _, service_where) = parts.generics.split_for_impl();
    let session_client = session_client(&client, parts.generics, krate);
    let (vis, methods, wires) = (parts.vis, parts.methods, parts.wires);
    quote! {
        #[doc = #client_doc]
        #vis struct #client #generics #where_clause {
            caller: #caller,
            timeout: ::core::option::Option<::core::time::Duration>,
            #marker_field
        }

        impl #impl_generics ::core::clone::Clone for #client #ty_generics #cloning_where {
            fn clone(&self) -> Self {
                #client {
                    caller: ::core::clone::Clone::clone(&self.caller),
                    timeout: self.timeout,
                    #marker_init
                }
            }
        }

        impl #impl_generics ::core::fmt::Debug for #client #ty_generics #debugging_where {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#client))
                    .field("caller", &self.caller)
                    .field("timeout", &self.timeout)
                    .finish()
            }
        }

        impl #service_impl_generics #session_client #service_where {
            /// The wire names of the service's methods.
            pub const METHODS: &'static [&'static str] = &[#(#wires),*];
        }

        impl #impl_generics #client #ty_generics #where_clause {
            /// A client that calls through `caller`.
            pub fn new(caller: #caller) -> Self {
                #client { caller, timeout: ::core::option::Option::None, #marker_init }
            }

            /// What the client calls through.
            pub fn caller(&self) -> &#caller {
                &self.caller
            }

            /// The same client with a time limit of its own for every call
            /// (instead of the caller's configured call timeout). Cloning a
            /// client is cheap when its caller is: `client.clone().with_timeout(d)`
            /// gives one call its own limit.
            pub fn with_timeout(mut self, limit: ::core::time::Duration) -> Self {
                self.timeout = ::core::option::Option::Some(limit);
                self
            }
        }

        impl #impl_generics #client #ty_generics #calling_where {
            #(#methods)*
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

/// One method of the typed client: encode the arguments, call (or
/// notify), read the answer back.
pub fn client_method(method: &Method, krate: &TokenStream) -> TokenStream {
    let cfgs = &method.cfgs;
    let docs = &method.docs;
    let vis = &method.vis;
    let ident = &method.ident;
    let params = method.args.iter().map(|arg| {
        let (name, ty) = (&arg.ident, &arg.ty);
        quote!(#name: #ty)
    });
    let payload = encode_payload(method, &model::wire_literal(method), krate);
    let Answer {
        output,
        body,
        summary,
    } = answer(method, krate);
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

/// The payload the client sends: `null`, the one argument, or an object
/// keyed by the arguments' names.
fn encode_payload(method: &Method, wire: &syn::LitStr, krate: &TokenStream) -> TokenStream {
    match method.args.as_slice() {
        [] => quote!(#krate::__private::serde_json::Value::Null),
        [arg] => {
            let (name, ty) = (&arg.ident, &arg.ty);
            let encode = quote_spanned!(ty.span()=> #krate::__private::encode_argument::<#ty>);
            quote!(#encode(#wire, &#name)?)
        }
        args => {
            let inserts = args.iter().map(|arg| {
                let (name, key, ty) = (&arg.ident, &arg.key, &arg.ty);
                let insert = quote_spanned!(ty.span()=> #krate::__private::insert_argument::<#ty>);
                quote!(#insert(#wire, &mut __object, #key, &#name)?;)
            });
            quote!({
                let mut __object = #krate::__private::new_object();
                #(#inserts)*
                #krate::__private::serde_json::Value::Object(__object)
            })
        }
    }
}

/// What a client method returns, its body after the payload is built, and
/// the line of documentation that says so.
struct Answer {
    output: TokenStream,
    body: TokenStream,
    summary: String,
}

fn answer(method: &Method, krate: &TokenStream) -> Answer {
    let wire = model::wire_literal(method);
    let wire_name = &method.wire;
    let call = quote! {
        match self.timeout {
            ::core::option::Option::Some(__limit) => {
                #krate::Caller::call_with_timeout(&self.caller, #wire, __payload, __limit).await
            }
            ::core::option::Option::None => #krate::Caller::call(&self.caller, #wire, __payload).await,
        }
    };
    match &method.ret {
        Ret::Unit => Answer {
            output: quote!(()),
            body: quote! {
                #krate::Caller::notify(&self.caller, #wire, __payload)
                    .await
                    .map_err(|__reason| #krate::CallError::NotSent {
                        method: ::std::string::ToString::to_string(#wire),
                        reason: __reason,
                    })
            },
            summary: format!(
                "Sends a notification to the peer's `{wire_name}`; returns once it is sent."
            ),
        },
        Ret::Value(ty) | Ret::Result { ok: ty, err: None } => {
            let decode = quote_spanned!(ty.span()=>
                <#ty as #krate::IntoReply>::from_reply(__reply, #wire)
            );
            Answer {
                output: client_output(ty, krate),
                body: quote! {
                    let __reply = #call?;
                    #decode
                },
                summary: format!("Calls the peer's `{wire_name}` and returns its typed answer."),
            }
        }
        Ret::Result { ok, err: Some(err) } => {
            let ok_output = client_output(ok, krate);
            let decode = quote_spanned!(ok.span()=>
                <#ok as #krate::IntoReply>::from_reply(__reply, #wire)
            );
            Answer {
                output: quote!(::core::result::Result<#ok_output, #err>),
                body: quote! {
                    match #call {
                        ::core::result::Result::Ok(__reply) => {
                            ::core::result::Result::Ok(::core::result::Result::Ok(#decode?))
                        }
                        ::core::result::Result::Err(__error) => {
                            #[allow(unused_imports)]
                            use #krate::__private::{
                                DecodeHandlerError as _, DecodeNothing as _, DecodeSerde as _,
                            };
                            (&&&#krate::__private::ErrorDecode::<#err>::new())
                                .decode_error(__error)
                                .map(::core::result::Result::Err)
                        }
                    }
                },
                summary: format!(
                    "Calls the peer's `{wire_name}`: `Ok(Ok(value))` for its typed answer, `Ok(Err(error))` for the method's own error (an error packet with the code `handler_error`, when the error type can be read back: `HandlerError`, or `Deserialize` from the packet's `data`), `Err` when the call failed or the peer refused it with any other code."
                ),
            }
        }
    }
}
