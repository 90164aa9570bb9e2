//! Encoding a planned pack as a stream, in memory bounded by the [`Effort`] and the receiver's
//! [`Limits`], whatever the size of a file or of the pack.
//!
//! The header goes out first (the plan knows it), then segment after segment as each is
//! compressed. Objects are read through their providers in pieces: a file smaller than a
//! segment joins other files in one zstd frame (small files share a frame's overhead and match
//! each other); a larger one travels in pieces of its own. What a piece is encoded against:
//!
//! - the whole base entry as the zstd prefix, when the sender holds the base's exact bytes and
//!   base and object are small enough for one segment (what `zstd --patch-from` does);
//! - for a larger object whose base the sender holds, the stretches of the base the piece
//!   matches ([`anchor::BaseIndex`]): an edit anywhere, or an insertion that shifts everything
//!   after it, still finds its old bytes, and neither end holds more than a piece and its
//!   stretches;
//! - a copy of the whole base, then the rest, for a file that only grew (a log);
//! - an rsync delta against the receiver's signature, when only the receiver holds the base,
//!   with the unchanged stretches around each change as prefix ranges where they pay;
//! - nothing: literal.
//!
//! Zeros are not sent: a hole of a sparse file, which the provider's reader knows of
//! ([`TargetReader::next_hole`]), is passed over unread, and a run of zeros found in what is
//! read (at least [`MIN_ZERO_RUN`], in whole blocks) is cut out of its piece; both go as
//! [`Encoding::Zeros`] items, which take nothing from the frame and which the receiver makes
//! holes of. Their bytes are still hashed (as zeros), so the object's check covers every byte.
//!
//! Memory, per segment being built: the segment's content (at most [`Effort::segment_bytes`] and
//! a piece's delta), the piece being read, the prefix (at most the receiver's
//! `max_prefix_bytes`), the compressed frame, and zstd's own state for the level and window.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::ops::Range;
use std::time::Instant;

use super::PackError;
use super::anchor::BaseIndex;
use super::build::{BaseChoice, Plan, PlanStats, PlannedObject, header_dictionary};
use super::format::{Encoding, FIXED_LEN, FixedHeader, HeaderBody, Item, Limits, PrefixPart};
use super::pool::{Job, Pool};
use crate::delta::{ReadAt, rsync, zstd_ref};
use crate::id::ContentId;
use crate::manifest::Manifest;
use crate::path::VolumePath;
use crate::sparse;

/// An object that starts with its whole base is sent as a copy of the base and its new bytes
/// from this base size on (below it, matching the base in the prefix costs nothing worth saving).
const APPEND_MIN_BYTES: u64 = 64 * 1024;
/// Unchanged bytes of an rsync-delta'd object put in the prefix on each side of a changed
/// stretch: a changed page compresses against the pages around it, which both ends hold.
const CONTEXT_BYTES: u64 = 16 * 1024;
/// Ranges one segment names at most; changed stretches past them compress without neighbours.
const MAX_RANGES_PER_SEGMENT: usize = 65_536;
/// Around each stretch of a base a large object's piece matches, this much more of the base
/// goes into the prefix: the changed bytes between two matches find their old versions there.
const ANCHOR_MARGIN: u64 = 64 * 1024;
/// Target bytes read at a time.
const READ_BUF: usize = 1 << 20;
/// Shortest run of zeros in a target's data that goes as a [`Encoding::Zeros`] item rather than
/// as literal bytes. On the wire the two cost about the same: zstd takes a run of zeros for a
/// few bytes, and an item costs a few bytes too and cuts its literal in two (measured at level
/// 19 on a 64 MiB disk image, a 16 MiB file of pages a quarter of them zeros, and 32 MiB of
/// random stretches between zero runs of 8–300 KiB: every threshold from 4 KiB to none at all
/// within 0.3% of the others). What a run buys is a hole on the receiver and time at both ends;
/// 64 KiB makes holes of the runs that matter without cutting a receiver's file into 4 KiB
/// extents wherever a page happens to be zeros. Holes the file system knows of go as items
/// at any length.
pub const MIN_ZERO_RUN: usize = 64 * 1024;
/// Items one segment carries at most: a [`Encoding::Zeros`] item adds nothing to the segment's
/// content, so a file of many holes would otherwise fill a head past what a receiver reads
/// ([`super::format::MAX_SEGMENT_TABLE`] items, [`super::format::MAX_SEGMENT_HEAD`] bytes; an
/// item encodes in at most 31 bytes).
const MAX_ITEMS_PER_SEGMENT: usize = 1 << 16;

/// A target as the encoder reads it: its bytes, in order. A reader that knows where its file's
/// holes are says so, and the encoder passes over them without reading them: they go as
/// [`Encoding::Zeros`] items, so a 5 GB file of holes costs neither 5 GB of reads nor of wire.
pub trait TargetReader: Read {
    /// The first hole at or after offset `from` of the target (offsets from its start), if
    /// the reader knows of one. A hole reads as zeros; one the reader does not know of is
    /// read, and its zeros are found in what is read.
    fn next_hole(&mut self, _from: u64) -> std::io::Result<Option<Range<u64>>> {
        Ok(None)
    }

    /// Passes over the next `n` bytes, which are in a hole (zeros), without reading them.
    fn skip_hole(&mut self, n: u64) -> std::io::Result<()> {
        let mut buf = [0u8; 8192];
        let mut left = n;
        while left > 0 {
            let step = left.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..step])?;
            left -= step as u64;
        }
        Ok(())
    }
}

