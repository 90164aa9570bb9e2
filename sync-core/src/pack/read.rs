//! Decoding a pack on the receiving side, as a stream and in bounded memory. Nothing in it is
//! trusted: every declared size is checked against [`Limits`] before memory or disk is committed,
//! every base is verified by its BLAKE3 before it is used, every object is hashed as it is
//! written, and the changes applied to the base must give exactly the declared target root.
//!
//! Memory, whatever the pack's or an object's size: the header, one segment head (at most
//! [`MAX_SEGMENT_HEAD`]), the segment's prefix (at most `max_prefix_bytes`), zstd's window (at
//! most `2^max_window_log`, and no more than the segment's content), and fixed buffers. Bases are
//! read in stretches, never whole.

use std::collections::HashSet;
use std::io::{BufReader, Read, Write};

use super::PackError;
use super::build::header_dictionary;
use super::format::{
    Encoding, FIXED_LEN, FixedHeader, HeaderBody, Item, Limits, MAX_SEGMENT_HEAD, PackHeader,
    PrefixPart, SegmentHead, read_varint,
};
use crate::delta::{DeltaError, ReadAt, rsync, zstd_ref};
use crate::id::ContentId;
use crate::manifest::{Entry, Manifest, SourceResolver, apply_changes};

/// Reads base content on the receiver.
pub trait BaseReader {
    /// Ranged reads of `entry` (a file of the base manifest). The decoder checks its first
    /// `entry.size()` bytes against the entry's id itself before it uses them; an implementation
    /// need not.
    fn open_base(&self, entry: &Entry) -> Result<Box<dyn ReadAt + '_>, PackError>;
}

/// Takes decoded objects on the receiver (onboard: files in the staging area), one at a time:
/// `begin`, the object's bytes in order through `write` and `zeros`, then `end`.
pub trait ObjectSink {
    /// Object `index`, `size` bytes, starts.
    fn begin(&mut self, index: u32, size: u64) -> Result<(), PackError>;
    /// The object's next bytes.
    fn write(&mut self, bytes: &[u8]) -> Result<(), PackError>;
    /// The object's next `len` bytes are zeros (a hole, where the sink can make one).
    fn zeros(&mut self, len: u64) -> Result<(), PackError> {
        let buf = [0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.write(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
    /// The object is whole (the decoder has counted its bytes; it checks the hash after).
    fn end(&mut self) -> Result<(), PackError>;
}

#[derive(Debug)]
pub struct DecodedPack {
    pub header: PackHeader,
    /// Id and size of each object, by index, as hashed on arrival.
    pub objects: Vec<(ContentId, u64)>,
    /// Base plus changes; its root equals the header's target root.
    pub target: Manifest,
}

/// Reads and checks the magic, version and header of a pack that is to apply to `base`.
pub fn read_header(
    r: &mut dyn Read,
    base: &Manifest,
    limits: &Limits,
) -> Result<PackHeader, PackError> {
    let mut bytes = [0u8; FIXED_LEN];
    read_exact(r, &mut bytes)?;
    let fixed = FixedHeader::decode(&bytes, &base.root())?;
    let dict = if fixed.dictionary {
        Some(header_dictionary(base).ok_or_else(|| {
            PackError::Structure("header dictionary named but the base has none".into())
        })?)
    } else {
        None
    };
    let len = u64::from(fixed.header_len);
    // A compressed header cannot be larger than its decompressed cap (plus frame overhead).
    check("header", len, limits.max_header_bytes + 1024)?;
    let mut packed = vec![0u8; len as usize];
    read_exact(r, &mut packed)?;
    let mut raw = Vec::new();
    zstd_ref::decoder(
        &packed[..],
        dict.as_deref().unwrap_or(&[]),
        limits.max_window_log as u32,
    )?
    .take(limits.max_header_bytes + 1)
    .read_to_end(&mut raw)
    .map_err(|e| PackError::Header(e.to_string()))?;
    check("header", raw.len() as u64, limits.max_header_bytes)?;
    let body = HeaderBody::decode(&raw, limits)?;
    Ok(PackHeader {
        base_root: fixed.base_root,
        target_root: body.target_root,
        changes: body.changes,
        objects: body.objects,
    })
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8]) -> Result<(), PackError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PackError::Truncated,
        _ => PackError::from(e),
    })
}

