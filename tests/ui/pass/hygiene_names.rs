//! Services named like the generated code's generic parameters and like
//! the prelude's and the runtime's types, and methods named like generated
//! items: all compile, since the generated code names its parameters with
//! names no user code writes and everything else by absolute path.

macro_rules! service_named {
    ($module:ident, $name:ident, $server:ident, $client:ident) => {
        mod $module {
            #[stream_rpc::service]
            pub trait $name {
                async fn add(&self, a: i64, b: i64) -> i64;
                async fn fallible(&self) -> ::std::result::Result<u8, stream_rpc::HandlerError>;
                async fn maybe(
                    &self,
                    value: ::std::option::Option<::std::string::String>,
                ) -> ::std::option::Option<::std::string::String>;
            }

            pub struct Implementation;

            impl $name for Implementation {
                async fn add(&self, a: i64, b: i64) -> i64 {
                    a + b
                }
                async fn fallible(&self) -> ::std::result::Result<u8, stream_rpc::HandlerError> {
                    ::std::result::Result::Ok(1)
                }
                async fn maybe(
                    &self,
                    value: ::std::option::Option<::std::string::String>,
                ) -> ::std::option::Option<::std::string::String> {
                    value
                }
            }

            pub fn check(session: stream_rpc::Connection) {
                super::assert_service(&$server::new(Implementation));
                let _ = $client::new(session);
                let _: &[&str] = $client::METHODS;
                let _: &[&str] = $server::<Implementation>::METHODS;
            }
        }
    };
}

service_named!(s, S, SServer, SClient);
service_named!(t, T, TServer, TClient);
service_named!(c, C, CServer, CClient);
service_named!(result, Result, ResultServer, ResultClient);
service_named!(option, Option, OptionServer, OptionClient);
service_named!(boxed, Box, BoxServer, BoxClient);
service_named!(vec, Vec, VecServer, VecClient);
service_named!(context, Context, ContextServer, ContextClient);
service_named!(caller, Caller, CallerServer, CallerClient);
service_named!(services, Services, ServicesServer, ServicesClient);

/// The impl form on types with those names.
mod impl_form {
    pub struct S;

    #[stream_rpc::service]
    impl S {
        async fn add(&self, a: i64, b: i64) -> i64 {
            a + b
        }
    }

    pub struct C<T>(pub T);

    #[stream_rpc::service]
    impl<T: Send + Sync + 'static> C<T> {
        async fn ping(&self) -> bool {
            true
        }
    }

    pub fn check(session: stream_rpc::Connection) {
        super::assert_service(&S);
        super::assert_service(&C(1u8));
        let _ = SClient::new(session.clone());
        let _ = CClient::<u8, _>::new(session);
        let _: &[&str] = S::METHODS;
        let _: &[&str] = C::<u8>::METHODS;
        let _: &[&str] = CClient::<u8>::METHODS;
    }
}

/// Methods named like what the attribute generates or implements on the
/// server, and like what the client holds.
mod method_names {
    #[stream_rpc::service]
    pub trait Named {
        async fn name(&self) -> String;
        async fn methods(&self) -> Vec<String>;
        async fn process_message(&self) -> u8;
        async fn get_ref(&self) -> u8;
        async fn into_inner(&self) -> u8;
        async fn service(&self) -> u8;
        async fn timeout(&self) -> u8;
        async fn client(&self) -> u8;
    }

    pub struct Server;

    #[stream_rpc::service]
    impl Server {
        async fn name(&self) -> String {
            "mine".into()
        }
        async fn methods(&self) -> u8 {
            0
        }
        async fn process_message(&self, value: u8) -> u8 {
            value
        }
        async fn client(&self) -> u8 {
            1
        }
    }

    pub async fn check(session: stream_rpc::Connection) -> Result<(), stream_rpc::CallError> {
        super::assert_service(&Server);
        assert_eq!(stream_rpc::Protocol::name(&Server), "Server");
        assert_eq!(
            stream_rpc::Service::methods(&Server),
            ["name", "methods", "process_message", "client"]
        );
        let named = NamedClient::new(session.clone());
        let _: String = named.name().await?;
        let _: Vec<String> = named.methods().await?;
        let _: u8 = named.process_message().await?;
        let _: u8 = named.client().await?;
        let server = ServerClient::new(session);
        let _: u8 = server.process_message(1).await?;
        Ok(())
    }
}

fn assert_service<P: stream_rpc::Service>(_: &P) {}

fn main() {
    let _ = (s::check, t::check, c::check, result::check, option::check);
    let _ = (boxed::check, vec::check, context::check, caller::check);
    let _ = (services::check, impl_form::check, method_names::check);
    assert_eq!(method_names::NamedClient::METHODS.len(), 8);
}