/// Bytes in memory have no holes the reader knows of: their zeros are found as they are read.
impl TargetReader for &[u8] {}

/// What the sender reads while encoding.
pub trait ContentProvider {
    /// A reader of target content `id`, `size` bytes, found at `path` in the target tree. The
    /// encoder hashes everything it reads (and the holes it passes over, as zeros) and refuses
    /// content that is not `id` ([`PackError::SourceChanged`]); it may open the same content
    /// more than once. A file's reader should know its holes ([`crate::sparse::SparseReader`]).
    fn open_target(
        &self,
        path: &VolumePath,
        id: &ContentId,
        size: u64,
    ) -> Result<Box<dyn TargetReader + '_>, PackError>;

    /// Random access to the exact bytes of `id` (`size` bytes), if the sender holds them: a base
    /// it can encode against.
    fn open_base(
        &self,
        id: &ContentId,
        size: u64,
    ) -> Result<Option<Box<dyn ReadAt + '_>>, PackError>;

    /// Every byte of target `id` was read and matched its id. Called once per object, after
    /// its last byte.
    fn verified(&self, _id: &ContentId) -> Result<(), PackError> {
        Ok(())
    }
}

/// How hard the encoder works, and in how much memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effort {
    /// zstd level.
    pub level: i32,
    /// zstd worker threads per frame (0: the calling thread). One worker keeps level 19's
    /// long-distance matching against a prefix good (see [`zstd_ref`]).
    pub workers: u32,
    /// Content of a segment the encoder aims for; a larger object travels in pieces of this
    /// size. Both ends hold about this much per segment.
    pub segment_bytes: u64,
    /// Cap on zstd's match-finder tables ([`zstd_ref::Tuning::table_log`]); `None`: the
    /// level's own.
    pub table_log: Option<u32>,
    /// Segments compressed at once, each on a thread of its own (1: on the encoder's thread).
    /// The pack's bytes are the same whatever the number; the memory is about this many
    /// segments with their prefixes and zstd's state.
    pub jobs: u32,
    /// The link's rate (bytes per second) and the sender's cores, when the level was chosen for
    /// them ([`Effort::for_link`]): with one job, each segment's level is chosen again from
    /// how much the segments before it shrank ([`level_for`]).
    pub link: Option<(u64, u32)>,
}

impl Effort {
    /// The most compression: what a narrow link wants (level 19, 32 MiB segments).
    pub fn max() -> Effort {
        Effort {
            level: zstd_ref::LEVEL,
            workers: 1,
            segment_bytes: 32 << 20,
            table_log: None,
            jobs: 1,
            link: None,
        }
    }

    /// This effort within `memory` bytes for the encoder's own buffers (a node's, whose pods
    /// share its memory): a segment of a sixteenth of it (1 to 8 MiB), and zstd's match-finder
    /// tables of about a tenth (hash 2^(log2 memory - 7) entries, chain twice that, 4 bytes
    /// each). The window and prefix are the caller's [`Limits`] to hold.
    pub fn within_memory(self, memory: u64) -> Effort {
        let log = 63 - memory.max(1 << 20).leading_zeros();
        Effort {
            segment_bytes: self
                .segment_bytes
                .min((memory / 16).clamp(1 << 20, 8 << 20)),
            table_log: Some(log.saturating_sub(7).max(16)),
            ..self
        }
    }
}

/// zstd levels the engine uses and the input each compresses per second on one core, about (a
/// low figure, as a small ARM core gives: the choice must keep the link busy there too). Level
/// 5 is the floor: sending no more than `tar | zstd -3` is the least an operator expects, and a
/// pack's segments and manifest cost more than its one stream: at level 3 throughout, the rate
/// sweep's 100 Mbit/s first push was 9,609,112 bytes against its 9,558,493; with 5 as the
/// floor, 8.97 to 9.0 MB, for about a tenth of a second more CPU on this machine.
const LEVEL_SPEEDS: [(i32, f64); 7] = [
    (19, 1.0e6),
    (17, 2.0e6),
    (15, 4.0e6),
    (12, 12.0e6),
    (9, 25.0e6),
    (6, 40.0e6),
    (5, 60.0e6),
];

/// How much faster than the link compression must go. Segments are compressed while the link
/// carries the ones before (the pack streams), so outpacing it is enough; the half again is
/// for the reading, hashing and keeping of content the sender does on the same cores. (It was
/// 2 before the sender measured its own speed: at 100 Mbit/s that kept the rate sweep's source
/// tree at level 3, 0.5% over `tar | zstd -3`.)
const MARGIN: f64 = 1.5;

impl Effort {
    /// The effort for a link of `rate` bytes per second and a sender with `cores` cores: the
    /// highest level that still compresses three times faster than the link carries (packs
    /// shrink to about half, and the rest is [`MARGIN`]), so the link never waits for the CPU.
    /// Without a rate, the most compression: the narrow uplink is the common case.
    pub fn for_link(rate: Option<f64>, cores: usize) -> Effort {
        let Some(rate) = rate.filter(|r| r.is_finite() && *r > 0.0) else {
            return Effort::max();
        };
        let (level, workers) = level_for(rate, cores, 2.0, 1.0);
        Effort {
            level,
            workers,
            link: Some((rate as u64, cores.max(1) as u32)),
            ..Effort::max()
        }
    }
}

