//! What one pull pack carries, as pure functions of manifests and plans: the selection (what
//! the ground asked for, less what cannot or need not come), and the cut to the node's memory
//! cap (files too large for any pull, objects past the cap, pinned at the copy's version).

use std::collections::{BTreeMap, HashSet};

use crate::manifest::{
    Change, Entry, EntryKind, FileSource, Manifest, ManifestError, PathFilter, PutKind, Skipped,
};
use crate::pack::{BaseChoice, Plan, PlannedObject};
use crate::path::{VolumePath, check_symlink_target};

use super::source::kept_signature_len;

/// What the ground asked for: the pod's volume (`now`) as `filter` selects it, without the
/// pod's symlinks that lead outside its volume (they mean nothing on the ground, and a copy
/// must never hold one), and without `delete` with what the copy (`base`) holds and the pod
/// removed. What the scan `left_out` in the selection is returned, to be reported; what of it
/// has a path stays as the copy has it (with `delete` too): unreadable or changing now is not
/// removed.
pub(super) fn select(
    now: &Manifest,
    base: &Manifest,
    filter: &PathFilter,
    delete: bool,
    left_out: Vec<Skipped>,
) -> Result<(Manifest, Vec<Skipped>), ManifestError> {
    let mut target = without_escaping_links(now.filtered(filter))?;
    if !delete {
        target = keep_removed(base, target);
    }
    let report: Vec<Skipped> = left_out
        .into_iter()
        .filter(|s| filter.selects_raw(&s.path))
        .collect();
    let held_back: Vec<VolumePath> = report
        .iter()
        .filter_map(|s| std::str::from_utf8(&s.path).ok())
        .filter_map(|p| VolumePath::new(p).ok())
        .collect();
    Ok((hold_back(&target, base, &held_back)?, report))
}

/// `target` without the symlinks whose target leads outside the volume.
fn without_escaping_links(target: Manifest) -> Result<Manifest, ManifestError> {
    let escaping: Vec<VolumePath> = target
        .entries()
        .iter()
        .filter(|e| match &e.kind {
            EntryKind::Symlink { target } => check_symlink_target(&e.path, target).is_err(),
            _ => false,
        })
        .map(|e| e.path.clone())
        .collect();
    if escaping.is_empty() {
        return Ok(target);
    }
    let kept: Vec<Entry> = target
        .entries()
        .iter()
        .filter(|e| !escaping.contains(&e.path))
        .cloned()
        .collect();
    Manifest::new(kept)
}

/// Without `--delete`: what the ground's copy (`base`) holds and the pod no longer does stays,
/// unless the pod put something else in its way (a file where the copy has a folder).
pub fn keep_removed(base: &Manifest, target: Manifest) -> Manifest {
    let mut out: BTreeMap<VolumePath, Entry> = target
        .into_entries()
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect();
    for e in base.entries() {
        if out.contains_key(&e.path) {
            continue;
        }
        let mut ok = true;
        let mut lead = Vec::new();
        for a in e.path.ancestors() {
            match out.get(&a) {
                Some(t) if t.is_dir() => {}
                Some(_) => {
                    ok = false;
                    break;
                }
                None => match base.get(&a) {
                    Some(d) => lead.push(d.clone()),
                    None => {
                        ok = false;
                        break;
                    }
                },
            }
        }
        if ok {
            for d in lead {
                out.insert(d.path.clone(), d);
            }
            out.insert(e.path.clone(), e.clone());
        }
    }
    Manifest::new(out.into_values().collect()).expect("entries from two valid manifests")
}

/// What one pull pack may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullCaps {
    /// Content: the sum of the sizes of the files it carries (`--max-pull-pack`), which is
    /// about what its file takes on the state disk at most.
    pub content: u64,
    /// Memory of the kept signatures its rsync deltas are diffed against, with their index
    /// ([`signature_memory`]): everything else the encoder holds is bounded whatever the
    /// pack carries.
    pub memory: u64,
}

