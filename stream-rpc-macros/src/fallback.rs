//! What is emitted next to the errors of a service: the items the
//! attribute would generate, with bodies that never run, so that code using
//! the service (its `Protocol` and `Service` impls, `METHODS`, the typed
//! client and its methods) adds no error of its own to the ones reported.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::{ItemTrait, parse_quote};

use crate::attr::ServiceArgs;
use crate::client::{self, ClientParts};
use crate::expand::{self, SERVICE_PARAM, protocol_impl, server_items, service_impl};
use crate::model::{self, Kind, Service};
use crate::tasks;
use crate::validate;

/// The fallback of an impl block.
pub fn fallback_impl(service: &Service, args: &ServiceArgs) -> TokenStream {
    let Kind::Impl { self_ty, generics } = &service.kind else {
        unreachable!("called for impl blocks only")
    };
    let krate = expand::runtime_path(args);
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let protocol_where = expand::protocol_where(generics);
    let vis: syn::Visibility = parse_quote!(pub);
    let stubs = fallback_methods(service, &krate);
    let client_items = client::client_items(
        service,
        &krate,
        &ClientParts {
            vis: &vis,
            generics,
            service_ty: Some(self_ty),
            methods: &stubs,
            wires: &[],
        },
    );
    let tasks_items = tasks::tasks_items(
        service,
        &krate,
        &vis,
        generics,
        Some(self_ty),
        &fallback_tasks_methods(service, &krate),
    );
    let unreachable = fallback_body();
    let protocol = protocol_impl(
        &krate,
        quote!(impl #impl_generics #krate::Protocol for #self_ty #protocol_where),
        None,
        &unreachable,
        None,
    );
    let service_trait = service_impl(
        quote!(impl #impl_generics #krate::Service for #self_ty #protocol_where),
        &unreachable,
    );
    // What the user's impl already defines (an error of its own) is not
    // defined again.
    let taken = |name: &str| service.all_fns.iter().any(|ident| ident == name);
    let methods = (!taken("METHODS")).then(|| {
        quote! {
            /// The wire names (not generated: the service has errors).
            pub const METHODS: &'static [&'static str] = &[];
        }
    });
    quote! {
        #protocol

        #service_trait

        impl #impl_generics #self_ty #where_clause {
            #methods
        }

        #client_items

        #tasks_items
    }
}

/// [`fallback_impl`] for a trait: the server and the typed client.
pub fn fallback_trait(service: &Service, args: &ServiceArgs, item: &ItemTrait) -> TokenStream {
    let Kind::Trait { vis } = &service.kind else {
        unreachable!("called for traits only")
    };
    let krate = expand::runtime_path(args);
    let trait_ident = &service.ident;
    let server = format_ident!("{}Server", trait_ident.unraw());
    let stubs = fallback_methods(service, &krate);
    let client_items = client::client_items(
        service,
        &krate,
        &ClientParts {
            vis,
            generics: &syn::Generics::default(),
            service_ty: None,
            methods: &stubs,
            wires: &[],
        },
    );
    let tasks_items = tasks::tasks_items(
        service,
        &krate,
        vis,
        &syn::Generics::default(),
        None,
        &fallback_tasks_methods(service, &krate),
    );
    let server_items = server_items(
        vis,
        &server,
        "The server (not generated: the service has errors).",
        &[],
    );
    let unreachable = fallback_body();
    let param = syn::Ident::new(SERVICE_PARAM, proc_macro2::Span::call_site());
    // A generic trait cannot be named without its arguments: no impl then.
    let impls = item.generics.params.is_empty().then(|| {
        let bounds = quote! {
            where
                #param: #trait_ident + ::core::marker::Send + ::core::marker::Sync + 'static
        };
        let protocol = protocol_impl(
            &krate,
            quote!(impl<#param> #krate::Protocol for #server<#param> #bounds),
            None,
            &unreachable,
            None,
        );
        let service_trait = service_impl(
            quote!(impl<#param> #krate::Service for #server<#param> #bounds),
            &unreachable,
        );
        quote!(#protocol #service_trait)
    });
    quote! {
        #server_items

        #impls

        #client_items

        #tasks_items
    }
}

/// The fallback client's methods: the real one for each method that was
/// read without error, a stub for each of the others.
fn fallback_methods(service: &Service, krate: &TokenStream) -> Vec<TokenStream> {
    service
        .stubs
        .iter()
        // One named like the client's own items is reported as a clash.
        .filter(|stub| !validate::CLIENT_ITEMS.iter().any(|name| stub.ident == name))
        .map(
            |stub| match service.methods.iter().find(|m| m.ident == stub.ident) {
                Some(method) => client::client_method(method, krate),
                None => stub_method(stub, krate),
            },
        )
        .collect()
}

/// The fallback producer's methods: the real one for each method that
/// was read without error, a stub for each of the others.
fn fallback_tasks_methods(service: &Service, krate: &TokenStream) -> Vec<TokenStream> {
    service
        .stubs
        .iter()
        .filter(|stub| !tasks::TASKS_ITEMS.iter().any(|name| stub.ident == name))
        .filter_map(
            |stub| match service.methods.iter().find(|m| m.ident == stub.ident) {
                Some(method) => tasks::tasks_method(method, krate),
                None => Some(stub_tasks_method(stub, krate)),
            },
        )
        .collect()
}

/// A producer method for the fallback: the arguments as written, any
/// result types the caller expects, a body that never runs.
fn stub_tasks_method(stub: &model::Stub, krate: &TokenStream) -> TokenStream {
    let ident = &stub.ident;
    let cfgs = &stub.cfgs;
    let mut generics = stub.generics.clone();
    generics.params.push(parse_quote!(__StreamRpcReturn));
    generics.params.push(parse_quote!(__StreamRpcError));
    let (_, _, where_clause) = generics.split_for_impl();
    let params = &generics.params;
    let types = &stub.params;
    let caller = syn::Ident::new(client::CALLER_PARAM, proc_macro2::Span::call_site());
    let unreachable = fallback_body();
    quote! {
        #(#cfgs)*
        #[allow(unused_variables)]
        /// Not generated: the service has errors.
        pub fn #ident<#params>(&self, #(_: #types),*) -> #krate::tasks::PutTask<'_, #caller, __StreamRpcReturn, __StreamRpcError> #where_clause {
            #unreachable
        }
    }
}

/// A client method for the fallback: the arguments as written, any return
/// type the caller expects, a body that never runs.
fn stub_method(stub: &model::Stub, krate: &TokenStream) -> TokenStream {
    let ident = &stub.ident;
    let cfgs = &stub.cfgs;
    let mut generics = stub.generics.clone();
    generics.params.push(parse_quote!(__StreamRpcReturn));
    let (_, _, where_clause) = generics.split_for_impl();
    let params = &generics.params;
    let types = &stub.params;
    let unreachable = fallback_body();
    quote! {
        #(#cfgs)*
        #[allow(unused_variables, clippy::unused_async)]
        /// Not generated: the service has errors.
        pub async fn #ident<#params>(&self, #(_: #types),*) -> ::core::result::Result<__StreamRpcReturn, #krate::CallError> #where_clause {
            #unreachable
        }
    }
}

/// The body of every fallback item: never run, since the crate does not
/// compile while the service has errors.
pub fn fallback_body() -> TokenStream {
    quote!(::core::unreachable!(
        "#[stream_rpc::service] reported errors; this item is a placeholder"
    ))
}
