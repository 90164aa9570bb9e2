//! The node's side of a pull (downlink): from a `PullRequest` to a pull pack kept on disk and
//! offered, in steps: the copy's manifest, the selection, what a pull pack may carry, the
//! encoding (with the files a pod writes meanwhile left at the copy's version), the kept pack.
//!
//! - `source`: where a pull pack's bytes come from, and the signatures the node keeps of what
//!   it sends.
//! - `plan`: pure choices of what one pull pack carries (the selection, the memory cap).
//! - `serve`: a kept pull pack's bytes by range, and what its `PullDone` records.

mod plan;
mod serve;
mod source;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;

use cap_std::fs::Dir;

pub use plan::{hold_back, keep_removed, object_cost, over_cap, pin, too_large};
pub use source::{SentVersion, Signing, VolumeSource};

use crate::id::{ContentId, ManifestId, PackId};
use crate::manifest::{Manifest, PathFilter, SkipReason, Skipped};
use crate::pack::{Effort, PackError, Plan};
use crate::path::{PodName, VolumePath};
use crate::state::{PullPack, PullPackKey};
use crate::wire::blob::{self, BlobError};
use crate::wire::{ErrorKind, Message};

use super::{OnboardService, Refusal, with_skipped};

/// Largest manifest of a ground's copy a node takes (decoded, it is held in memory): about
/// 200,000 files.
const MAX_COPY_MANIFEST: usize = 16 << 20;
/// Files found changing while a pull pack is encoded (after the check just before encoding
/// found the rest), each pinned to the copy's version, before the pull gives up for this pass.
const MAX_PULL_RETRIES: u32 = 64;
/// Content of a pull pack's segment: the node encodes in the memory the pods share.
const PULL_SEGMENT_BYTES: u64 = 8 << 20;
/// Content one pull pack carries at most, by default, with the bases it is encoded against:
/// the node holds them in memory while it encodes, so a first pull of a large volume comes as
/// several packs, and a larger file is left out (see [`OnboardService::set_pull_pack_cap`]).
pub const DEFAULT_PULL_PACK_CAP: u64 = 128 << 20;

/// What one pull request works from, once the node knows the copy and has scanned the pod.
struct PullJob<'a> {
    pod: &'a PodName,
    /// The pod's volume.
    dir: Dir,
    /// The pod's volume as just scanned.
    now: Manifest,
    /// The ground's copy.
    base: Manifest,
    /// Versions the node sent before that the copy holds: bases the node may still read.
    sent: Vec<SentVersion>,
    /// Most a pull pack holds in memory ([`OnboardService::set_pull_pack_cap`]).
    cap: u64,
}

impl PullJob<'_> {
    fn source(&self) -> VolumeSource<'_> {
        VolumeSource::new(&self.dir, &self.now, &self.sent, self.cap)
    }

    /// The answer when `target` is what the copy holds already.
    fn same(&self, target: &Manifest) -> Option<Message> {
        (target.root() == self.base.root()).then(|| Message::PullSame {
            root: self.base.root(),
        })
    }
}

/// A pull pack encoded in memory, and what it was encoded from.
struct Encoded {
    bytes: Vec<u8>,
    plan: Plan,
    /// The copy's state once the pack is applied.
    target: Manifest,
    /// Signatures of what the pack carries, kept for the next pull's deltas.
    kept_sigs: HashMap<ContentId, Vec<u8>>,
    /// Part of the selection waits for a later pack (the memory cap).
    more: bool,
    /// Files found changing while they were read: left at the copy's version.
    changing: HashSet<VolumePath>,
}

impl OnboardService {
    /// Sets the most a pull pack may hold in memory on the node while it is encoded: its
    /// files, the bases they are encoded against and the signatures they are diffed with
    /// (`pull::object_cost`). A larger selection comes as several packs, one after another
    /// (`PullOffer::more`). A single file larger than this is left out of pulls and named to
    /// the ground (`SkipReason::TooLarge`), whatever its size is made of: a pod's sparse file
    /// of terabytes costs the node nothing but the time to hash it.
    pub fn set_pull_pack_cap(&mut self, bytes: u64) {
        self.pull_pack_cap = bytes.max(1);
    }

