//! The queue's events on Redis: the scripts `PUBLISH` them on
//! `{prefix}:events`; one pub/sub connection per [`RedisQueue`]
//! (subscribed when it connects, so that a receiver misses nothing
//! published after it subscribed; shared by its clones; reconnecting with
//! a bounded backoff, after which the receivers get
//! [`QueueEvent::Lagged`] and re-check) hands them to every local
//! receiver through a broadcast channel.
//!
//! [`RedisQueue`]: super::RedisQueue

use std::time::Duration;

use futures_util::StreamExt;
use stream_rpc::tasks::{TaskRef, TaskState};
use tokio::sync::{broadcast, oneshot, watch};

use crate::{EVENT_CAPACITY, QueueEvent, QueueEvents};

/// The first wait before connecting again after the pub/sub connection
/// failed; doubled each time up to [`MAX_RECONNECT_WAIT`].
const MIN_RECONNECT_WAIT: Duration = Duration::from_millis(50);
/// The longest wait between two attempts to connect.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(2);

/// The events of one queue, shared by its clones.
pub(super) struct EventsHub {
    sender: broadcast::Sender<QueueEvent>,
    /// Dropped with the hub (the last clone of the queue): the listener
    /// stops.
    _stop: watch::Sender<()>,
}

impl EventsHub {
    /// Starts listening to `channel` (on the current tokio runtime) and
    /// waits, at most `connect_timeout`, until the subscription is in
    /// place, so that a receiver taken from then on misses nothing
    /// published after it (if it is not in place by then, the listener
    /// goes on trying in the background, and says so in the log).
    pub(super) async fn start(
        client: redis::Client,
        channel: String,
        connect_timeout: Duration,
    ) -> Self {
        let (sender, _) = broadcast::channel(EVENT_CAPACITY);
        let (stop, stopped) = watch::channel(());
        let (ready, subscribed) = oneshot::channel();
        tokio::spawn(listen(
            client,
            channel,
            connect_timeout,
            sender.clone(),
            stopped,
            ready,
        ));
        if !matches!(
            tokio::time::timeout(connect_timeout, subscribed).await,
            Ok(Ok(()))
        ) {
            tracing::warn!(
                "redis queue: not yet subscribed to the queue's events; trying on in the background"
            );
        }
        EventsHub {
            sender,
            _stop: stop,
        }
    }

    /// A receiver of the events from now on.
    pub(super) fn subscribe(&self) -> QueueEvents {
        QueueEvents::new(self.sender.subscribe())
    }
}

/// Receives the events of `channel` until `stop`'s sender is dropped,
/// connecting again whenever the connection is lost.
async fn listen(
    client: redis::Client,
    channel: String,
    connect_timeout: Duration,
    sender: broadcast::Sender<QueueEvent>,
    mut stop: watch::Receiver<()>,
    ready: oneshot::Sender<()>,
) {
    let mut wait = MIN_RECONNECT_WAIT;
    let mut ready = Some(ready);
    loop {
        let connected = tokio::select! {
            _ = stop.changed() => return,
            connected = tokio::time::timeout(connect_timeout, client.get_async_pubsub()) => connected,
        };
        match connected {
            Ok(Ok(mut pubsub)) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    wait = MIN_RECONNECT_WAIT;
                    tracing::debug!("redis queue: listening to {channel}");
                    match ready.take() {
                        Some(ready) => {
                            let _ = ready.send(());
                        }
                        // Events published while the connection was down
                        // are gone: the receivers re-check.
                        None => {
                            let _ = sender.send(QueueEvent::Lagged { missed: 0 });
                        }
                    }
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = stop.changed() => return,
                            message = messages.next() => match message {
                                Some(message) => match event(message.get_payload_bytes()) {
                                    Some(event) => {
                                        let _ = sender.send(event);
                                    }
                                    None => tracing::debug!("redis queue: an event not understood, ignored"),
                                },
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("redis queue: the events connection was lost; connecting again");
                }
                Err(e) => tracing::warn!("redis queue: cannot subscribe to events: {e}"),
            },
            Ok(Err(e)) => tracing::warn!("redis queue: cannot connect for events: {e}"),
            Err(_) => tracing::warn!("redis queue: connecting for events timed out"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MAX_RECONNECT_WAIT);
    }
}

/// An event as the scripts publish it: `r\nMETHOD`, `f\nSTATE\nREF`,
/// `c\nREF`.
fn event(payload: &[u8]) -> Option<QueueEvent> {
    let text = std::str::from_utf8(payload).ok()?;
    let (kind, rest) = text.split_once('\n')?;
    match kind {
        "r" => Some(QueueEvent::Ready {
            method: rest.to_owned(),
        }),
        "f" => {
            let (state, task) = rest.split_once('\n')?;
            Some(QueueEvent::Finished {
                task: task.parse::<TaskRef>().ok()?,
                state: state.parse::<TaskState>().ok()?,
            })
        }
        "c" => Some(QueueEvent::CancelRequested {
            task: rest.parse::<TaskRef>().ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_the_scripts_publish_them() {
        let task = TaskRef {
            peer: uuid::Uuid::from_u128(9),
            id: 4,
        };
        assert_eq!(
            event(b"r\nparse\narticle"),
            Some(QueueEvent::Ready {
                method: "parse\narticle".into()
            })
        );
        assert_eq!(
            event(format!("f\ndone\n{task}").as_bytes()),
            Some(QueueEvent::Finished {
                task,
                state: TaskState::Done
            })
        );
        assert_eq!(
            event(format!("c\n{task}").as_bytes()),
            Some(QueueEvent::CancelRequested { task })
        );
        for bad in [&b"x\ny"[..], b"f\nnope\n1", b"c\nnot-a-ref", b"\xff", b"r"] {
            assert_eq!(event(bad), None);
        }
    }
}