/// The highest level (and its zstd workers) at which `cores` compress content that shrinks
/// `ratio` times [`MARGIN`] times as fast as a link of `rate` bytes per second carries what it
/// shrinks to: the link never waits for the CPU. A delta against a base the sender holds shrinks a
/// hundred times and more (the unchanged bytes match the prefix), so it wants a far faster
/// level than new content at the same rate; at 9.6 kbit/s every ratio still gets level 19.
///
/// `speedup` is how much faster than [`LEVEL_SPEEDS`] the sender measured itself compressing
/// the segments before (1 before any): the table is a small ARM core's, and a ground
/// workstation three times faster sends fewer bytes at the same rate. It is held to 1/4..16, so
/// one segment slowed by a busy machine cannot drop the level to the floor for good, nor one
/// timed on a sliver of content raise it to 19.
pub fn level_for(rate: f64, cores: usize, ratio: f64, speedup: f64) -> (i32, u32) {
    let cores = cores.max(1);
    let speedup = if speedup.is_finite() {
        speedup.clamp(0.25, 16.0)
    } else {
        1.0
    };
    let needed = MARGIN * rate * ratio.clamp(1.0, 10_000.0) / speedup;
    let (level, _) = LEVEL_SPEEDS
        .iter()
        .copied()
        .find(|&(level, speed)| {
            // Long-distance matching wants one zstd worker (see zstd_ref); below, the
            // frame's work is spread over the cores.
            let workers = if level >= 16 { 1 } else { cores };
            speed * workers as f64 >= needed
        })
        .unwrap_or(LEVEL_SPEEDS[LEVEL_SPEEDS.len() - 1]);
    let workers = if level >= 16 { 1 } else { cores.min(8) as u32 };
    (level, workers)
}

impl Default for Effort {
    fn default() -> Self {
        Effort::max()
    }
}

impl Plan {
    /// Encodes the pack into `out` as it goes: header, then each segment as soon as it is
    /// compressed. `signatures` holds the receiver's signature for each entry of
    /// [`Plan::signature_requests`]; a missing one makes that object literal.
    pub fn encode(
        &self,
        base: &Manifest,
        provider: &dyn ContentProvider,
        signatures: &HashMap<u32, Vec<u8>>,
        limits: &Limits,
        effort: &Effort,
        out: &mut dyn Write,
    ) -> Result<PlanStats, PackError> {
        let mut stats = PlanStats {
            objects: self.objects.len() as u64,
            object_bytes: self.object_bytes(),
            ..Default::default()
        };
        let (fixed, header) = self.header(base)?;
        out.write_all(&fixed.encode())?;
        out.write_all(&header)?;
        // The header can go on the link now, while the first segment is compressed.
        out.flush()?;
        stats.pack_bytes = (FIXED_LEN + header.len()) as u64;
        // A pack larger than a segment starts with small segments that grow to the full size,
        // so its first bytes are ready in moments even at the highest level.
        let ramp = self.object_bytes() > effort.segment_bytes;
        let mut enc = Encoder {
            base,
            provider,
            signatures,
            limits,
            effort,
            segment: Segment::default(),
            out,
            stats: &mut stats,
            segments: 0,
            ramp,
            pool: (effort.jobs > 1).then(|| Pool::new(effort.jobs)),
            shrunk: (0, 0),
            pace: (0.0, 0.0),
        };
        for (index, object, class) in enc.order(&self.objects)? {
            enc.object(index, object, class)?;
        }
        enc.finish_segments()?;
        enc.out.write_all(&[0])?;
        enc.out.flush()?;
        stats.pack_bytes += 1;
        Ok(stats)
    }

    /// The header frame (compressed against the base manifest when it can be) and the fixed
    /// part that leads it.
    fn header(&self, base: &Manifest) -> Result<(FixedHeader, Vec<u8>), PackError> {
        let body = HeaderBody {
            target_root: self.target_root,
            changes: self.changes.clone(),
            objects: self.objects.iter().map(|o| o.size).collect(),
        };
        let raw = postcard::to_stdvec(&body).map_err(|e| PackError::Header(e.to_string()))?;
        let dict = header_dictionary(base);
        let mut packed = Vec::new();
        zstd_ref::compress(
            dict.as_deref().unwrap_or(&[]),
            &mut &raw[..],
            raw.len() as u64,
            &mut packed,
        )?;
        let header_len = u32::try_from(packed.len()).map_err(|_| PackError::OverLimit {
            what: "header",
            value: packed.len() as u64,
            limit: u32::MAX as u64,
        })?;
        let fixed = FixedHeader {
            base_root: self.base_root,
            dictionary: dict.is_some(),
            header_len,
        };
        Ok((fixed, packed))
    }
}

/// How an object travels, as far as the order of the pack goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Against a base the sender holds.
    Prefixed,
    Literal,
    /// As rsync deltas: segments of their own.
    Rsync,
}

/// The segment being filled.
#[derive(Default)]
struct Segment {
    items: Vec<Item>,
    /// The payloads of the items, back to back: what the frame compresses.
    content: Vec<u8>,
    parts: Vec<PrefixPart>,
    prefix_len: u64,
    /// Unchanged neighbours of rsync deltas' changes, tried as extra prefix at the end, with
    /// their bytes (taken from the target: only the receiver holds the base).
    ranges: Vec<PrefixPart>,
    range_bytes: Vec<u8>,
    rsync: bool,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

struct Encoder<'a> {
    base: &'a Manifest,
    provider: &'a dyn ContentProvider,
    signatures: &'a HashMap<u32, Vec<u8>>,
    limits: &'a Limits,
    effort: &'a Effort,
    segment: Segment,
    out: &'a mut dyn Write,
    stats: &'a mut PlanStats,
    /// Segments written so far.
    segments: u32,
    /// Segments start at [`RAMP_START`] and double up to the effort's size.
    ramp: bool,
    /// Workers compressing segments ([`Effort::jobs`] > 1).
    pool: Option<Pool>,
    /// Content and frame bytes of the segments written so far (one job only).
    shrunk: (u64, u64),
    /// The seconds [`LEVEL_SPEEDS`] gave for compressing the segments so far, and the seconds
    /// they took (one job only): how much faster than the table this sender is.
    pace: (f64, f64),
}