fn check(what: &'static str, value: u64, limit: u64) -> Result<(), PackError> {
    if value > limit {
        Err(PackError::OverLimit { what, value, limit })
    } else {
        Ok(())
    }
}

/// Checks a header against the base and the limits before anything is decoded. The base root
/// itself was checked by [`read_header`].
pub(crate) fn validate(
    header: &PackHeader,
    base: &Manifest,
    limits: &Limits,
) -> Result<(), PackError> {
    check(
        "change count",
        header.changes.len() as u64,
        limits.max_changes,
    )?;
    check(
        "object count",
        header.objects.len() as u64,
        limits.max_changes,
    )?;
    let mut total = 0u64;
    for &size in &header.objects {
        check("object size", size, limits.max_object_bytes)?;
        if size == 0 {
            return Err(PackError::Structure("an object of 0 bytes".into()));
        }
        total = total.saturating_add(size);
    }
    check("total object size", total, limits.max_total_bytes)?;
    // Structure of the changes (paths, kinds, sources) before any byte is decoded.
    apply_changes(base, &header.changes, &Sizes(&header.objects))?;
    Ok(())
}

/// Base manifest entry `i`, which a pack may only name as a base if it is a file.
fn base_file(base: &Manifest, i: u32) -> Result<&Entry, PackError> {
    base.entries()
        .get(i as usize)
        .filter(|e| e.file_id().is_some())
        .ok_or_else(|| PackError::Structure(format!("base entry #{i} is not a file")))
}

/// Resolves objects by declared size only, to check a changeset's structure before decoding.
struct Sizes<'a>(&'a [u64]);

impl SourceResolver for Sizes<'_> {
    fn object(&self, index: u32) -> Option<(ContentId, u64)> {
        // A placeholder id per index: distinct objects stay distinct.
        let size = *self.0.get(index as usize)?;
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&index.to_le_bytes());
        Some((ContentId(id), size))
    }
    fn enforce_receiver_rules(&self) -> bool {
        true
    }
}

struct Hashed(Vec<(ContentId, u64)>);

impl SourceResolver for Hashed {
    fn object(&self, index: u32) -> Option<(ContentId, u64)> {
        self.0.get(index as usize).copied()
    }
    fn enforce_receiver_rules(&self) -> bool {
        true
    }
}

/// The manifest a decoded pack's changes give when applied to `now` (the volume as it is,
/// which may differ from the pack's base outside the push's scope). Every rule a receiver
/// enforces holds: content named as already held must be held by `now`.
pub fn target_on(now: &Manifest, decoded: &DecodedPack) -> Result<Manifest, PackError> {
    Ok(apply_changes(
        now,
        &decoded.header.changes,
        &Hashed(decoded.objects.clone()),
    )?)
}

/// Marks read errors of a segment's zstd frame, so that they surface as [`PackError::Frame`]
/// even after passing through `std::io` plumbing.
struct FrameReader<R>(R);

#[derive(Debug)]
pub(crate) struct FrameError(pub(crate) String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrameError {}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, FrameError(e.to_string()))
        })
    }
}

/// Bytes read at a time from a base, a frame or a delta.
const BUF: usize = 64 * 1024;
/// Open bases kept between segments.
const OPEN_BASES: usize = 4;

/// The bases a pack reads: opened when first named, verified whole once (read through a fixed
/// buffer and hashed), then read in stretches.
struct Bases<'a> {
    reader: &'a dyn BaseReader,
    base: &'a Manifest,
    open: Vec<(u32, Box<dyn ReadAt + 'a>)>,
    verified: HashSet<u32>,
}

impl<'a> Bases<'a> {
    fn new(reader: &'a dyn BaseReader, base: &'a Manifest) -> Self {
        Self {
            reader,
            base,
            open: Vec::new(),
            verified: HashSet::new(),
        }
    }

