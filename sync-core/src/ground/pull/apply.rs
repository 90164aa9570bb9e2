//! A whole pull pack applied to its copy, journaled, and the roll-forward of such applies that
//! a crash or a failed rename interrupted. The journaled step and its roll-forward are
//! [`crate::apply`]'s, shared with the onboard side; here is the copy's [`Journal`]
//! ([`CopyJournal`]: the ground's `pull_journal`, one entry per copy, which also records what
//! the pull delivered) and what each outcome means for a copy ([`Ground::roll_forward_pulls`]
//! when the ground's state opens, [`Ground::roll_forward_copy`] before a pull looks at its
//! copy).
//!
//! Before the journaled step: the pack decoded and verified against the copy (objects into a
//! staging folder), the copy user's changes since the last pull kept or the pull refused, the
//! copy looked at again, every file placed under a temporary name (`volume::prepare`), and one
//! more look. Also what a pull delivered, as later pulls must know it ([`delivered`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use super::ground_limits;
use crate::apply::{self, ApplyError, Journal, Settled, unplace};
use crate::ground::{Ground, GroundError, io_at};
use crate::manifest::{Change, Entry, Manifest, ManifestError, diff};
use crate::pack::{DecodedPack, PackError};
use crate::path::VolumePath;
use crate::state::{Db, PullIncoming, PullJournal, Pulled, StateError};
use crate::volume::{ApplyPlan, VolumeError};

/// What a pull did to its copy.
pub(super) struct AppliedPull {
    pub(super) changes: Vec<Change>,
    /// The copy the changes applied on (the copy as the pull found it, or as its user left it
    /// while the pull ran).
    pub(super) on: Manifest,
    /// The copy now.
    pub(super) target: Manifest,
}

