//! The messages of the link protocol (version [`PROTOCOL_VERSION`]).

use serde::{Deserialize, Serialize};

use crate::id::{ManifestId, NodeId, PackId};
use crate::manifest::Skipped;
use crate::pack::Limits;
use crate::path::{PodName, VolumePath};

/// Version 6 sends a pull pack while the node encodes it: [`Message::PullOffer`]'s length is
/// optional, and [`Message::PackEnd`] goes onboard → ground too; [`Message::PullRequest`] says
/// the downlink's rate. Version 5 sent a push's pack
/// while it is encoded: [`Message::PackOffer`]'s length became optional and
/// [`Message::PackEnd`] gives it once known. Version 4 added [`Message::Skipped`]. Every other
/// message encodes as it did.
pub const PROTOCOL_VERSION: u16 = 6;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Onboard → ground, first after the handshake: who this node is and what it accepts.
    Welcome {
        node: NodeId,
        limits: Limits,
        software: String,
    },
    /// Ground → onboard: the pod's current manifest, please; `known` is the one the ground
    /// already has, so the answer can be "same" or a delta from it.
    ManifestRequest {
        pod: PodName,
        known: Option<ManifestId>,
    },
    ManifestReply {
        pod: PodName,
        root: ManifestId,
        body: ManifestBody,
    },
    /// Ground → onboard: rsync signatures of these entries of manifest `base_root`.
    SignatureRequest {
        pod: PodName,
        base_root: ManifestId,
        entries: Vec<u32>,
    },
    /// zstd of postcard `Vec<(u32, Vec<u8>)>`: entry index and serialized signature.
    Signatures {
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
    },
    /// Ground → onboard: a pack of `len` bytes for `pod` is coming (`None`: it is still being
    /// encoded, and [`Message::PackEnd`] follows its last byte). `scope`: the folder the
    /// push replaces (`--dest`); the pack changes nothing outside it but that folder's
    /// ancestors, so it still applies if the pod changed only files elsewhere since
    /// `base_root`. `None`: the whole volume, which must still be at `base_root`.
    PackOffer {
        pod: PodName,
        pack: PackId,
        len: Option<u64>,
        base_root: ManifestId,
        target_root: ManifestId,
        scope: Option<VolumePath>,
    },
    /// Onboard → ground: send from `offset` (what is already durably staged).
    PackAccept { pack: PackId, offset: u64 },
    /// Ground → onboard: pack bytes at `offset`, for the pack accepted on this connection.
    PackData {
        offset: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Onboard → ground: everything below `offset` of the pack accepted on this connection is
    /// durably stored.
    PackAck { offset: u64 },
    /// Onboard → ground: the pack is verified and applied; the volume is at `root` (the
    /// offer's `target_root`, unless the pod changed files outside the scope meanwhile).
    PackApplied { pack: PackId, root: ManifestId },
    /// Either way: a request failed. The connection stays usable unless the sender closes it.
    Error { kind: ErrorKind, message: String },
    /// Ground → onboard: done; close cleanly.
    Bye,
    /// Either way, when a side has sent nothing for a while: "still here". Lets each side
    /// notice a silent link within seconds even while the other is busy applying or waiting.
    KeepAlive,
    /// Ground → onboard: this ground gave the pack up (replaced, or its base is gone); drop
    /// what was staged of it. No answer.
    PackCancel { pack: PackId },
    /// Ground → onboard: the files of `pod` that `filter` selects (`--path` patterns), as a
    /// pack from the ground's copy, whose manifest is `base_root` (sent in `base`, zstd, when
    /// the node may not know it). Without `delete`, files gone onboard stay in the copy.
    /// `resume`: a pull pack the ground has partly, to continue instead. `rate`: the bytes
    /// per second the ground expects the downlink to carry, if it knows (the node picks how
    /// hard to compress so that the link does not wait for it).
    PullRequest {
        pod: PodName,
        filter: Vec<String>,
        delete: bool,
        base_root: ManifestId,
        #[serde(with = "serde_bytes")]
        base: Vec<u8>,
        resume: Option<PackId>,
        rate: Option<u64>,
    },
    /// Onboard → ground: the pull pack, `len` bytes, taking the copy to `target_root` (`None`:
    /// the node is still encoding it; the reply to the `PullRange` that reaches its end carries
    /// a [`Message::PackEnd`]). `more`: the selection was larger than one pull pack may be (the
    /// signatures a pack's deltas need are held in memory while it is encoded), so this pack
    /// carries a part of it and the ground asks again once it is applied.
    PullOffer {
        pack: PackId,
        len: Option<u64>,
        base_root: ManifestId,
        target_root: ManifestId,
        more: bool,
    },
    /// Onboard → ground: the copy already holds the selection.
    PullSame { root: ManifestId },
    /// Ground → onboard: send bytes `offset..offset + len` of pull pack `pack` (as `PackData`).
    /// Of a pull pack still being encoded, the node answers once those bytes are written (or
    /// the pack ends within them: then a [`Message::PackEnd`] follows the data); a range that
    /// starts past the end gets no answer.
    PullRange { pack: PackId, offset: u64, len: u64 },
    /// Ground → onboard: the pull pack is applied to the copy; the node may forget it.
    PullDone { pack: PackId },
    /// Onboard → ground, just before a `ManifestReply`, `PullOffer` or `PullSame`, and only
    /// when there is any: entries of the pod's volume (in the pull's selection) that the answer
    /// leaves out, and why. At most [`MAX_SKIPPED_NAMED`] are named; `more` counts the rest.
    ///
    /// [`MAX_SKIPPED_NAMED`]: crate::manifest::MAX_SKIPPED_NAMED
    Skipped { entries: Vec<Skipped>, more: u64 },
    /// Ground → onboard: the pack accepted on this connection, offered while it was being
    /// encoded, is whole at `len` bytes. Onboard → ground: the pull pack being encoded when
    /// offered is whole at `len` bytes.
    PackEnd { pack: PackId, len: u64 },
}

/// How a pod's manifest travels: not at all when the ground's copy is current, as the changes
/// since the ground's copy when the onboard side still has that copy, else in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManifestBody {
    Same,
    /// zstd of postcard `Vec<Change>` from manifest `from`.
    Delta {
        from: ManifestId,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
    },
    /// zstd of the canonical manifest encoding.
    Full {
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
    },
}

/// What went wrong on the other side, so the ground can pick an exit code and a retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request broke a rule (bad path, bad pod name, malformed data): retrying will not help.
    Refused,
    /// A size over the receiver's limits.
    TooLarge,
    /// The volume changed under the request (a base is gone): learn the manifest and retry.
    Conflict,
    /// Something named does not exist.
    NotFound,
    /// The receiver's disk is full or its storage failed: retry later.
    Storage,
    /// A bug or an unexpected message.
    Protocol,
    /// Another connection of the same ground took over this transfer: stop, keep everything.
    Superseded,
    /// The node is at its limit of this work now (pull packs being encoded): try again later.
    Busy,
}