/// The first segment of a large pack holds this much, the next twice that, and so on (about a
/// second of level 19 on one core). Segments of rsync deltas do not ramp: their content is the
/// deltas, small and quick to make, and splitting them only loses compression.
const RAMP_START: u64 = 1 << 20;

/// A target being read: hashed as it goes, so the object is checked once its last byte is in.
struct Target<'r> {
    reader: Box<dyn TargetReader + 'r>,
    hasher: blake3::Hasher,
    size: u64,
    left: u64,
    path: VolumePath,
    /// The reader's answer to where the next hole is, from the last time it was asked (`None`:
    /// not asked since the position passed the hole it named).
    hole: Option<Option<Range<u64>>>,
}

impl Target<'_> {
    /// Offset of the next byte to read.
    fn at(&self) -> u64 {
        self.size - self.left
    }

    /// The next hole the reader knows of at or after the position, within the target.
    fn next_hole(&mut self) -> Result<Option<Range<u64>>, PackError> {
        let at = self.at();
        let stale = match &self.hole {
            None => true,
            Some(Some(h)) => h.end <= at,
            // No hole from where it was asked to the end: still so.
            Some(None) => false,
        };
        if stale {
            let hole = self.reader.next_hole(at).map_err(|_| self.changed())?;
            self.hole = Some(hole.map(|h| h.start.max(at)..h.end.min(self.size)));
        }
        Ok(self
            .hole
            .clone()
            .flatten()
            .map(|h| h.start.max(at)..h.end)
            .filter(|h| !h.is_empty()))
    }

    /// Bytes of the hole the position is in (0: data here).
    fn hole_here(&mut self) -> Result<u64, PackError> {
        let at = self.at();
        Ok(match self.next_hole()? {
            Some(h) if h.start == at => h.end - at,
            _ => 0,
        })
    }

    /// Bytes from the position to the next hole (or the end).
    fn data_here(&mut self) -> Result<u64, PackError> {
        let at = self.at();
        Ok(match self.next_hole()? {
            Some(h) => h.start - at,
            None => self.left,
        })
    }

    /// Passes over the next `n` bytes, in a hole: hashed as zeros, not read.
    fn skip_hole(&mut self, n: u64) -> Result<(), PackError> {
        self.reader.skip_hole(n).map_err(|_| self.changed())?;
        sparse::hash_zeros(&mut self.hasher, n);
        self.left -= n;
        Ok(())
    }

    /// The next `n` bytes (at most what is left) appended to `buf`; those in holes are zeros
    /// that are not read.
    fn read_into(&mut self, n: u64, buf: &mut Vec<u8>) -> Result<(), PackError> {
        let end = buf.len() + n.min(self.left) as usize;
        while buf.len() < end {
            let want = (end - buf.len()) as u64;
            let start = buf.len();
            let hole = self.hole_here()?.min(want);
            if hole > 0 {
                self.skip_hole(hole)?;
                buf.resize(start + hole as usize, 0);
                continue;
            }
            let n = self.data_here()?.min(want);
            buf.resize(start + n as usize, 0);
            self.reader
                .read_exact(&mut buf[start..])
                .map_err(|_| self.changed())?;
            self.hasher.update(&buf[start..]);
            self.left -= n;
        }
        Ok(())
    }

    /// Reads and hashes the next `n` bytes without keeping them (holes are not read).
    fn skip(&mut self, n: u64) -> Result<(), PackError> {
        let mut buf = Vec::with_capacity(READ_BUF);
        let end = self.at() + n.min(self.left);
        while self.at() < end {
            let left = end - self.at();
            let hole = self.hole_here()?.min(left);
            if hole > 0 {
                self.skip_hole(hole)?;
                continue;
            }
            buf.clear();
            let step = left.min(READ_BUF as u64).min(self.data_here()?);
            self.read_into(step, &mut buf)?;
        }
        Ok(())
    }

    /// Checks the whole object was read and is `id`. (Bytes past the size are never read: a
    /// file that grew since the scan but still begins with `id`'s bytes gives `id`.)
    fn finish(self, id: &ContentId) -> Result<(), PackError> {
        if self.left != 0 || ContentId(*self.hasher.finalize().as_bytes()) != *id {
            return Err(self.changed());
        }
        Ok(())
    }

    fn changed(&self) -> PackError {
        PackError::SourceChanged {
            path: self.path.to_string(),
        }
    }
}

impl<'a> Encoder<'a> {
    /// The objects in the order the segments take them: prefixed objects first, in path order
    /// so prefix and content run in step; then literals clustered by file type; then rsync
    /// deltas. An rsync object small enough to be one piece is tried first: if its delta does
    /// not pay it goes with the literals.
    fn order(
        &mut self,
        objects: &'a [PlannedObject],
    ) -> Result<Vec<(u32, &'a PlannedObject, Class)>, PackError> {
        let mut keyed = Vec::with_capacity(objects.len());
        for (i, o) in objects.iter().enumerate() {
            let class = match o.base {
                BaseChoice::Prefix(b) => {
                    let entry = &self.base.entries()[b as usize];
                    let id = entry.file_id().expect("planned on a file");
                    match self.provider.open_base(&id, entry.size())? {
                        Some(_) => Class::Prefixed,
                        None => Class::Literal,
                    }
                }
                BaseChoice::Rsync(b) if self.signatures.contains_key(&b) => {
                    if o.size <= self.effort.segment_bytes && !self.rsync_pays(o, b)? {
                        Class::Literal
                    } else {
                        Class::Rsync
                    }
                }
                _ => Class::Literal,
            };
            keyed.push(((class, sort_key(&o.path)), i as u32, o));
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keyed
            .into_iter()
            .map(|((class, _), i, o)| (i, o, class))
            .collect())
    }

