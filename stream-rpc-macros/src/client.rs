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

/// Whether `ty` is written as `Reply` or `Message<..>` (by its last path
/// segment): the return types whose reply payload is not `ty` itself.
pub(crate) fn is_reply_or_message(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Reply" || last.ident == "Message"),
        _ => false,
    }
}

/// What the typed client returns for a method returning `ty`: the
/// `IntoReply::Output` projection for `Reply` and `Message<T>`, and `ty`
/// itself otherwise (which is what the projection is for every other type).
/// Naming the type keeps the client's signature well-formed when `ty` is
/// not a valid reply, so the only error is the one spanned on `ty`.
fn client_output(ty: &syn::Type, krate: &TokenStream) -> TokenStream {
    if is_reply_or_message(ty) {
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
    let mut params: Vec<_> = method
        .args
        .iter()
        .map(|arg| {
            let (name, ty) = (&arg.ident, &arg.ty);
            quote!(#name: #ty)
        })
        .collect();
    if let Some(input) = &method.input {
        let (name, item) = (&input.ident, &input.item);
        params.push(quote! {
            #name: impl #krate::__private::Stream<Item = #item> + ::core::marker::Send + 'static
        });
    }
    let payload = encode_payload(method, &model::wire_literal(method), krate);
    let Answer {
        output,
        body,
        summary,
    } = if method.is_stream() {
        stream_answer(method, krate)
    } else {
        answer(method, krate)
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
        #vis async fn #ident(&self, #(#params),*) -> #output {
            #checks
            let __payload = #payload;
            #body
        }
    }
}

/// The payload the client sends: `null`, the one argument, or an object
/// keyed by the arguments' names.
pub fn encode_payload(method: &Method, wire: &syn::LitStr, krate: &TokenStream) -> TokenStream {
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
    let call = match &method.input {
        Some(input) => {
            let (wire, items, item) = (model::wire_literal(method), &input.ident, &input.item);
            let options = stream_options(method, krate);
            // Spanned like the item's check, so that a wrong item type is
            // reported once.
            let call = quote_spanned!(item.span()=>
                #krate::__private::call_with_input::<_, #item, _>(
                    __caller, #wire, __payload, __options, #items,
                )
                .await
            );
            quote!({
                let (__caller, __options) = (&self.caller, #options);
                #call
            })
        }
        None => plain_call(method, krate),
    };
    answer_of(method, krate, &call)
}

/// A plain call of the method, with the client's limit, else the method's
/// `timeout`, else the caller's call timeout.
fn plain_call(method: &Method, krate: &TokenStream) -> TokenStream {
    let wire = model::wire_literal(method);
    let default = match method.timeout {
        Some(millis) => quote! {
            #krate::Caller::call_with_timeout(
                &self.caller,
                #wire,
                __payload,
                ::core::time::Duration::from_millis(#millis),
            )
            .await
        },
        None => quote!(#krate::Caller::call(&self.caller, #wire, __payload).await),
    };
    quote! {
        match self.timeout {
            ::core::option::Option::Some(__limit) => {
                #krate::Caller::call_with_timeout(&self.caller, #wire, __payload, __limit).await
            }
            ::core::option::Option::None => #default,
        }
    }
}

/// What the client returns for the answer of `call`: a reply packet, or
/// the call's error.
fn answer_of(method: &Method, krate: &TokenStream, call: &TokenStream) -> Answer {
    let wire = model::wire_literal(method);
    let wire_name = &method.wire;
    if method.input.is_some() && matches!(method.ret, Ret::Unit) {
        return Answer {
            output: quote!(::core::result::Result<(), #krate::CallError>),
            body: quote! {
                let _ = #call?;
                ::core::result::Result::Ok(())
            },
            summary: format!(
                "Opens the peer's `{wire_name}`, sends the items of the input stream (with the peer's credit), and returns once the method is done with them."
            ),
        };
    }
    match &method.ret {
        Ret::Unit => Answer {
            output: quote!(::core::result::Result<(), #krate::CallError>),
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
            let output = client_output(ty, krate);
            Answer {
                output: quote!(::core::result::Result<#output, #krate::CallError>),
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
                output: quote!(::core::result::Result<::core::result::Result<#ok_output, #err>, #krate::CallError>),
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
        Ret::Stream(_) => unreachable!("stream methods are answered by stream_answer"),
    }
}

/// The stream options the client opens a method's stream with: the
/// client's own limit, else the method's `timeout`; its `item_timeout`;
/// whether it has output and input.
fn stream_options(method: &Method, krate: &TokenStream) -> TokenStream {
    let millis = |limit: Option<u64>| match limit {
        Some(millis) => quote! {
            ::core::option::Option::Some(::core::time::Duration::from_millis(#millis))
        },
        None => quote!(::core::option::Option::None),
    };
    let timeout = millis(method.timeout);
    let item_timeout = millis(method.item_timeout);
    let output = matches!(method.ret, Ret::Stream(_));
    let input = method.input.is_some();
    quote! {
        #krate::__stream::options(
            ::core::option::Option::or(self.timeout, #timeout),
            #item_timeout,
            #output,
            #input,
        )
    }
}

/// A method that returns a stream, in the typed client: open it (sending
/// the input from a task of its own, for a method that takes one too) and
/// return the items' stream. A method that only takes a stream is a call
/// whose argument is a stream: [`answer`].
fn stream_answer(method: &Method, krate: &TokenStream) -> Answer {
    let Ret::Stream(stream) = &method.ret else {
        return answer(method, krate);
    };
    let wire = model::wire_literal(method);
    let wire_name = &method.wire;
    let options = stream_options(method, krate);
    let item = &stream.item;
    let err = stream
        .err
        .as_ref()
        .map_or_else(|| quote!(::core::convert::Infallible), |err| quote!(#err));
    let (input, summary) = match &method.input {
        Some(input) => {
            let items = &input.ident;
            (
                quote!(::core::option::Option::Some(#items)),
                format!(
                    "Opens the peer's `{wire_name}`, sends the items of the input stream as they come (with the peer's credit, from a task of their own), and returns the stream of its items: `None` after a clean end, or one `Err` that says why not. Dropping the stream cancels the call."
                ),
            )
        }
        None => (
            quote!(::core::option::Option::None::<#krate::__private::NoInput>),
            format!(
                "Opens the peer's `{wire_name}` and returns the stream of its items: `None` after a clean end, or one `Err` that says why not (`StreamError::Failed` for the method's own error). Dropping the stream cancels the call."
            ),
        ),
    };
    let input_item = method.input.as_ref().map_or_else(
        || quote!(()),
        |input| {
            let item = &input.item;
            quote!(#item)
        },
    );
    // Spanned like the item's check, so that a wrong item type is
    // reported once.
    let decode = quote! {
        |__error| {
            #[allow(unused_imports)]
            use #krate::__private::{
                DecodeHandlerError as _, DecodeNothing as _, DecodeSerde as _,
            };
            (&&&#krate::__private::ErrorDecode::<#err>::new()).decode_error(__error)
        }
    };
    let open = quote_spanned!(item.span()=>
        #krate::__private::open_output::<_, #item, #err, #input_item, _>(
            __caller, #wire, __payload, __options, #input, #decode,
        )
        .await
    );
    Answer {
        output: quote! {
            ::core::result::Result<#krate::ItemStream<#item, #err>, #krate::CallError>
        },
        body: quote! {
            let (__caller, __options) = (&self.caller, #options);
            #open
        },
        summary,
    }
}
