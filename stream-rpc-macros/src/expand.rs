//! Step 3: generate the code. This file holds what both forms share (the
//! `Protocol` and `Service` impls, the trait form's server) and puts the
//! pieces together; `dispatch` writes the server's side, `client` the typed
//! client, `fallback` the placeholders emitted next to errors.
//!
//! Generated code names everything by absolute path (it must compile under
//! `#![no_implicit_prelude]`, and next to user items called `Result`,
//! `Option`, `Box` or `Context`), gives its generic parameters names no
//! user code writes, and reaches serde_json through the runtime's hidden
//! `__private` module.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::{Ident, Item, ItemTrait, parse_quote};

use crate::attr::{self, ServiceArgs};
use crate::client::{self, ClientParts};
use crate::dispatch::{dispatch, dispatch_streams};
use crate::errors::Errors;
use crate::fallback;
use crate::model::{self, Kind, Service};
use crate::tasks;
use crate::validate;

/// The name of the trait form's server's parameter (the implementation
/// served): one no user code names, so that it shadows nothing (a trait
/// called `S` included).
pub const SERVICE_PARAM: &str = "__StreamRpcService";

/// The whole attribute: parse, check, generate; on any error, the user's
/// item (without our attributes), the placeholders and the errors.
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: Item = match syn::parse2(input.clone()) {
        Ok(item @ (Item::Impl(_) | Item::Trait(_))) => item,
        _ => {
            let error = syn::Error::new(
                Span::call_site(),
                "#[stream_rpc::service] goes on an `impl` block, like `impl QueueServer { ... }`, or on a trait definition, like `trait Kv { ... }`",
            );
            let error = error.into_compile_error();
            return quote!(#error #input);
        }
    };
    let mut errors = Errors::default();
    let args = attr::service_args(args, &mut errors);
    match item {
        Item::Impl(mut item) => {
            let service = model::parse(&mut item, &mut errors);
            if let Some(service) = &service {
                validate::check(service, &mut errors);
            }
            match service {
                Some(service) if errors.is_empty() => {
                    let generated = generate_impl(&service, &args);
                    quote!(#item #generated)
                }
                Some(service) => {
                    let stubs = fallback::fallback_impl(&service, &args);
                    let errors = errors.into_compile_errors();
                    quote!(#item #stubs #errors)
                }
                None => {
                    let errors = errors.into_compile_errors();
                    quote!(#item #errors)
                }
            }
        }
        Item::Trait(mut item) => {
            let service = model::parse_trait(&mut item, &mut errors);
            validate::check(&service, &mut errors);
            if errors.is_empty() {
                generate_trait(&service, &args, item)
            } else {
                let stubs = fallback::fallback_trait(&service, &args, &item);
                let errors = errors.into_compile_errors();
                quote!(#item #stubs #errors)
            }
        }
        _ => unreachable!("only impl blocks and traits get here"),
    }
}

/// The path of the runtime crate in the user's crate: `crate = path` if
/// given, else its name in the user's Cargo.toml (it may be renamed there),
/// else `::stream_rpc`.
pub fn runtime_path(args: &ServiceArgs) -> TokenStream {
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

/// The where clause of the impl form's `Protocol` and `Service` impls: the
/// type's own, plus `Self: Send + Sync + 'static` when it is generic.
pub fn protocol_where(generics: &syn::Generics) -> Option<syn::WhereClause> {
    let mut protocol_generics = generics.clone();
    if !protocol_generics.params.is_empty() {
        protocol_generics
            .make_where_clause()
            .predicates
            .push(parse_quote!(Self: ::core::marker::Send + ::core::marker::Sync + 'static));
    }
    protocol_generics.where_clause
}

/// The impl-block form: `Protocol` and `Service` for the type itself,
/// `METHODS` on it, and the typed client.
fn generate_impl(service: &Service, args: &ServiceArgs) -> TokenStream {
    let Kind::Impl { self_ty, generics } = &service.kind else {
        unreachable!("called for impl blocks only")
    };
    let krate = runtime_path(args);
    let name = protocol_name(service, args);
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let protocol_where = protocol_where(generics);
    let body = dispatch(service, &krate, |ident, args| quote!(self.#ident(#args)));
    let streams = dispatch_streams(service, &krate, |ident, args| quote!(self.#ident(#args)));
    let wires: Vec<_> = wire_names(service).collect();
    let protocol = protocol_impl(
        &krate,
        quote!(impl #impl_generics #krate::Protocol for #self_ty #protocol_where),
        Some(&name),
        &body,
        streams.as_ref(),
    );
    let service_trait = service_impl(
        quote!(impl #impl_generics #krate::Service for #self_ty #protocol_where),
        &service_methods(),
    );
    let vis: syn::Visibility = parse_quote!(pub);
    let methods: Vec<_> = service
        .methods
        .iter()
        .map(|m| client::client_method(m, &krate))
        .collect();
    let client_items = client::client_items(
        service,
        &krate,
        &ClientParts {
            vis: &vis,
            generics,
            service_ty: Some(self_ty),
            methods: &methods,
            wires: &wires,
        },
    );
    let tasks_items = tasks::producer(service, &krate, &vis, generics, Some(self_ty));

    quote! {
        #protocol

        #service_trait

        impl #impl_generics #self_ty #where_clause {
            /// The wire names of this service's methods.
            pub const METHODS: &'static [&'static str] = &[#(#wires),*];
        }

        #client_items

        #tasks_items
    }
}

/// The trait form: the trait with `Send` futures, a server that serves any
/// implementation, and the typed client.
fn generate_trait(service: &Service, args: &ServiceArgs, mut item: ItemTrait) -> TokenStream {
    let Kind::Trait { vis } = &service.kind else {
        unreachable!("called for traits only")
    };
    let krate = runtime_path(args);
    let name = protocol_name(service, args);
    let trait_ident = &service.ident;
    send_futures(&mut item);

    let server = format_ident!("{}Server", trait_ident.unraw());
    let server_doc = format!(
        "Serves any implementation of [`{trait_ident}`]: a `Protocol` that dispatches each packet to the trait method of the same wire name. Hand it to `Server::serve`, or to `connect` on a worker; compose it with other services in `Services`."
    );
    let call = |ident: &Ident, args| quote!(#trait_ident::#ident(&self.service, #args));
    let body = dispatch(service, &krate, call);
    let streams = dispatch_streams(service, &krate, call);
    let wires: Vec<_> = wire_names(service).collect();
    let methods: Vec<_> = service
        .methods
        .iter()
        .map(|m| client::client_method(m, &krate))
        .collect();
    let client_items = client::client_items(
        service,
        &krate,
        &ClientParts {
            vis,
            generics: &syn::Generics::default(),
            service_ty: None,
            methods: &methods,
            wires: &wires,
        },
    );
    let tasks_items = tasks::producer(service, &krate, vis, &syn::Generics::default(), None);
    let server_items = server_items(vis, &server, &server_doc, &wires);
    let param = Ident::new(SERVICE_PARAM, Span::call_site());
    let protocol = protocol_impl(
        &krate,
        quote!(impl<#param: #trait_ident> #krate::Protocol for #server<#param>),
        Some(&name),
        &body,
        streams.as_ref(),
    );
    let service_trait = service_impl(
        quote!(impl<#param: #trait_ident> #krate::Service for #server<#param>),
        &service_methods(),
    );

    quote! {
        #item

        #server_items

        #protocol

        #service_trait

        #client_items

        #tasks_items
    }
}

/// Rewrites a service trait so that implementations may write plain `async
/// fn`s while the server needs `Send` futures: the trait is `Send + Sync +
/// 'static` and each method returns `impl Future<Output = _> + Send`.
fn send_futures(item: &mut ItemTrait) {
    if item.colon_token.is_none() {
        item.colon_token = Some(Default::default());
    }
    item.supertraits.push(parse_quote!(::core::marker::Send));
    item.supertraits.push(parse_quote!(::core::marker::Sync));
    item.supertraits.push(parse_quote!('static));
    for trait_item in &mut item.items {
        if let syn::TraitItem::Fn(function) = trait_item {
            function.sig.asyncness = None;
            let output = match &function.sig.output {
                syn::ReturnType::Default => quote!(()),
                syn::ReturnType::Type(_, ty) => quote!(#ty),
            };
            function.sig.output = parse_quote!(
                -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
            );
        }
    }
}

/// An `impl Protocol` with `header` (`impl<..> Protocol for T where ..`):
/// `name` shown in logs (the type's name when `None`), and `body` as
/// `process_message`'s, over `__ctx` and `__packet`.
pub fn protocol_impl(
    krate: &TokenStream,
    header: TokenStream,
    name: Option<&str>,
    body: &TokenStream,
    streams: Option<&TokenStream>,
) -> TokenStream {
    let streams = streams.map(|body| {
        quote! {
            #[allow(unused_variables)]
            async fn process_stream(
                &self,
                __ctx: #krate::Context,
                __packet: #krate::Packet,
                __io: #krate::StreamIo,
            ) -> ::core::result::Result<#krate::__private::serde_json::Value, #krate::HandlerError> {
                #body
            }
        }
    });
    let name = name.map(|name| {
        quote! {
            fn name(&self) -> &str {
                #name
            }
        }
    });
    quote! {
        #header {
            #name

            #[allow(unused_variables)]
            async fn process_message(
                &self,
                __ctx: #krate::Context,
                __packet: #krate::Packet,
            ) -> ::core::result::Result<#krate::Reply, #krate::HandlerError> {
                #body
            }

            #streams
        }
    }
}

/// An `impl Service` with `header` and `body` as `methods`' (the type's
/// `METHODS`, by [`service_methods`]).
pub fn service_impl(header: TokenStream, body: &TokenStream) -> TokenStream {
    quote! {
        #header {
            fn methods(&self) -> &[&'static str] {
                #body
            }
        }
    }
}

/// The body of `Service::methods` of a generated server.
fn service_methods() -> TokenStream {
    quote!(Self::METHODS)
}

/// The trait form's server: the struct holding the implementation, its
/// constructor and accessors, `METHODS` and `Debug`.
pub fn server_items(
    vis: &syn::Visibility,
    server: &Ident,
    doc: &str,
    wires: &[TokenStream],
) -> TokenStream {
    let param = Ident::new(SERVICE_PARAM, Span::call_site());
    quote! {
        #[doc = #doc]
        #vis struct #server<#param> {
            service: #param,
        }

        impl<#param> #server<#param> {
            /// The wire names of the service's methods.
            pub const METHODS: &'static [&'static str] = &[#(#wires),*];

            /// Serves `service`.
            pub fn new(service: #param) -> Self {
                #server { service }
            }

            /// The implementation served.
            pub fn get_ref(&self) -> &#param {
                &self.service
            }

            /// Gives the implementation back.
            pub fn into_inner(self) -> #param {
                self.service
            }
        }

        impl<#param: ::core::fmt::Debug> ::core::fmt::Debug for #server<#param> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#server))
                    .field("service", &self.service)
                    .finish()
            }
        }
    }
}

/// The protocol name shown in logs: `name = "..."`, or the type's or trait's name.
fn protocol_name(service: &Service, args: &ServiceArgs) -> String {
    args.name
        .as_ref()
        .map_or_else(|| service.ident.unraw().to_string(), syn::LitStr::value)
}

/// The wire names, each under its method's `#[cfg]`s.
fn wire_names(service: &Service) -> impl Iterator<Item = TokenStream> + '_ {
    service.methods.iter().map(|m| {
        let cfgs = &m.cfgs;
        let wire = model::wire_literal(m);
        quote!(#(#cfgs)* #wire)
    })
}