    /// Whether a one-piece object's rsync delta is worth sending.
    fn rsync_pays(&self, o: &PlannedObject, b: u32) -> Result<bool, PackError> {
        let mut t = self.open(o)?;
        let mut piece = Vec::new();
        t.read_into(o.size, &mut piece)?;
        let delta = rsync::diff(&self.signatures[&b], &piece)?;
        Ok(pays(delta.len() as u64, o.size))
    }

    /// Content the segment being built aims for.
    fn segment_bytes(&self) -> u64 {
        let full = self.effort.segment_bytes;
        if self.ramp {
            full.min(RAMP_START << self.segments.min(32))
        } else {
            full
        }
    }

    fn open(&self, o: &PlannedObject) -> Result<Target<'a>, PackError> {
        Ok(Target {
            reader: self.provider.open_target(&o.path, &o.id, o.size)?,
            hasher: blake3::Hasher::new(),
            size: o.size,
            left: o.size,
            path: o.path.clone(),
            hole: None,
        })
    }

    fn object(&mut self, index: u32, o: &PlannedObject, class: Class) -> Result<(), PackError> {
        let mut target = self.open(o)?;
        match (class, o.base) {
            (Class::Prefixed, BaseChoice::Prefix(b)) => {
                let entry = &self.base.entries()[b as usize];
                let id = entry.file_id().expect("planned on a file");
                match self.provider.open_base(&id, entry.size())? {
                    Some(base) => {
                        self.stats.prefixed += 1;
                        self.prefixed(index, o, b, entry.size(), base.as_ref(), &mut target)?
                    }
                    None => {
                        self.stats.literal += 1;
                        self.literal(index, &mut target)?
                    }
                }
            }
            (Class::Rsync, BaseChoice::Rsync(b)) => {
                if self.rsynced(index, b, &mut target)? {
                    self.stats.rsynced += 1;
                } else {
                    self.stats.literal += 1;
                }
            }
            _ => {
                self.stats.literal += 1;
                self.literal(index, &mut target)?
            }
        }
        target.finish(&o.id)?;
        // The object's last item says "the rest" (its length is in the header).
        if let Some(last) = self.segment.items.last_mut()
            && last.object == index
        {
            last.len = 0;
        }
        self.provider.verified(&o.id)
    }

    /// An object whose base `b` (`base_len` bytes) the sender holds.
    fn prefixed(
        &mut self,
        index: u32,
        o: &PlannedObject,
        b: u32,
        base_len: u64,
        base: &dyn ReadAt,
        target: &mut Target<'a>,
    ) -> Result<(), PackError> {
        if base_len >= APPEND_MIN_BYTES
            && o.size >= base_len
            && self.starts_with(o, base, base_len)?
        {
            // Grew at the end only: the base is copied, the new part sent.
            target.skip(base_len)?;
            self.add(
                Item {
                    object: index,
                    len: base_len,
                    encoding: Encoding::Copy { base: b, from: 0 },
                },
                &[],
                Vec::new(),
                false,
            )?;
            return self.literal(index, target);
        }
        if base_len <= self.limits.max_prefix_bytes && o.size <= self.effort.segment_bytes {
            let mut piece = Vec::new();
            target.read_into(o.size, &mut piece)?;
            return self.add_piece(index, 0, &piece, vec![PrefixPart::Entry(b)]);
        }
        // Too large for one segment: each piece against the whole base when it is small, else
        // against the stretches of the base the piece matches.
        let small_base = base_len <= self.limits.max_prefix_bytes / 2;
        let index_of_base = match small_base {
            true => None,
            false => Some(BaseIndex::build(base, base_len)?),
        };
        let budget = self.limits.max_prefix_bytes;
        let mut piece = Vec::new();
        let mut shift = 0i128;
        while target.left > 0 {
            let hole = target.hole_here()?;
            if hole > 0 {
                target.skip_hole(hole)?;
                self.zeros(index, hole, false)?;
                continue;
            }
            let at = target.at();
            piece.clear();
            let step = self.piece_len().min(target.data_here()?);
            target.read_into(step, &mut piece)?;
            let parts = match &index_of_base {
                None => vec![PrefixPart::Entry(b)],
                Some(index) => index
                    .ranges_for(&piece, at, ANCHOR_MARGIN, budget, &mut shift)
                    .into_iter()
                    .map(|(from, len)| PrefixPart::Range { base: b, from, len })
                    .collect(),
            };
            self.add_piece(index, at, &piece, parts)?;
        }
        Ok(())
    }

    /// Whether target `o` begins with the `base_len` bytes of `base`, compared in stretches.
    fn starts_with(
        &self,
        o: &PlannedObject,
        base: &dyn ReadAt,
        base_len: u64,
    ) -> Result<bool, PackError> {
        let mut t = self.open(o)?;
        let (mut ours, mut theirs) = (Vec::with_capacity(READ_BUF), vec![0u8; READ_BUF]);
        let mut at = 0u64;
        while at < base_len {
            let n = (base_len - at).min(READ_BUF as u64);
            ours.clear();
            t.read_into(n, &mut ours)?;
            base.read_exact_at(&mut theirs[..n as usize], at)?;
            if ours[..] != theirs[..n as usize] {
                return Ok(false);
            }
            at += n;
        }
        Ok(true)
    }

    /// Literal pieces of what is left of `target` (its holes and runs of zeros as such).
    fn literal(&mut self, index: u32, target: &mut Target<'a>) -> Result<(), PackError> {
        let mut piece = Vec::new();
        while target.left > 0 {
            let hole = target.hole_here()?;
            if hole > 0 {
                target.skip_hole(hole)?;
                self.zeros(index, hole, false)?;
                continue;
            }
            // Fill the segment being built before starting another.
            let room = self
                .segment_bytes()
                .saturating_sub(self.segment.content.len() as u64);
            let step = if room >= (64 << 10).min(target.left) && !self.segment.rsync {
                room
            } else {
                self.segment_bytes()
            };
            let at = target.at();
            piece.clear();
            let step = step.max(1).min(target.data_here()?);
            target.read_into(step, &mut piece)?;
            self.add_piece(index, at, &piece, Vec::new())?;
        }
        Ok(())
    }

    /// A piece of object `index` read from offset `at`, with the prefix `parts` it compresses
    /// against: literal, but for its runs of zeros, which go as [`Encoding::Zeros`] items.
    fn add_piece(
        &mut self,
        index: u32,
        at: u64,
        piece: &[u8],
        mut parts: Vec<PrefixPart>,
    ) -> Result<(), PackError> {
        let runs = sparse::zero_runs(piece, at, MIN_ZERO_RUN);
        // The piece's literal bytes go in one segment with its prefix, as a piece without
        // zeros does.
        let zeros: usize = runs.iter().map(|r| r.len()).sum();
        if zeros < piece.len() {
            self.make_room((piece.len() - zeros) as u64, &parts, false)?;
        }
        let mut from = 0usize;
        let ends = runs
            .iter()
            .map(|r| (r.start, r.end))
            .chain([(piece.len(), piece.len())]);
        for (start, end) in ends {
            if start > from {
                let item = Item {
                    object: index,
                    len: (start - from) as u64,
                    encoding: Encoding::Literal,
                };
                // The prefix goes with the piece's first bytes; its other bytes join that
                // segment (they are no more than the room it was read for).
                self.add(item, &piece[from..start], std::mem::take(&mut parts), false)?;
            }
            if end > start {
                self.zeros(index, (end - start) as u64, false)?;
            }
            from = end;
        }
        Ok(())
    }

    /// `len` zero bytes of object `index`: an item that takes nothing from the frame (one
    /// longer item when the object's last item already is zeros).
    fn zeros(&mut self, index: u32, len: u64, rsync_family: bool) -> Result<(), PackError> {
        if let Some(last) = self.segment.items.last_mut()
            && last.object == index
            && last.encoding == Encoding::Zeros
            && last.len != 0
        {
            last.len += len;
            return Ok(());
        }
        let item = Item {
            object: index,
            len,
            encoding: Encoding::Zeros,
        };
        self.add(item, &[], Vec::new(), rsync_family)
    }

    /// Rsync deltas of `target`'s pieces against base `b`, each where it pays (literal where it
    /// does not). Whether any piece went as a delta.
    fn rsynced(&mut self, index: u32, b: u32, target: &mut Target<'a>) -> Result<bool, PackError> {
        let signatures = self.signatures;
        let signature = signatures[&b].as_slice();
        let mut any = false;
        let mut piece = Vec::new();
        while target.left > 0 {
            let hole = target.hole_here()?;
            if hole > 0 {
                target.skip_hole(hole)?;
                self.zeros(index, hole, true)?;
                continue;
            }
            piece.clear();
            let step = self.effort.segment_bytes.min(target.data_here()?);
            target.read_into(step, &mut piece)?;
            let len = piece.len() as u64;
            let delta = rsync::diff(signature, &piece)?;
            if !pays(delta.len() as u64, len) {
                let item = Item {
                    object: index,
                    len,
                    encoding: Encoding::Literal,
                };
                self.add(item, &piece, Vec::new(), true)?;
                continue;
            }
            any = true;
            let item = Item {
                object: index,
                len,
                encoding: Encoding::Rsync {
                    base: b,
                    delta_len: delta.len() as u64,
                },
            };
            self.add_rsync(item, &delta, &piece, b)?;
        }
        Ok(any)
    }

    /// Pieces of a large object against stretches of its base: half a segment each, so that a
    /// piece and the stretches it matches fit in one prefix.
    fn piece_len(&self) -> u64 {
        (self.segment_bytes() / 2)
            .min(
                self.limits
                    .max_prefix_bytes
                    .saturating_sub(4 * ANCHOR_MARGIN),
            )
            .max(64 << 10)
    }

    /// Adds an item (its frame payload and the prefix parts it needs) to the segment, starting
    /// another first when it would not fit. `rsync_family`: the item belongs with rsync deltas.
    fn add(
        &mut self,
        item: Item,
        payload: &[u8],
        parts: Vec<PrefixPart>,
        rsync_family: bool,
    ) -> Result<(), PackError> {
        self.make_room(payload.len() as u64, &parts, rsync_family)?;
        for part in parts.iter() {
            let len = self.part_len(part);
            let s = &mut self.segment;
            if s.parts.contains(part) {
                continue;
            }
            if s.prefix_len + len > self.limits.max_prefix_bytes {
                break;
            }
            s.prefix_len += len;
            s.parts.push(*part);
        }
        let s = &mut self.segment;
        s.rsync = rsync_family;
        s.content.extend_from_slice(payload);
        s.items.push(item);
        Ok(())
    }

    /// Starts another segment unless `payload` bytes of content and the prefix `parts` fit in
    /// the one being built.
    fn make_room(
        &mut self,
        payload: u64,
        parts: &[PrefixPart],
        rsync_family: bool,
    ) -> Result<(), PackError> {
        let parts_len: u64 = parts
            .iter()
            .filter(|p| !self.segment.parts.contains(p))
            .map(|p| self.part_len(p))
            .sum();
        let s = &self.segment;
        let fits = s.is_empty()
            || (s.rsync == rsync_family
                && s.items.len() < MAX_ITEMS_PER_SEGMENT
                && s.content.len() as u64 + payload
                    <= if rsync_family {
                        self.effort.segment_bytes
                    } else {
                        self.segment_bytes()
                    }
                && s.prefix_len + parts_len <= self.limits.max_prefix_bytes);
        if !fits {
            self.flush()?;
        }
        Ok(())
    }

    /// An rsync delta of `piece` and the unchanged neighbours of its changes.
    fn add_rsync(
        &mut self,
        item: Item,
        delta: &[u8],
        piece: &[u8],
        b: u32,
    ) -> Result<(), PackError> {
        self.add(item, delta, Vec::new(), true)?;
        let max_prefix = self.limits.max_prefix_bytes;
        let s = &mut self.segment;
        for (from, at, len) in context(&rsync::copies(delta)?, piece, CONTEXT_BYTES) {
            if s.prefix_len + s.range_bytes.len() as u64 + len > max_prefix
                || s.ranges.len() >= MAX_RANGES_PER_SEGMENT
            {
                break;
            }
            s.ranges.push(PrefixPart::Range { base: b, from, len });
            s.range_bytes
                .extend_from_slice(&piece[at as usize..(at + len) as usize]);
        }
        Ok(())
    }

    fn part_len(&self, part: &PrefixPart) -> u64 {
        match *part {
            PrefixPart::Entry(b) => self.base.entries()[b as usize].size(),
            PrefixPart::Range { len, .. } => len,
        }
    }

    /// The bytes of `parts`, read from the bases the sender holds.
    fn prefix_bytes(&self, parts: &[PrefixPart], out: &mut Vec<u8>) -> Result<(), PackError> {
        let mut open: Option<(u32, Box<dyn ReadAt + 'a>)> = None;
        for part in parts {
            let b = part.base();
            if open.as_ref().is_none_or(|(i, _)| *i != b) {
                let entry = &self.base.entries()[b as usize];
                let id = entry.file_id().expect("planned on a file");
                let reader = self.provider.open_base(&id, entry.size())?.ok_or_else(|| {
                    PackError::SourceChanged {
                        path: entry.path.to_string(),
                    }
                })?;
                open = Some((b, reader));
            }
            let (from, len) = match *part {
                PrefixPart::Entry(_) => (0, self.part_len(part)),
                PrefixPart::Range { from, len, .. } => (from, len),
            };
            let start = out.len();
            out.resize(start + len as usize, 0);
            let (_, reader) = open.as_ref().expect("just opened");
            reader.read_exact_at(&mut out[start..], from)?;
        }
        Ok(())
    }

    /// Compresses the segment being built and writes its head and frame.
    fn flush(&mut self) -> Result<(), PackError> {
        let seg = std::mem::take(&mut self.segment);
        if seg.is_empty() {
            return Ok(());
        }
        let mut prefix = Vec::with_capacity(seg.prefix_len as usize);
        self.prefix_bytes(&seg.parts, &mut prefix)?;
        let job = Job {
            prefix,
            parts: seg.parts,
            ranges: seg.ranges,
            range_bytes: seg.range_bytes,
            content: seg.content,
            items: seg.items,
            max_window_log: self.limits.max_window_log as u32,
            tuning: self.segment_tuning(),
        };
        let level = job.tuning.level;
        self.stats.levels = match self.stats.levels {
            (0, 0) => (level, level),
            (lo, hi) => (lo.min(level), hi.max(level)),
        };
        let content = job.content.len() as u64;
        // Counted when cut, not when written: where the next segment is cut never depends on
        // how many workers compress.
        self.segments += 1;
        let wrote = match &mut self.pool {
            Some(pool) => pool.submit(job, self.out)?,
            None => {
                let tuning = job.tuning;
                let started = Instant::now();
                let bytes = job.run()?;
                self.pace.0 += content as f64 / (speed_of(tuning.level) * tuning.workers as f64);
                self.pace.1 += started.elapsed().as_secs_f64();
                self.out.write_all(&bytes)?;
                self.out.flush()?;
                self.shrunk.0 += content;
                self.shrunk.1 += bytes.len() as u64;
                bytes.len() as u64
            }
        };
        self.stats.pack_bytes += wrote;
        Ok(())
    }

    /// How the next segment is compressed: the effort's level, or, for a link whose rate is
    /// known and one job, the level [`level_for`] gives for how much the segments so far
    /// shrank (segments compressed in parallel keep the effort's: their bytes must not depend
    /// on which finishes first).
    fn segment_tuning(&self) -> zstd_ref::Tuning {
        let (mut level, mut workers) = (self.effort.level, self.effort.workers);
        if let Some((rate, cores)) = self.effort.link
            && self.pool.is_none()
            && self.shrunk.1 > 0
        {
            let ratio = self.shrunk.0 as f64 / self.shrunk.1 as f64;
            let speedup = if self.pace.1 > 0.0 {
                self.pace.0 / self.pace.1
            } else {
                1.0
            };
            (level, workers) = level_for(rate as f64, cores as usize, ratio, speedup);
        }
        zstd_ref::Tuning {
            level,
            workers,
            table_log: self.effort.table_log,
        }
    }

    /// Writes the segments still being compressed.
    fn finish_segments(&mut self) -> Result<(), PackError> {
        self.flush()?;
        if let Some(pool) = &mut self.pool {
            self.stats.pack_bytes += pool.finish(self.out)?;
        }
        Ok(())
    }
}

