//! A volume as a sorted list of entries, the canonical root id that names it, and the changes
//! that turn one manifest into another.
//!
//! The same [`Change`] list serves two purposes: onboard it tells the ground how a pod's volume
//! moved since a manifest the ground already knows, and in a pack it tells the receiver how to
//! build the target tree, with new content referenced by object index instead of by id: the
//! receiver hashes what it decodes and the declared target root then checks every id at once.

mod change;
mod filter;
mod scan;
mod skipped;
mod summary;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use change::{Change, Describe, FileSource, Put, PutKind, SourceResolver, apply_changes, diff};
pub use filter::{FilterError, PathFilter};
pub use scan::{
    CachedStat, ScanError, ScanOptions, ScanStats, SpecialFiles, StatCache, hash_stable, scan_dir,
};
pub use skipped::{MAX_SKIPPED_NAMED, SkipReason, Skipped, SkippedReport, named};
pub use summary::ChangeSummary;

use crate::id::{ContentId, ManifestId};
use crate::path::VolumePath;

/// Permission bits carried for an entry. Set-id and sticky bits are never carried: a volume is
/// mounted into a container and a set-id binary arriving from the link is not something to keep.
pub const MODE_MASK: u32 = 0o777;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// two entries share a path
    #[error("duplicate entry {0}")]
    Duplicate(VolumePath),
    /// an entry whose folder is not in the manifest
    #[error("{0} has no parent folder in the manifest")]
    Orphan(VolumePath),
    /// a change removes or replaces something that is not there
    #[error("change refers to {0}, which is not in the base manifest")]
    Missing(VolumePath),
    /// a put onto an existing entry of another kind without removing it first
    #[error("{0} changes kind without being removed first")]
    KindClash(VolumePath),
    /// a file source that names content the base does not hold
    #[error("{path} refers to content {id:?} that the volume does not hold")]
    UnknownContent { path: VolumePath, id: ContentId },
    /// a file source that names an object the pack does not carry
    #[error("{path} refers to object #{index}, which the pack does not carry")]
    UnknownObject { path: VolumePath, index: u32 },
    /// a decoded manifest that is not what was declared
    #[error("manifest root mismatch: expected {expected:?}, got {actual:?}")]
    RootMismatch {
        expected: ManifestId,
        actual: ManifestId,
    },
    /// a path or symlink target that breaks the rules of [`crate::path`]
    #[error(transparent)]
    Path(#[from] crate::path::PathError),
    /// permission bits outside [`MODE_MASK`]
    #[error("{path}: mode {mode:o} carries bits other than rwx")]
    BadMode { path: VolumePath, mode: u32 },
    /// undecodable manifest bytes
    #[error("manifest encoding: {0}")]
    Encoding(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File { id: ContentId, size: u64 },
    Dir,
    Symlink { target: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: VolumePath,
    pub kind: EntryKind,
    /// Permission bits, masked with [`MODE_MASK`].
    pub mode: u32,
    /// Seconds since the epoch for files; 0 for folders and links, whose times change as a side
    /// effect of other operations and so cannot be kept equal on both ends.
    pub mtime: i64,
}

impl Entry {
    pub fn file_id(&self) -> Option<ContentId> {
        match self.kind {
            EntryKind::File { id, .. } => Some(id),
            _ => None,
        }
    }

    pub fn size(&self) -> u64 {
        match self.kind {
            EntryKind::File { size, .. } => size,
            EntryKind::Symlink { ref target } => target.len() as u64,
            EntryKind::Dir => 0,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }

    pub fn type_name(&self) -> &'static str {
        match self.kind {
            EntryKind::File { .. } => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink { .. } => "symlink",
        }
    }

    /// Same kind and content, mode and time; what a push needs to leave alone.
    pub fn same_as(&self, other: &Entry) -> bool {
        self.kind == other.kind && self.mode == other.mode && self.mtime == other.mtime
    }
}

/// A whole volume (or a local folder) as entries sorted by [`VolumePath`]'s order; every entry's
/// parent folder is present. The volume root itself is implicit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
}

impl Manifest {
    /// Sorts and checks: no duplicates, every entry's folder present.
    pub fn new(mut entries: Vec<Entry>) -> Result<Self, ManifestError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let m = Self { entries };
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ManifestError> {
        for pair in self.entries.windows(2) {
            if pair[0].path == pair[1].path {
                return Err(ManifestError::Duplicate(pair[0].path.clone()));
            }
        }
        for e in &self.entries {
            if let Some(parent) = e.path.parent() {
                match self.get(&parent) {
                    Some(p) if p.is_dir() => {}
                    _ => return Err(ManifestError::Orphan(e.path.clone())),
                }
            }
        }
        Ok(())
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, path: &VolumePath) -> Option<&Entry> {
        self.index_of(path).map(|i| &self.entries[i])
    }

    pub fn index_of(&self, path: &VolumePath) -> Option<usize> {
        self.entries.binary_search_by(|e| e.path.cmp(path)).ok()
    }

    /// Canonical id: BLAKE3 (domain-separated) of the postcard encoding of the sorted entries.
    pub fn root(&self) -> ManifestId {
        let mut h = blake3::Hasher::new_derive_key("orbit-sync 2026 manifest v1");
        h.update(&self.encode());
        ManifestId(*h.finalize().as_bytes())
    }

    /// The canonical byte form (postcard); also what the onboard side keeps of past manifests.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.entries).expect("manifest entries always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let entries: Vec<Entry> =
            postcard::from_bytes(bytes).map_err(|e| ManifestError::Encoding(e.to_string()))?;
        Self::new(entries)
    }

    /// One entry for each distinct content id, for "does the other side already hold this?".
    pub fn content_index(&self) -> HashMap<ContentId, usize> {
        let mut idx = HashMap::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(id) = e.file_id() {
                idx.entry(id).or_insert(i);
            }
        }
        idx
    }

    /// Entries at or below `folder`, re-rooted so `folder/x` becomes `x`.
    pub fn subtree(&self, folder: Option<&VolumePath>) -> Vec<Entry> {
        let Some(folder) = folder else {
            return self.entries.clone();
        };
        let cut = folder.as_str().len() + 1;
        self.entries
            .iter()
            .filter(|e| e.path.is_within(folder) && e.path != *folder)
            .map(|e| Entry {
                path: VolumePath::new(&e.path.as_str()[cut..]).expect("suffix of a checked path"),
                ..e.clone()
            })
            .collect()
    }

    /// This manifest with everything at or below `folder` replaced by `tree` (whose paths are
    /// relative to `folder`); the folder and its ancestors become folders if they are not.
    pub fn with_subtree(
        &self,
        folder: Option<&VolumePath>,
        tree: &Manifest,
    ) -> Result<Manifest, ManifestError> {
        let Some(folder) = folder else {
            return Ok(tree.clone());
        };
        let mut out: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| !e.path.is_within(folder) && !folder.is_within(&e.path))
            .cloned()
            .collect();
        // The folder and its ancestors: keep an existing folder's mode, make missing ones 0755.
        for dir in folder.ancestors().chain(std::iter::once(folder.clone())) {
            let mode = match self.get(&dir) {
                Some(e) if e.is_dir() => e.mode,
                _ => 0o755,
            };
            out.push(Entry {
                path: dir,
                kind: EntryKind::Dir,
                mode,
                mtime: 0,
            });
        }
        for e in tree.entries() {
            out.push(Entry {
                path: folder
                    .join(e.path.as_str())
                    .map_err(|_| ManifestError::Orphan(e.path.clone()))?,
                ..e.clone()
            });
        }
        Manifest::new(out)
    }

    /// Entries a push into `folder` may change: those at or below it, and its ancestors.
    pub fn region(&self, folder: &VolumePath) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.path.is_within(folder) || folder.is_within(&e.path))
            .collect()
    }

    /// Total bytes of file content.
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.file_id().is_some())
            .map(Entry::size)
            .sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn file(path: &str, body: &[u8]) -> Entry {
        Entry {
            path: VolumePath::new(path).unwrap(),
            kind: EntryKind::File {
                id: ContentId::of(body),
                size: body.len() as u64,
            },
            mode: 0o644,
            mtime: 1_700_000_000,
        }
    }

    pub fn dir(path: &str) -> Entry {
        Entry {
            path: VolumePath::new(path).unwrap(),
            kind: EntryKind::Dir,
            mode: 0o755,
            mtime: 0,
        }
    }

    #[test]
    fn orphans_and_duplicates_are_refused() {
        assert_eq!(
            Manifest::new(vec![file("a/b", b"x")]),
            Err(ManifestError::Orphan(VolumePath::new("a/b").unwrap()))
        );
        assert!(matches!(
            Manifest::new(vec![file("a", b"x"), file("a", b"y")]),
            Err(ManifestError::Duplicate(_))
        ));
        assert!(matches!(
            Manifest::new(vec![file("a", b"x"), file("a/b", b"y")]),
            Err(ManifestError::Orphan(_))
        ));
    }

    #[test]
    fn root_depends_on_content_mode_and_time_not_order() {
        let a = Manifest::new(vec![file("x", b"1"), dir("d"), file("d/y", b"2")]).unwrap();
        let b = Manifest::new(vec![file("d/y", b"2"), file("x", b"1"), dir("d")]).unwrap();
        assert_eq!(a.root(), b.root());
        let mut e = file("x", b"1");
        e.mode = 0o755;
        let c = Manifest::new(vec![e, dir("d"), file("d/y", b"2")]).unwrap();
        assert_ne!(a.root(), c.root());
        assert_eq!(Manifest::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn subtree_replacement_keeps_everything_else() {
        let vol = Manifest::new(vec![
            dir("in"),
            file("in/old", b"o"),
            dir("results"),
            file("results/r", b"r"),
            file("in-x", b"i"),
        ])
        .unwrap();
        let tree = Manifest::new(vec![file("new", b"n")]).unwrap();
        let dest = VolumePath::new("in").unwrap();
        let out = vol.with_subtree(Some(&dest), &tree).unwrap();
        let paths: Vec<&str> = out.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["in", "in/new", "in-x", "results", "results/r"]);
        assert_eq!(out.subtree(Some(&dest)), tree.entries());

        let deep = VolumePath::new("a/b").unwrap();
        let out = vol.with_subtree(Some(&deep), &tree).unwrap();
        assert!(out.get(&VolumePath::new("a").unwrap()).unwrap().is_dir());
        assert!(out.get(&VolumePath::new("a/b/new").unwrap()).is_some());
    }
}