/// Memory the encoder holds for one planned object beyond its fixed buffers: for an rsync
/// delta, the kept signature of its base and the index built over it, 78 bytes a block of 12
/// signature bytes, so seven times the signature (measured: 20.5 MB of resident memory for a
/// signature of 262,144 blocks and its index).
pub fn signature_memory(o: &PlannedObject, base: &Manifest) -> u64 {
    match o.base {
        BaseChoice::Rsync(b) => 7 * kept_signature_len(base.entries()[b as usize].size()),
        _ => 0,
    }
}

/// The paths whose objects go beyond either of `caps` in a pull pack: the objects past a cap,
/// in the plan's order (by path), and every path that takes one of them. The first object
/// always stays, however large, so that a pull always moves.
pub fn over_cap(plan: &Plan, base: &Manifest, caps: &PullCaps) -> HashSet<VolumePath> {
    let (mut content, mut memory) = (0u64, 0u64);
    let dropped: HashSet<u32> = plan
        .objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| {
            content = content.saturating_add(o.size);
            memory = memory.saturating_add(signature_memory(o, base));
            (i > 0 && (content > caps.content || memory > caps.memory)).then_some(i as u32)
        })
        .collect();
    paths_taking(plan, &dropped)
}

/// Every path of `plan` that takes one of `objects`.
fn paths_taking(plan: &Plan, objects: &HashSet<u32>) -> HashSet<VolumePath> {
    object_paths(plan)
        .filter(|(_, i)| objects.contains(i))
        .map(|(path, _)| path.clone())
        .collect()
}

/// Each path of `plan` that takes an object, with the object's index.
fn object_paths(plan: &Plan) -> impl Iterator<Item = (&VolumePath, u32)> {
    plan.changes.iter().filter_map(|c| match c {
        Change::Put(p) => match p.kind {
            PutKind::File(FileSource::Object(i)) => Some((&p.path, i)),
            _ => None,
        },
        _ => None,
    })
}

/// `target` with each of `paths`, and everything below it, as the copy (`base`) has it, or
/// left out where the copy has nothing: entries a scan left out (unreadable, changing) stay
/// as they are on the ground, with `--delete` too, and come when they can be read.
pub fn hold_back(
    target: &Manifest,
    base: &Manifest,
    paths: &[VolumePath],
) -> Result<Manifest, ManifestError> {
    if paths.is_empty() {
        return Ok(target.clone());
    }
    let held = |p: &VolumePath| paths.iter().any(|h| p.is_within(h));
    let mut out: BTreeMap<VolumePath, Entry> = target
        .entries()
        .iter()
        .filter(|e| !held(&e.path))
        .map(|e| (e.path.clone(), e.clone()))
        .collect();
    for e in base.entries().iter().filter(|e| held(&e.path)) {
        // The folders leading to it, as the copy has them, where the selection has none.
        for a in e.path.ancestors() {
            if !out.contains_key(&a)
                && let Some(d) = base.get(&a)
            {
                out.insert(a, d.clone());
            }
        }
        out.insert(e.path.clone(), e.clone());
    }
    Manifest::new(out.into_values().collect())
}

