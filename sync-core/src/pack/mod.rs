//! A changeset on the wire, like a git packfile: the manifest changes and every new object,
//! encoded against bases, in one self-delimiting byte stream. Transfers resume by byte offset
//! into it, so it is built once, persisted, and never re-encoded for a retry.
//!
//! - [`format`](mod@format): the byte layout and the header types (the only place that knows them).
//! - [`build`]: plan which objects to send and against which bases.
//! - [`encode`]: encode a plan as a stream of segments, in bounded memory; [`anchor`] finds the
//!   stretches of a large base that a piece of its new version matches.
//! - [`read`]: decode as a stream with every size capped, verify every object and the target root.

pub mod anchor;
pub mod build;
pub mod encode;
pub mod format;
mod pool;
pub mod read;

pub use build::{BaseChoice, Plan, PlanStats, PlannedObject};
pub use encode::{ContentProvider, Effort, TargetReader};
pub use format::{Encoding, Item, Limits, PackHeader, PrefixPart, SegmentHead};
pub use read::{BaseReader, DecodedPack, ObjectSink, decode_pack, read_header, target_on};

use crate::id::ContentId;
use crate::manifest::ManifestError;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// not a pack
    #[error("not a pack (bad magic)")]
    Magic,
    /// a pack format this build does not read
    #[error("pack format version {0} is not supported (this build reads version {v})", v = format::VERSION)]
    Version(u8),
    /// a header that does not decode
    #[error("pack header is malformed: {0}")]
    Header(String),
    /// a declared size over a limit
    #[error("pack {what} of {value} is over the limit of {limit}")]
    OverLimit {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    /// a header that is well-formed but inconsistent
    #[error("pack is inconsistent: {0}")]
    Structure(String),
    /// the stream ended before the pack did
    #[error("pack is truncated")]
    Truncated,
    /// bytes after the last segment, or inside a segment after its last item
    #[error("pack has {0} unexpected trailing bytes")]
    Trailing(&'static str),
    /// a base on the receiver is no longer what the sender encoded against
    #[error("base {path} no longer holds content {expected:?} (changed onboard?)")]
    BaseChanged { path: String, expected: ContentId },
    /// the pack was built against another manifest than the receiver's
    #[error("pack was built against another volume state than the one it is applied to")]
    WrongBase,
    /// content the sender was to read changed under it
    #[error("{path} changed while the pack was being built; run it again")]
    SourceChanged { path: String },
    #[error(transparent)]
    Delta(#[from] crate::delta::DeltaError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// a segment's compressed frame that does not decode (corrupt or hostile data)
    #[error("pack data does not decode: {0}")]
    Frame(String),
    #[error("I/O: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for PackError {
    fn from(e: std::io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|i| i.downcast_ref::<read::FrameError>())
        {
            Some(f) => PackError::Frame(f.0.clone()),
            None => PackError::Io(e),
        }
    }
}

#[cfg(test)]
mod tests;
