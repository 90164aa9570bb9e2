//! Changes between manifests: computed by [`diff`], applied (purely, on manifests) by
//! [`apply_changes`]. Removals come first, deepest first; puts follow, parents first, so a
//! receiver can carry them out in list order.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{Entry, EntryKind, MODE_MASK, Manifest, ManifestError};
use crate::id::ContentId;
use crate::path::{VolumePath, check_symlink_target};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Remove(VolumePath),
    Put(Put),
}

impl Change {
    /// The path this change is about.
    pub fn path(&self) -> &VolumePath {
        match self {
            Change::Remove(p) => p,
            Change::Put(put) => &put.path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub path: VolumePath,
    pub kind: PutKind,
    pub mode: u32,
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutKind {
    File(FileSource),
    Dir,
    Symlink(String),
}

/// Where a file's content comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileSource {
    /// Content already known by id: in a pack, content the receiver's volume already holds
    /// (renames and copies cost 40 bytes); in a manifest delta, simply the new entry's content.
    Known { id: ContentId, size: u64 },
    /// The pack's object with this index; its id is whatever the receiver hashes, and the
    /// declared target root checks it.
    Object(u32),
}

impl Put {
    pub fn from_entry(e: &Entry) -> Self {
        let kind = match &e.kind {
            EntryKind::File { id, size } => PutKind::File(FileSource::Known {
                id: *id,
                size: *size,
            }),
            EntryKind::Dir => PutKind::Dir,
            EntryKind::Symlink { target } => PutKind::Symlink(target.clone()),
        };
        Put {
            path: e.path.clone(),
            kind,
            mode: e.mode,
            mtime: e.mtime,
        }
    }
}

fn same_family(a: &EntryKind, b: &EntryKind) -> bool {
    matches!(a, EntryKind::Dir) == matches!(b, EntryKind::Dir)
}

/// The changes that turn `base` into `target`, with every file as [`FileSource::Known`].
pub fn diff(base: &Manifest, target: &Manifest) -> Vec<Change> {
    let mut removes = Vec::new();
    let mut puts = Vec::new();
    let (b, t) = (base.entries(), target.entries());
    let (mut i, mut j) = (0, 0);
    while i < b.len() || j < t.len() {
        let order = match (b.get(i), t.get(j)) {
            (Some(x), Some(y)) => x.path.cmp(&y.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                removes.push(Change::Remove(b[i].path.clone()));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                puts.push(Change::Put(Put::from_entry(&t[j])));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if !same_family(&b[i].kind, &t[j].kind) {
                    removes.push(Change::Remove(b[i].path.clone()));
                    puts.push(Change::Put(Put::from_entry(&t[j])));
                } else if !b[i].same_as(&t[j]) {
                    puts.push(Change::Put(Put::from_entry(&t[j])));
                }
                i += 1;
                j += 1;
            }
        }
    }
    // Deepest first: children are removed before their folder.
    removes.reverse();
    removes.extend(puts);
    removes
}

/// How [`apply_changes`] resolves file sources.
pub trait SourceResolver {
    /// Id and size of pack object `index`, if the pack carries it.
    fn object(&self, index: u32) -> Option<(ContentId, u64)>;
    /// Whether the receiver's rules hold (true for packs, which create things: known content
    /// must already be in the base, symlinks must stay inside the volume; false for manifest
    /// deltas, which only describe what a volume holds, including whatever a pod made).
    fn enforce_receiver_rules(&self) -> bool;
}

/// Resolver for manifest deltas: there are no objects and known ids are just data.
pub struct Describe;

impl SourceResolver for Describe {
    fn object(&self, _: u32) -> Option<(ContentId, u64)> {
        None
    }
    fn enforce_receiver_rules(&self) -> bool {
        false
    }
}

/// Applies `changes` to `base` on manifests alone; checks every rule a receiver relies on.
pub fn apply_changes(
    base: &Manifest,
    changes: &[Change],
    resolver: &dyn SourceResolver,
) -> Result<Manifest, ManifestError> {
    let held = if resolver.enforce_receiver_rules() {
        Some(base.content_index())
    } else {
        None
    };
    let mut map: BTreeMap<VolumePath, Entry> = base
        .entries()
        .iter()
        .map(|e| (e.path.clone(), e.clone()))
        .collect();
    for change in changes {
        match change {
            Change::Remove(path) => {
                map.remove(path)
                    .ok_or_else(|| ManifestError::Missing(path.clone()))?;
            }
            Change::Put(put) => {
                let entry = put_entry(put, resolver, held.as_ref())?;
                if let Some(old) = map.get(&put.path)
                    && !same_family(&old.kind, &entry.kind)
                {
                    return Err(ManifestError::KindClash(put.path.clone()));
                }
                map.insert(put.path.clone(), entry);
            }
        }
    }
    Manifest::new(map.into_values().collect())
}

/// The entry `put` makes, once its mode and its kind pass [`put_kind`]'s checks.
fn put_entry(
    put: &Put,
    resolver: &dyn SourceResolver,
    held: Option<&HashMap<ContentId, usize>>,
) -> Result<Entry, ManifestError> {
    if put.mode & !MODE_MASK != 0 {
        return Err(ManifestError::BadMode {
            path: put.path.clone(),
            mode: put.mode,
        });
    }
    Ok(Entry {
        path: put.path.clone(),
        kind: put_kind(put, resolver, held)?,
        mode: put.mode,
        mtime: put.mtime,
    })
}

/// What `put` makes at its path: a pack object resolved to its id and size; for a receiver
/// (`held`, the content its base holds), known content only if the base holds it and symlinks
/// only if they stay inside the volume.
fn put_kind(
    put: &Put,
    resolver: &dyn SourceResolver,
    held: Option<&HashMap<ContentId, usize>>,
) -> Result<EntryKind, ManifestError> {
    Ok(match &put.kind {
        PutKind::Dir => EntryKind::Dir,
        PutKind::Symlink(target) => {
            if resolver.enforce_receiver_rules() {
                check_symlink_target(&put.path, target)?;
            }
            EntryKind::Symlink {
                target: target.clone(),
            }
        }
        PutKind::File(FileSource::Known { id, size }) => {
            if let Some(held) = held
                && *id != ContentId::empty()
                && !held.contains_key(id)
            {
                return Err(ManifestError::UnknownContent {
                    path: put.path.clone(),
                    id: *id,
                });
            }
            EntryKind::File {
                id: *id,
                size: *size,
            }
        }
        PutKind::File(FileSource::Object(index)) => {
            let (id, size) =
                resolver
                    .object(*index)
                    .ok_or_else(|| ManifestError::UnknownObject {
                        path: put.path.clone(),
                        index: *index,
                    })?;
            EntryKind::File { id, size }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{dir, file};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn diff_orders_removals_deepest_first_then_puts_parents_first() {
        let base = Manifest::new(vec![dir("a"), dir("a/b"), file("a/b/c", b"1")]).unwrap();
        let target = Manifest::new(vec![dir("x"), file("x/y", b"2")]).unwrap();
        let changes = diff(&base, &target);
        let names: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Remove(p) => format!("-{p}"),
                Change::Put(p) => format!("+{}", p.path),
            })
            .collect();
        assert_eq!(names, ["-a/b/c", "-a/b", "-a", "+x", "+x/y"]);
        assert_eq!(apply_changes(&base, &changes, &Describe).unwrap(), target);
    }

    #[test]
    fn kind_change_removes_first() {
        let base = Manifest::new(vec![dir("a"), file("a/f", b"1")]).unwrap();
        let target = Manifest::new(vec![file("a", b"now a file")]).unwrap();
        let changes = diff(&base, &target);
        assert_eq!(apply_changes(&base, &changes, &Describe).unwrap(), target);
        // Without the removal, the receiver must refuse rather than guess.
        let put_only: Vec<Change> = changes
            .into_iter()
            .filter(|c| matches!(c, Change::Put(_)))
            .collect();
        assert!(apply_changes(&base, &put_only, &Describe).is_err());
    }

    struct Pack;
    impl SourceResolver for Pack {
        fn object(&self, i: u32) -> Option<(ContentId, u64)> {
            (i == 0).then(|| (ContentId::of(b"new"), 3))
        }
        fn enforce_receiver_rules(&self) -> bool {
            true
        }
    }

    #[test]
    fn pack_sources_must_be_held_or_carried() {
        let base = Manifest::new(vec![file("a", b"held")]).unwrap();
        let put = |kind| {
            vec![Change::Put(Put {
                path: VolumePath::new("b").unwrap(),
                kind,
                mode: 0o644,
                mtime: 0,
            })]
        };
        let copy = put(PutKind::File(FileSource::Known {
            id: ContentId::of(b"held"),
            size: 4,
        }));
        assert!(apply_changes(&base, &copy, &Pack).is_ok());
        let stranger = put(PutKind::File(FileSource::Known {
            id: ContentId::of(b"never sent"),
            size: 10,
        }));
        assert!(matches!(
            apply_changes(&base, &stranger, &Pack),
            Err(ManifestError::UnknownContent { .. })
        ));
        assert!(apply_changes(&base, &put(PutKind::File(FileSource::Object(0))), &Pack).is_ok());
        assert!(matches!(
            apply_changes(&base, &put(PutKind::File(FileSource::Object(1))), &Pack),
            Err(ManifestError::UnknownObject { index: 1, .. })
        ));
        assert!(apply_changes(&base, &put(PutKind::Symlink("../x".into())), &Pack).is_err());
        let mut setuid = put(PutKind::Dir);
        if let Change::Put(p) = &mut setuid[0] {
            p.mode = 0o4755;
        }
        assert!(matches!(
            apply_changes(&base, &setuid, &Pack),
            Err(ManifestError::BadMode { .. })
        ));
    }

    /// Regression: a pod may plant a link leaving its volume; describing the volume to the ground
    /// (a manifest delta) must carry it, while a pack may never create one.
    #[test]
    fn escaping_symlink_is_described_but_never_created() {
        let base = Manifest::default();
        let link = vec![Change::Put(Put {
            path: VolumePath::new("escape").unwrap(),
            kind: PutKind::Symlink("/tmp/outside".into()),
            mode: 0o777,
            mtime: 0,
        })];
        assert!(apply_changes(&base, &link, &Describe).is_ok());
        assert!(apply_changes(&base, &link, &Pack).is_err());
    }

    fn arb_manifest() -> impl Strategy<Value = Manifest> {
        // Paths from a small alphabet so that two manifests overlap, with folders and kinds mixed.
        let entry = (
            prop::collection::vec("[ab]", 1..4),
            0u8..3,
            0u8..3,
            prop::bool::ANY,
        );
        prop::collection::vec(entry, 0..24).prop_map(|raw| {
            let mut map = BTreeMap::new();
            for (parts, kind, body, exec) in raw {
                let path = parts.join("/");
                // Make every ancestor a folder; a later entry may not turn a folder into a file.
                let mut ok = true;
                for i in 1..parts.len() {
                    let anc = VolumePath::new(parts[..i].join("/")).unwrap();
                    match map.get(&anc) {
                        Some(Entry {
                            kind: EntryKind::Dir,
                            ..
                        }) => {}
                        Some(_) => {
                            ok = false;
                            break;
                        }
                        None => {
                            map.insert(anc.clone(), dir(anc.as_str()));
                        }
                    }
                }
                let p = VolumePath::new(&path).unwrap();
                if !ok || map.contains_key(&p) {
                    continue;
                }
                let mut e = match kind {
                    0 => dir(&path),
                    1 => file(&path, &[body]),
                    _ => Entry {
                        path: p.clone(),
                        kind: EntryKind::Symlink {
                            target: format!("t{body}"),
                        },
                        mode: 0o777,
                        mtime: 0,
                    },
                };
                if exec && kind == 1 {
                    e.mode = 0o755;
                }
                map.insert(p, e);
            }
            Manifest::new(map.into_values().collect()).unwrap()
        })
    }

    proptest! {
        #[test]
        fn diff_then_apply_reaches_the_target(base in arb_manifest(), target in arb_manifest()) {
            let changes = diff(&base, &target);
            let out = apply_changes(&base, &changes, &Describe).unwrap();
            prop_assert_eq!(out.root(), target.root());
            prop_assert_eq!(out, target);
        }

        #[test]
        fn diff_of_equal_manifests_is_empty(m in arb_manifest()) {
            prop_assert!(diff(&m, &m).is_empty());
        }
    }
}
