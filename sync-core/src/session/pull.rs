//! The node's side of a pull (downlink), storage only: where the bytes of a pull pack come
//! from. The protocol around it is being built (see ARCHITECTURE.md, "Pull").
//!
//! The node does not keep old versions of files pods overwrite, so it can encode against the
//! ground's copy only where it still holds those exact bytes:
//! - content it still has somewhere in the volume (a file renamed, copied, or left alone);
//! - for a file that only grew since it was last sent (a log), the first `len` bytes of the
//!   current file, when they hash to the id the ground holds. The node records `(id, path, len)`
//!   of every version it sends, so this costs one read and one hash, and no uplink bytes.

use std::collections::HashMap;
use std::io::Read;

use cap_std::fs::Dir;

use crate::id::ContentId;
use crate::manifest::Manifest;
use crate::pack::{ContentProvider, PackError};
use crate::path::VolumePath;
use crate::volume;

/// A version of a file the node sent to a ground: the ground holds these bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SentVersion {
    pub id: ContentId,
    pub path: VolumePath,
    pub len: u64,
}

/// Reads a pull's target content and bases from a pod's volume as it is now.
pub struct VolumeSource<'a> {
    dir: &'a Dir,
    /// Where the volume holds each content id now.
    now: HashMap<ContentId, VolumePath>,
    /// What was sent before, by id.
    sent: HashMap<ContentId, (VolumePath, u64)>,
    /// Sent versions already checked against the volume: their bytes when the volume still
    /// holds them (the encoder takes them from here instead of reading and hashing again).
    checked: std::cell::RefCell<HashMap<ContentId, Option<Vec<u8>>>>,
}

impl<'a> VolumeSource<'a> {
    pub fn new(dir: &'a Dir, now: &Manifest, sent: &[SentVersion]) -> Self {
        let now = now
            .entries()
            .iter()
            .filter_map(|e| e.file_id().map(|id| (id, e.path.clone())))
            .collect();
        let sent = sent
            .iter()
            .map(|v| (v.id, (v.path.clone(), v.len)))
            .collect();
        Self {
            dir,
            now,
            sent,
            checked: Default::default(),
        }
    }

    /// Whether the node holds the bytes of `id` to encode against. Content the volume has is
    /// taken on the scan's word; a grown file's prefix is read and hashed (once: the answer is
    /// kept). A file changed in place holds nothing of its old version: it goes by signature.
    pub fn may_hold(&self, id: &ContentId) -> bool {
        if self.now.contains_key(id) {
            return true;
        }
        if !self.sent.contains_key(id) {
            return false;
        }
        self.checked
            .borrow_mut()
            .entry(*id)
            .or_insert_with(|| self.sent_prefix(id))
            .is_some()
    }

    /// The bytes of a sent version `id` when the file it was sent from still starts with them.
    fn sent_prefix(&self, id: &ContentId) -> Option<Vec<u8>> {
        let (path, len) = self.sent.get(id)?;
        let bytes = self.prefix_of(path, *len)?;
        (ContentId::of(&bytes) == *id).then_some(bytes)
    }

    /// The first `len` bytes of the file at `path`, if there are that many.
    fn prefix_of(&self, path: &VolumePath, len: u64) -> Option<Vec<u8>> {
        let f = volume::open_nofollow(self.dir, path).ok()?;
        let mut out = Vec::with_capacity(len.min(1 << 30) as usize);
        f.take(len).read_to_end(&mut out).ok()?;
        (out.len() as u64 == len).then_some(out)
    }
}

impl ContentProvider for VolumeSource<'_> {
    fn target(&self, path: &VolumePath, id: &ContentId) -> Result<Vec<u8>, PackError> {
        let changed = || PackError::SourceChanged {
            path: path.to_string(),
        };
        // A pod may be writing it right now: what does not hash to the scanned id is not sent.
        let bytes = volume::read_file(self.dir, path).map_err(|_| changed())?;
        if ContentId::of(&bytes) != *id {
            return Err(changed());
        }
        Ok(bytes)
    }

    fn base(&self, id: &ContentId) -> Result<Option<Vec<u8>>, PackError> {
        if let Some(path) = self.now.get(id)
            && let Ok(bytes) = volume::read_file(self.dir, path)
            && ContentId::of(&bytes) == *id
        {
            return Ok(Some(bytes));
        }
        // Bytes checked while planning are used once; a second use reads again.
        let checked = self.checked.borrow_mut().get_mut(id).and_then(Option::take);
        Ok(checked.or_else(|| self.sent_prefix(id)))
    }
}