impl Ground {
    /// Decodes a whole pull pack against `base` (what the node planned from: the copy as it was
    /// when this pull was asked for) and applies it to the copy as it is now, journaled. What
    /// the copy's user changed since `since` (the state the last pull left, or an empty copy
    /// when nothing is known) and the pack would overwrite stops it, unless `force`
    /// ([`GroundError::LocalChanges`], naming every such path); the pack is kept for the next
    /// try. The pull may have run for minutes: if the copy's user changed something the pack
    /// changes meanwhile, nothing is applied ([`GroundError::CopyChanged`]). A pack that does
    /// not check out, or that can no longer apply, is dropped with its row, so the next pull
    /// plans from the copy as it is.
    pub(super) fn apply_pull(
        &mut self,
        copy: &Path,
        base: &Manifest,
        since: &Manifest,
        force: bool,
        state: &PullIncoming,
    ) -> Result<AppliedPull, GroundError> {
        let staging = self.pull_staging(&state.into, &state.pack);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io_at(&staging))?;
        let result = self.apply_staged(copy, &staging, base, since, force, state);
        let _ = std::fs::remove_dir_all(&staging);
        let keep = matches!(&result, Err(GroundError::Pack(PackError::Io(_))));
        if !keep
            && let Err(
                GroundError::CopyChanged { .. }
                | GroundError::Pack(_)
                | GroundError::Manifest(_)
                | GroundError::BadReply(_),
            ) = &result
        {
            // Never applicable to this copy again. (An I/O failure, a full disk, keeps it: the
            // next pull tries the same pack again.)
            self.drop_pull(state)?;
        }
        result
    }

    fn apply_staged(
        &mut self,
        copy: &Path,
        staging: &Path,
        base: &Manifest,
        since: &Manifest,
        force: bool,
        state: &PullIncoming,
    ) -> Result<AppliedPull, GroundError> {
        let into = state.into.as_str();
        let dir = Dir::open_ambient_dir(copy, ambient_authority()).map_err(io_at(copy))?;
        let mut decoded = self.decode_pull(&dir, staging, base, state)?;
        // Like git, a pull never silently overwrites a change made in the copy since the last
        // pull. (What its user changes while this pull runs is `copy_now`'s to find.)
        if !force {
            let (kept, lost) = local_changes(since, base, &decoded);
            if !lost.is_empty() {
                return Err(GroundError::LocalChanges {
                    into: into.to_string(),
                    paths: lost.iter().map(|p| p.to_string()).collect(),
                });
            }
            decoded.header.changes.retain(|c| !kept.contains(c.path()));
        }
        let pulled = delivered(since, base, &decoded);
        let changes = &decoded.header.changes;
        // Looked at again just before anything is placed in it.
        let (now, _) = self.copy_now(copy, into, base, &decoded)?;
        let tag = format!("pull{}", state.pack.short());
        // Every file goes into the copy under a temporary name first; should that fail (the
        // copy's disk is full), the temporaries go and the copy is as it was.
        let plan = crate::volume::prepare(&dir, staging, &now, changes, &decoded.objects, &tag)
            .map_err(|e| match e {
                VolumeError::SourceGone { path, .. } => GroundError::CopyChanged {
                    into: into.to_string(),
                    path,
                },
                source => GroundError::Placing {
                    into: into.to_string(),
                    source,
                },
            })?;
        // Placing copies every file's bytes and may take a while: one more look, so that an
        // edit can be lost only if it lands inside the rename loop itself.
        let (now, target) = self
            .copy_now(copy, into, &now, &decoded)
            .inspect_err(|_| unplace(&dir, &plan))?;
        let pulled = pulled.as_ref().map(|manifest| Pulled {
            node: &state.node,
            pod: &state.pod,
            manifest,
        });
        let journal = CopyJournal {
            db: &self.db,
            into,
            tag: &tag,
            pulled,
        };
        // Should a rename fail, the plan stays journaled and the next pull into this copy (or
        // the next start of the ground) finishes it.
        apply::apply_journaled(&dir, &plan, &tag, &journal).map_err(|e| match e {
            ApplyError::Journal(e) => GroundError::from(e),
            ApplyError::Unfinished(source) => GroundError::PullUnfinished {
                into: into.to_string(),
                source,
            },
        })?;
        Ok(AppliedPull {
            changes: decoded.header.changes,
            on: now,
            target,
        })
    }

    /// Decodes the received pull pack against `base`: its objects into `staging`, its bases
    /// read from the copy and verified, its target checked against what the offer named.
    fn decode_pull(
        &self,
        dir: &Dir,
        staging: &Path,
        base: &Manifest,
        state: &PullIncoming,
    ) -> Result<DecodedPack, GroundError> {
        let path = self.pull_path(&state.into, &state.pack);
        let file = std::fs::File::open(&path).map_err(io_at(&path))?;
        // The ground's own limits: a node does not decide what the ground may allocate.
        let decoded = apply::decode_staged(file, staging, base, dir, &ground_limits());
        match decoded {
            Ok(d) if d.target.root() == state.target_root => Ok(d),
            // A base read from the copy that no longer is what the copy held when the pull was
            // asked for: its user changed it meanwhile.
            Err(PackError::BaseChanged { path, .. }) => Err(GroundError::CopyChanged {
                into: state.into.clone(),
                path,
            }),
            Err(e) => Err(e.into()),
            Ok(_) => Err(GroundError::BadReply("pull pack target")),
        }
    }

    /// Scans the copy again and checks that none of the pack's changes touches what its user
    /// changed since `planned` was scanned. Returns the copy as it is now and the pack's target
    /// on it (the user's changes elsewhere stay).
    fn copy_now(
        &mut self,
        copy: &Path,
        into: &str,
        planned: &Manifest,
        decoded: &DecodedPack,
    ) -> Result<(Manifest, Manifest), GroundError> {
        let (now, _) = self.scan_copy(copy)?;
        let changed = |path: &VolumePath| GroundError::CopyChanged {
            into: into.to_string(),
            path: path.to_string(),
        };
        if let Some(path) = overwritten(planned, &now, &decoded.header.changes, &decoded.target)
            .into_iter()
            .next()
        {
            return Err(changed(&path));
        }
        // Content a change copies from elsewhere in the copy may be what the user changed.
        let target = crate::pack::target_on(&now, decoded).map_err(|e| match e {
            PackError::Manifest(m) => match manifest_error_path(&m) {
                Some(path) => changed(path),
                None => GroundError::Manifest(m),
            },
            other => other.into(),
        })?;
        Ok((now, target))
    }

    /// Finishes, where it can, every pull whose apply to its copy a crash interrupted. Only
    /// renames and removals are left of such an apply, so this is cheap, and the copy is whole
    /// again before anything looks at it. One that cannot finish now (the copy's disk is not
    /// mounted, say) stays journaled, and the next pull into that copy says why: nothing here
    /// is dropped without a word.
    pub(in crate::ground) fn roll_forward_pulls(&self) {
        // An entry that does not decode is reported by the next pull into its copy.
        let Ok(journals) = self.db.pull_journals() else {
            return;
        };
        for j in journals {
            // A copy another process is pulling into is that process's to finish.
            let Ok(Some(_lock)) = self.lock_copy(&j.into) else {
                continue;
            };
            let Ok(dir) = Dir::open_ambient_dir(&j.into, ambient_authority()) else {
                continue;
            };
            let journal = CopyJournal {
                db: &self.db,
                into: &j.into,
                tag: &j.tag,
                pulled: None,
            };
            if let Ok(Settled::Done) = apply::roll_forward(&dir, &j.plan, &j.tag, &journal) {
                crate::volume::sweep_temps(&dir, &HashSet::new());
            }
        }
    }

    /// Finishes the journaled apply of the copy `key` (opened as `dir`), if there is one: every
    /// step is idempotent, so it runs the whole plan again.
    pub(super) fn roll_forward_copy(&self, dir: &Dir, key: &str) -> Result<Settled, GroundError> {
        let Some(j) = self.db.pull_journal(key)? else {
            return Ok(Settled::Done);
        };
        let journal = CopyJournal {
            db: &self.db,
            into: key,
            tag: &j.tag,
            pulled: None,
        };
        let settled = apply::roll_forward(dir, &j.plan, &j.tag, &journal)?;
        if let Settled::Abandoned(_) = settled {
            // Kept, it would stop every later pull into this copy. The copy holds what the
            // steps before it did; the next pull plans from the copy as it is and brings it up
            // to date.
            self.db.pull_journal_abandon(key)?;
        }
        Ok(settled)
    }
}

