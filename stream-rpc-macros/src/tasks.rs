//! The producer's side of the generated code: `XTasks`, a typed producer
//! over any `Caller` to a queue server, with one method per non-stream
//! service method that puts the call as a task (`PutTask`).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, parse_quote};

use crate::client::{CALLER_PARAM, encode_payload};
use crate::dispatch::type_checks;
use crate::model::{self, Method, Ret, Service};

/// The generated items of the typed producer besides its methods: a
/// service method of one of these names gets no method of its own there.
pub const TASKS_ITEMS: [&str; 2] = ["new", "tasks"];

/// The name of the typed producer: `KvTasks` for `Kv`.
pub fn tasks_ident(service: &Service) -> Ident {
    format_ident!("{}Tasks", service.ident.unraw())
}

/// The typed producer: its struct over a caller, its constructor, the
/// inner `Tasks`, and one method per method that can be a task.
pub fn tasks_items(
    service: &Service,
    krate: &TokenStream,
    vis: &syn::Visibility,
    generics: &syn::Generics,
    service_ty: Option<&syn::Type>,
    methods: &[TokenStream],
) -> TokenStream {
    let tasks = tasks_ident(service);
    let caller = Ident::new(CALLER_PARAM, Span::call_site());
    let doc = format!(
        "A typed producer of [`{}`]'s tasks: one method per method that is not a stream, which puts the call in the queue of a queue server (over any [`Caller`](trait@::stream_rpc::Caller) connected to one) and gives the task's handle, its result typed as the method's. Stream methods have none: a task has no stream.",
        service.ident.unraw()
    );
    let mut generics = generics.clone();
    generics
        .params
        .push(parse_quote!(#caller: #krate::Caller + 'static));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let marker_field =
        service_ty.map(|ty| quote!(service: ::core::marker::PhantomData<fn() -> #ty>,));
    let marker_init = service_ty.map(|_| quote!(service: ::core::marker::PhantomData,));
    quote! {
        #[doc = #doc]
        #vis struct #tasks #generics #where_clause {
            tasks: #krate::tasks::Tasks<#caller>,
            #marker_field
        }

        impl #impl_generics ::core::fmt::Debug for #tasks #ty_generics #where_clause {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#tasks))
                    .field("tasks", &self.tasks)
                    .finish()
            }
        }

        impl #impl_generics #tasks #ty_generics #where_clause {
            /// A producer that puts tasks through `caller` (connected to a
            /// queue server).
            pub fn new(caller: #caller) -> Self {
                #tasks { tasks: #krate::tasks::Tasks::new(caller), #marker_init }
            }

            /// The untyped producer inside: show, cancel, list tasks,
            /// limits and schedules.
            pub fn tasks(&self) -> &#krate::tasks::Tasks<#caller> {
                &self.tasks
            }

            #(#methods)*
        }
    }
}

/// The typed producer of a service whose methods all read well: its
/// [`tasks_items`] with a [`tasks_method`] per method (the fallback of a
/// service with errors builds its methods from stubs instead).
pub fn producer(
    service: &Service,
    krate: &TokenStream,
    vis: &syn::Visibility,
    generics: &syn::Generics,
    service_ty: Option<&syn::Type>,
) -> TokenStream {
    let methods: Vec<_> = service
        .methods
        .iter()
        .filter_map(|m| tasks_method(m, krate))
        .collect();
    tasks_items(service, krate, vis, generics, service_ty, &methods)
}

/// One method of the typed producer, or nothing for a stream method (or
/// one named like a generated item).
pub fn tasks_method(method: &Method, krate: &TokenStream) -> Option<TokenStream> {
    if method.is_stream() || TASKS_ITEMS.iter().any(|name| method.ident == *name) {
        return None;
    }
    let caller = Ident::new(CALLER_PARAM, Span::call_site());
    let cfgs = &method.cfgs;
    let vis = &method.vis;
    let ident = &method.ident;
    let wire = model::wire_literal(method);
    let wire_name = &method.wire;
    let params = method.args.iter().map(|arg| {
        let (name, ty) = (&arg.ident, &arg.ty);
        quote!(#name: #ty)
    });
    let (ok, err) = match &method.ret {
        Ret::Unit => (quote!(()), quote!(#krate::HandlerError)),
        Ret::Value(ty) | Ret::Result { ok: ty, err: None } => {
            (task_output(ty, krate), quote!(#krate::HandlerError))
        }
        Ret::Result { ok, err: Some(err) } => (task_output(ok, krate), quote!(#err)),
        Ret::Stream(_) => return None,
    };
    let payload = encode_payload(method, &wire, krate);
    let checks = type_checks(method, krate);
    let summary = format!(
        "Puts a task of `{wire_name}` with these arguments; `.await` it (after setting its options) for the task's handle, whose `result()` is the method's answer."
    );
    Some(quote! {
        #(#cfgs)*
        #[doc = #summary]
        #vis fn #ident(&self, #(#params),*) -> #krate::tasks::PutTask<'_, #caller, #ok, #err> {
            #checks
            #[allow(clippy::redundant_closure_call, clippy::needless_question_mark)]
            let __payload = (|| -> ::core::result::Result<
                #krate::__private::serde_json::Value,
                #krate::CallError,
            > {
                ::core::result::Result::Ok(#payload)
            })();
            #krate::tasks::PutTask::new(&self.tasks, #wire, __payload, |__error| {
                #[allow(unused_imports)]
                use #krate::__private::{
                    DecodeHandlerError as _, DecodeNothing as _, DecodeSerde as _,
                };
                (&&&#krate::__private::ErrorDecode::<#err>::new()).decode_error(__error)
            })
        }
    })
}

/// What a task's result reads as for a method returning `ty`: the
/// payload type of a `Message<T>`, JSON for a `Reply`, `ty` itself
/// otherwise.
fn task_output(ty: &syn::Type, krate: &TokenStream) -> TokenStream {
    if crate::client::is_reply_or_message(ty) {
        quote_spanned!(ty.span()=> <#ty as #krate::__private::TaskOutput>::Output)
    } else {
        quote!(#ty)
    }
}
