//! The queue's decisions, pure: what becomes of the pushes queued for a pod when a new push or a
//! removal comes ([`fates`]), and what a push does about the one that stays ([`next`]). Acting
//! on them (the state, the pack files on disk, telling the node) is the caller's.

use crate::id::ManifestId;
use crate::manifest::Manifest;
use crate::path::VolumePath;
use crate::state::OutgoingPack;
use crate::units::fmt_bytes;

use super::PushReport;

/// What becomes of a queued push, looked at against the pod's volume as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// Queued into a folder the new change does not touch: it is its own, and stays queued.
    Apart,
    /// The volume is at its target: it applied, and the answer was lost with the link.
    Applied,
    /// It can no longer apply (the volume changed under it), or another push of the same
    /// folders is live already: dropped.
    Stale,
    /// It can still apply: the one the new change deals with.
    Live,
}

/// The fate of each push in `queue` (in order) against a volume at `root`, for a change to the
/// folders `scope` says it overlaps. At most one is [`Fate::Live`].
pub(super) fn fates(
    queue: &[OutgoingPack],
    root: ManifestId,
    scope: &dyn Fn(Option<&str>) -> bool,
) -> Vec<Fate> {
    let mut live = false;
    let mut out = Vec::with_capacity(queue.len());
    for q in queue {
        let fate = if !scope(q.dest.as_deref()) {
            Fate::Apart
        } else if q.target_root == root {
            Fate::Applied
        } else if (q.base_root != root && q.dest.is_none()) || live {
            Fate::Stale
        } else {
            live = true;
            Fate::Live
        };
        out.push(fate);
    }
    out
}

/// What the note says of a stale push dropped: only one partly sent is worth a word.
pub(super) fn dropped_note(q: &OutgoingPack) -> Option<String> {
    (q.acked > 0).then(|| {
        format!(
            "dropped a queued push: the volume changed since it was planned ({} of it had been \
             sent)",
            fmt_bytes(q.acked)
        )
    })
}

/// What a push does about the queued push still live for its folders.
#[derive(Debug)]
pub(super) enum Next {
    /// It carries the same tree into the same folder: send the rest of it.
    Resume(OutgoingPack),
    /// Same folder, none of it sent: drop it and plan afresh.
    Replace(OutgoingPack),
    /// Partly sent, or into an overlapping folder: it goes first, and the new changes follow.
    FinishFirst(OutgoingPack),
    /// Nothing queued: plan afresh.
    Fresh,
}

/// What a push that makes `dest` (None: the whole volume) hold `target`'s tree does about
/// `live`, the queued push [`fates`] left live.
pub(super) fn next(
    live: Option<OutgoingPack>,
    dest: Option<&VolumePath>,
    target: &Manifest,
) -> Next {
    let same_dest = |q: &OutgoingPack| q.dest.as_deref() == dest.map(|d| d.as_str());
    match live {
        Some(q) if same_dest(&q) && q.target.subtree(dest) == target.subtree(dest) => {
            Next::Resume(q)
        }
        Some(q) if same_dest(&q) && q.acked == 0 => Next::Replace(q),
        Some(q) => Next::FinishFirst(q),
        None => Next::Fresh,
    }
}

/// What the node held of a queued pack when this connection offered it again: what the node
/// said, not what the ground last heard, which differs when the node lost what it had staged
/// (a full state disk drops a partial upload).
pub(super) fn held_note(q: &OutgoingPack, r: &PushReport) -> String {
    let held = format!(
        "{} of {} already onboard",
        fmt_bytes(r.resumed_from),
        fmt_bytes(q.len)
    );
    if r.resumed_from < q.acked {
        format!(
            "{held}; the node no longer holds the {} it had acknowledged, so they are sent again",
            fmt_bytes(q.acked)
        )
    } else {
        held
    }
}

