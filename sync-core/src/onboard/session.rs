//! One connection's session: each message from the ground becomes the request it names, and
//! its result (or its [`Refusal`]) becomes the replies and what the connection does next.

use std::fs;
use std::sync::Arc;

use crate::state::IncomingPack;
use crate::wire::{ErrorKind, Message};

use super::pull::PullAsk;
use super::receive::Receiving;
use super::{OnboardService, Refusal, Staged};

/// What the connection should do after a message.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub replies: Vec<Message>,
    pub close: bool,
    /// Send the replies, then call [`OnboardSession::go_on`]: a whole pack is acknowledged
    /// before its (possibly long) apply starts, so the ground knows every byte is durable.
    pub more: bool,
}

impl Outcome {
    /// These replies, and the connection goes on reading.
    pub(super) fn replies(replies: Vec<Message>) -> Self {
        Self {
            replies,
            close: false,
            more: false,
        }
    }
}

impl From<Refusal> for Outcome {
    fn from(r: Refusal) -> Self {
        Self::replies(vec![r.into()])
    }
}

pub struct OnboardSession {
    pub(super) svc: Arc<OnboardService>,
    /// A whole pack received and acknowledged, to apply next.
    pub(super) to_apply: Option<IncomingPack>,
    pub(super) incoming: Option<Receiving>,
}

impl OnboardSession {
    pub(super) fn new(svc: Arc<OnboardService>) -> Self {
        Self {
            svc,
            to_apply: None,
            incoming: None,
        }
    }

    /// Handles one message from the ground. Blocking (storage I/O); run it off the async reactor.
    pub fn handle(&mut self, msg: Message) -> Outcome {
        self.dispatch(msg).unwrap_or_else(Outcome::from)
    }

    fn dispatch(&mut self, msg: Message) -> Result<Outcome, Refusal> {
        let svc = &self.svc;
        match msg {
            Message::ManifestRequest { pod, known } => {
                Ok(Outcome::replies(svc.manifest_reply(pod, known)?))
            }
            Message::SignatureRequest {
                pod,
                base_root,
                entries,
            } => Ok(Outcome::replies(vec![
                svc.signatures(&pod, &base_root, &entries)?,
            ])),
            Message::PackOffer {
                pod,
                pack,
                len,
                base_root,
                target_root,
                scope,
            } => self.offer(IncomingPack {
                pack,
                pod,
                len,
                received: 0,
                base_root,
                target_root,
                boot: String::new(),
                scope,
            }),
            Message::PackData { offset, bytes } => self.data(offset, &bytes),
            Message::PackEnd { pack, len } => self.end(pack, len),
            Message::KeepAlive => Ok(Outcome::default()),
            Message::PullRequest {
                pod,
                filter,
                delete,
                base_root,
                base,
                resume,
                rate,
            } => Ok(Outcome::replies(svc.pull_request(PullAsk {
                pod: &pod,
                filter: &filter,
                delete,
                base_root,
                base: &base,
                resume,
                rate,
            })?)),
            Message::PullRange { pack, offset, len } => {
                Ok(Outcome::replies(svc.pull_range(&pack, offset, len)?))
            }
            Message::PullDone { pack } => {
                svc.pull_done(&pack)?;
                Ok(Outcome::default())
            }
            Message::PackCancel { pack } => {
                self.cancel(pack);
                Ok(Outcome::default())
            }
            // A goodbye gets the last acknowledgement, so the ground knows where the next pass
            // starts.
            Message::Bye => Ok(Outcome {
                replies: self.flush().into_iter().collect(),
                close: true,
                more: false,
            }),
            other => Err(Refusal::new(
                ErrorKind::Protocol,
                format!("unexpected message {}", message_name(&other)),
            )),
        }
    }

    /// Work an earlier [`Outcome`] asked to go on with: applying a whole pack.
    pub fn go_on(&mut self) -> Outcome {
        self.apply_received().unwrap_or_else(Outcome::from)
    }

    fn apply_received(&mut self) -> Result<Outcome, Refusal> {
        let Some(info) = self.to_apply.take() else {
            return Ok(Outcome::default());
        };
        let pack = info.pack;
        match self.svc.apply_pack(&info) {
            Ok(root) => Ok(Outcome::replies(vec![Message::PackApplied { pack, root }])),
            Err(e) => {
                // A pack that failed verification is never retried as is; one whose changeset
                // is journaled is finished at the next start; one a full volume disk held up
                // stays staged, so the ground's retry applies it without sending it again.
                match e.staged {
                    Staged::Drop => self.svc.discard(&pack),
                    // Its decoded objects are made again from the pack next time.
                    Staged::Keep => {
                        let _ = fs::remove_dir_all(self.svc.staging_dir(&pack));
                    }
                }
                Err(e)
            }
        }
    }
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::Welcome { .. } => "Welcome",
        Message::ManifestRequest { .. } => "ManifestRequest",
        Message::ManifestReply { .. } => "ManifestReply",
        Message::SignatureRequest { .. } => "SignatureRequest",
        Message::Signatures { .. } => "Signatures",
        Message::PackOffer { .. } => "PackOffer",
        Message::PackEnd { .. } => "PackEnd",
        Message::PackAccept { .. } => "PackAccept",
        Message::PackData { .. } => "PackData",
        Message::PackAck { .. } => "PackAck",
        Message::PackApplied { .. } => "PackApplied",
        Message::Error { .. } => "Error",
        Message::Bye => "Bye",
        Message::KeepAlive => "KeepAlive",
        Message::PackCancel { .. } => "PackCancel",
        Message::PullRequest { .. } => "PullRequest",
        Message::PullOffer { .. } => "PullOffer",
        Message::PullSame { .. } => "PullSame",
        Message::PullRange { .. } => "PullRange",
        Message::PullDone { .. } => "PullDone",
        Message::Skipped { .. } => "Skipped",
    }
}
