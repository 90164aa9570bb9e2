//! A received pack, from its staged bytes to the pod's volume: decoded against the state it
//! was planned on (every object hashed, every base verified, the target root checked), placed
//! in the volume under temporary names, then journaled and renamed into place through
//! [`crate::apply`], which the ground's pull shares. Here are the pod's [`Journal`]
//! ([`PackJournal`]: the onboard state's `journal` table, one entry per pack, whose end also
//! drops what was staged of the pack) and what each outcome of a roll-forward means for a pod.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::time::Instant;

use cap_std::fs::Dir;

use crate::id::{ManifestId, PackId};
use crate::manifest::Manifest;
use crate::pack::{self, DecodedPack, PackError};
use crate::path::{PodName, VolumePath};
use crate::state::{IncomingPack, JournalEntry};
use crate::volume::{self, ApplyPlan, VolumeError};

use super::follow::Follower;
use super::{OnboardError, OnboardService, Refusal};
use crate::apply::{self, ApplyError, Journal, Settled};

impl OnboardService {
    /// Decodes, verifies and applies a completely received pack.
    pub(super) fn apply_pack(&self, inc: &IncomingPack) -> Result<ManifestId, Refusal> {
        // Taken first, so that whatever ends this apply early stops it before anything else
        // touches the pack's staging folder.
        let followed = self.take_follower(&inc.pack);
        let lock = self.pod_lock(&inc.pod);
        let _held = lock.lock().expect("pod lock");
        let started = Instant::now();
        self.settle_pod(&inc.pod)?;
        // The volume as it is now, and the state the pack was planned on: the same, or (for a
        // push into a folder) differing only outside that folder.
        let now = self.scan_pod(&inc.pod)?;
        // Another connection applied it a moment ago (the ground reconnected meanwhile).
        if self.db().applied(&inc.pack, &inc.pod)? == Some(now.root()) {
            return Ok(now.root());
        }
        let base = if now.root() == inc.base_root {
            now.clone()
        } else {
            self.scoped_base(&inc.pod, &inc.base_root, inc.scope.as_ref(), &now)?
                .ok_or_else(|| {
                    Refusal::conflict(
                        "the pod's volume changed since this pack was planned; plan again",
                    )
                })?
        };
        let vol = self
            .volumes
            .create_pod(&inc.pod)
            .map_err(Refusal::internal)?;
        let scanned = Instant::now();
        let decoded = self.decode_staged(inc, &base, &vol, followed)?;
        let result = pack::target_on(&now, &decoded).map_err(|e| match e {
            PackError::Manifest(_) => {
                Refusal::conflict(format!("the pod changed what the pack uses: {e}"))
            }
            other => other.into(),
        })?;
        let decoded_at = Instant::now();
        let plan = self.place(inc, &vol, &now, &decoded)?;
        let placed = Instant::now();
        let journal = PackJournal {
            svc: self,
            pack: inc.pack,
            pod: &inc.pod,
        };
        // Should a rename fail, the journal keeps the changeset and the next start finishes it.
        apply::apply_journaled(&vol, &plan, &inc.pack.short(), &journal).map_err(|e| match e {
            ApplyError::Journal(e) => Refusal::from(e),
            ApplyError::Unfinished(e) => Refusal::journaled(format!(
                "{e}; the changeset stays journaled and is finished when the daemon next starts"
            )),
        })?;
        let db = self.db();
        db.remember_pod_manifest(&inc.pod, &result)?;
        db.remember_applied(&inc.pack, &inc.pod, &result.root())?;
        let done = Instant::now();
        // One line per applied pack, with where its time went: the operator's view of a
        // daemon that has no shell, and the figures a slow apply is tuned from.
        eprintln!(
            "pod {}: applied pack {} ({} changes) in {:.2} s: scan {:.2}, decode {:.2}, place {:.2}, rename and sync {:.2}",
            inc.pod,
            inc.pack.short(),
            decoded.header.changes.len(),
            (done - started).as_secs_f64(),
            (scanned - started).as_secs_f64(),
            (decoded_at - scanned).as_secs_f64(),
            (placed - decoded_at).as_secs_f64(),
            (done - placed).as_secs_f64(),
        );
        Ok(result.root())
    }

