//! The server's side of the generated code: `process_message`'s body,
//! which reads each packet's payload into the method's arguments, calls
//! the method and turns what it returns into the reply.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::Ident;
use syn::spanned::Spanned;

use crate::model::{self, Method, Ret, Service};

/// The body of `process_message`: type checks, then one match arm per
/// method. `call` builds the call of a method from its name and arguments.
pub fn dispatch(
    service: &Service,
    krate: &TokenStream,
    call: impl Fn(&Ident, TokenStream) -> TokenStream,
) -> TokenStream {
    let checks = service.methods.iter().map(|m| type_checks(m, krate));
    let arms = service.methods.iter().map(|m| {
        if m.is_stream() {
            let cfgs = &m.cfgs;
            let wire = model::wire_literal(m);
            quote! {
                #(#cfgs)*
                #wire => ::core::result::Result::Err(#krate::HandlerError::stream_required(#wire)),
            }
        } else {
            dispatch_arm(m, krate, &call)
        }
    });
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

pub fn type_checks(method: &Method, krate: &TokenStream) -> TokenStream {
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
        Ret::Stream(stream) => {
            let item = &stream.item;
            checks.push(quote_spanned!(item.span()=> #krate::__private::assert_item::<#item>();));
            if let (Some(inner), Some(outer)) = (&stream.err, &stream.outer_err) {
                checks.push(quote_spanned!(outer.span()=>
                    #krate::__private::assert_same_error::<#inner, #outer>();
                ));
            }
        }
    }
    if let Some(input) = &method.input {
        let item = &input.item;
        checks.push(quote_spanned!(item.span()=> #krate::__private::assert_item::<#item>();));
    }
    quote!(#(#cfgs)* { #(#checks)* })
}

/// The body of `process_stream`: one arm per stream method; a plain
/// method is refused as `not_a_stream`, an unknown one as
/// `unknown_method`. Empty when the service has no stream method (the
/// runtime's default refuses every open).
pub fn dispatch_streams(
    service: &Service,
    krate: &TokenStream,
    call: impl Fn(&Ident, TokenStream) -> TokenStream,
) -> Option<TokenStream> {
    if !service.methods.iter().any(Method::is_stream) {
        return None;
    }
    let streams = || service.methods.iter().filter(|m| m.is_stream());
    // The same checks as in `process_message`, in this body too: a type
    // that does not fit then fails them once, not each helper's bounds.
    let checks = streams().map(|m| type_checks(m, krate));
    let arms = streams().map(|m| dispatch_arm(m, krate, &call));
    let plain = service.methods.iter().filter(|m| !m.is_stream()).map(|m| {
        let cfgs = &m.cfgs;
        let wire = model::wire_literal(m);
        quote! {
            #(#cfgs)*
            #wire => ::core::result::Result::Err(#krate::HandlerError::not_a_stream(#wire)),
        }
    });
    Some(quote! {
        #[allow(unused_imports)]
        use #krate::__private::{ViaDisplay as _, ViaHandlerError as _, ViaSerde as _};
        #(#checks)*
        let #krate::Packet { method: __method, payload: __payload, .. } = __packet;
        #[allow(unused_mut)]
        let mut __io = __io;
        match __method.as_str() {
            #(#arms)*
            #(#plain)*
            _ => ::core::result::Result::Err(#krate::HandlerError::unknown_method(&__method)),
        }
    })
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
    let input = method.input.as_ref().map(|input| {
        let (name, ty, item) = (&input.ident, &input.ty, &input.item);
        // Spanned like `assert_item`'s check in the same body, so that an
        // item type that does not fit is reported once.
        let take = quote_spanned!(item.span()=> #krate::__private::take_input::<#item>);
        quote!(let #name: #ty = #take(&mut __io, #wire)?;)
    });
    let input_ident = method.input.as_ref().map(|input| &input.ident);
    let mut all_args: Vec<_> = idents.iter().map(|ident| quote!(#ident)).collect();
    if let Some(ident) = input_ident {
        all_args.push(quote!(#ident));
    }
    let call = call(ident, quote!(#context #(#all_args),*));
    let call = quote!(#call.await);
    let answer = if method.is_stream() {
        stream_answer(method, krate, &wire, &call)
    } else {
        call_answer(method, krate, &wire, &call)
    };
    quote! {
        #(#cfgs)*
        #wire => {
            #decode
            #input
            #answer
        }
    }
}

/// How a handler's error of type `err` (as written, or the call site when
/// not) becomes the error packet.
fn convert_error(err: Option<&syn::Type>, krate: &TokenStream, wire: &syn::LitStr) -> TokenStream {
    let error_span = err.map_or_else(Span::call_site, |err| err.span());
    quote_spanned!(error_span=>
        {
            #[allow(unused_imports)]
            use #krate::__private::{
                RetryOfHandlerError as _, RetryOfNothing as _, RetryOfTrait as _,
            };
            let __retry = (&&&#krate::__private::RetryOf(&__error)).retry_of();
            #krate::__private::with_retry(
                (&&&#krate::__private::ErrorWrap(__error)).into_handler_error(#wire),
                __retry,
            )
        }
    )
}

/// A stream method's answer, `process_stream`'s result: the output items
/// sent, then `null`; or the input read, then the value returned.
fn stream_answer(
    method: &Method,
    krate: &TokenStream,
    wire: &syn::LitStr,
    call: &TokenStream,
) -> TokenStream {
    match &method.ret {
        Ret::Stream(stream) => {
            let item = &stream.item;
            let err = stream.err.as_deref();
            let err_ty =
                err.map_or_else(|| quote!(::core::convert::Infallible), |err| quote!(#err));
            let convert = convert_error(err, krate, wire);
            let streaming = match &stream.outer_err {
                None => quote!(#call),
                Some(outer) => {
                    let convert_outer = convert_error(Some(outer), krate, wire);
                    quote! {
                        match #call {
                            ::core::result::Result::Ok(__streaming) => __streaming,
                            ::core::result::Result::Err(__error) => {
                                return ::core::result::Result::Err(#convert_outer);
                            }
                        }
                    }
                }
            };
            // The whole call spanned like `assert_item`'s check in the same
            // body (an async fn's bounds are checked at the call), so that
            // an item type that does not fit is reported once.
            let serve = quote_spanned!(item.span()=>
                #krate::__private::serve_output::<#item, #err_ty>(
                    __streaming,
                    &mut __io,
                    |__error: #err_ty| #convert,
                )
                .await
            );
            quote! {
                let __streaming = #streaming;
                #serve
            }
        }
        Ret::Unit => quote! {
            let () = #call;
            ::core::result::Result::Ok(#krate::__private::serde_json::Value::Null)
        },
        Ret::Value(ty) => {
            let encode = quote_spanned!(ty.span()=> #krate::__stream::reply_payload::<#ty>);
            quote!(#encode(#call, #wire))
        }
        Ret::Result { ok, err } => {
            let encode = quote_spanned!(ok.span()=> #krate::__stream::reply_payload::<#ok>);
            let convert = convert_error(err.as_deref(), krate, wire);
            quote! {
                match #call {
                    ::core::result::Result::Ok(__value) => #encode(__value, #wire),
                    ::core::result::Result::Err(__error) => ::core::result::Result::Err(#convert),
                }
            }
        }
    }
}

/// A plain method's answer, `process_message`'s result.
fn call_answer(
    method: &Method,
    krate: &TokenStream,
    wire: &syn::LitStr,
    call: &TokenStream,
) -> TokenStream {
    match &method.ret {
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
            let convert = convert_error(err.as_deref(), krate, wire);
            quote! {
            match #call {
                ::core::result::Result::Ok(__value) => #into_reply(__value, #wire),
                ::core::result::Result::Err(__error) => ::core::result::Result::Err(#convert),
            }
            }
        }
        Ret::Stream(_) => unreachable!("stream methods are answered by stream_answer"),
    }
}
