//! A turn's frames: opened under the key, checked against the replay
//! store, and each one that passes handed to dispatch (`dispatch.rs`).
//!
//! The engine opens tokens in one place, [`ReadLoop::open_all`], and asks
//! the cipher for replay fingerprints in one place,
//! [`ReadLoop::fingerprint`].

use std::time::SystemTime;

use bytes::BytesMut;

use super::reader::ReadLoop;
use crate::logging::Refusal;
use crate::packet::Packet;
use crate::protocol::Protocol;
use crate::replay::{ReceivedToken, Verdict};
use crate::session::{EndReason, refusal_log};

/// The largest plaintext buffer the read loop keeps between frames.
const KEEP_PLAIN: usize = 64 * 1024;

/// What becomes of one frame of a turn.
enum Admission {
    /// Authentic and new: handle it.
    Admitted,
    /// Dropped (and logged); the connection goes on.
    Dropped,
    /// The replay store could not check it: a request is answered
    /// `unavailable`.
    Unchecked,
    /// Dropped, and one bad frame too many: the connection closes.
    Close(EndReason),
}

impl<P: Protocol> ReadLoop<P> {
    /// Notes the replay fingerprints of a turn's frames in `fingerprints`
    /// and asks the replay store to prefetch them, when replay protection
    /// is on. Looking the whole turn up at once lets the memory reads of an
    /// in-process store overlap with opening the tokens.
    pub(super) fn fingerprint(&self, frames: &[BytesMut], fingerprints: &mut Vec<u64>) {
        let Some(replay) = &self.shared.replay else {
            return;
        };
        fingerprints.clear();
        let cipher = &self.shared.cipher;
        fingerprints.extend(
            frames
                .iter()
                .map(|frame| replay.fingerprint(cipher.identity(frame))),
        );
        replay.prefetch(fingerprints);
    }

    /// Handles a turn's frames: opens them all as of one reading of the
    /// clock (they arrived together), asks the replay store about the ones
    /// that opened in one call, then handles them in order. `fingerprints`
    /// are their tokens' fingerprints when replay protection is on.
    pub(super) async fn on_turn(
        &mut self,
        frames: &[BytesMut],
        fingerprints: &[u64],
    ) -> Option<EndReason> {
        self.open_all(frames);
        self.check_replays(fingerprints).await;
        let mut verdicts = 0;
        for index in 0..frames.len() {
            match self.admit(index, &mut verdicts) {
                Admission::Admitted => {}
                Admission::Dropped => continue,
                Admission::Unchecked => {
                    self.answer_unchecked(&self.plains[index]).await;
                    continue;
                }
                Admission::Close(reason) => return Some(reason),
            }
            self.bad_in_row = 0;
            // Opened under the key: whatever it holds, the peer has the key.
            self.authentic = true;
            self.shared.note_received();
            match Packet::from_json(&self.plains[index]) {
                Ok(packet) => self.dispatch(packet, self.plains[index].len()).await,
                Err(e) => self.reject_invalid(&self.plains[index], &e).await,
            }
        }
        None
    }

    /// Opens every frame of a turn into `plains`, noting in `opened`
    /// whether it opened and when its token says it was made.
    fn open_all(&mut self, frames: &[BytesMut]) {
        let now = SystemTime::now();
        if self.plains.len() < frames.len() {
            self.plains.resize_with(frames.len(), Vec::new);
        }
        self.opened.clear();
        for (frame, plain) in frames.iter().zip(&mut self.plains) {
            if plain.capacity() > KEEP_PLAIN {
                *plain = Vec::new();
            }
            plain.clear();
            self.opened
                .push(self.shared.cipher.open_at(frame, now, plain));
        }
    }

    /// Asks the replay store, in one call, about the tokens that opened;
    /// its answers are in `verdicts`, in order.
    async fn check_replays(&mut self, fingerprints: &[u64]) {
        let Some(replay) = &self.shared.replay else {
            return;
        };
        self.tokens.clear();
        self.verdicts.clear();
        for (opened, &fingerprint) in self.opened.iter().zip(fingerprints) {
            if let Ok(time) = *opened {
                self.tokens.push(ReceivedToken { fingerprint, time });
            }
        }
        if !self.tokens.is_empty() {
            replay.received(&self.tokens, &mut self.verdicts).await;
        }
    }

    /// Decides about frame `index` of the turn: whether it opened, and
    /// what the replay store said of it (`verdicts` counts the verdicts
    /// used so far: there is one per frame that opened).
    fn admit(&mut self, index: usize, verdicts: &mut usize) -> Admission {
        if let Err(e) = &self.opened[index] {
            crate::telemetry::bad_frame(crate::telemetry::cipher_kind(e));
            // The peer is told nothing about why.
            refusal_log!(
                self.shared,
                Refusal::Undecryptable,
                "dropped a frame that failed to decrypt: {e} ({} in a row)",
                self.bad_in_row + 1
            );
            return self
                .bad_frame()
                .map_or(Admission::Dropped, Admission::Close);
        }
        if self.shared.replay.is_none() {
            return Admission::Admitted;
        }
        // A store that answered short refused the rest.
        let verdict = self
            .verdicts
            .get(*verdicts)
            .copied()
            .unwrap_or(Verdict::Unavailable);
        *verdicts += 1;
        match verdict {
            Verdict::New => Admission::Admitted,
            Verdict::Unavailable => {
                // Not the peer's doing: the store could not check the
                // token. It is not run, nor counted against the peer; a
                // request is told so, to try again or elsewhere.
                crate::telemetry::bad_frame(crate::telemetry::replay_kind(verdict));
                refusal_log!(
                    self.shared,
                    Refusal::Unchecked,
                    "dropped {}; a request is answered `unavailable`",
                    verdict.describe()
                );
                Admission::Unchecked
            }
            _ => {
                crate::telemetry::bad_frame(crate::telemetry::replay_kind(verdict));
                refusal_log!(
                    self.shared,
                    Refusal::Replayed,
                    "dropped {} ({} bad frames in a row)",
                    verdict.describe(),
                    self.bad_in_row + 1
                );
                self.bad_frame()
                    .map_or(Admission::Dropped, Admission::Close)
            }
        }
    }
}
