//! An auth layer on the server: each request's `authorization` metadata
//! entry holds a token, checked against a set of known tokens, each
//! allowed some methods. A request without a token, or with an unknown
//! one, is refused `unauthenticated`; a token that may not call the method
//! is refused `permission_denied`; nothing runs in either case (a retry
//! with the same token fails again). The client sets its token with a
//! layer of its own, so its typed client needs no change.
//!
//! Runs a server and a client in one process on a free loopback port:
//!
//! ```text
//! cargo run --example auth
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use stream_rpc::layer::{
    BoxError, BoxFuture, CallService, LayeredCaller, LayeredProtocol, ServerCall,
};
use stream_rpc::{Call, Caller, Config, Connector, ErrorCode, Fernet, HandlerError, Packet, Reply};
use tower::{Layer, Service};

/// The metadata key the token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// The methods a token may call.
#[derive(Clone, Debug)]
pub enum Allowed {
    /// Every method.
    All,
    /// These methods only.
    Only(HashSet<String>),
}

/// The server's layer: checks each request's token before the request
/// goes on.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    tokens: Arc<HashMap<String, Allowed>>,
}

impl Auth {
    /// A layer that knows these tokens.
    pub fn new(tokens: impl IntoIterator<Item = (String, Allowed)>) -> Auth {
        Auth {
            tokens: Arc::new(tokens.into_iter().collect()),
        }
    }

    /// Why `call` may not go on, if it may not.
    fn refusal(&self, call: &ServerCall) -> Option<HandlerError> {
        let Some(token) = call.meta().get(AUTHORIZATION) else {
            return Some(HandlerError::new(
                ErrorCode::Unauthenticated,
                "no token: set the `authorization` metadata entry",
            ));
        };
        match self.tokens.get(token) {
            None => Some(HandlerError::new(
                ErrorCode::Unauthenticated,
                "unknown token",
            )),
            Some(Allowed::Only(methods)) if !methods.contains(call.method()) => {
                Some(HandlerError::new(
                    ErrorCode::PermissionDenied,
                    format!("this token may not call `{}`", call.method()),
                ))
            }
            Some(_) => None,
        }
    }
}

impl<S> Layer<S> for Auth {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            auth: self.clone(),
            inner,
        }
    }
}

/// The service of the [`Auth`] layer.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    auth: Auth,
    inner: S,
}

impl<S> Service<ServerCall> for AuthService<S>
where
    S: Service<ServerCall, Response = Reply>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = BoxError;
    type Future = BoxFuture<Result<Reply, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, call: ServerCall) -> Self::Future {
        if let Some(refusal) = self.auth.refusal(&call) {
            return Box::pin(async move { Err(refusal.into()) });
        }
        let work = self.inner.call(call);
        Box::pin(async move { work.await.map_err(Into::into) })
    }
}

/// The client's layer: puts its token in each call's metadata.
#[derive(Clone, Debug)]
pub struct Token(pub String);

impl<S> Layer<S> for Token {
    type Service = TokenService<S>;

    fn layer(&self, inner: S) -> TokenService<S> {
        TokenService {
            token: self.0.clone(),
            inner,
        }
    }
}

/// The service of the [`Token`] layer.
#[derive(Clone, Debug)]
pub struct TokenService<S> {
    token: String,
    inner: S,
}

impl<S: Service<Call>> Service<Call> for TokenService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> S::Future {
        // A token too long for the metadata is sent without: refused
        // `unauthenticated` by the server.
        let _ = call.meta.insert(AUTHORIZATION, self.token.clone());
        self.inner.call(call)
    }
}

/// The service the example serves.
#[stream_rpc::service]
pub trait Accounts {
    /// The balance of an account.
    async fn balance(&self, account: String) -> u64;
    /// Closes an account: for administrators only.
    async fn close(&self, account: String) -> bool;
}

/// The accounts (fixed, for the example).
pub struct Bank;

impl Accounts for Bank {
    async fn balance(&self, account: String) -> u64 {
        account.len() as u64 * 100
    }

    async fn close(&self, _account: String) -> bool {
        true
    }
}

/// The server's protocol: the accounts under the auth layer. `reader`
/// may read balances; `admin` may do everything.
pub fn protected() -> impl stream_rpc::Protocol {
    let auth = Auth::new([
        (
            "reader-token".to_owned(),
            Allowed::Only(HashSet::from(["balance".to_owned()])),
        ),
        ("admin-token".to_owned(), Allowed::All),
    ]);
    LayeredProtocol::new(AccountsServer::new(Bank), auth)
}

/// A caller over `caller` that sends `token` with every call.
pub fn with_token<C: Caller + 'static>(
    caller: C,
    token: &str,
) -> LayeredCaller<C, TokenService<CallService<C>>> {
    LayeredCaller::new(caller, Token(token.to_owned()))
}

#[allow(dead_code)] // Also compiled as a module of tests/middleware.rs.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = Fernet::generate_key()?;
    let config = |port| {
        Config::builder()
            .key(key.clone())
            .host("127.0.0.1")
            .port(port)
            .build()
    };
    let server = Connector::new(config(0)?).bind().await?;
    let port = server.local_addr().port();
    let shutdown = server.shutdown_handle();
    let serving = tokio::spawn(server.serve(protected()));

    for token in ["guessed", "reader-token", "admin-token"] {
        let client = Connector::new(config(port)?).connect(()).await?;
        let caller = with_token(client, token);
        let accounts = AccountsClient::new(&caller);
        let balance = accounts.balance("alice".into()).await;
        let close = accounts.close("alice".into()).await;
        println!("{token}: balance {balance:?}; close {close:?}");
    }
    // Without the token layer at all: no `authorization` entry.
    let bare = Connector::new(config(port)?).connect(()).await?;
    let refused: Result<Packet, _> = bare
        .call_with(Call::new("balance", stream_rpc::json!({"account": "a"})))
        .await;
    println!("no token layer: {refused:?}");

    shutdown.shutdown();
    serving.await??;
    Ok(())
}
