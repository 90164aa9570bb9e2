//! Planning and encoding a pack on the sending side.
//!
//! Every new object gets a base when one can be had: the same path in the receiver's volume (or,
//! failing that, a file of the same name elsewhere in it) whose exact bytes the sender holds goes
//! into the zstd reference prefix; a same-path base only the receiver holds is reached through an
//! rsync signature; anything else is sent literal. Objects are grouped into segments so that one
//! zstd frame covers many files: small files share one frame's overhead and match each other.

use std::collections::HashMap;
use std::io::Write;

use super::PackError;
use super::format::{
    Encoding, FIXED_LEN, FixedHeader, HeaderBody, Item, Limits, MAX_HEADER_DICT, PrefixPart,
    SegmentSpec,
};
use crate::delta::{rsync, zstd_ref};
use crate::id::{ContentId, ManifestId};
use crate::manifest::{Change, EntryKind, FileSource, Manifest, PutKind, diff};
use crate::path::VolumePath;

/// Content of a segment (prefix plus payloads) the sender aims for: large enough for matches
/// across many files, small enough that both ends hold it in memory comfortably.
const SEGMENT_TARGET_BYTES: u64 = 128 << 20;
/// An object that starts with its whole base is sent as an append from this base size on
/// (below it, matching the base in the prefix costs nothing worth saving).
const APPEND_MIN_BYTES: u64 = 64 * 1024;
/// Below this size an rsync signature costs more than it can save.
const RSYNC_MIN_BYTES: u64 = 4096;
/// Unchanged bytes of an rsync-delta'd object put in the prefix on each side of a changed
/// stretch: a changed page compresses against the pages around it, which both ends hold.
const CONTEXT_BYTES: u64 = 16 * 1024;
/// Ranges one segment names at most (a receiver refuses more than its `max_changes` parts in a
/// pack); changed stretches past them compress without neighbours.
const MAX_RANGES_PER_SEGMENT: usize = 65_536;