    fn pull_file(&self, pack: &PackId) -> PathBuf {
        self.state_dir
            .join("pulls")
            .join(format!("{}.pack", pack.to_hex()))
    }

    /// Builds (or finds again) the pack that takes the ground's copy to the pod's selection.
    pub(in crate::onboard) fn pull_request(
        &self,
        pod: &PodName,
        filter: &[String],
        delete: bool,
        base_root: ManifestId,
        base_blob: &[u8],
        resume: Option<PackId>,
    ) -> Result<Vec<Message>, Refusal> {
        // A ground that asks from the state one of our pull packs leads to has applied it,
        // whether or not its `PullDone` arrived (the link may have been cut right after the
        // apply): what it delivered serves as bases from now on, or the next pull would send
        // whole files.
        let applied = self.db().pull_pack(pod, PullPackKey::Target(base_root))?;
        if let Some(done) = applied {
            self.pull_done(&done.pack)?;
        }
        if let Some(pack) = resume
            && let Some(p) = self.db().pull_pack(pod, PullPackKey::Id(pack))?
            && self.pull_file(&pack).exists()
        {
            // Whether more follows was not kept: the ground asks once more to find out.
            return Ok(vec![pull_offer(&p, true)]);
        }
        let filter = PathFilter::new(filter).map_err(|e| Refusal::refused(e.to_string()))?;
        let lock = self.pod_lock(pod);
        let _held = lock.lock().expect("pod lock");
        self.settle_pod(pod)?;
        let (now, left_out) = self.scan_pod_reporting(pod)?;
        let base = self.copy_base(pod, base_root, base_blob)?;
        let (selection, report) =
            plan::select(&now, &base, &filter, delete, left_out).map_err(Refusal::internal)?;
        if selection.root() == base.root() {
            let same = Message::PullSame { root: base.root() };
            return Ok(with_skipped(report, same));
        }
        let dir = self
            .volumes
            .pod(pod)
            .map_err(Refusal::internal)?
            .ok_or_else(|| Refusal::new(ErrorKind::NotFound, "the pod has no volume yet"))?;
        let held: Vec<ContentId> = base.entries().iter().filter_map(|e| e.file_id()).collect();
        let sent = self.db().sent_versions(pod, &held)?;
        let job = PullJob {
            pod,
            dir,
            now,
            base,
            sent,
            cap: self.pull_pack_cap,
        };
        self.pack_selection(&job, selection, report)
    }

    /// The ground's copy, named by its root: sent along in `base_blob`, empty, or one this node
    /// remembers.
    fn copy_base(
        &self,
        pod: &PodName,
        base_root: ManifestId,
        base_blob: &[u8],
    ) -> Result<Manifest, Refusal> {
        if !base_blob.is_empty() {
            let m = blob::decode_manifest(base_blob, MAX_COPY_MANIFEST).map_err(|e| match e {
                BlobError::Manifest(e) => Refusal::refused(e.to_string()),
                _ => Refusal::refused("the copy's manifest does not decompress (or is too large)"),
            })?;
            if m.root() != base_root {
                return Err(Refusal::refused(
                    "the copy's manifest does not match its root",
                ));
            }
            return Ok(m);
        }
        if base_root == Manifest::default().root() {
            return Ok(Manifest::default());
        }
        // A copy is usually what an earlier pull made it; a copy that equals the volume as a
        // push left it is found too.
        let db = self.db();
        db.copy_manifest(pod, &base_root)
            .transpose()
            .or_else(|| db.pod_manifest(pod, &base_root).transpose())
            .transpose()?
            .ok_or_else(|| {
                Refusal::new(
                    ErrorKind::NotFound,
                    "this node does not know the copy's manifest; send it",
                )
            })
    }

