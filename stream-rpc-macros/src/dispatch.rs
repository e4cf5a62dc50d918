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