/// What the sender reads while encoding.
pub trait ContentProvider {
    /// The bytes of target content `id`, found at `path` in the target tree. Implementations must
    /// check the bytes still hash to `id` and return [`PackError::SourceChanged`] otherwise.
    fn target(&self, path: &VolumePath, id: &ContentId) -> Result<Vec<u8>, PackError>;
    /// The bytes of `id` if the sender holds them (a base it can encode against).
    fn base(&self, id: &ContentId) -> Result<Option<Vec<u8>>, PackError>;
}

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

    /// Encodes the pack into `out`. `signatures` holds the receiver's signature for each entry of
    /// [`Plan::signature_requests`]; a missing one makes that object literal.
    pub fn encode(
        &self,
        base: &Manifest,
        provider: &dyn ContentProvider,
        signatures: &HashMap<u32, Vec<u8>>,
        limits: &Limits,
        out: &mut dyn Write,
    ) -> Result<PlanStats, PackError> {
        let mut stats = PlanStats {
            objects: self.objects.len() as u64,
            object_bytes: self.object_bytes(),
            ..Default::default()
        };
        let work = self.resolve(base, provider, signatures, limits)?;
        let segments = encode_segments(work, limits, &mut stats)?;
        let (fixed, header) = self.header(base, &segments)?;
        out.write_all(&fixed.encode())?;
        out.write_all(&header)?;
        stats.pack_bytes = (FIXED_LEN + header.len()) as u64;
        for (_, frame) in &segments {
            out.write_all(frame)?;
            stats.pack_bytes += frame.len() as u64;
        }
        Ok(stats)
    }

    /// Reads every object and settles how it travels, in the order the segments take them:
    /// prefixed objects first, in path order so prefix and content run in step; then literals
    /// clustered by file type; then rsync deltas.
    fn resolve(
        &self,
        base: &Manifest,
        provider: &dyn ContentProvider,
        signatures: &HashMap<u32, Vec<u8>>,
        limits: &Limits,
    ) -> Result<Vec<Work>, PackError> {
        let mut work: Vec<Work> = Vec::with_capacity(self.objects.len());
        for (i, o) in self.objects.iter().enumerate() {
            work.push(Work::resolve(
                i as u32, o, base, provider, signatures, limits,
            )?);
        }
        work.sort_by(|a, b| {
            let class = |w: &Work| (w.prefix.is_none() as u8) + 2 * (w.rsync.is_some() as u8);
            (class(a), &a.order).cmp(&(class(b), &b.order))
        });
        Ok(work)
    }

    /// The header frame (compressed against the base manifest when it can be) and the fixed
    /// part that leads it.
    fn header(
        &self,
        base: &Manifest,
        segments: &[(SegmentSpec, Vec<u8>)],
    ) -> Result<(FixedHeader, Vec<u8>), PackError> {
        let body = HeaderBody {
            target_root: self.target_root,
            changes: self.changes.clone(),
            objects: self.objects.iter().map(|o| o.size).collect(),
            segments: segments.iter().map(|(s, _)| s.clone()).collect(),
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

/// Groups resolved objects into segments of about [`SEGMENT_TARGET_BYTES`] (less when the
/// receiver's window is smaller) and compresses each.
fn encode_segments(
    work: Vec<Work>,
    limits: &Limits,
    stats: &mut PlanStats,
) -> Result<Vec<(SegmentSpec, Vec<u8>)>, PackError> {
    let budget = SEGMENT_TARGET_BYTES
        .min(1u64 << limits.max_window_log.min(zstd_ref::MAX_WINDOW_LOG as u8))
        .max(1);
    let mut segments: Vec<(SegmentSpec, Vec<u8>)> = Vec::new();
    let mut current: Vec<Work> = Vec::new();
    let mut current_bytes = 0u64;
    for w in work {
        let cost = w.cost();
        // Rsync deltas get segments of their own: their prefix (the unchanged neighbours of
        // changed stretches) only helps them, and may hurt other content (see `encode_segment`).
        let family_changes = current
            .first()
            .is_some_and(|f| f.rsync.is_some() != w.rsync.is_some());
        if !current.is_empty() && (current_bytes + cost > budget || family_changes) {
            segments.push(encode_segment(std::mem::take(&mut current), limits, stats)?);
            current_bytes = 0;
        }
        current_bytes += cost;
        current.push(w);
    }
    if !current.is_empty() {
        segments.push(encode_segment(current, limits, stats)?);
    }
    Ok(segments)
}

/// The base manifest's canonical encoding, which both ends hold, as the header's dictionary.
pub(crate) fn header_dictionary(base: &Manifest) -> Option<Vec<u8>> {
    let enc = base.encode();
    (!enc.is_empty() && enc.len() <= MAX_HEADER_DICT).then_some(enc)
}

struct Work {
    object: u32,
    data: Vec<u8>,
    prefix: Option<(u32, Vec<u8>)>,
    rsync: Option<(u32, Vec<u8>)>,
    /// With `rsync`: stretches of the base the delta copies, `(offset in the base, bytes)`,
    /// which the sender holds in the target, as prefix for the delta's literal bytes.
    context: Vec<(u64, Vec<u8>)>,
    /// The object starts with all of base `.0`, `.1` bytes long: only the rest is sent.
    append: Option<(u32, u64)>,
    order: (String, String),
}

impl Work {
    /// Object `object` (planned as `o`) with its final encoding. Rsync deltas are computed here
    /// because whether they beat a literal is only known once they exist.
    fn resolve(
        object: u32,
        o: &PlannedObject,
        base: &Manifest,
        provider: &dyn ContentProvider,
        signatures: &HashMap<u32, Vec<u8>>,
        limits: &Limits,
    ) -> Result<Work, PackError> {
        let data = provider.target(&o.path, &o.id)?;
        let mut w = Work {
            object,
            data,
            prefix: None,
            rsync: None,
            context: Vec::new(),
            append: None,
            order: sort_key(&o.path),
        };
        match o.base {
            BaseChoice::Prefix(b) => {
                let id = base.entries()[b as usize]
                    .file_id()
                    .expect("planned on a file");
                if let Some(bytes) = provider.base(&id)? {
                    if bytes.len() as u64 >= APPEND_MIN_BYTES
                        && bytes.len() as u64 <= limits.max_prefix_bytes
                        && w.data.starts_with(&bytes)
                    {
                        // Grew at the end only: send the new part, not a match of the old.
                        w.append = Some((b, bytes.len() as u64));
                    } else {
                        w.prefix = Some((b, bytes));
                    }
                }
            }
            BaseChoice::Rsync(b) => {
                let cap = limits.max_rsync_bytes();
                let fits = o.size <= cap && base.entries()[b as usize].size() <= cap;
                if let Some(sig) = signatures.get(&b).filter(|_| fits) {
                    let delta = rsync::diff(sig, &w.data)?;
                    if (delta.len() as u64) < o.size - o.size / 8 {
                        w.context = context(&rsync::copies(&delta)?, &w.data, CONTEXT_BYTES);
                        w.rsync = Some((b, delta));
                    }
                }
            }
            BaseChoice::None => {}
        }
        Ok(w)
    }

    /// How the object travels in its segment, counted in `stats`.
    fn encoding(&self, stats: &mut PlanStats) -> Encoding {
        match (&self.rsync, self.append) {
            (Some((b, delta)), _) => {
                stats.rsynced += 1;
                Encoding::Rsync {
                    base: *b,
                    delta_len: delta.len() as u64,
                }
            }
            (None, Some((base, keep))) => {
                stats.prefixed += 1;
                Encoding::Append { base, keep }
            }
            (None, None) => {
                if self.prefix.is_some() {
                    stats.prefixed += 1;
                } else {
                    stats.literal += 1;
                }
                Encoding::Literal
            }
        }
    }

    fn payload(&self) -> &[u8] {
        match (&self.rsync, self.append) {
            (Some((_, delta)), _) => delta,
            (None, Some((_, keep))) => &self.data[keep as usize..],
            (None, None) => &self.data,
        }
    }

    fn cost(&self) -> u64 {
        self.payload().len() as u64
            + self.prefix.as_ref().map_or(0, |(_, b)| b.len() as u64)
            + self
                .context
                .iter()
                .map(|(_, b)| b.len() as u64)
                .sum::<u64>()
    }
}

/// The copied stretches of a target within `width` bytes of a changed (literal) one, as
/// `(offset in the base, the bytes)`, in target order.
fn context(copies: &[rsync::Copied], target: &[u8], width: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, c) in copies.iter().enumerate() {
        let end = c.target + c.len;
        let changed_before = c.target
            > i.checked_sub(1)
                .map_or(0, |p| copies[p].target + copies[p].len);
        let changed_after = end < copies.get(i + 1).map_or(target.len() as u64, |n| n.target);
        let mut take = |from: u64, to: u64| {
            if from == to {
                return;
            }
            let at = from as usize..to as usize;
            out.push((c.base + (from - c.target), target[at].to_vec()));
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

/// Encodes one segment: its whole prefix entries and items, then its frame, with prefix ranges
/// where they make the frame smaller.
fn encode_segment(
    work: Vec<Work>,
    limits: &Limits,
    stats: &mut PlanStats,
) -> Result<(SegmentSpec, Vec<u8>), PackError> {
    let mut parts: Vec<PrefixPart> = Vec::new();
    let mut prefix = Vec::new();
    let mut content = Vec::new();
    let mut items = Vec::new();
    for w in &work {
        if let Some((b, bytes)) = &w.prefix
            && !parts.contains(&PrefixPart::Entry(*b))
            && (prefix.len() + bytes.len()) as u64 <= limits.max_prefix_bytes
        {
            parts.push(PrefixPart::Entry(*b));
            prefix.extend_from_slice(bytes);
        }
        content.extend_from_slice(w.payload());
        items.push(Item {
            object: w.object,
            encoding: w.encoding(stats),
        });
    }
    let compress = |prefix: &[u8]| -> Result<(Vec<u8>, u32), PackError> {
        let mut frame = Vec::new();
        let window_log = zstd_ref::compress_capped(
            prefix,
            &mut &content[..],
            content.len() as u64,
            limits.max_window_log as u32,
            &mut frame,
        )?;
        Ok((frame, window_log))
    };
    let (mut frame, mut window_log) = compress(&prefix)?;
    // Unchanged neighbours of the rsync deltas' literal bytes, nearest the deltas. They make a
    // changed database page cost its change; but level 19's parser also takes short matches
    // from them that cost more than literals (decimal text compresses worse with a prefix of
    // more decimal text), so they stay only where they make the frame smaller.
    let unranged = parts.len();
    let ranged = add_ranges(&work, &prefix, &mut parts, limits);
    if parts.len() > unranged {
        let (with, wl) = compress(&ranged)?;
        if with.len() < frame.len() {
            (frame, window_log) = (with, wl);
        } else {
            parts.truncate(unranged);
        }
    }
    Ok((
        SegmentSpec {
            prefix: parts,
            items,
            frame_len: frame.len() as u64,
            window_log: window_log as u8,
        },
        frame,
    ))
}

/// Appends to `parts` the ranges of the segment's rsync deltas' context, as many as the caps
/// allow, and returns `prefix` followed by their bytes.
fn add_ranges(
    work: &[Work],
    prefix: &[u8],
    parts: &mut Vec<PrefixPart>,
    limits: &Limits,
) -> Vec<u8> {
    let unranged = parts.len();
    let has_context = work.iter().any(|w| !w.context.is_empty());
    // Only rsync segments have context, and they carry no whole entries: this copies nothing
    // there, and other segments skip it.
    let mut ranged = if has_context {
        prefix.to_vec()
    } else {
        Vec::new()
    };
    for w in work {
        let Some((b, _)) = &w.rsync else { continue };
        for (from, bytes) in &w.context {
            if (ranged.len() + bytes.len()) as u64 > limits.max_prefix_bytes
                || parts.len() - unranged >= MAX_RANGES_PER_SEGMENT
            {
                break;
            }
            parts.push(PrefixPart::Range {
                base: *b,
                from: *from,
                len: bytes.len() as u64,
            });
            ranged.extend_from_slice(bytes);
        }
    }
    ranged
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
