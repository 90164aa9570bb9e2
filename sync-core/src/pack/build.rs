//! Planning a pack on the sending side: the changes, and which base each new object is encoded
//! against ([`super::encode`] encodes it).
//!
//! Every new object gets a base when one can be had: the same path in the receiver's volume (or,
//! failing that, a file of the same name elsewhere in it) whose exact bytes the sender holds goes
//! into the zstd reference prefix; a same-path base only the receiver holds is reached through an
//! rsync signature; anything else is sent literal.

use std::collections::HashMap;

use super::format::MAX_HEADER_DICT;
use crate::id::{ContentId, ManifestId};
use crate::manifest::{Change, EntryKind, FileSource, Manifest, PutKind, diff};
use crate::path::VolumePath;

/// Below this size an rsync signature costs more than it can save.
const RSYNC_MIN_BYTES: u64 = 4096;

/// How one object will be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseChoice {
    /// Base manifest entry whose bytes the sender holds: goes into the prefix.
    Prefix(u32),
    /// Base manifest entry only the receiver holds: needs its rsync signature.
    Rsync(u32),
    None,
}

#[derive(Debug, Clone)]
pub struct PlannedObject {
    pub id: ContentId,
    pub size: u64,
    /// Where the target tree has it (any one of its paths).
    pub path: VolumePath,
    pub base: BaseChoice,
}

/// The changeset from a base manifest to a target, with new content numbered as objects.
#[derive(Debug, Clone)]
pub struct Plan {
    pub base_root: ManifestId,
    pub target_root: ManifestId,
    pub changes: Vec<Change>,
    pub objects: Vec<PlannedObject>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub objects: u64,
    /// Sum of the sizes of the objects sent (what a plain copy would move).
    pub object_bytes: u64,
    pub prefixed: u64,
    pub rsynced: u64,
    pub literal: u64,
    pub pack_bytes: u64,
    /// The lowest and highest zstd level a segment was compressed at (0 when none was).
    pub levels: (i32, i32),
}

impl Plan {
    /// Plans the changes from `base` to `target`. `holds` says whether the sender has a content
    /// id's exact bytes.
    pub fn new(base: &Manifest, target: &Manifest, holds: &dyn Fn(&ContentId) -> bool) -> Plan {
        let held_by_receiver = base.content_index();
        let mut by_name: HashMap<&str, Vec<u32>> = HashMap::new();
        for (i, e) in base.entries().iter().enumerate() {
            if let Some(id) = e.file_id()
                && holds(&id)
            {
                by_name.entry(e.path.name()).or_default().push(i as u32);
            }
        }
        let mut objects: Vec<PlannedObject> = Vec::new();
        let mut object_of: HashMap<ContentId, u32> = HashMap::new();
        let mut changes = diff(base, target);
        for change in &mut changes {
            let Change::Put(put) = change else { continue };
            let PutKind::File(FileSource::Known { id, size }) = put.kind else {
                continue;
            };
            if size == 0 || held_by_receiver.contains_key(&id) {
                continue; // empty, or already in the volume: the receiver copies it
            }
            let index = *object_of.entry(id).or_insert_with(|| {
                let base_choice = choose_base(base, &by_name, &put.path, size, holds);
                objects.push(PlannedObject {
                    id,
                    size,
                    path: put.path.clone(),
                    base: base_choice,
                });
                (objects.len() - 1) as u32
            });
            put.kind = PutKind::File(FileSource::Object(index));
        }
        Plan {
            base_root: base.root(),
            target_root: target.root(),
            changes,
            objects,
        }
    }

    /// True when the target equals the base.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Base entries whose rsync signatures the receiver must send before [`Plan::encode`].
    pub fn signature_requests(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .objects
            .iter()
            .filter_map(|o| match o.base {
                BaseChoice::Rsync(b) => Some(b),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Total bytes of the objects this plan sends.
    pub fn object_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

/// The base manifest's canonical encoding, which both ends hold, as the header's dictionary.
pub(crate) fn header_dictionary(base: &Manifest) -> Option<Vec<u8>> {
    let enc = base.encode();
    (!enc.is_empty() && enc.len() <= MAX_HEADER_DICT).then_some(enc)
}

fn choose_base(
    base: &Manifest,
    by_name: &HashMap<&str, Vec<u32>>,
    path: &VolumePath,
    size: u64,
    holds: &dyn Fn(&ContentId) -> bool,
) -> BaseChoice {
    if let Some(i) = base.index_of(path)
        && let EntryKind::File {
            id,
            size: base_size,
        } = base.entries()[i].kind
    {
        if holds(&id) {
            return BaseChoice::Prefix(i as u32);
        }
        if size >= RSYNC_MIN_BYTES && base_size >= RSYNC_MIN_BYTES {
            return BaseChoice::Rsync(i as u32);
        }
    }
    // A renamed-and-changed file: the held file of the same name closest in size.
    if let Some(cands) = by_name.get(path.name()) {
        let best = cands
            .iter()
            .min_by_key(|&&i| base.entries()[i as usize].size().abs_diff(size));
        if let Some(&i) = best {
            return BaseChoice::Prefix(i);
        }
    }
    BaseChoice::None
}
