//! Pulling a pod's files into a local copy (`--into`): the downlink reuses the pack, with the
//! node as the sender and the copy as the receiver's "volume". One pull is one or more pull
//! packs, each asked for ([`request`]), received in ranges the ground asks for ([`receive`]) and
//! applied to the copy, journaled ([`apply`]), while the copy is held locked ([`copy`]).
//!
//! On disk, in the ground's state folder: `pulls/<copy>-<pack>.pack` (a pack being received)
//! and `pulls/<copy>-<pack>.staging/` (its objects, decoded), where `<copy>` is a hash of the
//! copy's path, so two copies never share a file; `locks/copy-<copy>.lock`.

use std::path::Path;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Allowance, ChangeSummary, Client, Ground, GroundError, Progress, io_at};
use crate::id::{ManifestId, NodeId};
use crate::manifest::SkippedReport;
use crate::pack::Limits;
use crate::path::PodName;

mod apply;
mod copy;
mod receive;
mod request;

/// What a pull selects, and how it treats the copy.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `--path` patterns: only what they select (none: the whole volume).
    pub filter: Vec<String>,
    /// Remove from the copy what the pod removed (otherwise it stays).
    pub delete: bool,
    /// Overwrite what the copy's user changed since the last pull (otherwise the pull refuses).
    pub force: bool,
    /// The downlink's rate in bytes per second, if the operator said (`--rate`): the node
    /// compresses as hard as keeps that link busy. (A rate measured on the uplink says
    /// nothing of the downlink.)
    pub rate: Option<f64>,
}

/// The result of a pull.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub pod: String,
    pub node: String,
    pub into: String,
    pub up_to_date: bool,
    /// Applied to the copy. False when the budget, the deadline or the link stopped it.
    pub complete: bool,
    pub changes: ChangeSummary,
    pub pack: Option<String>,
    pub pack_bytes: u64,
    /// Pack bytes durable on the ground.
    pub received: u64,
    /// Where this connection's transfer started (bytes kept from earlier passes).
    pub resumed_from: u64,
    pub root: String,
    /// Pull packs applied: more than one when the selection was larger than the node puts in
    /// one pack.
    pub packs: u32,
    /// What the node left out of the pull (its last answer's report); shown by the caller.
    #[serde(skip)]
    pub skipped: SkippedReport,
}

impl PullReport {
    /// A report of a pull of `pod` into `into` that has done nothing yet, the copy at `root`.
    fn new(pod: &PodName, node: &NodeId, into: &str, root: ManifestId) -> Self {
        Self {
            pod: pod.to_string(),
            node: node.to_hex(),
            into: into.to_string(),
            up_to_date: false,
            complete: false,
            changes: ChangeSummary::default(),
            pack: None,
            pack_bytes: 0,
            received: 0,
            resumed_from: 0,
            root: root.to_hex(),
            packs: 0,
            skipped: SkippedReport::default(),
        }
    }

    /// Adds the report of the next pack of the same pull.
    fn absorb(&mut self, next: PullReport) {
        self.up_to_date &= next.up_to_date;
        self.complete = next.complete;
        self.changes.add(&next.changes);
        self.pack = next.pack.or(self.pack.take());
        self.pack_bytes += next.pack_bytes;
        self.received += next.received;
        self.root = next.root;
        self.packs += next.packs;
        self.skipped = next.skipped;
    }
}

/// Pull packs the node may drop while this ground receives them (each asked for again) before
/// a pull gives up.
const MAX_DROPPED_PULLS: u32 = 3;

/// What the ground accepts from a node's pull packs.
fn ground_limits() -> Limits {
    Limits::default()
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Brings the copy at `into` up to the pod's selection: only what is new or changed
    /// crosses the link, as a delta against the copy. Resumes a pull a cut link stopped. A
    /// selection larger than the node puts in one pull pack comes as several, each applied
    /// before the next is asked for, while the budget and the deadline allow.
    pub async fn pull(
        &mut self,
        ground: &mut Ground,
        pod: &PodName,
        into: &Path,
        opts: &PullOptions,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PullReport, GroundError> {
        std::fs::create_dir_all(into).map_err(io_at(into))?;
        let copy = std::fs::canonicalize(into).map_err(io_at(into))?;
        let key = copy.display().to_string();
        let _lock = ground
            .lock_copy(&key)?
            .ok_or(GroundError::CopyBusy { into: key })?;
        let mut report: Option<PullReport> = None;
        let mut dropped = 0;
        loop {
            let next = self
                .pull_pack(ground, pod, &copy, opts, allow, progress)
                .await;
            let (next, more) = match next {
                // The node dropped the pack while it encoded it (the pod wrote one of its
                // files meanwhile, its disk filled): asked again, it plans a new one.
                Err(GroundError::PullDropped(_)) if dropped < MAX_DROPPED_PULLS => {
                    dropped += 1;
                    continue;
                }
                other => other?,
            };
            let mut all = match report {
                Some(mut all) => {
                    all.absorb(next);
                    all
                }
                None => next,
            };
            if !more || !all.complete {
                return Ok(all);
            }
            if !allow.room_for_another_pull(self.wire_total(), self.rtt) {
                // The next pack is built when the next pull asks: nothing is lost.
                all.complete = false;
                return Ok(all);
            }
            report = Some(all);
        }
    }
}

#[cfg(test)]
mod tests;
