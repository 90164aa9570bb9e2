//! Where the bytes of a pull pack come from, on the node: the pod's volume as it is now, and
//! the signatures the node keeps of what it sends.
//!
//! The node does not keep old versions of files pods overwrite, so it can encode against the
//! ground's copy only where it still holds those exact bytes:
//! - content it still has somewhere in the volume (a file renamed, copied, or left alone);
//! - for a file that only grew since it was last sent (a log), the first `len` bytes of the
//!   current file, when they hash to the id the ground holds. The node records `(id, path, len)`
//!   of every version it sends, so this costs one read and one hash, and no uplink bytes.
//!
//! A file changed in place holds nothing of its old version: it goes as an rsync delta against
//! the signature [`Signing`] kept of the version the node sent.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use cap_std::fs::Dir;

use crate::delta::ReadAt;
use crate::delta::rsync::SignatureBuilder;
use crate::id::ContentId;
use crate::manifest::Manifest;
use crate::pack::{ContentProvider, PackError, TargetReader};
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
    /// Where the volume holds each content id now, and its size.
    now: HashMap<ContentId, (VolumePath, u64)>,
    /// What was sent before, by id.
    sent: HashMap<ContentId, (VolumePath, u64)>,
    /// Most bytes of one file the node reads into memory for a pull (`--max-pull-pack`):
    /// larger content is neither sent nor used as a base, whatever size the pod declared.
    max_file: u64,
    /// Sent versions already checked against the volume: whether the file still starts with
    /// them. Only the answer is kept: a volume may hold many grown files, and keeping each
    /// one's bytes until the encoder asks for them would hold them all at once.
    checked: std::cell::RefCell<HashMap<ContentId, bool>>,
    /// Bases read whole and found to be their id.
    verified: std::cell::RefCell<HashSet<ContentId>>,
}

impl<'a> VolumeSource<'a> {
    pub fn new(dir: &'a Dir, now: &Manifest, sent: &[SentVersion], max_file: u64) -> Self {
        let now = now
            .entries()
            .iter()
            .filter_map(|e| e.file_id().map(|id| (id, (e.path.clone(), e.size()))))
            .collect();
        let sent = sent
            .iter()
            .map(|v| (v.id, (v.path.clone(), v.len)))
            .collect();
        Self {
            dir,
            now,
            sent,
            max_file,
            checked: Default::default(),
            verified: Default::default(),
        }
    }

    /// Whether the node holds the bytes of `id` to encode against, within what it may read
    /// into memory. Content the volume has is taken on the scan's word; a grown file's prefix
    /// is read and hashed (once: the answer is kept). A file changed in place holds nothing
    /// of its old version: it goes by signature.
    pub fn may_hold(&self, id: &ContentId) -> bool {
        if let Some((_, size)) = self.now.get(id) {
            return *size <= self.max_file;
        }
        match self.sent.get(id) {
            Some((_, len)) if *len <= self.max_file => {}
            _ => return false,
        }
        *self
            .checked
            .borrow_mut()
            .entry(*id)
            .or_insert_with(|| self.sent_prefix_matches(id))
    }

    /// Whether the file a sent version `id` came from still starts with it, read through a
    /// fixed buffer.
    fn sent_prefix_matches(&self, id: &ContentId) -> bool {
        let Some((path, len)) = self.sent.get(id) else {
            return false;
        };
        hashes_to(self.dir, path, *len, id, false)
    }

    /// The planned objects whose file no longer holds the content the scan found (the pod
    /// wrote it since), read through a fixed buffer: they are all pinned before encoding,
    /// rather than found one encoding attempt at a time. Objects in `checked` were found as
    /// scanned already and are not read again; those found so now join it.
    pub fn changed_since_scan(
        &self,
        plan: &crate::pack::Plan,
        checked: &mut HashSet<ContentId>,
    ) -> HashSet<VolumePath> {
        let mut moved = HashSet::new();
        for o in &plan.objects {
            if checked.contains(&o.id) {
                continue;
            }
            if hashes_to(self.dir, &o.path, o.size, &o.id, true) {
                checked.insert(o.id);
            } else {
                moved.insert(o.path.clone());
            }
        }
        moved
    }
}