/// The speed [`LEVEL_SPEEDS`] gives `level` (a level between two of its rows gets the slower).
fn speed_of(level: i32) -> f64 {
    LEVEL_SPEEDS
        .iter()
        .rev()
        .find(|&&(l, _)| l >= level)
        .map_or(LEVEL_SPEEDS[0].1, |&(_, speed)| speed)
}

/// A delta pays when it saves an eighth of the literal.
fn pays(delta_len: u64, len: u64) -> bool {
    delta_len < len - len / 8
}

/// The copied stretches of a target within `width` bytes of a changed (literal) one, as
/// `(offset in the base, offset in the target, length)`, in target order.
fn context(copies: &[rsync::Copied], target: &[u8], width: u64) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for (i, c) in copies.iter().enumerate() {
        let end = c.target + c.len;
        let changed_before = c.target
            > i.checked_sub(1)
                .map_or(0, |p| copies[p].target + copies[p].len);
        let changed_after = end < copies.get(i + 1).map_or(target.len() as u64, |n| n.target);
        let mut take = |from: u64, to: u64| {
            if from < to {
                out.push((c.base + (from - c.target), from, to - from));
            }
        };
        if c.len <= 2 * width && (changed_before || changed_after) {
            take(c.target, end);
            continue;
        }
        if changed_before {
            take(c.target, c.target + width);
        }
        if changed_after {
            take(end - width, end);
        }
    }
    out
}