/// Files smaller than this get no kept signature: sent whole, they cost less than one.
const SIGN_MIN_BYTES: usize = 4096;
/// Block size of the signature the node keeps of a version it sends. Kept signatures never
/// cross the link, so their blocks are small: a change costs about one block of literal bytes
/// on the downlink, and a block costs 12 bytes of the node's storage. Small files, where a few
/// edited values are the whole change, get the smallest blocks: 64 B up to 64 KiB (a signature
/// of at most 12 KiB, 19% of its file), 128 B up to 256 KiB (9.4%), 256 B up to 64 MiB (4.7%),
/// then larger blocks so that no signature passes 3 MiB. Measured with
/// `benches/compare/pull.sh`: against 1 KiB blocks, these cut the results folder's downlink by
/// a third and the database's by 5%.
fn kept_block_for(len: u64) -> u32 {
    match len {
        0..=0x1_0000 => 64,
        0x1_0001..=0x4_0000 => 128,
        0x4_0001..=0x400_0000 => 256,
        _ => (len / 0x4_0000).next_power_of_two().min(1 << 20) as u32,
    }
}

/// Wraps a [`VolumeSource`] and keeps an rsync signature of every target it reads, so that
/// the next pull can send a changed-in-place file as a delta against this version.
pub struct Signing<'a> {
    inner: VolumeSource<'a>,
    sigs: std::cell::RefCell<HashMap<ContentId, Vec<u8>>>,
}

impl<'a> Signing<'a> {
    pub fn new(inner: VolumeSource<'a>) -> Self {
        Self {
            inner,
            sigs: Default::default(),
        }
    }

    pub fn may_hold(&self, id: &ContentId) -> bool {
        self.inner.may_hold(id)
    }

    pub fn into_signatures(self) -> HashMap<ContentId, Vec<u8>> {
        self.sigs.into_inner()
    }
}

impl ContentProvider for Signing<'_> {
    fn target(&self, path: &VolumePath, id: &ContentId) -> Result<Vec<u8>, PackError> {
        let bytes = self.inner.target(path, id)?;
        if bytes.len() >= SIGN_MIN_BYTES {
            self.sigs.borrow_mut().insert(
                *id,
                crate::delta::rsync::signature_with(&bytes, kept_block_for(bytes.len() as u64)),
            );
        }
        Ok(bytes)
    }

    fn base(&self, id: &ContentId) -> Result<Option<Vec<u8>>, PackError> {
        self.inner.base(id)
    }
}