    /// For a push into a folder (`scope`) planned on `base_root`: that state, when the volume
    /// (`now`) differs from it only outside the folder. `None` when the pack no longer fits.
    pub(super) fn scoped_base(
        &self,
        pod: &PodName,
        base_root: &ManifestId,
        scope: Option<&VolumePath>,
        now: &Manifest,
    ) -> Result<Option<Manifest>, Refusal> {
        let base = self.db().pod_manifest(pod, base_root)?;
        Ok(match (scope, base) {
            (Some(scope), Some(base)) if base.region(scope) == now.region(scope) => Some(base),
            _ => None,
        })
    }

    /// The staged pack decoded against `base` into its staging folder (by its follower while
    /// it arrived, or now), checked to be what was offered: its target, and nothing changed
    /// outside its scope.
    fn decode_staged(
        &self,
        inc: &IncomingPack,
        base: &Manifest,
        vol: &Dir,
        followed: Option<Follower>,
    ) -> Result<DecodedPack, Refusal> {
        // The follower decoded against the manifest named by the pack's base root, as `base`
        // is: what it decoded is what decoding now would give.
        let followed = followed
            .and_then(|f| f.finish())
            .filter(|_| base.root() == inc.base_root);
        let decoded = match followed {
            Some(decoded) => decoded,
            None => {
                let staging = self.staging_dir(&inc.pack);
                let _ = fs::remove_dir_all(&staging);
                fs::create_dir_all(&staging).map_err(Refusal::internal)?;
                let file = File::open(self.pack_file(&inc.pack)).map_err(Refusal::internal)?;
                apply::decode_staged(file, &staging, base, vol, &self.limits)?
            }
        };
        if decoded.target.root() != inc.target_root {
            return Err(Refusal::refused(
                "the pack's target differs from what was offered",
            ));
        }
        // Applied to the volume as it is now. Outside the scope, the pod's own changes stay.
        if let Some(scope) = &inc.scope
            && let Some(c) = decoded
                .header
                .changes
                .iter()
                .find(|c| !(c.path().is_within(scope) || scope.is_within(c.path())))
        {
            return Err(Refusal::refused(format!(
                "the pack changes {} outside its scope {scope}",
                c.path()
            )));
        }
        Ok(decoded)
    }

    /// Places every file of the decoded pack in the volume under a temporary name: if the
    /// volume's disk is too small, this fails, the temporaries go, and the pod's files are
    /// untouched.
    fn place(
        &self,
        inc: &IncomingPack,
        vol: &Dir,
        now: &Manifest,
        decoded: &DecodedPack,
    ) -> Result<ApplyPlan, Refusal> {
        let staging = self.staging_dir(&inc.pack);
        let plan = volume::prepare(
            vol,
            &staging,
            now,
            &decoded.header.changes,
            &decoded.objects,
            &inc.pack.short(),
        )
        .map_err(|e| match e {
            VolumeError::SourceGone { .. } => Refusal::conflict(e.to_string()),
            // On a disk of their own, a full volume leaves the pack whole: the retry applies
            // it without a byte sent again.
            other if self.volumes_apart => Refusal::internal(other).keep_staged(),
            other => Refusal::internal(other),
        })?;
        let _ = fs::remove_dir_all(&staging);
        Ok(plan)
    }

    /// Ends an applied (or abandoned) pack: its journal entry first, whatever happens next,
    /// then its record and what was staged of it.
    fn finish_apply(&self, pack: &PackId) -> Result<(), OnboardError> {
        let db = self.db();
        db.journal_end(pack)?;
        db.delete_incoming(pack)?;
        drop(db);
        let _ = fs::remove_dir_all(self.staging_dir(pack));
        let _ = fs::remove_file(self.pack_file(pack));
        Ok(())
    }
}

// The roll-forward. A changeset a crash, or a volume that refused a rename, left journaled is
// run to its end (`finish_journaled`): at start-up (`roll_forward`), and before the pod's volume
// is read or changed again (`settle_pod`).
impl OnboardService {
    /// Finishes every changeset a crash interrupted, and removes temporaries a crash left in
    /// volumes. A changeset that cannot finish now (its volume's disk is full) stays journaled
    /// and is tried again at the next start; the daemon still starts.
    pub(super) fn roll_forward(&self) -> Result<(), OnboardError> {
        let entries = self.db().journal_entries()?;
        let mut keep: HashMap<PodName, HashSet<String>> = HashMap::new();
        for e in entries {
            if let Err(err) = self.finish_journaled(&e) {
                // Escaped: the error may name a path a pod chose (a newline would forge a line).
                eprintln!(
                    "pod {}: cannot finish applying pack {} yet: {}",
                    e.pod,
                    e.pack.short(),
                    crate::path::escape(&err.to_string())
                );
                if let Ok(plan) = e.plan() {
                    keep.entry(e.pod.clone())
                        .or_default()
                        .extend(plan.temps().map(String::from));
                }
            }
        }
        for pod in self.volumes.pods()? {
            if let Some(vol) = self.volumes.pod(&pod)? {
                volume::sweep_temps(&vol, keep.get(&pod).unwrap_or(&Default::default()));
            }
        }
        Ok(())
    }