    fn changed(entry: &Entry) -> PackError {
        PackError::BaseChanged {
            path: entry.path.to_string(),
            expected: entry.file_id().unwrap_or_else(ContentId::empty),
        }
    }

    /// Base entry `b`, open and verified.
    fn get(&mut self, b: u32) -> Result<&dyn ReadAt, PackError> {
        let entry = &self.base.entries()[b as usize];
        if let Some(at) = self.open.iter().position(|(i, _)| *i == b) {
            let held = self.open.remove(at);
            self.open.push(held);
        } else {
            if self.open.len() >= OPEN_BASES {
                self.open.remove(0);
            }
            let file = self.reader.open_base(entry)?;
            if !self.verified.contains(&b) {
                if !matches(file.as_ref(), entry)? {
                    return Err(Self::changed(entry));
                }
                self.verified.insert(b);
            }
            self.open.push((b, file));
        }
        Ok(self.open.last().expect("just pushed").1.as_ref())
    }

    /// Reads `len` bytes of base `b` from `from` onto the end of `out`.
    fn read(&mut self, b: u32, from: u64, len: u64, out: &mut Vec<u8>) -> Result<(), PackError> {
        let entry = &self.base.entries()[b as usize];
        let start = out.len();
        out.resize(start + len as usize, 0);
        self.get(b)?
            .read_exact_at(&mut out[start..], from)
            .map_err(|_| Self::changed(entry))
    }

    /// After a root mismatch: the first base that no longer holds what it held, if any (a pod
    /// may change a file while the pack is decoded).
    fn recheck(&mut self) -> Option<PackError> {
        let verified: Vec<u32> = self.verified.iter().copied().collect();
        for b in verified {
            let entry = &self.base.entries()[b as usize];
            let same = self
                .reader
                .open_base(entry)
                .and_then(|f| matches(f.as_ref(), entry));
            if !matches!(same, Ok(true)) {
                return Some(Self::changed(entry));
            }
        }
        None
    }
}

/// Whether the first `entry.size()` bytes of `file` hash to the entry's id.
fn matches(file: &dyn ReadAt, entry: &Entry) -> Result<bool, PackError> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BUF * 4];
    let mut at = 0u64;
    while at < entry.size() {
        let n = (entry.size() - at).min(buf.len() as u64) as usize;
        if file.read_exact_at(&mut buf[..n], at).is_err() {
            return Ok(false);
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(entry.file_id() == Some(ContentId(*hasher.finalize().as_bytes())))
}

/// The object being written: its bytes go to the sink and the hasher.
struct Open {
    index: u32,
    size: u64,
    written: u64,
    hasher: blake3::Hasher,
}

/// Where decoded bytes go: the open object, through the sink, counted and hashed.
struct Output<'s> {
    sink: &'s mut dyn ObjectSink,
    open: Option<Open>,
    /// The sink's own error, kept while it passes through `std::io::Write`.
    failed: Option<PackError>,
}

impl Output<'_> {
    fn open(&mut self) -> &mut Open {
        self.open
            .as_mut()
            .expect("items checked: an object is open")
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        let o = self.open();
        o.hasher.update(bytes);
        o.written += bytes.len() as u64;
        self.sink.write(bytes)
    }

    fn zeros(&mut self, len: u64) -> Result<(), PackError> {
        let o = self.open();
        let zero = [0u8; BUF];
        let mut left = len;
        while left > 0 {
            let n = left.min(BUF as u64) as usize;
            o.hasher.update(&zero[..n]);
            left -= n as u64;
        }
        o.written += len;
        self.sink.zeros(len)
    }

    /// The sink's error if it failed inside `std::io`, else `e`.
    fn error(&mut self, e: impl Into<PackError>) -> PackError {
        self.failed.take().unwrap_or_else(|| e.into())
    }
}