/// Without `--delete`: what the ground's copy (`base`) holds and the pod no longer does stays,
/// unless the pod put something else in its way (a file where the copy has a folder).
pub fn keep_removed(base: &Manifest, target: Manifest) -> Manifest {
    let mut out: std::collections::BTreeMap<VolumePath, crate::manifest::Entry> = target
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

/// The paths whose content goes beyond `cap` bytes of a pull pack: the objects past the cap,
/// in the plan's order (by path), and every path that takes one of them. The first object
/// always stays, so that a pull of one huge file still moves.
pub fn over_cap(plan: &crate::pack::Plan, cap: u64) -> std::collections::HashSet<VolumePath> {
    let mut total = 0u64;
    let dropped: std::collections::HashSet<u32> = plan
        .objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| {
            total = total.saturating_add(o.size);
            (i > 0 && total > cap).then_some(i as u32)
        })
        .collect();
    plan.changes
        .iter()
        .filter_map(|c| match c {
            crate::manifest::Change::Put(p) => match p.kind {
                crate::manifest::PutKind::File(crate::manifest::FileSource::Object(i))
                    if dropped.contains(&i) =>
                {
                    Some(p.path.clone())
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// `target` with `paths` as the copy (`base`) has them, or left out where the copy has none:
/// they come with a later pull.
pub fn pin(
    target: &Manifest,
    base: &Manifest,
    paths: &std::collections::HashSet<VolumePath>,
) -> Result<Manifest, crate::manifest::ManifestError> {
    let mut entries: Vec<crate::manifest::Entry> = target
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
    use crate::manifest::{ScanOptions, StatCache, scan_dir};
    use crate::pack::{Limits, Plan};
    use cap_std::ambient_authority;

    fn scan(dir: &Dir) -> Manifest {
        scan_dir(dir, &StatCache::new(), &ScanOptions::volume())
            .unwrap()
            .0
    }

    /// A log line generator: realistic, compressible, never repeating exactly.
    fn log_lines(from: usize, bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = from;
        while out.len() < bytes {
            out.extend_from_slice(
                format!(
                    "2026-11-21T09:{:02}:{:02}.{:03}Z step={i} loss={:.5} lr={:.6} gpu_mem={}MiB\n",
                    (i / 60) % 60,
                    i % 60,
                    (i * 37) % 1000,
                    1.0 / (1.0 + i as f64 * 0.001),
                    0.001 * 0.999f64.powi((i % 500) as i32),
                    8000 + (i * 7919) % 4000
                )
                .as_bytes(),
            );
            i += 1;
        }
        out
    }

    #[test]
    fn a_grown_log_costs_about_its_appended_part() {
        let t = tempfile::tempdir().unwrap();
        let vol_path = t.path().join("vol");
        std::fs::create_dir_all(vol_path.join("logs")).unwrap();
        let old = log_lines(0, 4_000_000);
        let appended = log_lines(1_000_000, 80_000);
        let grown = [old.clone(), appended.clone()].concat();
        std::fs::write(vol_path.join("logs/train.log"), &grown).unwrap();
        let dir = Dir::open_ambient_dir(&vol_path, ambient_authority()).unwrap();

        // What the ground holds: the old log, as sent before.
        let old_id = ContentId::of(&old);
        let path = VolumePath::new("logs/train.log").unwrap();
        let mut ground = scan(&dir).into_entries();
        for e in &mut ground {
            if e.path == path {
                e.kind = crate::manifest::EntryKind::File {
                    id: old_id,
                    size: old.len() as u64,
                };
            }
        }
        let ground = Manifest::new(ground).unwrap();
        let now = scan(&dir);
        let sent = [SentVersion {
            id: old_id,
            path: path.clone(),
            len: old.len() as u64,
        }];
        let source = VolumeSource::new(&dir, &now, &sent);
        assert_eq!(source.base(&old_id).unwrap().as_deref(), Some(&old[..]));

        let plan = Plan::new(&ground, &now, &|id| source.may_hold(id));
        let mut pack = Vec::new();
        plan.encode(
            &ground,
            &source,
            &Default::default(),
            &Limits::default(),
            &mut pack,
        )
        .unwrap();
        let alone = zstd::bulk::compress(&appended, 19).unwrap().len();
        eprintln!(
            "grown log: pack {} B; the appended {} B alone at zstd -19: {alone} B",
            pack.len(),
            appended.len()
        );
        assert!(
            pack.len() as f64 <= 1.2 * alone as f64,
            "pack {} B for an append whose zstd -19 alone is {alone} B",
            pack.len()
        );
    }

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

    #[test]
    fn a_rewritten_file_is_not_taken_for_a_grown_one() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("db"), b"new bytes entirely").unwrap();
        let dir = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let now = scan(&dir);
        let sent = [SentVersion {
            id: ContentId::of(b"old bytes"),
            path: VolumePath::new("db").unwrap(),
            len: 9,
        }];
        let source = VolumeSource::new(&dir, &now, &sent);
        assert!(source.base(&ContentId::of(b"old bytes")).unwrap().is_none());
    }

    #[test]
    fn content_that_changed_since_the_scan_is_not_sent() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("out.csv"), b"a,b\n1,2\n").unwrap();
        let dir = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let now = scan(&dir);
        std::fs::write(t.path().join("out.csv"), b"a,b\n1,2\n3,4\n").unwrap();
        let source = VolumeSource::new(&dir, &now, &[]);
        let e = &now.entries()[0];
        assert!(matches!(
            source.target(&e.path, &e.file_id().unwrap()),
            Err(PackError::SourceChanged { .. })
        ));
    }
}