    /// The answer to a pull of `selection`: the copy has it already, a kept pack that leads
    /// there, or a new pack. `report` names what the selection leaves out.
    fn pack_selection(
        &self,
        job: &PullJob,
        selection: Manifest,
        mut report: Vec<Skipped>,
    ) -> Result<Vec<Message>, Refusal> {
        let selection = leave_out_too_large(job, selection, &mut report)?;
        if let Some(same) = job.same(&selection) {
            return Ok(with_skipped(report, same));
        }
        let roots = PullPackKey::Roots(job.base.root(), selection.root());
        let kept = self.db().pull_pack(job.pod, roots)?;
        if let Some(p) = kept
            && self.pull_file(&p.pack).exists()
        {
            return Ok(with_skipped(report, pull_offer(&p, false)));
        }
        let mut encoded = self.encode_pull(job, selection)?;
        let mut changing: Vec<VolumePath> = encoded.changing.drain().collect();
        changing.sort();
        for p in changing {
            if !report.iter().any(|s| s.path == p.as_str().as_bytes()) {
                report.push(Skipped::new(
                    p.as_str(),
                    SkipReason::Changing { listed: true },
                ));
            }
        }
        if let Some(same) = job.same(&encoded.target) {
            return Ok(with_skipped(report, same));
        }
        let more = encoded.more;
        let p = self.keep_pull_pack(job, encoded)?;
        Ok(with_skipped(report, pull_offer(&p, more)))
    }