    /// Before anything reads or changes a pod's volume: a changeset of it still journaled (its
    /// apply failed, the disk was full) is finished first; while it cannot be, the pod's
    /// volume takes no new changes. The caller holds the pod's lock.
    pub(super) fn settle_pod(&self, pod: &PodName) -> Result<(), Refusal> {
        let entries = self.db().journal_entries()?;
        for e in entries.iter().filter(|e| &e.pod == pod) {
            self.finish_journaled(e).map_err(|err| {
                Refusal::storage(format!(
                    "the pod's previous changeset could not be finished yet: {err}"
                ))
            })?;
        }
        Ok(())
    }

    /// Runs a journaled changeset to its end. One that can never finish (a file it was to
    /// place is gone and the volume holds something else there) is abandoned, with a log line:
    /// the volume keeps what it has, and the next manifest shows it.
    fn finish_journaled(&self, e: &JournalEntry) -> Result<(), OnboardError> {
        let plan = e.plan()?;
        let vol = self.volumes.create_pod(&e.pod)?;
        let journal = PackJournal {
            svc: self,
            pack: e.pack,
            pod: &e.pod,
        };
        match apply::roll_forward(&vol, &plan, &e.pack.short(), &journal)? {
            Settled::Done => {
                let now = self.scan_pod(&e.pod)?;
                self.db().remember_applied(&e.pack, &e.pod, &now.root())?;
                Ok(())
            }
            Settled::Abandoned(err) => {
                eprintln!(
                    "pod {}: abandoning pack {}: {}",
                    e.pod,
                    e.pack.short(),
                    crate::path::escape(&err.to_string())
                );
                self.finish_apply(&e.pack)
            }
            Settled::Unfinished { source, .. } => Err(source.into()),
        }
    }
}

/// A pack's journal entry onboard. Its end also drops the pack's record and what was staged of
/// it: the volume holds the pack now.
struct PackJournal<'a> {
    svc: &'a OnboardService,
    pack: PackId,
    pod: &'a PodName,
}

impl Journal for PackJournal<'_> {
    type Error = OnboardError;

    fn begin(&self, plan: &ApplyPlan) -> Result<(), OnboardError> {
        self.svc
            .db()
            .journal_begin(&JournalEntry::new(self.pack, self.pod.clone(), plan))?;
        Ok(())
    }

    fn end(&self) -> Result<(), OnboardError> {
        self.svc.finish_apply(&self.pack)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::wire::Message;

    use super::*;

    /// Regression: an apply that failed half-way stayed half-done until the next start, and the
    /// pod's volume took new changes meanwhile. Now the journaled changeset is finished before
    /// the volume is read or changed again.
    #[test]
    fn a_journaled_changeset_is_finished_before_the_pod_is_read_again() {
        let (t, svc) = super::super::service_for_test();
        let svc = Arc::new(svc);
        let pod = PodName::new("p".to_string()).unwrap();
        let vol = t.path().join("v/p");
        fs::create_dir_all(&vol).unwrap();
        fs::write(vol.join(".~sync.t.0"), "placed").unwrap();
        let plan = ApplyPlan {
            steps: vec![volume::Step::File {
                path: crate::path::VolumePath::new("in/x").unwrap(),
                temp: ".~sync.t.0".into(),
                id: crate::id::ContentId::of(b"placed"),
                mode: 0o644,
                mtime: 0,
            }],
        };
        svc.db()
            .journal_begin(&JournalEntry::new(PackId([9; 32]), pod.clone(), &plan))
            .unwrap();
        let out = svc
            .session()
            .handle(Message::ManifestRequest { pod, known: None });
        assert!(
            matches!(out.replies[0], Message::ManifestReply { .. }),
            "{:?}",
            out.replies
        );
        assert_eq!(fs::read_to_string(vol.join("in/x")).unwrap(), "placed");
        assert!(svc.db().journal_entries().unwrap().is_empty());
    }
}