/// Whether the first `len` bytes of the file at `path` hash to `id` (with `whole`, and the
/// file has no more), read through a fixed buffer whatever the file's size, holes unread.
fn hashes_to(dir: &Dir, path: &VolumePath, len: u64, id: &ContentId, whole: bool) -> bool {
    let Ok(f) = volume::open_nofollow(dir, path) else {
        return false;
    };
    let f = f.into_std();
    let Ok((hasher, read)) = crate::sparse::hash(&f, len) else {
        return false;
    };
    // With `whole`, a file that has more than `len` bytes is not `id`.
    let more = whole && !f.metadata().is_ok_and(|m| m.len() <= len);
    read == len && !more && ContentId(*hasher.finalize().as_bytes()) == *id
}

impl ContentProvider for VolumeSource<'_> {
    fn open_target(
        &self,
        path: &VolumePath,
        id: &ContentId,
        _size: u64,
    ) -> Result<Box<dyn TargetReader + '_>, PackError> {
        let changed = || PackError::SourceChanged {
            path: path.to_string(),
        };
        let (_, size) = self.now.get(id).ok_or_else(changed)?;
        if *size > self.max_file {
            return Err(PackError::OverLimit {
                what: "file held in memory for a pull",
                value: *size,
                limit: self.max_file,
            });
        }
        // A pod may be writing it right now: the encoder sends nothing that does not hash to
        // the scanned id, and no more than the scanned size is read.
        let file = volume::open_nofollow(self.dir, path).map_err(|_| changed())?;
        // A sparse file's holes are passed over unread.
        Ok(Box::new(crate::sparse::SparseReader::new(
            file.into_std(),
            *size,
        )))
    }

    fn open_base(
        &self,
        id: &ContentId,
        _size: u64,
    ) -> Result<Option<Box<dyn ReadAt + '_>>, PackError> {
        // A base must be the exact bytes of `id`: each is read whole once and hashed before it
        // is used (a pod may have written it since the scan), then read in stretches.
        let (path, len) = match (self.now.get(id), self.sent.get(id)) {
            (Some((path, size)), _) if *size <= self.max_file => (path, *size),
            (_, Some((path, len))) if *len <= self.max_file && self.may_hold(id) => (path, *len),
            _ => return Ok(None),
        };
        let verified = self.verified.borrow().contains(id);
        if !verified && !hashes_to(self.dir, path, len, id, false) {
            return Ok(None);
        }
        self.verified.borrow_mut().insert(*id);
        match volume::open_nofollow(self.dir, path) {
            Ok(f) => Ok(Some(Box::new(f.into_std()))),
            Err(_) => Ok(None),
        }
    }
}

/// Files smaller than this get no kept signature: sent whole, they cost less than one.
const SIGN_MIN_BYTES: usize = 4096;
/// Block size of the signature the node keeps of a version it sends. Kept signatures never
/// cross the link, so their blocks are small: a change costs about one block of literal bytes
/// on the downlink, and a block costs 12 bytes of the node's storage. Small files, where a few
/// edited values are the whole change, get the smallest blocks: 64 B up to 64 KiB (a signature
/// of at most 12 KiB, 19% of its file), 128 B up to 256 KiB (9.4%), 256 B up to 64 MiB (4.7%),
/// then larger blocks so that no signature has more than `max_blocks` (by default
/// [`MAX_KEPT_BLOCKS`]: 3 MiB). Measured with `benches/compare/pull.sh`: against 1 KiB blocks,
/// these cut the results folder's downlink by a third and the database's by 5%.
fn kept_block_for(len: u64, max_blocks: u64) -> u32 {
    match len {
        0..=0x1_0000 => 64,
        0x1_0001..=0x4_0000 => 128,
        _ => (len / max_blocks.max(1))
            .next_power_of_two()
            .clamp(256, 1 << 20) as u32,
    }
}

/// Blocks of a kept signature at most, by default: with its index, which the encoder builds to
/// diff the next version against it, it takes 78 bytes a block (20.5 MB, measured).
pub const MAX_KEPT_BLOCKS: u64 = 0x4_0000;

