//! Step 3: generate the protocol implementation, the method list and the
//! typed client. Generated code names everything by absolute path (it must
//! compile under `#![no_implicit_prelude]`) and reaches serde_json through
//! the runtime's hidden `__private` module.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, Item, ItemTrait, parse_quote};

use crate::attr::{self, ServiceArgs};
use crate::errors::Errors;
use crate::model::{self, Kind, Method, Ret, Service};
use crate::validate;

/// The whole attribute: parse, check, generate; on any error, the user's
/// item (without our attributes) and the errors, nothing else.
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
    let caller = caller_param(&input);
    match item {
        Item::Impl(mut item) => {
            let service = model::parse(&mut item, &mut errors);
            if let Some(service) = &service {
                validate::check(service, &mut errors);
            }
            match service {
                Some(service) if errors.is_empty() => {
                    let generated = generate_impl(&service, &args, &caller);
                    quote!(#item #generated)
                }
                Some(service) => {
                    let stubs = fallback_impl(&service, &args, &caller);
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
                generate_trait(&service, &args, item, &caller)
            } else {
                let stubs = fallback_trait(&service, &args, &item, &caller);
                let errors = errors.into_compile_errors();
                quote!(#item #stubs #errors)
            }
        }
        _ => unreachable!("only impl blocks and traits get here"),
    }
}

/// The name of the typed client's caller parameter: `C`, or `__C` when the
/// user's code names something `C` that the parameter would shadow.
fn caller_param(input: &TokenStream) -> Ident {
    fn mentions(tokens: &TokenStream, name: &str) -> bool {
        tokens.clone().into_iter().any(|tree| match tree {
            proc_macro2::TokenTree::Ident(ident) => ident == name,
            proc_macro2::TokenTree::Group(group) => mentions(&group.stream(), name),
            _ => false,
        })
    }
    let name = if mentions(input, "C") { "__C" } else { "C" };
    Ident::new(name, Span::call_site())
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

/// The impl-block form: `Protocol` for the type itself, `METHODS` and
/// `client` on it, and the typed client.
fn generate_impl(service: &Service, args: &ServiceArgs, caller: &Ident) -> TokenStream {
    let Kind::Impl { self_ty, generics } = &service.kind else {
        unreachable!("called for impl blocks only")
    };
    let krate = runtime_path(args);
    let name = protocol_name(service, args);
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let mut protocol_generics = generics.clone();
    if !protocol_generics.params.is_empty() {
        protocol_generics
            .make_where_clause()
            .predicates
            .push(parse_quote!(Self: ::core::marker::Send + ::core::marker::Sync + 'static));
    }
    let protocol_where = &protocol_generics.where_clause;
    let body = dispatch(service, &krate, |ident, args| quote!(self.#ident(#args)));
    let wires = wire_names(service);
    let client = client_ident(service);
    let mut client_generics = generics.clone();
    client_generics
        .params
        .push(parse_quote!(#caller = #krate::SessionHandle));
    let session_client = session_client(&client, generics, &krate);
    let protocol = protocol_impl(
        &krate,
        quote!(impl #impl_generics #krate::Protocol for #self_ty #protocol_where),
        Some(&name),
        &body,
    );
    let vis: syn::Visibility = parse_quote!(pub);
    let methods: Vec<_> = service
        .methods
        .iter()
        .map(|m| client_method(m, &krate))
        .collect();
    let client_items = client_items(
        service,
        &krate,
        &vis,
        &client_generics,
        caller,
        Some(self_ty),
        &methods,
    );

    quote! {
        #protocol

        impl #impl_generics #self_ty #where_clause {
            /// The wire names of this service's methods.
            pub const METHODS: &'static [&'static str] = &[#(#wires),*];

            /// A typed client of this service over `session`: the connection
            /// to a peer that serves it (a server, or a worker called back
            /// from a handler through `ctx.session()`). For any other
            /// [`Caller`](trait@::stream_rpc::Caller), such as a
            /// reconnecting client, use the client's `new`.
            pub fn client(session: &#krate::SessionHandle) -> #session_client {
                #client::new(::core::clone::Clone::clone(session))
            }
        }

        #client_items
    }
}

/// The trait form: the trait with `Send` futures, a server that serves any
/// implementation, and the typed client.
fn generate_trait(
    service: &Service,
    args: &ServiceArgs,
    mut item: ItemTrait,
    caller: &Ident,
) -> TokenStream {
    let Kind::Trait { vis } = &service.kind else {
        unreachable!("called for traits only")
    };
    let krate = runtime_path(args);
    let name = protocol_name(service, args);
    let trait_ident = &service.ident;
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

    let server = format_ident!("{}Server", trait_ident.unraw());
    let server_doc = format!(
        "Serves any implementation of [`{trait_ident}`]: a `Protocol` that dispatches each packet to the trait method of the same wire name. Hand it to `Connector::run_server`, or to `connect` on a worker."
    );
    let body = dispatch(
        service,
        &krate,
        |ident, args| quote!(#trait_ident::#ident(&self.service, #args)),
    );
    let wires: Vec<_> = wire_names(service).collect();
    let client = client_ident(service);
    let client_generics: syn::Generics = parse_quote!(<#caller = #krate::SessionHandle>);
    let methods: Vec<_> = service
        .methods
        .iter()
        .map(|m| client_method(m, &krate))
        .collect();
    let client_items = client_items(
        service,
        &krate,
        vis,
        &client_generics,
        caller,
        None,
        &methods,
    );
    let server_items = server_items(vis, &server, &server_doc, &wires);
    let protocol = protocol_impl(
        &krate,
        quote!(impl<S: #trait_ident> #krate::Protocol for #server<S>),
        Some(&name),
        &body,
    );

    quote! {
        #item

        #server_items

        #protocol

        #client_items

        impl #client {
            /// The wire names of the service's methods.
            pub const METHODS: &'static [&'static str] = &[#(#wires),*];
        }
    }
}

/// What is emitted next to the errors of an impl block: the items the
/// attribute would generate, with bodies that never run, so that code
/// using the service (its `Protocol` impl, `METHODS`, `client`, the typed
/// client and its methods) adds no error of its own to the ones reported.
fn fallback_impl(service: &Service, args: &ServiceArgs, caller: &Ident) -> TokenStream {
    let Kind::Impl { self_ty, generics } = &service.kind else {
        unreachable!("called for impl blocks only")
    };
    let krate = runtime_path(args);
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let mut protocol_generics = (**generics).clone();
    if !protocol_generics.params.is_empty() {
        protocol_generics
            .make_where_clause()
            .predicates
            .push(parse_quote!(Self: ::core::marker::Send + ::core::marker::Sync + 'static));
    }
    let protocol_where = &protocol_generics.where_clause;
    let client = client_ident(service);
    let mut client_generics = (**generics).clone();
    client_generics
        .params
        .push(parse_quote!(#caller = #krate::SessionHandle));
    let vis: syn::Visibility = parse_quote!(pub);
    let stubs = fallback_methods(service, &krate);
    let client_items = client_items(
        service,
        &krate,
        &vis,
        &client_generics,
        caller,
        Some(self_ty),
        &stubs,
    );
    let session_client = session_client(&client, generics, &krate);
    let unreachable = fallback_body();
    let protocol = protocol_impl(
        &krate,
        quote!(impl #impl_generics #krate::Protocol for #self_ty #protocol_where),
        None,
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
    let client_fn = (!taken("client")).then(|| {
        quote! {
            /// A typed client (not generated: the service has errors).
            pub fn client(_: &#krate::SessionHandle) -> #session_client {
                #unreachable
            }
        }
    });
    quote! {
        #protocol

        impl #impl_generics #self_ty #where_clause {
            #methods
            #client_fn
        }

        #client_items
    }
}

/// [`fallback_impl`] for a trait: the server and the typed client.
fn fallback_trait(
    service: &Service,
    args: &ServiceArgs,
    item: &ItemTrait,
    caller: &Ident,
) -> TokenStream {
    let Kind::Trait { vis } = &service.kind else {
        unreachable!("called for traits only")
    };
    let krate = runtime_path(args);
    let trait_ident = &service.ident;
    let server = format_ident!("{}Server", trait_ident.unraw());
    let client = client_ident(service);
    let client_generics: syn::Generics = parse_quote!(<#caller = #krate::SessionHandle>);
    let stubs = fallback_methods(service, &krate);
    let client_items = client_items(service, &krate, vis, &client_generics, caller, None, &stubs);
    let server_items = server_items(
        vis,
        &server,
        "The server (not generated: the service has errors).",
        &[],
    );
    let unreachable = fallback_body();
    // A generic trait cannot be named without its arguments: no impl then.
    let protocol = item.generics.params.is_empty().then(|| {
        protocol_impl(
            &krate,
            quote! {
                impl<S> #krate::Protocol for #server<S>
                where
                    S: #trait_ident + ::core::marker::Send + ::core::marker::Sync + 'static
            },
            None,
            &unreachable,
        )
    });
    quote! {
        #server_items

        #protocol

        #client_items

        impl #client {
            /// The wire names (not generated: the service has errors).
            pub const METHODS: &'static [&'static str] = &[];
        }
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
                Some(method) => client_method(method, krate),
                None => stub_method(stub, krate),
            },
        )
        .collect()
}

/// A client method for the fallback: the arguments as written, any return
/// type the caller expects, a body that never runs.
fn stub_method(stub: &model::Stub, krate: &TokenStream) -> TokenStream {
    let ident = &stub.ident;
    let cfgs = &stub.cfgs;
    let mut generics = stub.generics.clone();
    generics.params.push(parse_quote!(__R));
    let (_, _, where_clause) = generics.split_for_impl();
    let params = &generics.params;
    let types = &stub.params;
    let unreachable = fallback_body();
    quote! {
        #(#cfgs)*
        #[allow(unused_variables, clippy::unused_async)]
        /// Not generated: the service has errors.
        pub async fn #ident<#params>(&self, #(_: #types),*) -> ::core::result::Result<__R, #krate::CallError> #where_clause {
            #unreachable
        }
    }
}

/// The body of every fallback item: never run, since the crate does not
/// compile while the service has errors.
fn fallback_body() -> TokenStream {
    quote!(::core::unreachable!(
        "#[stream_rpc::service] reported errors; this item is a placeholder"
    ))
}

/// The typed client over a `SessionHandle`, with the type's generics.
fn session_client(client: &Ident, generics: &syn::Generics, krate: &TokenStream) -> TokenStream {
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
    quote!(#client<#(#args,)* #krate::SessionHandle>)
}

/// An `impl Protocol` with `header` (`impl<..> Protocol for T where ..`):
/// `name` shown in logs (the type's name when `None`), and `body` as
/// `process_message`'s, over `__ctx` and `__packet`.
fn protocol_impl(
    krate: &TokenStream,
    header: TokenStream,
    name: Option<&str>,
    body: &TokenStream,
) -> TokenStream {
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
        }
    }
}

/// The trait form's server: the struct holding the implementation, its
/// constructor and accessors, `METHODS` and `Debug`.
fn server_items(
    vis: &syn::Visibility,
    server: &Ident,
    doc: &str,
    wires: &[TokenStream],
) -> TokenStream {
    quote! {
        #[doc = #doc]
        #vis struct #server<S> {
            service: S,
        }

        impl<S> #server<S> {
            /// The wire names of the service's methods.
            pub const METHODS: &'static [&'static str] = &[#(#wires),*];

            /// Serves `service`.
            pub fn new(service: S) -> Self {
                #server { service }
            }

            /// The implementation served.
            pub fn get_ref(&self) -> &S {
                &self.service
            }

            /// Gives the implementation back.
            pub fn into_inner(self) -> S {
                self.service
            }
        }

        impl<S: ::core::fmt::Debug> ::core::fmt::Debug for #server<S> {
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

fn client_ident(service: &Service) -> Ident {
    format_ident!("{}Client", service.ident.unraw())
}

/// The wire names, each under its method's `#[cfg]`s.
fn wire_names(service: &Service) -> impl Iterator<Item = TokenStream> + '_ {
    service.methods.iter().map(|m| {
        let cfgs = &m.cfgs;
        let wire = model::wire_literal(m);
        quote!(#(#cfgs)* #wire)
    })
}

/// The body of `process_message`: type checks, then one match arm per
/// method. `call` builds the call of a method from its name and arguments.
fn dispatch(
    service: &Service,
    krate: &TokenStream,
    call: impl Fn(&Ident, TokenStream) -> TokenStream,
) -> TokenStream {
    let checks = service.methods.iter().map(|m| type_checks(m, krate));
    let arms = service
        .methods
        .iter()
        .map(|m| dispatch_arm(m, krate, &call));
    quote! {
        #[allow(unused_imports)]
        use #krate::__private::{ViaDisplay as _, ViaHandlerError as _, ViaSerde as _};
        #(#checks)*
        let #krate::Packet { method: __method, payload: __payload, .. } = __packet;
        match __method.as_str() {
            #(#arms)*
            _ => ::core::result::Result::Err(#krate::HandlerError::unknown_method(&__method)),
        }
    }
}

/// The typed client: its struct over a [`Caller`] `caller` (with `generics`
/// before it; `service` is the impl form's type, held as a marker), its
/// constructor and settings, and one method per service method.
fn client_items(
    service: &Service,
    krate: &TokenStream,
    vis: &syn::Visibility,
    generics: &syn::Generics,
    caller: &Ident,
    service_ty: Option<&syn::Type>,
    methods: &[TokenStream],
) -> TokenStream {
    let client = client_ident(service);
    let client_doc = format!(
        "A typed client of [`{}`]: one method per service method, over any [`Caller`](trait@::stream_rpc::Caller) to a peer that serves it (a `SessionHandle`, a `Client`, a `ReconnectingClient`, or a reference to one).",
        service.ident.unraw()
    );
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let marker_field =
        service_ty.map(|ty| quote!(service: ::core::marker::PhantomData<fn() -> #ty>,));
    let marker_init = service_ty.map(|_| quote!(service: ::core::marker::PhantomData,));
    let mut calling = generics.clone();
    calling
        .make_where_clause()
        .predicates
        .push(parse_quote!(#caller: #krate::Caller));
    let calling_where = &calling.where_clause;
    let mut cloning = generics.clone();
    cloning
        .make_where_clause()
        .predicates
        .push(parse_quote!(#caller: ::core::clone::Clone));
    let cloning_where = &cloning.where_clause;
    let mut debugging = generics.clone();
    debugging
        .make_where_clause()
        .predicates
        .push(parse_quote!(#caller: ::core::fmt::Debug));
    let debugging_where = &debugging.where_clause;
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
        // The error type is checked where it is converted: which
        // conversion applies depends on what it implements.
        Ret::Result { ok, err: Some(_) } => {
            checks.push(quote_spanned!(ok.span()=> #krate::__private::assert_reply::<#ok>();));
        }
    }
    quote!(#(#cfgs)* { #(#checks)* })
}

fn dispatch_arm(
    method: &Method,
    krate: &TokenStream,
    call: impl Fn(&Ident, TokenStream) -> TokenStream,
) -> TokenStream {
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
    let call = call(ident, quote!(#context #(#idents),*));
    let call = quote!(#call.await);
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
                (&&&#krate::__private::ErrorWrap(__error)).into_handler_error(#wire)
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
    let call = quote! {
        match self.timeout {
            ::core::option::Option::Some(__limit) => {
                #krate::Caller::call_with_timeout(&self.caller, #wire, __payload, __limit).await
            }
            ::core::option::Option::None => #krate::Caller::call(&self.caller, #wire, __payload).await,
        }
    };
    let (output, body, summary) = match &method.ret {
        Ret::Unit => (
            quote!(()),
            quote! {
                #krate::Caller::notify(&self.caller, #wire, __payload)
                    .await
                    .map_err(|__reason| #krate::CallError::NotSent {
                        method: ::std::string::String::from(#wire),
                        reason: __reason,
                    })
            },
            format!("Sends a notification to the peer's `{wire_name}`; returns once it is sent."),
        ),
        Ret::Value(ty) | Ret::Result { ok: ty, err: None } => (
            client_output(ty, krate),
            {
                let decode = quote_spanned!(ty.span()=>
                    <#ty as #krate::IntoReply>::from_reply(__reply, #wire)
                );
                quote! {
                    let __reply = #call?;
                    #decode
                }
            },
            format!("Calls the peer's `{wire_name}` and returns its typed answer."),
        ),
        Ret::Result { ok, err: Some(err) } => {
            let ok_output = client_output(ok, krate);
            let decode = quote_spanned!(ok.span()=>
                <#ok as #krate::IntoReply>::from_reply(__reply, #wire)
            );
            (
                quote!(::core::result::Result<#ok_output, #err>),
                quote! {
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
                format!(
                    "Calls the peer's `{wire_name}`: `Ok(Ok(value))` for its typed answer, `Ok(Err(error))` for the method's own error (when the error type can be read back: `HandlerError` or `Deserialize`), `Err` when the call failed."
                ),
            )
        }
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