    /// Encodes the selection. A file a pod is writing changes under the encoder: it is left at
    /// the copy's version in this pack (it comes with the next pull), never torn.
    fn encode_pull(&self, job: &PullJob, selection: Manifest) -> Result<Encoded, Refusal> {
        let mut bytes = Vec::new();
        let mut tries = 0;
        // Files found changing while they were read.
        let mut changing: HashSet<VolumePath> = HashSet::new();
        // Objects read since the scan and found as it saw them.
        let mut checked: HashSet<ContentId> = HashSet::new();
        loop {
            let source = Signing::new(job.source());
            let (target, plan, more) = plan_within_cap(job, &source, &selection, &changing)?;
            // Every file of this pack the pod wrote since the scan, found in one pass through
            // a fixed buffer rather than one encoding attempt at a time.
            let moved = source.changed_since_scan(&plan, &mut checked);
            if !moved.is_empty() {
                changing.extend(moved);
                continue;
            }
            tries += 1;
            let signatures = self.kept_signatures(job, &plan)?;
            bytes.clear();
            let effort = Effort {
                segment_bytes: PULL_SEGMENT_BYTES,
                ..Effort::max()
            };
            let encoded = plan.encode(
                &job.base,
                &source,
                &signatures,
                &self.limits,
                &effort,
                &mut bytes,
            );
            let kept_sigs = source.into_signatures();
            match encoded {
                Ok(_) => {
                    return Ok(Encoded {
                        bytes,
                        plan,
                        target,
                        kept_sigs,
                        more,
                        changing,
                    });
                }
                // Each changed file is pinned to the copy's version and the pack encoded again.
                Err(PackError::SourceChanged { path }) if tries < MAX_PULL_RETRIES => {
                    changing.insert(VolumePath::new(path).map_err(Refusal::internal)?);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Files changed in place (a database) go as deltas against the signature the node kept
    /// of the version it sent: those of the plan's rsync bases, by entry index.
    fn kept_signatures(
        &self,
        job: &PullJob,
        plan: &Plan,
    ) -> Result<HashMap<u32, Vec<u8>>, Refusal> {
        let wanted: Vec<u32> = plan.signature_requests();
        let entries = job.base.entries();
        let ids: Vec<ContentId> = wanted
            .iter()
            .filter_map(|&i| entries[i as usize].file_id())
            .collect();
        let by_id = self.db().sent_signatures(job.pod, &ids)?;
        Ok(wanted
            .iter()
            .filter_map(|&i| {
                let id = entries[i as usize].file_id()?;
                by_id.get(&id).map(|s| (i, s.clone()))
            })
            .collect())
    }

    /// Writes the encoded pack durably to `pulls/` and records it, with what it delivers.
    fn keep_pull_pack(&self, job: &PullJob, mut encoded: Encoded) -> Result<PullPack, Refusal> {
        let bytes = &encoded.bytes;
        let pack_id = PackId::of(bytes);
        let path = self.pull_file(&pack_id);
        fs::create_dir_all(path.parent().expect("pulls folder"))
            .and_then(|()| crate::object::write_durably(&path.with_extension("tmp"), &path, bytes))
            .map_err(Refusal::internal)?;
        let p = PullPack {
            pack: pack_id,
            pod: job.pod.clone(),
            len: bytes.len() as u64,
            base_root: job.base.root(),
            target_root: encoded.target.root(),
            sent: encoded
                .plan
                .objects
                .iter()
                .map(|o| {
                    (
                        SentVersion {
                            id: o.id,
                            path: o.path.clone(),
                            len: o.size,
                        },
                        encoded.kept_sigs.remove(&o.id),
                    )
                })
                .collect(),
        };
        let db = self.db();
        db.put_pull_pack(&p)?;
        // The copy's manifest once this pack is applied: the next pull names it by its root.
        db.remember_copy_manifest(job.pod, &encoded.target)?;
        Ok(p)
    }
}

/// A file larger than a pull may hold in memory is left out, whatever its size is made of (a
/// sparse file counts at its full size: the node would read every byte of it), and named.
fn leave_out_too_large(
    job: &PullJob,
    target: Manifest,
    report: &mut Vec<Skipped>,
) -> Result<Manifest, Refusal> {
    let source = job.source();
    let plan = Plan::new(&job.base, &target, &|id| source.may_hold(id));
    let large = too_large(&plan, job.cap);
    if large.is_empty() {
        return Ok(target);
    }
    let paths: HashSet<VolumePath> = large.iter().map(|(p, _)| p.clone()).collect();
    let target = pin(&target, &job.base, &paths).map_err(Refusal::internal)?;
    let cap = job.cap;
    report.extend(
        large
            .into_iter()
            .map(|(p, size)| Skipped::new(p.as_str(), SkipReason::TooLarge { size, cap })),
    );
    Ok(target)
}

/// The selection with the `changing` files at the copy's version, planned, and cut to the
/// memory cap: the target, its plan, and whether part of the selection waits for a later pack.
fn plan_within_cap(
    job: &PullJob,
    source: &Signing,
    selection: &Manifest,
    changing: &HashSet<VolumePath>,
) -> Result<(Manifest, Plan, bool), Refusal> {
    let base = &job.base;
    let target = pin(selection, base, changing).map_err(Refusal::internal)?;
    let plan = Plan::new(base, &target, &|id| source.may_hold(id));
    // The cap is taken after the changing files are out, so that one file a pod keeps writing
    // never holds back the rest of the selection.
    let over = over_cap(&plan, base, job.cap);
    if over.is_empty() {
        return Ok((target, plan, false));
    }
    // The rest stays at the copy's version for this pack and comes with the next.
    let target = pin(&target, base, &over).map_err(Refusal::internal)?;
    let plan = Plan::new(base, &target, &|id| source.may_hold(id));
    Ok((target, plan, true))
}

fn pull_offer(p: &PullPack, more: bool) -> Message {
    Message::PullOffer {
        pack: p.pack,
        len: p.len,
        base_root: p.base_root,
        target_root: p.target_root,
        more,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Regression (found by the soak): a link cut right after the ground applied a pull lost
    /// its `PullDone`, the node never recorded what it delivered, and the next pull sent whole
    /// files instead of deltas. A pull asked from the state a kept pull pack leads to now
    /// counts as its `PullDone`.
    #[test]
    fn a_pull_asked_from_a_packs_target_counts_as_its_done() {
        let (t, svc) = super::super::service_for_test();
        let svc = Arc::new(svc);
        let pod = PodName::new("p".to_string()).unwrap();
        let body = b"results, line after line\n".repeat(100);
        fs::create_dir_all(t.path().join("v/p")).unwrap();
        fs::write(t.path().join("v/p/r.txt"), &body).unwrap();
        let ask = |base_root| Message::PullRequest {
            pod: pod.clone(),
            filter: Vec::new(),
            delete: false,
            base_root,
            base: Vec::new(),
            resume: None,
        };
        let mut s = svc.session();
        let out = s.handle(ask(Manifest::default().root()));
        let Some(Message::PullOffer { target_root, .. }) = out.replies.last().cloned() else {
            panic!("{:?}", out.replies);
        };
        // No PullDone: the link was cut.
        let id = ContentId::of(&body);
        assert!(svc.db().sent_versions(&pod, &[id]).unwrap().is_empty());
        let out = s.handle(ask(target_root));
        assert!(
            matches!(out.replies.last(), Some(Message::PullSame { .. })),
            "{:?}",
            out.replies
        );
        assert_eq!(svc.db().sent_versions(&pod, &[id]).unwrap().len(), 1);
    }
}