/// A copy's journal: its `pull_journal` entry, which also carries what the pull delivered
/// (`pulled`, recorded as the copy's last pull when the entry ends).
struct CopyJournal<'a> {
    db: &'a Db,
    into: &'a str,
    tag: &'a str,
    pulled: Option<Pulled<'a>>,
}

impl Journal for CopyJournal<'_> {
    type Error = StateError;

    fn begin(&self, plan: &ApplyPlan) -> Result<(), StateError> {
        let journal = PullJournal {
            into: self.into.to_string(),
            tag: self.tag.to_string(),
            plan: plan.clone(),
        };
        self.db.pull_journal_begin(&journal, self.pulled)
    }

    fn end(&self) -> Result<(), StateError> {
        self.db.pull_journal_end(self.into)
    }
}

/// The paths where applying `changes` (whose result is `target`) would lose what differs
/// between `planned` (the copy the changes were planned on) and `now` (the copy as it is), in
/// order: the same path, unless the change leaves it as the user did; a folder above a changed
/// path that the user changed or removed (one the user made is only a folder); anything the
/// user has below a removed folder. Empty when the user's changes and the pull's keep apart, so
/// the pull can apply on the copy as the user left it.
fn overwritten(
    planned: &Manifest,
    now: &Manifest,
    changes: &[Change],
    target: &Manifest,
) -> Vec<VolumePath> {
    if planned.root() == now.root() {
        return Vec::new();
    }
    let differ: HashSet<VolumePath> = diff(planned, now)
        .into_iter()
        .map(|c| c.path().clone())
        .collect();
    // The pull leaves the path as the user has it: both made the same file, or both a folder.
    let agrees = |p: &VolumePath| match (target.get(p), now.get(p)) {
        (Some(t), Some(n)) => t.kind == n.kind,
        (None, None) => true,
        _ => false,
    };
    let mut lost = BTreeSet::new();
    for c in changes {
        let p = c.path();
        if differ.contains(p) && !agrees(p) {
            lost.insert(p.clone());
        }
        for a in p.ancestors() {
            let made_by_user = planned.get(&a).is_none() && now.get(&a).is_some_and(|e| e.is_dir());
            if differ.contains(&a) && !made_by_user {
                lost.insert(a);
            }
        }
    }
    // Something the user put inside a folder the pull removes.
    let removed: HashSet<&VolumePath> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Remove(p) => Some(p),
            Change::Put(_) => None,
        })
        .collect();
    lost.extend(
        differ
            .into_iter()
            .filter(|d| d.ancestors().any(|a| removed.contains(&a)) && !agrees(d)),
    );
    lost.into_iter().collect()
}