impl Write for Output<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.put(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                self.failed = Some(e);
                Err(std::io::Error::other("the object sink failed"))
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decodes a whole pack read from `r` against the receiver's `base` manifest.
pub fn decode_pack(
    r: &mut dyn Read,
    base: &Manifest,
    bases: &dyn BaseReader,
    sink: &mut dyn ObjectSink,
    limits: &Limits,
) -> Result<DecodedPack, PackError> {
    let header = read_header(r, base, limits)?;
    validate(&header, base, limits)?;
    let mut d = Decoder {
        header: &header,
        base,
        limits,
        bases: Bases::new(bases, base),
        out: Output {
            sink,
            open: None,
            failed: None,
        },
        objects: vec![None; header.objects.len()],
        buf: vec![0u8; BUF],
    };
    loop {
        let len = read_varint(r)?.ok_or(PackError::Truncated)?;
        if len == 0 {
            break;
        }
        check("segment head", len, MAX_SEGMENT_HEAD)?;
        let mut raw = vec![0u8; len as usize];
        read_exact(r, &mut raw)?;
        let head = SegmentHead::decode(&raw)?;
        drop(raw);
        let lens = d.check(&head)?;
        d.segment(r, &head, &lens)?;
    }
    if d.out.open.is_some() || d.objects.iter().any(Option::is_none) {
        let carried = d.objects.iter().filter(|o| o.is_some()).count();
        return Err(PackError::Structure(format!(
            "{} objects declared, {carried} carried whole",
            header.objects.len()
        )));
    }
    let mut probe = [0u8; 1];
    if r.read(&mut probe)? != 0 {
        return Err(PackError::Trailing("pack"));
    }
    let objects: Vec<(ContentId, u64)> = std::mem::take(&mut d.objects)
        .into_iter()
        .map(|o| o.expect("all carried"))
        .collect();
    let mut bases_used = d.bases;
    let target = apply_changes(base, &header.changes, &Hashed(objects.clone()))?;
    let actual = target.root();
    if actual != header.target_root {
        if let Some(changed) = bases_used.recheck() {
            return Err(changed);
        }
        return Err(crate::manifest::ManifestError::RootMismatch {
            expected: header.target_root,
            actual,
        }
        .into());
    }
    Ok(DecodedPack {
        header,
        objects,
        target,
    })
}

struct Decoder<'h, 'a, 's> {
    header: &'h PackHeader,
    base: &'a Manifest,
    limits: &'a Limits,
    bases: Bases<'a>,
    out: Output<'s>,
    /// Id and size of each object carried whole so far.
    objects: Vec<Option<(ContentId, u64)>>,
    /// What literal and copied bytes pass through: one buffer for the whole pack, not one per
    /// item (a tree of small files is thousands of items).
    buf: Vec<u8>,
}

