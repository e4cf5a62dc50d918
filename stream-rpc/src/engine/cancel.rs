//! `call.cancel` on the serving side (PROTOCOL.md, "Cancelling a call"):
//! the requests whose handler is running, by their `peer` and `id`, each
//! with the token its [`Context`](crate::Context) watches; a `call.cancel`
//! naming one cancels its token. A frame of that method is never run as a
//! call and never answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::reader::ReadLoop;
use crate::logging::{Escaped, Refusal};
use crate::packet::{Packet, ReplyTo};
use crate::protocol::Protocol;
use crate::session::{refusal_log, session_log};
use crate::sync::lock;

/// The requests whose handler waits (holds a handler slot), by the
/// request's `peer` and `id`: at most
/// [`Limits::max_concurrent_handlers`](crate::Limits::max_concurrent_handlers)
/// entries, as each handler takes its entry out when it ends.
#[derive(Default)]
pub(super) struct Running(Mutex<HashMap<ReplyTo, CancellationToken>>);

impl Running {
    /// Notes the handler of `request`, running until its [`Registered`]
    /// drops.
    pub(super) fn register(
        self: &Arc<Self>,
        request: ReplyTo,
        token: CancellationToken,
    ) -> Registered {
        lock(&self.0).insert(request, token);
        Registered {
            running: self.clone(),
            request,
        }
    }

    /// Cancels the handler of `request`; whether one was running.
    fn cancel(&self, request: ReplyTo) -> bool {
        match lock(&self.0).get(&request) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// Takes a running handler's entry out when it ends, however it ends.
pub(super) struct Registered {
    running: Arc<Running>,
    request: ReplyTo,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.running.0).remove(&self.request);
    }
}

/// The payload of `call.cancel`: the request it cancels.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    peer: Uuid,
    id: u64,
}

impl<P: Protocol> ReadLoop<P> {
    /// Handles a `call.cancel` from the peer: cancels the request it
    /// names, if its handler is still running. Malformed (a reply, an
    /// error packet, a payload that names no request) it is dropped and
    /// counted; naming no running request, dropped at DEBUG.
    pub(super) fn on_call_cancel(&self, packet: &Packet) {
        let target = (!packet.is_reply() && !packet.is_stream())
            .then(|| Target::deserialize(&packet.payload).ok())
            .flatten();
        let Some(Target { peer, id }) = target else {
            crate::telemetry::call_cancel("invalid");
            refusal_log!(
                self.shared,
                Refusal::InvalidPacket,
                "dropped `{}`: it must name a request as {{\"peer\": P, \"id\": N}} and answer nothing",
                Escaped::method(&packet.method)
            );
            return;
        };
        if self.running.cancel(ReplyTo { peer, id }) {
            crate::telemetry::call_cancel("cancelled");
            session_log!(
                debug,
                self.shared,
                "request {id} from {peer} cancelled by its caller"
            );
        } else {
            crate::telemetry::call_cancel("unknown");
            session_log!(
                debug,
                self.shared,
                "dropped a `call.cancel` of request {id} from {peer}: it is not running"
            );
        }
    }
}