/// Wraps a [`VolumeSource`] and keeps an rsync signature of every target it reads, so that
/// the next pull can send a changed-in-place file as a delta against this version. The
/// signature is built as the encoder reads the target, and kept once the encoder found the
/// bytes to be the target's id.
pub struct Signing<'a> {
    inner: VolumeSource<'a>,
    sigs: std::cell::RefCell<HashMap<ContentId, Vec<u8>>>,
    /// Signatures of targets read whole, until the encoder vouches for them.
    read: std::rc::Rc<std::cell::RefCell<HashMap<ContentId, Vec<u8>>>>,
    /// Where each vouched-for signature goes, if not into `sigs`.
    keep: Option<Keeper<'a>>,
    /// Blocks of a signature at most ([`kept_block_for`]).
    max_blocks: u64,
}

/// Takes each signature as it is vouched for.
type Keeper<'a> = Box<dyn Fn(ContentId, Vec<u8>) + 'a>;

impl<'a> Signing<'a> {
    pub fn new(inner: VolumeSource<'a>) -> Self {
        Self {
            inner,
            sigs: Default::default(),
            read: Default::default(),
            keep: None,
            max_blocks: MAX_KEPT_BLOCKS,
        }
    }

    /// Hands each signature to `keep` once its file is vouched for, rather than holding them
    /// all to the end: a large pull's signatures add up to more than the node's memory bound.
    /// No signature has more than `max_blocks` blocks (a node with little memory keeps coarser
    /// ones: diffing against a signature holds its index).
    pub fn keeping(
        inner: VolumeSource<'a>,
        max_blocks: u64,
        keep: impl Fn(ContentId, Vec<u8>) + 'a,
    ) -> Self {
        Self {
            keep: Some(Box::new(keep)),
            max_blocks,
            ..Self::new(inner)
        }
    }

    pub fn may_hold(&self, id: &ContentId) -> bool {
        self.inner.may_hold(id)
    }

    pub fn changed_since_scan(
        &self,
        plan: &crate::pack::Plan,
        checked: &mut HashSet<ContentId>,
    ) -> HashSet<VolumePath> {
        self.inner.changed_since_scan(plan, checked)
    }

    pub fn into_signatures(self) -> HashMap<ContentId, Vec<u8>> {
        self.sigs.into_inner()
    }
}

impl ContentProvider for Signing<'_> {
    fn open_target(
        &self,
        path: &VolumePath,
        id: &ContentId,
        size: u64,
    ) -> Result<Box<dyn TargetReader + '_>, PackError> {
        let inner = self.inner.open_target(path, id, size)?;
        if size < SIGN_MIN_BYTES as u64 {
            return Ok(inner);
        }
        Ok(Box::new(SigningReader {
            inner,
            builder: Some(SignatureBuilder::new(kept_block_for(size, self.max_blocks))),
            left: size,
            id: *id,
            read: self.read.clone(),
        }))
    }

    fn open_base(
        &self,
        id: &ContentId,
        size: u64,
    ) -> Result<Option<Box<dyn ReadAt + '_>>, PackError> {
        self.inner.open_base(id, size)
    }

    fn verified(&self, id: &ContentId) -> Result<(), PackError> {
        if let Some(sig) = self.read.borrow_mut().remove(id) {
            match &self.keep {
                Some(keep) => keep(*id, sig),
                None => {
                    self.sigs.borrow_mut().insert(*id, sig);
                }
            }
        }
        Ok(())
    }
}

/// A target's reader that builds its signature from the bytes that pass.
struct SigningReader<'a> {
    inner: Box<dyn TargetReader + 'a>,
    builder: Option<SignatureBuilder>,
    left: u64,
    id: ContentId,
    read: std::rc::Rc<std::cell::RefCell<HashMap<ContentId, Vec<u8>>>>,
}

impl SigningReader<'_> {
    /// Feeds the signature the next bytes of the target.
    fn feed(&mut self, bytes: &[u8]) {
        if let Some(b) = &mut self.builder {
            let keep = (bytes.len() as u64).min(self.left) as usize;
            b.feed(&bytes[..keep]);
            self.left -= keep as u64;
            if self.left == 0 {
                let sig = self.builder.take().expect("just matched").finish();
                self.read.borrow_mut().insert(self.id, sig);
            }
        }
    }
}