impl Decoder<'_, '_, '_> {
    /// Checks a segment head against the base, the limits and the objects carried so far,
    /// before any of its bytes are read. Returns each item's length (an item's 0 is the rest
    /// of its object).
    fn check(&self, head: &SegmentHead) -> Result<Vec<u64>, PackError> {
        check(
            "window log",
            head.window_log as u64,
            self.limits.max_window_log as u64,
        )?;
        if head.items.is_empty() {
            return Err(PackError::Structure("a segment without items".into()));
        }
        let mut prefix = 0u64;
        for part in &head.prefix {
            let size = base_file(self.base, part.base())?.size();
            let len = match *part {
                PrefixPart::Entry(_) => size,
                PrefixPart::Range { from, len, .. } => {
                    if len == 0 || from.checked_add(len).is_none_or(|end| end > size) {
                        return Err(PackError::Structure(format!(
                            "prefix range {from}+{len} of a {size}-byte base"
                        )));
                    }
                    len
                }
            };
            prefix = prefix.saturating_add(len);
        }
        check("prefix size", prefix, self.limits.max_prefix_bytes)?;
        // The items, walked as the decoder will: one object open at a time, each carried once.
        let mut open = self
            .out
            .open
            .as_ref()
            .map(|o| (o.index, o.size - o.written));
        let mut started = HashSet::new();
        let mut frame = 0u64;
        let mut lens = Vec::with_capacity(head.items.len());
        for item in &head.items {
            let left = match open {
                Some((index, left)) if index == item.object => left,
                Some((index, _)) => {
                    return Err(PackError::Structure(format!(
                        "object #{} starts before object #{index} is whole",
                        item.object
                    )));
                }
                None => {
                    let size = *self
                        .header
                        .objects
                        .get(item.object as usize)
                        .ok_or_else(|| {
                            PackError::Structure(format!("item names object #{}", item.object))
                        })?;
                    if self.objects[item.object as usize].is_some() || !started.insert(item.object)
                    {
                        return Err(PackError::Structure(format!(
                            "object #{} is carried twice",
                            item.object
                        )));
                    }
                    size
                }
            };
            let len = if item.len == 0 { left } else { item.len };
            if len > left {
                return Err(PackError::Structure(format!(
                    "an item of {len} bytes where object #{} has {left} left",
                    item.object
                )));
            }
            self.check_encoding(item, len)?;
            frame = frame.saturating_add(item.encoding.frame_bytes(len));
            open = (len < left).then_some((item.object, left - len));
            lens.push(len);
        }
        if (frame == 0) != (head.frame_len == 0) {
            return Err(PackError::Structure(format!(
                "a frame of {} bytes for {frame} bytes of payload",
                head.frame_len
            )));
        }
        Ok(lens)
    }

    /// Checks an item of `len` bytes against its base and the limits.
    fn check_encoding(&self, item: &Item, len: u64) -> Result<(), PackError> {
        match item.encoding {
            Encoding::Literal | Encoding::Zeros => {}
            Encoding::Copy { base: b, from } => {
                let size = base_file(self.base, b)?.size();
                if from.checked_add(len).is_none_or(|end| end > size) {
                    return Err(PackError::Structure(format!(
                        "a copy of {from}+{len} from a {size}-byte base"
                    )));
                }
            }
            Encoding::Rsync { base: b, delta_len } => {
                base_file(self.base, b)?;
                // A delta is never much larger than the literal it replaces.
                check("rsync delta", delta_len, len + len / 4 + 4096)?;
            }
        }
        Ok(())
    }

    /// Decodes one segment (its head checked, its items `lens` bytes long) from `r`.
    fn segment(
        &mut self,
        r: &mut dyn Read,
        head: &SegmentHead,
        lens: &[u64],
    ) -> Result<(), PackError> {
        // Sized once: a buffer grown by doubling would take up to twice the prefix.
        let total: u64 = head
            .prefix
            .iter()
            .map(|p| match *p {
                PrefixPart::Entry(b) => self.base.entries()[b as usize].size(),
                PrefixPart::Range { len, .. } => len,
            })
            .sum();
        let mut prefix = Vec::with_capacity(total as usize);
        for part in &head.prefix {
            let (from, len) = match *part {
                PrefixPart::Entry(b) => (0, self.base.entries()[b as usize].size()),
                PrefixPart::Range { from, len, .. } => (from, len),
            };
            self.bases.read(part.base(), from, len, &mut prefix)?;
        }
        let mut frame = BufReader::with_capacity(BUF, r.take(head.frame_len));
        {
            // A frame that does not decode is bad data from the sender, not a storage failure.
            let mut dec: Box<dyn Read + '_> = if head.frame_len == 0 {
                Box::new(std::io::empty())
            } else {
                Box::new(FrameReader(zstd_ref::decoder(
                    &mut frame,
                    &prefix,
                    head.window_log as u32,
                )?))
            };
            for (item, &len) in head.items.iter().zip(lens) {
                self.item(item, len, &mut dec)?;
            }
            let mut probe = [0u8; 1];
            if dec.read(&mut probe)? != 0 {
                return Err(PackError::Trailing("segment"));
            }
        }
        // The frame must end exactly where the head said.
        let mut rest = [0u8; 1];
        if frame.read(&mut rest)? != 0 {
            return Err(PackError::Trailing("segment frame"));
        }
        if frame.into_inner().limit() != 0 {
            return Err(PackError::Truncated);
        }
        Ok(())
    }

    /// Decodes one item, `len` bytes, into the open object (opening it first, closing it once
    /// whole).
    fn item(&mut self, item: &Item, len: u64, dec: &mut dyn Read) -> Result<(), PackError> {
        if self.out.open.is_none() {
            let size = self.header.objects[item.object as usize];
            self.out.sink.begin(item.object, size)?;
            self.out.open = Some(Open {
                index: item.object,
                size,
                written: 0,
                hasher: blake3::Hasher::new(),
            });
        }
        match item.encoding {
            Encoding::Literal => {
                let mut left = len;
                while left > 0 {
                    let n = left.min(BUF as u64) as usize;
                    dec.read_exact(&mut self.buf[..n]).map_err(truncated)?;
                    self.out.put(&self.buf[..n])?;
                    left -= n as u64;
                }
            }
            Encoding::Zeros => self.out.zeros(len)?,
            Encoding::Copy { base: b, from } => {
                let entry = &self.base.entries()[b as usize];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(BUF as u64) as usize;
                    self.bases
                        .get(b)?
                        .read_exact_at(&mut self.buf[..n], from + done)
                        .map_err(|_| Bases::changed(entry))?;
                    self.out.put(&self.buf[..n])?;
                    done += n as u64;
                }
            }
            Encoding::Rsync { base: b, delta_len } => {
                let base_len = self.base.entries()[b as usize].size();
                let base = self.bases.get(b)?;
                let mut delta = Read::take(&mut *dec, delta_len);
                let applied = rsync::apply_stream(base, base_len, &mut delta, len, &mut self.out);
                if let Err(e) = applied {
                    return Err(match e {
                        DeltaError::Output(io) => self.out.error(io),
                        other => other.into(),
                    });
                }
                if delta.limit() != 0 {
                    return Err(PackError::Structure(format!(
                        "an rsync delta ends {} bytes before its declared length",
                        delta.limit()
                    )));
                }
            }
        }
        let o = self.out.open();
        if o.written == o.size {
            let o = self.out.open.take().expect("open");
            self.out.sink.end()?;
            let id = ContentId(*o.hasher.finalize().as_bytes());
            self.objects[o.index as usize] = Some((id, o.size));
        }
        Ok(())
    }
}