/// `target` with `paths` as the copy (`base`) has them, or left out where the copy has none:
/// they come with a later pull.
pub fn pin(
    target: &Manifest,
    base: &Manifest,
    paths: &HashSet<VolumePath>,
) -> Result<Manifest, ManifestError> {
    let mut entries: Vec<Entry> = target
        .entries()
        .iter()
        .filter(|e| !paths.contains(&e.path))
        .cloned()
        .collect();
    entries.extend(paths.iter().filter_map(|p| base.get(p).cloned()));
    Manifest::new(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ContentId;

    #[test]
    fn removed_files_stay_unless_something_is_in_their_way() {
        use crate::manifest::tests::{dir, file};
        let base = Manifest::new(vec![
            dir("logs"),
            file("logs/old.log", b"old"),
            dir("x"),
            file("x/y", b"y"),
            file("keep.csv", b"k"),
        ])
        .unwrap();
        // The pod removed logs/old.log and keep.csv, and put a file where the folder x was.
        let target = Manifest::new(vec![
            dir("logs"),
            file("logs/new.log", b"n"),
            file("x", b"f"),
        ])
        .unwrap();
        let kept = keep_removed(&base, target);
        let paths: Vec<&str> = kept.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["keep.csv", "logs", "logs/new.log", "logs/old.log", "x"]
        );
    }

    fn paths(set: &HashSet<VolumePath>) -> Vec<&str> {
        let mut v: Vec<&str> = set.iter().map(|p| p.as_str()).collect();
        v.sort();
        v
    }

    fn caps(content: u64, memory: u64) -> PullCaps {
        PullCaps { content, memory }
    }

    /// A pack carries files up to the content cap, and the first one whatever its size (a
    /// pull of a file larger than the cap comes in a pack of its own).
    #[test]
    fn a_pack_carries_content_up_to_its_cap_and_always_its_first_file() {
        use crate::manifest::tests::file;
        let target = Manifest::new(vec![
            file("a.bin", &[7u8; 500]),
            file("b.csv", b"1,2"),
            file("c.bin", &[8u8; 50]),
        ])
        .unwrap();
        let plan = Plan::new(&Manifest::default(), &target, &|_| false);
        assert_eq!(
            paths(&over_cap(&plan, &Manifest::default(), &caps(100, u64::MAX))),
            ["b.csv", "c.bin"]
        );
        assert!(over_cap(&plan, &Manifest::default(), &caps(553, u64::MAX)).is_empty());
    }

    /// The kept signatures an rsync delta is diffed against are in memory while the pack is
    /// encoded: they count against the memory cap, so that many files changed in place come
    /// as several packs rather than hold all their signatures at once.
    #[test]
    fn kept_signatures_count_against_the_memory_cap() {
        use crate::manifest::tests::file;
        let old_a = vec![1u8; 100_000];
        let old_b = vec![2u8; 100_000];
        let base = Manifest::new(vec![file("a.db", &old_a), file("b.db", &old_b)]).unwrap();
        let target = Manifest::new(vec![
            file("a.db", &[3u8; 100_000]),
            file("b.db", &[4u8; 100_000]),
        ])
        .unwrap();
        // The node holds neither base: both go by kept signature.
        let plan = Plan::new(&base, &target, &|_| false);
        let one = signature_memory(&plan.objects[0], &base);
        assert!(one > 0);
        assert_eq!(
            paths(&over_cap(&plan, &base, &caps(u64::MAX, one))),
            ["b.db"]
        );
        assert!(over_cap(&plan, &base, &caps(u64::MAX, 2 * one)).is_empty());
    }

    /// What a scan left out (unreadable, changing) stays as the copy has it, folder and all,
    /// with `--delete` too.
    #[test]
    fn held_back_entries_keep_the_copys_version() {
        use crate::manifest::tests::{dir, file};
        let base = Manifest::new(vec![
            dir("out"),
            dir("out/locked"),
            file("out/locked/a", b"a"),
            file("out/state.txt", b"v1"),
            file("out/r.csv", b"1"),
        ])
        .unwrap();
        // The pod's volume as scanned: the locked folder and the changing file are missing.
        let target = Manifest::new(vec![dir("out"), file("out/r.csv", b"2")]).unwrap();
        let held = [
            VolumePath::new("out/locked").unwrap(),
            VolumePath::new("out/state.txt").unwrap(),
        ];
        let kept = hold_back(&target, &base, &held).unwrap();
        let got: Vec<(&str, Option<ContentId>)> = kept
            .entries()
            .iter()
            .map(|e| (e.path.as_str(), e.file_id()))
            .collect();
        assert_eq!(
            got,
            [
                ("out", None),
                ("out/locked", None),
                ("out/locked/a", Some(ContentId::of(b"a"))),
                ("out/r.csv", Some(ContentId::of(b"2"))),
                ("out/state.txt", Some(ContentId::of(b"v1"))),
            ]
        );
    }
}