impl Read for SigningReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n]);
        Ok(n)
    }
}

impl TargetReader for SigningReader<'_> {
    fn next_hole(&mut self, from: u64) -> std::io::Result<Option<std::ops::Range<u64>>> {
        self.inner.next_hole(from)
    }

    /// The hole is not read, but the signature covers its zeros: the next pull's delta is
    /// against every byte of this version.
    fn skip_hole(&mut self, n: u64) -> std::io::Result<()> {
        self.inner.skip_hole(n)?;
        let zeros = &crate::sparse::ZEROS;
        let mut left = n;
        while left > 0 && self.builder.is_some() {
            let step = left.min(zeros.len() as u64) as usize;
            self.feed(&zeros[..step]);
            left -= step as u64;
        }
        Ok(())
    }
}

/// Size of the signature the node keeps of a sent version of `len` bytes
/// ([`kept_block_for`]): a header, then 4 + 8 bytes per block.
pub(super) fn kept_signature_len(len: u64) -> u64 {
    if len < SIGN_MIN_BYTES as u64 {
        return 0;
    }
    let block = kept_block_for(len, MAX_KEPT_BLOCKS) as u64;
    12 + len.div_ceil(block) * 12
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ScanOptions, StatCache, scan_dir};
    use crate::pack::{Effort, Limits, Plan};
    use crate::testing::{read_base, read_target};
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
        let source = VolumeSource::new(&dir, &now, &sent, u64::MAX);
        assert_eq!(
            read_base(&source, &old_id, old.len() as u64)
                .unwrap()
                .as_deref(),
            Some(&old[..])
        );

        let plan = Plan::new(&ground, &now, &|id| source.may_hold(id));
        let mut pack = Vec::new();
        plan.encode(
            &ground,
            &source,
            &Default::default(),
            &Limits::default(),
            &Effort::max(),
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
        let source = VolumeSource::new(&dir, &now, &sent, u64::MAX);
        assert!(
            read_base(&source, &ContentId::of(b"old bytes"), 9)
                .unwrap()
                .is_none()
        );
    }

    /// A pod that grows a file (or punches a huge hole into it) after the scan: the node reads
    /// no more than the scanned size (which still is the scanned content), and does not hold a
    /// base over the cap.
    #[test]
    fn a_file_grown_past_its_scanned_size_is_not_read_whole() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("out.bin"), b"scanned bytes").unwrap();
        let dir = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let now = scan(&dir);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(t.path().join("out.bin"))
            .unwrap();
        f.set_len(1 << 40).unwrap();
        let e = &now.entries()[0];
        let id = e.file_id().unwrap();
        let source = VolumeSource::new(&dir, &now, &[], 1 << 20);
        assert_eq!(
            read_target(&source, &e.path, &id, e.size()).unwrap(),
            b"scanned bytes"
        );
        assert_eq!(
            read_base(&source, &id, e.size()).unwrap().unwrap(),
            b"scanned bytes"
        );
        let capped = VolumeSource::new(&dir, &now, &[], 4);
        assert!(!capped.may_hold(&id), "a base over the cap is not held");
        assert!(read_base(&capped, &id, e.size()).unwrap().is_none());
    }

    #[test]
    fn content_that_changed_since_the_scan_is_not_sent() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("out.csv"), b"a,b\n1,2\n").unwrap();
        let dir = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let now = scan(&dir);
        std::fs::write(t.path().join("out.csv"), b"a,b\n9,9\n").unwrap();
        let source = VolumeSource::new(&dir, &now, &[], u64::MAX);
        let e = &now.entries()[0];
        assert!(matches!(
            read_target(&source, &e.path, &e.file_id().unwrap(), e.size()),
            Err(PackError::SourceChanged { .. })
        ));
        assert!(
            read_base(&source, &e.file_id().unwrap(), e.size())
                .unwrap()
                .is_none()
        );
    }
}