/// Whether a push queued into `queued` (None: the whole volume) and a change to `scope` touch
/// the same files: one folder within the other, or either the whole volume.
pub(super) fn scopes_overlap(queued: Option<&str>, scope: Option<&VolumePath>) -> bool {
    match (queued, scope) {
        (None, _) | (_, None) => true,
        (Some(q), Some(s)) => {
            VolumePath::new(q).map_or(true, |q| q.is_within(s) || s.is_within(&q))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{NodeId, PackId};
    use crate::manifest::Entry;
    use crate::manifest::tests::{dir, file};
    use crate::path::PodName;
    use crate::state::PackState;

    fn root(n: u8) -> ManifestId {
        ManifestId([n; 32])
    }

    /// Files with their bodies, and the folders they need (one level).
    fn manifest(files: &[(&str, &str)]) -> Manifest {
        let mut entries: Vec<Entry> = files
            .iter()
            .map(|&(p, body)| file(p, body.as_bytes()))
            .collect();
        for d in ["d", "e"] {
            if files.iter().any(|(p, _)| p.starts_with(&format!("{d}/"))) {
                entries.push(dir(d));
            }
        }
        Manifest::new(entries).unwrap()
    }

    fn queued(n: u8, dest: Option<&str>, base: u8, target: u8, acked: u64) -> OutgoingPack {
        OutgoingPack {
            pack: PackId([n; 32]),
            node: NodeId([1; 16]),
            pod: PodName::new("p".to_string()).unwrap(),
            len: 1_000,
            acked,
            base_root: root(base),
            target_root: root(target),
            target: Manifest::default(),
            source: None,
            dest: dest.map(String::from),
            state: PackState::Queued,
            priority: 0,
            content_bytes: 0,
            summary: Default::default(),
            created_at: 0,
            finished_at: None,
            hash: None,
        }
    }

    #[test]
    fn folders_overlap_when_one_holds_the_other_or_either_is_the_whole_volume() {
        let d = VolumePath::new("d").unwrap();
        let de = VolumePath::new("d/e").unwrap();
        assert!(scopes_overlap(None, Some(&d)));
        assert!(scopes_overlap(Some("d"), None));
        assert!(scopes_overlap(Some("d/e"), Some(&d)));
        assert!(scopes_overlap(Some("d"), Some(&de)));
        assert!(!scopes_overlap(Some("e"), Some(&d)));
        assert!(!scopes_overlap(Some("dd"), Some(&d)));
        // A folder that no longer checks is taken to overlap everything.
        assert!(scopes_overlap(Some("../x"), Some(&d)));
    }

    #[test]
    fn only_the_first_push_that_can_still_apply_stays_live() {
        let volume = root(5);
        let queue = [
            // Another folder: left alone.
            queued(1, Some("e"), 9, 9, 0),
            // At the volume's root already: applied.
            queued(2, Some("d"), 4, 5, 0),
            // The whole volume, planned on another root: stale.
            queued(3, None, 4, 6, 100),
            // A folder push survives a volume that moved on elsewhere: live.
            queued(4, Some("d"), 4, 7, 0),
            // A second live one of the same folder: stale.
            queued(5, Some("d/x"), 5, 8, 0),
        ];
        let scope = |q: Option<&str>| scopes_overlap(q, Some(&VolumePath::new("d").unwrap()));
        assert_eq!(
            fates(&queue, volume, &scope),
            [
                Fate::Apart,
                Fate::Applied,
                Fate::Stale,
                Fate::Live,
                Fate::Stale
            ]
        );
        // The whole volume, planned on the volume as it is: live.
        let whole = [queued(6, None, 5, 6, 0)];
        assert_eq!(fates(&whole, volume, &|_| true), [Fate::Live]);
    }

    #[test]
    fn a_dropped_push_is_named_only_when_some_of_it_was_sent() {
        assert_eq!(dropped_note(&queued(1, None, 1, 2, 0)), None);
        let note = dropped_note(&queued(1, None, 1, 2, 2_048)).unwrap();
        assert!(note.contains(&fmt_bytes(2_048)), "{note}");
    }

    #[test]
    fn a_push_resumes_the_same_tree_replaces_an_unsent_one_and_follows_the_rest() {
        let d = VolumePath::new("d").unwrap();
        let tree = manifest(&[("d/a", "a"), ("e/b", "b")]);
        let other = manifest(&[("d/a", "changed"), ("e/b", "b")]);
        let with = |mut q: OutgoingPack, target: &Manifest| {
            q.target = target.clone();
            q
        };
        // Same folder, same tree there (what is outside the folder does not count).
        let q = with(queued(1, Some("d"), 1, 2, 500), &tree);
        let elsewhere = manifest(&[("d/a", "a"), ("e/b", "other")]);
        assert!(matches!(
            next(Some(q), Some(&d), &elsewhere),
            Next::Resume(_)
        ));
        // Same folder, another tree, none sent.
        let q = with(queued(1, Some("d"), 1, 2, 0), &tree);
        assert!(matches!(next(Some(q), Some(&d), &other), Next::Replace(_)));
        // Same folder, another tree, partly sent.
        let q = with(queued(1, Some("d"), 1, 2, 500), &tree);
        assert!(matches!(
            next(Some(q), Some(&d), &other),
            Next::FinishFirst(_)
        ));
        // Another (overlapping) folder, even with none sent.
        let q = with(queued(1, None, 1, 2, 0), &tree);
        assert!(matches!(
            next(Some(q), Some(&d), &tree),
            Next::FinishFirst(_)
        ));
        assert!(matches!(next(None, Some(&d), &tree), Next::Fresh));
    }
}
