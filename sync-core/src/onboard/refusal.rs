//! A request the node could not carry out, as a value: what kind of failure it is (which picks
//! the ground's exit code and retry policy), what to tell the ground, and what becomes of a
//! received pack it concerns. It becomes the wire's `Message::Error` in one place, the
//! `From<Refusal> for Message` below.

use std::fmt::Display;

use crate::pack::PackError;
use crate::state::StateError;
use crate::wire::{ErrorKind, Message};

use super::OnboardError;

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
    /// The pack's changeset is journaled: its renames began and stopped, and the journal
    /// finishes them (before the pod's volume is read again, or at the next start). The pack
    /// stays staged, and the ground is told so.
    pub journaled: bool,
    /// What becomes of the received pack this refusal concerns, if any.
    pub staged: Staged,
}

/// Whether a pack whose apply failed stays staged for the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    /// Never applicable as it is (it failed verification, or the volume moved on): dropped.
    Drop,
    /// Whole and verified, held up by something that passes (a full volume disk), or journaled.
    Keep,
}

/// Put before the message of a journaled refusal on the wire (grounds of every version read
/// it as part of the text).
const JOURNALED: &str = "journaled: ";

impl Refusal {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            journaled: false,
            staged: Staged::Drop,
        }
    }

    /// The volume moved on under the request: the ground learns it again and plans again.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// The request breaks a rule: asking again will not help.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, message)
    }

    /// The node's storage failed or is full: try again later.
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Storage, message)
    }

    /// The node's own state or storage failed with `e`.
    pub fn internal(e: impl Display) -> Self {
        Self::storage(e.to_string())
    }

    /// The apply failed after its changeset was journaled: the pack must not be discarded.
    pub fn journaled(message: impl Into<String>) -> Self {
        Self {
            journaled: true,
            staged: Staged::Keep,
            ..Self::storage(message)
        }
    }

    /// The same refusal, with the received pack it concerns kept staged.
    pub fn keep_staged(self) -> Self {
        Self {
            staged: Staged::Keep,
            ..self
        }
    }
}

impl From<Refusal> for Message {
    fn from(r: Refusal) -> Self {
        let message = if r.journaled {
            format!("{JOURNALED}{}", r.message)
        } else {
            r.message
        };
        Message::Error {
            kind: r.kind,
            message,
        }
    }
}

/// A pack that does not decode or verify: a size over the limits, a base the volume no longer
/// holds, the node's storage, or (everything else) a pack that breaks a rule.
impl From<PackError> for Refusal {
    fn from(e: PackError) -> Self {
        let kind = match &e {
            PackError::OverLimit { .. } => ErrorKind::TooLarge,
            PackError::BaseChanged { .. } | PackError::WrongBase => ErrorKind::Conflict,
            PackError::Io(_) => ErrorKind::Storage,
            _ => ErrorKind::Refused,
        };
        Self::new(kind, e.to_string())
    }
}

/// The node's state database failed.
impl From<StateError> for Refusal {
    fn from(e: StateError) -> Self {
        Self::internal(e)
    }
}

/// The node's state, volumes or a scan failed.
impl From<OnboardError> for Refusal {
    fn from(e: OnboardError) -> Self {
        Self::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journaled_refusal_says_so_on_the_wire_and_keeps_the_pack() {
        let r = Refusal::journaled("disk full");
        assert_eq!(r.staged, Staged::Keep);
        assert_eq!(
            Message::from(r),
            Message::Error {
                kind: ErrorKind::Storage,
                message: "journaled: disk full".into()
            }
        );
        let r = Refusal::conflict("moved on");
        assert_eq!(r.staged, Staged::Drop);
        assert_eq!(
            Message::from(r),
            Message::Error {
                kind: ErrorKind::Conflict,
                message: "moved on".into()
            }
        );
    }
}