/// Clusters literal files by type (extension), then name, as archivers do for solid compression.
fn sort_key(path: &VolumePath) -> (String, String) {
    let name = path.name();
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    (ext.to_string(), path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_follows_the_link_and_the_cores() {
        let level = |bits_per_s: f64, cores| Effort::for_link(Some(bits_per_s / 8.0), cores).level;
        // The narrow uplink keeps the most compression; so does an unknown link.
        assert_eq!(level(9_600.0, 1), 19);
        assert_eq!(level(1e6, 2), 19);
        assert_eq!(Effort::for_link(None, 8), Effort::max());
        // Faster links trade compression for speed, more so with fewer cores.
        assert_eq!(level(10e6, 2), 15);
        assert_eq!(level(100e6, 2), 9);
        assert_eq!(level(100e6, 8), 12);
        // However fast the link, never below the floor (tar | zstd -3's bytes).
        assert_eq!(level(10e9, 2), 5);
        assert_eq!(Effort::for_link(Some(12.5e6), 2).workers, 2);
        assert_eq!(Effort::for_link(Some(1_200.0), 2).workers, 1);
    }

    /// Regression (the 2 GiB bench): the second version of a 2 GiB file, 1% of it changed,
    /// took 22 minutes to push at the level a 10 Mbit/s link gets for new content (15): the
    /// delta shrank 90 times, so the link, which needed 19 s for it (computed), waited for the CPU. The
    /// level now follows how much the content shrinks; at 9.6 kbit/s it stays 19.
    #[test]
    fn a_delta_that_shrinks_a_hundred_times_gets_a_faster_level() {
        let rate = 10e6 / 8.0;
        assert_eq!(level_for(rate, 2, 2.0, 1.0).0, 15);
        assert_eq!(level_for(rate, 2, 90.0, 1.0).0, 5, "the floor");
        assert_eq!(level_for(1_200.0, 2, 90.0, 1.0).0, 19);
        assert_eq!(level_for(1_200.0, 2, 1.0, 1.0).0, 19);
    }

    /// Regression (the rate sweep): at 100 Mbit/s, source code that shrinks 4.5 times got level
    /// 3 from the table's small-core speeds on a ground machine that compressed three times
    /// faster, and sent 0.5% more than `tar | zstd -3`. A sender that measured itself faster
    /// gets a higher level; one slower, a lower one; neither leaves the table's range.
    #[test]
    fn a_sender_faster_than_the_table_gets_a_higher_level() {
        let rate = 100e6 / 8.0;
        assert_eq!(level_for(rate, 2, 4.5, 1.0).0, 5);
        assert_eq!(level_for(rate, 2, 4.5, 3.0).0, 9);
        assert_eq!(level_for(rate / 10.0, 2, 4.5, 1.0).0, 12);
        assert_eq!(level_for(rate / 10.0, 2, 4.5, 0.25).0, 9);
        assert_eq!(level_for(rate, 2, 4.5, f64::NAN).0, 5);
        assert_eq!(
            level_for(rate, 2, 4.5, 1e9).0,
            level_for(rate, 2, 4.5, 16.0).0
        );
        assert_eq!(level_for(rate, 2, 4.5, 0.0).0, 5);
        assert_eq!(speed_of(19), 1.0e6);
        assert_eq!(speed_of(5), 60.0e6);
        assert_eq!(speed_of(3), 60.0e6, "below the table: its fastest");
        assert_eq!(speed_of(16), 2.0e6);
    }
}
