//! What a changeset does, in the operator's words: how many files it adds, changes, copies
//! and removes. A push reports it, a pull adds up its packs', and a queued pack keeps its own
//! for `status` (the ground's `outgoing.summary`).

use serde::{Deserialize, Serialize};

use super::{Change, EntryKind, FileSource, Manifest, PutKind};

/// What a changeset does, in the operator's words.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSummary {
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    /// Files whose content the volume already had elsewhere (renames, copies): no content sent.
    pub copied: u64,
    /// Files whose mode or time alone changed.
    pub metadata: u64,
    pub dirs_added: u64,
    pub dirs_removed: u64,
    pub symlinks: u64,
}

impl ChangeSummary {
    pub(crate) fn add(&mut self, o: &ChangeSummary) {
        self.added += o.added;
        self.changed += o.changed;
        self.removed += o.removed;
        self.copied += o.copied;
        self.metadata += o.metadata;
        self.dirs_added += o.dirs_added;
        self.dirs_removed += o.dirs_removed;
        self.symlinks += o.symlinks;
    }

    pub fn of(base: &Manifest, changes: &[Change]) -> Self {
        let mut s = Self::default();
        for c in changes {
            match c {
                Change::Remove(p) => match base.get(p).map(|e| &e.kind) {
                    Some(EntryKind::Dir) => s.dirs_removed += 1,
                    _ => s.removed += 1,
                },
                Change::Put(put) => {
                    let old = base.get(&put.path);
                    match &put.kind {
                        PutKind::Dir => {
                            if old.is_some() {
                                s.metadata += 1
                            } else {
                                s.dirs_added += 1
                            }
                        }
                        PutKind::Symlink(_) => s.symlinks += 1,
                        PutKind::File(FileSource::Object(_)) => {
                            if old.is_some() {
                                s.changed += 1
                            } else {
                                s.added += 1
                            }
                        }
                        PutKind::File(FileSource::Known { id, .. }) => {
                            match old.and_then(|e| e.file_id()) {
                                Some(o) if o == *id => s.metadata += 1,
                                Some(_) => s.changed += 1,
                                None if old.is_some() => s.changed += 1,
                                None => s.copied += 1,
                            }
                        }
                    }
                }
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ContentId;
    use crate::manifest::Put;
    use crate::manifest::tests::{dir, file};
    use crate::path::VolumePath;

    fn put(p: &str, kind: PutKind) -> Change {
        Change::Put(Put {
            path: VolumePath::new(p).unwrap(),
            kind,
            mode: 0o644,
            mtime: 0,
        })
    }

    fn known(body: &str) -> PutKind {
        PutKind::File(FileSource::Known {
            id: ContentId::of(body.as_bytes()),
            size: body.len() as u64,
        })
    }

    #[test]
    fn a_summary_counts_each_change_in_the_operators_words() {
        let base = Manifest::new(vec![
            file("a", b"a"),
            file("b", b"b"),
            file("c", b"c"),
            dir("d"),
            file("d/x", b"x"),
            file("e", b"e"),
            dir("f"),
            dir("g"),
            file("m", b"m"),
        ])
        .unwrap();
        let changes = vec![
            // New content: a path the base has (changed), one it has not (added), twice.
            put("a", PutKind::File(FileSource::Object(0))),
            put("n1", PutKind::File(FileSource::Object(1))),
            put("n2", PutKind::File(FileSource::Object(2))),
            // Content known by id: the same id (metadata), another id (changed), where a
            // folder stood (changed), on a new path (copied: a rename or a copy).
            put("m", known("m")),
            put("e", known("c")),
            put("g", known("b")),
            put("copy-of-b", known("b")),
            // Folders: new (added), existing (its mode: metadata).
            put("h", PutKind::Dir),
            put("f", PutKind::Dir),
            put("link", PutKind::Symlink("a".into())),
            // Removals: a file, and a folder.
            Change::Remove(VolumePath::new("c").unwrap()),
            Change::Remove(VolumePath::new("d/x").unwrap()),
            Change::Remove(VolumePath::new("d").unwrap()),
        ];
        let s = ChangeSummary::of(&base, &changes);
        assert_eq!(
            s,
            ChangeSummary {
                added: 2,
                changed: 3,
                removed: 2,
                copied: 1,
                metadata: 2,
                dirs_added: 1,
                dirs_removed: 1,
                symlinks: 1,
            }
        );
        assert!(!s.is_empty());
        assert!(ChangeSummary::of(&base, &[]).is_empty());
        // Summaries of the packs of one pull add up.
        let mut total = s.clone();
        total.add(&s);
        assert_eq!(total.added, 4);
        assert_eq!(total.symlinks, 2);
    }
}