/// A frame that ends before its items do is a truncated pack; any other read error (a frame
/// that does not decode) is passed on.
fn truncated(e: std::io::Error) -> PackError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        PackError::Truncated
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed part and a header frame holding `raw`, for a pack against the empty manifest.
    fn pack_with_header(raw: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        zstd_ref::compress(&[], &mut &raw[..], raw.len() as u64, &mut frame).unwrap();
        let fixed = FixedHeader {
            base_root: Manifest::default().root(),
            dictionary: false,
            header_len: frame.len() as u32,
        };
        [&fixed.encode()[..], &frame].concat()
    }

    /// Regression (found while writing the pack fuzz target): the header's tables were built by
    /// serde before any count in them was checked, and an element in memory is far larger than
    /// its encoding (a removal of a one-letter path: 3 bytes, about 100 in memory). A 21 KB pack
    /// whose header declared 85 million such removals (255 MB decompressed, under the default
    /// header cap) made the receiver allocate about 10 GB before `max_changes` refused it.
    #[test]
    fn header_change_count_is_refused_before_the_changes_are_built() {
        // Target root, a change count of 1001 (varint e9 07), and one removal of "a".
        let raw = [&[0u8; 32][..], &[0xe9, 0x07], &[0, 1, b'a']].concat();
        let limits = Limits {
            max_changes: 1000,
            ..Limits::default()
        };
        let r = read_header(
            &mut &pack_with_header(&raw)[..],
            &Manifest::default(),
            &limits,
        );
        assert!(
            matches!(
                r,
                Err(PackError::OverLimit {
                    what: "change count",
                    value: 1001,
                    ..
                })
            ),
            "{r:?}"
        );
    }
}