/// What the copy's user changed since `since` (the last pull's state) that the pack changes
/// too, split in two: paths where the pack only puts back what `since` had (the pod did not
/// change them: they are left out of the apply, and the user's version stays), and paths where
/// the pod changed them as well (the pull must not overwrite them). `start`: the copy as the
/// pull found it, which the node planned from.
fn local_changes(
    since: &Manifest,
    start: &Manifest,
    decoded: &DecodedPack,
) -> (HashSet<VolumePath>, Vec<VolumePath>) {
    let changes = &decoded.header.changes;
    let changed: HashSet<&VolumePath> = changes.iter().map(|c| c.path()).collect();
    let pod_kept =
        |p: &VolumePath| decoded.target.get(p).map(|e| &e.kind) == since.get(p).map(|e| &e.kind);
    let mut kept = HashSet::new();
    let mut lost = Vec::new();
    for p in overwritten(since, start, changes, &decoded.target) {
        if changed.contains(&p) && pod_kept(&p) {
            kept.insert(p);
        } else {
            lost.push(p);
        }
    }
    (kept, lost)
}

/// What the node delivered to the copy, as later pulls must know it: the pack's target, except
/// where the copy's user changed something since `since` that this pull did not deliver (kept
/// local changes, files of the user's own the node only kept): there, what `since` had. None
/// when that does not form a manifest (then nothing is recorded).
fn delivered(since: &Manifest, start: &Manifest, decoded: &DecodedPack) -> Option<Manifest> {
    let applied: HashSet<&VolumePath> = decoded.header.changes.iter().map(|c| c.path()).collect();
    let mut out: BTreeMap<VolumePath, Entry> = decoded
        .target
        .entries()
        .iter()
        .map(|e| (e.path.clone(), e.clone()))
        .collect();
    for c in diff(since, start) {
        let p = c.path();
        if applied.contains(p) {
            continue;
        }
        match since.get(p) {
            Some(e) => out.insert(p.clone(), e.clone()),
            None => out.remove(p),
        };
    }
    Manifest::new(out.into_values().collect()).ok()
}

/// The path a manifest error names, for errors a changed copy can cause.
fn manifest_error_path(e: &ManifestError) -> Option<&VolumePath> {
    match e {
        ManifestError::Missing(p) | ManifestError::Orphan(p) | ManifestError::KindClash(p) => {
            Some(p)
        }
        ManifestError::UnknownContent { path, .. } => Some(path),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ContentId;
    use crate::manifest::{EntryKind, FileSource, PutKind};

    #[test]
    fn changes_touch_what_differs_at_their_path_above_it_or_below_a_removal() {
        let file = |p: &str, body: &str| crate::manifest::Entry {
            path: VolumePath::new(p).unwrap(),
            kind: EntryKind::File {
                id: ContentId::of(body.as_bytes()),
                size: body.len() as u64,
            },
            mode: 0o644,
            mtime: 0,
        };
        let dir = |p: &str, mode: u32| crate::manifest::Entry {
            path: VolumePath::new(p).unwrap(),
            kind: EntryKind::Dir,
            mode,
            mtime: 0,
        };
        let m = |e: Vec<crate::manifest::Entry>| Manifest::new(e).unwrap();
        let planned = m(vec![
            dir("a", 0o755),
            file("a/x", "x"),
            dir("b", 0o755),
            file("b/y", "y"),
            file("c", "c"),
        ]);
        let put = |p: &str| {
            Change::Put(crate::manifest::Put {
                path: VolumePath::new(p).unwrap(),
                kind: PutKind::File(FileSource::Object(0)),
                mode: 0o644,
                mtime: 0,
            })
        };
        let remove = |p: &str| Change::Remove(VolumePath::new(p).unwrap());
        // What the pod made of each path: every file changed, folder b kept.
        let pod = m(vec![
            dir("a", 0o755),
            file("a/x", "pod"),
            dir("b", 0o755),
            file("b/y", "pod"),
            file("c", "pod"),
        ]);
        let touched_by_changes = |planned: &Manifest, now: &Manifest, changes: &[Change]| {
            overwritten(planned, now, changes, &pod).into_iter().next()
        };
        let vp = |p: &str| Some(VolumePath::new(p).unwrap());
        // Unchanged copy: nothing to check.
        assert_eq!(touched_by_changes(&planned, &planned, &[put("a/x")]), None);
        // The user edited c.
        let now = m(vec![
            dir("a", 0o755),
            file("a/x", "x"),
            dir("b", 0o755),
            file("b/y", "y"),
            file("c", "edited"),
        ]);
        assert_eq!(touched_by_changes(&planned, &now, &[put("a/x")]), None);
        assert_eq!(
            touched_by_changes(&planned, &now, &[put("a/x"), put("c")]),
            vp("c")
        );
        // The user changed folder a's mode: a change below it is touched.
        let now = m(vec![
            dir("a", 0o700),
            file("a/x", "x"),
            dir("b", 0o755),
            file("b/y", "y"),
            file("c", "c"),
        ]);
        assert_eq!(touched_by_changes(&planned, &now, &[put("a/x")]), vp("a"));
        assert_eq!(touched_by_changes(&planned, &now, &[put("b/y")]), None);
        // The user added a file in folder b: removing b touches it, changing b/y does not.
        let now = m(vec![
            dir("a", 0o755),
            file("a/x", "x"),
            dir("b", 0o755),
            file("b/mine", "mine"),
            file("b/y", "y"),
            file("c", "c"),
        ]);
        assert_eq!(touched_by_changes(&planned, &now, &[put("b/y")]), None);
        assert_eq!(
            touched_by_changes(&planned, &now, &[remove("b/y"), remove("b")]),
            vp("b/mine")
        );
        // Every path is named, in order, not only the first; a change that leaves a path as
        // the user has it loses nothing.
        let now = m(vec![
            dir("a", 0o755),
            file("a/x", "pod"),
            dir("b", 0o755),
            file("b/y", "mine"),
            file("c", "mine"),
            dir("d", 0o755),
            file("d/new", "mine"),
        ]);
        let all = overwritten(&planned, &now, &[put("a/x"), put("b/y"), put("c")], &pod);
        assert_eq!(all, vec![vp("b/y").unwrap(), vp("c").unwrap()]);
        // A folder the user made is only a folder: what the pod puts in it is not a conflict.
        let mut with_d = pod.entries().to_vec();
        with_d.extend([dir("d", 0o755), file("d/z", "pod")]);
        let pod_d = m(with_d);
        assert_eq!(
            overwritten(&planned, &now, &[put("d/z")], &pod_d),
            Vec::<VolumePath>::new()
        );
    }
}
