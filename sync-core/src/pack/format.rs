//! Pack byte layout, version 3. All integers inside postcard values are varints.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `OSPK` |
//! | 4 | 1 | format version, `3` |
//! | 5 | 32 | base root: the manifest the pack applies to |
//! | 37 | 1 | header dictionary: 0 none, 1 the base manifest's canonical encoding |
//! | 38 | 4 | header length H (u32, little-endian) |
//! | 42 | H | header: one zstd frame holding the postcard of [`HeaderBody`] |
//! | 42+H | … | segments, each a varint length L > 0, L bytes of postcard [`SegmentHead`], then the head's `frame_len` bytes of zstd frame |
//! | end | 1 | a varint 0: no more segments |
//!
//! The header is compressed against the base manifest the receiver already holds, so the paths
//! of changed and removed files, which are all in it, cost next to nothing. It holds what the
//! plan knows before a byte is encoded (the changes, each object's size, the target root), so
//! it goes first and a sender can put segments on the link as it encodes them: a pack is a
//! stream, and nothing in it needs the whole pack in memory at either end.
//!
//! Items carry objects: an item gives `len` bytes of one object, and the items of an object
//! follow each other in the pack, in the object's byte order, until its size is reached, before
//! any item of another object. So a file of any size travels in pieces, segment after segment,
//! and the receiver writes one object at a time.
//!
//! A segment's frame is compressed against a reference prefix: the parts in
//! [`SegmentHead::prefix`], concatenated: whole base manifest entries, and stretches of base
//! entries ([`PrefixPart::Range`]). It decodes to the payloads of its items, back to back: an
//! object's bytes ([`Encoding::Literal`]) or a fast_rsync delta against a base entry
//! ([`Encoding::Rsync`]); [`Encoding::Copy`] (bytes of a base entry) and [`Encoding::Zeros`] (a
//! hole) take nothing from the frame. Bases are named by their index in the base manifest,
//! which the header's `base_root` pins; the receiver verifies each base's BLAKE3 before use.
//!
//! Version 3 made the pack a stream (version 2 put every segment's description in the header,
//! so nothing could be sent before the whole pack was encoded, and an object was one item,
//! held whole at both ends). Version 2 added ranges: an rsync delta's literal bytes compress
//! against the unchanged stretches of the same file around them, which both ends hold.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::PackError;
use crate::id::ManifestId;
use crate::manifest::Change;

pub const MAGIC: &[u8; 4] = b"OSPK";
pub const VERSION: u8 = 3;
/// Bytes before the header frame.
pub const FIXED_LEN: usize = 42;
/// A base manifest encoding larger than this is not used as the header's dictionary (it would
/// cost both ends that much memory for a few kilobytes saved).
pub const MAX_HEADER_DICT: usize = 64 << 20;
/// Largest segment head a receiver reads: a head's tables are counted against it before they
/// are built, and it bounds the memory one head takes.
pub const MAX_SEGMENT_HEAD: u64 = 4 << 20;

/// The fixed part of a pack, before the header frame: the first [`FIXED_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// The manifest the pack applies to.
    pub base_root: ManifestId,
    /// The header frame is compressed against the base manifest's canonical encoding.
    pub dictionary: bool,
    /// Length of the header frame that follows.
    pub header_len: u32,
}

impl FixedHeader {
    pub fn encode(&self) -> [u8; FIXED_LEN] {
        let mut out = [0u8; FIXED_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5..37].copy_from_slice(&self.base_root.0);
        out[37] = self.dictionary as u8;
        out[38..].copy_from_slice(&self.header_len.to_le_bytes());
        out
    }

    /// Decodes the fixed part of a pack that is to apply to `base_root`, refusing (in this order)
    /// another magic, another version, a pack built against another base, and a dictionary this
    /// build does not know.
    pub fn decode(bytes: &[u8; FIXED_LEN], base_root: &ManifestId) -> Result<Self, PackError> {
        if &bytes[..4] != MAGIC {
            return Err(PackError::Magic);
        }
        if bytes[4] != VERSION {
            return Err(PackError::Version(bytes[4]));
        }
        let root = ManifestId(bytes[5..37].try_into().expect("32 bytes"));
        if root != *base_root {
            return Err(PackError::WrongBase);
        }
        let dictionary = match bytes[37] {
            0 => false,
            1 => true,
            other => {
                return Err(PackError::Header(format!(
                    "unknown header dictionary {other}"
                )));
            }
        };
        Ok(Self {
            base_root: root,
            dictionary,
            header_len: u32::from_le_bytes(bytes[38..].try_into().expect("4 bytes")),
        })
    }
}

/// The part of the header inside the compressed frame (the base root is in the fixed part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderBody {
    pub target_root: ManifestId,
    pub changes: Vec<Change>,
    /// Size of each object, by object index.
    pub objects: Vec<u64>,
}

impl HeaderBody {
    /// Decodes the postcard form [`HeaderBody`]'s `Serialize` writes, checking every table's
    /// declared count against `max_changes` before anything is allocated for it.
    /// Deserializing with serde alone would build the whole header first, and an element in
    /// memory is far larger than its encoding (a removal of a one-letter path: 3 bytes, about
    /// 100 in memory), so `max_header_bytes` alone does not bound the memory a header takes.
    /// Bytes after the object table are refused.
    pub fn decode(raw: &[u8], limits: &Limits) -> Result<HeaderBody, PackError> {
        let mut r = Fields::new(raw, "header");
        let target_root = r.take()?;
        let n = r.count("change count", limits.max_changes)?;
        let changes = r.seq(n)?;
        let n = r.count("object count", limits.max_changes)?;
        let objects: Vec<u64> = r.seq(n)?;
        r.end()?;
        Ok(HeaderBody {
            target_root,
            changes,
            objects,
        })
    }
}

/// What one segment carries: the parts of its reference prefix, its items, and its frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHead {
    /// What, concatenated in this order, is the zstd prefix.
    pub prefix: Vec<PrefixPart>,
    pub items: Vec<Item>,
    /// Compressed length of the segment's frame (0 when no item takes bytes from it).
    pub frame_len: u64,
    /// Window log the frame needs; checked against the receiver's limit.
    pub window_log: u8,
}

/// Most prefix parts or items one segment head may declare: a head is read whole before its
/// frame, so its tables are capped on their counts as the header's are.
pub const MAX_SEGMENT_TABLE: u64 = 1 << 18;

impl SegmentHead {
    /// Decodes a head's postcard form, each table refused on its declared count.
    pub fn decode(raw: &[u8]) -> Result<SegmentHead, PackError> {
        let mut r = Fields::new(raw, "segment head");
        let n = r.count("prefix parts", MAX_SEGMENT_TABLE)?;
        let prefix = r.seq(n)?;
        let n = r.count("segment items", MAX_SEGMENT_TABLE)?;
        let items = r.seq(n)?;
        let head = SegmentHead {
            prefix,
            items,
            frame_len: r.take()?,
            window_log: r.take()?,
        };
        r.end()?;
        Ok(head)
    }

    pub fn encode(&self) -> Result<Vec<u8>, PackError> {
        postcard::to_stdvec(self).map_err(|e| PackError::Header(e.to_string()))
    }
}

/// The not yet decoded rest of a header body or segment head.
struct Fields<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(rest: &'a [u8], what: &'static str) -> Self {
        Self { rest, what }
    }

    fn take<T: DeserializeOwned>(&mut self) -> Result<T, PackError> {
        let (value, rest) =
            postcard::take_from_bytes(self.rest).map_err(|e| PackError::Header(e.to_string()))?;
        self.rest = rest;
        Ok(value)
    }

    /// A sequence's length (postcard: a varint), refused over `limit`.
    fn count(&mut self, what: &'static str, limit: u64) -> Result<usize, PackError> {
        let n: u64 = self.take()?;
        if n > limit {
            return Err(PackError::OverLimit {
                what,
                value: n,
                limit,
            });
        }
        Ok(n as usize)
    }

    /// `n` elements; memory grows only as elements actually decode (each takes at least a byte).
    fn seq<T: DeserializeOwned>(&mut self, n: usize) -> Result<Vec<T>, PackError> {
        let mut v = Vec::with_capacity(n.min(self.rest.len()));
        for _ in 0..n {
            v.push(self.take()?);
        }
        Ok(v)
    }

    fn end(&self) -> Result<(), PackError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(PackError::Trailing(self.what))
        }
    }
}

/// A varint as postcard writes it (LEB128), for the segment heads' lengths.
pub fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a varint written by [`write_varint`]; `None` at a clean end of input before its
/// first byte.
pub fn read_varint(r: &mut dyn std::io::Read) -> Result<Option<u64>, PackError> {
    let mut v = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        match r.read(&mut b)? {
            0 if i == 0 => return Ok(None),
            0 => return Err(PackError::Truncated),
            _ => {}
        }
        let bits = u64::from(b[0] & 0x7f);
        if i == 9 && bits > 1 {
            return Err(PackError::Header("segment length overflows".into()));
        }
        v |= bits << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
    }
    Err(PackError::Header("segment length overflows".into()))
}

/// What a pack declares, as the receiver read it from the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackHeader {
    /// The volume manifest the pack was built against.
    pub base_root: ManifestId,
    /// The manifest that base plus changes must give; checks every object's id at once.
    pub target_root: ManifestId,
    pub changes: Vec<Change>,
    /// Size of each object, by object index.
    pub objects: Vec<u64>,
}

/// A part of a segment's reference prefix: bytes of the receiver's base that the sender holds too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefixPart {
    /// The whole content of base manifest entry `.0`.
    Entry(u32),
    /// `len` bytes of base manifest entry `base` from offset `from`: the stretch of a base that
    /// matches a piece of a large object, or one an rsync delta in the segment copies (which
    /// the sender therefore holds in its target).
    Range { base: u32, from: u64, len: u64 },
}

impl PrefixPart {
    pub fn base(&self) -> u32 {
        match *self {
            PrefixPart::Entry(b) | PrefixPart::Range { base: b, .. } => b,
        }
    }
}

/// `len` bytes of object `object`, the next ones after what its earlier items gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub object: u32,
    /// Bytes of the object this item gives; 0: all that is left of it (its last item). Most
    /// files travel whole, in one item, and then their length is not said twice.
    pub len: u64,
    pub encoding: Encoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The bytes, from the frame (the prefix still helps: zstd finds matches in it).
    Literal,
    /// A fast_rsync delta of `delta_len` bytes from the frame, against base manifest entry
    /// `base`: its copies may reach anywhere in the base.
    Rsync { base: u32, delta_len: u64 },
    /// The bytes of base manifest entry `base` from offset `from`: nothing from the frame. A
    /// file that only grew (a log) sends its new part only.
    Copy { base: u32, from: u64 },
    /// Zero bytes: a hole of a sparse file. Nothing from the frame, and the receiver makes a
    /// hole again.
    Zeros,
}

impl Encoding {
    /// Bytes this item takes from its segment's frame.
    pub fn frame_bytes(&self, len: u64) -> u64 {
        match *self {
            Encoding::Literal => len,
            Encoding::Rsync { delta_len, .. } => delta_len,
            Encoding::Copy { .. } | Encoding::Zeros => 0,
        }
    }
}

/// What a receiver accepts. Every size read from a pack is checked against these before any
/// memory or disk is committed to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Largest decompressed header (changes and tables).
    pub max_header_bytes: u64,
    /// Largest single object.
    pub max_object_bytes: u64,
    /// Largest sum of all objects in one pack.
    pub max_total_bytes: u64,
    /// Largest reference prefix held in memory at once.
    pub max_prefix_bytes: u64,
    /// Largest zstd window (memory the decoder may allocate is about 2^this).
    pub max_window_log: u8,
    /// Most entries a changeset may touch.
    pub max_changes: u64,
}

impl Limits {
    /// The limits of a receiver that decodes within `memory` bytes: a quarter for the reference
    /// prefix, a quarter for the zstd window (the decoder's buffer is the smaller of the window
    /// and the segment's content), a quarter for the decompressed header, and the rest for
    /// everything else it holds.
    pub fn for_memory(memory: u64) -> Limits {
        let quarter = (memory / 4).max(1 << 20);
        let window_log = (63 - quarter.leading_zeros()) as u8;
        Limits {
            max_header_bytes: quarter,
            max_object_bytes: 16 << 30,
            max_total_bytes: 64 << 30,
            max_prefix_bytes: quarter,
            max_window_log: window_log.clamp(20, 30),
            max_changes: 4_000_000,
        }
    }

    /// Memory a segment's decoding may take at most: its prefix and its window.
    pub fn decode_memory(&self) -> u64 {
        self.max_prefix_bytes + (1u64 << self.max_window_log)
    }
}

/// Memory the onboard daemon decodes and encodes within by default.
pub const DEFAULT_MEMORY: u64 = 128 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits::for_memory(DEFAULT_MEMORY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ContentId;
    use crate::manifest::{FileSource, Put, PutKind};
    use crate::path::VolumePath;

    fn body() -> HeaderBody {
        let put = |path: &str, kind| {
            Change::Put(Put {
                path: VolumePath::new(path).unwrap(),
                kind,
                mode: 0o644,
                mtime: 1_700_000_000,
            })
        };
        HeaderBody {
            target_root: ManifestId([7; 32]),
            changes: vec![
                Change::Remove(VolumePath::new("old").unwrap()),
                put("d", PutKind::Dir),
                put("d/a", PutKind::File(FileSource::Object(0))),
                put("d/b", PutKind::File(FileSource::Object(1))),
                put(
                    "d/c",
                    PutKind::File(FileSource::Known {
                        id: ContentId::of(b"held"),
                        size: 4,
                    }),
                ),
                put("l", PutKind::Symlink("d/a".into())),
            ],
            objects: vec![300, 70_000],
        }
    }

    fn head() -> SegmentHead {
        SegmentHead {
            prefix: vec![
                PrefixPart::Entry(3),
                PrefixPart::Range {
                    base: 5,
                    from: 4096,
                    len: 1024,
                },
            ],
            items: vec![
                Item {
                    object: 0,
                    len: 300,
                    encoding: Encoding::Literal,
                },
                Item {
                    object: 1,
                    len: 60_000,
                    encoding: Encoding::Copy { base: 5, from: 0 },
                },
                Item {
                    object: 1,
                    len: 10_000,
                    encoding: Encoding::Rsync {
                        base: 5,
                        delta_len: 900,
                    },
                },
            ],
            frame_len: 950,
            window_log: 20,
        }
    }

    #[test]
    fn the_fixed_header_is_laid_out_as_the_table_says() {
        let fixed = FixedHeader {
            base_root: ManifestId([7; 32]),
            dictionary: true,
            header_len: 0x0102_0304,
        };
        let bytes = fixed.encode();
        let want = [&b"OSPK"[..], &[3], &[7; 32], &[1], &[4, 3, 2, 1]].concat();
        assert_eq!(bytes[..], want[..]);
        assert_eq!(
            FixedHeader::decode(&bytes, &ManifestId([7; 32])).unwrap(),
            fixed
        );
        let plain = FixedHeader {
            dictionary: false,
            ..fixed
        };
        assert_eq!(plain.encode()[37], 0);
    }

    /// The refusals come in the order a receiver has always checked them: what the pack is, then
    /// what it applies to, then how its header is compressed.
    #[test]
    fn a_fixed_header_is_refused_for_the_first_thing_wrong_with_it() {
        let root = ManifestId([7; 32]);
        let good = FixedHeader {
            base_root: root,
            dictionary: false,
            header_len: 10,
        }
        .encode();
        let with = |at: usize, byte: u8| {
            let mut b = good;
            b[at] = byte;
            b
        };
        let mut bad = with(0, b'X');
        bad[4] = 9;
        assert!(matches!(
            FixedHeader::decode(&bad, &root),
            Err(PackError::Magic)
        ));
        assert!(matches!(
            FixedHeader::decode(&with(4, 9), &root),
            Err(PackError::Version(9))
        ));
        let unknown_dict = with(37, 2);
        assert!(matches!(
            FixedHeader::decode(&unknown_dict, &ManifestId([8; 32])),
            Err(PackError::WrongBase)
        ));
        assert!(matches!(
            FixedHeader::decode(&unknown_dict, &root),
            Err(PackError::Header(m)) if m == "unknown header dictionary 2"
        ));
    }

    #[test]
    fn header_body_decodes_what_serde_encodes() {
        let b = body();
        let raw = postcard::to_stdvec(&b).unwrap();
        assert_eq!(HeaderBody::decode(&raw, &Limits::default()).unwrap(), b);
    }

    fn over(b: &HeaderBody, limits: &Limits) -> Option<&'static str> {
        match HeaderBody::decode(&postcard::to_stdvec(b).unwrap(), limits) {
            Err(PackError::OverLimit { what, .. }) => Some(what),
            _ => None,
        }
    }

    /// Regression, with `read::tests::header_change_count_is_refused_before_the_changes_are_built`:
    /// every table of the header and of a segment head is refused on its declared count.
    #[test]
    fn every_table_is_capped_by_its_count() {
        let tight = Limits {
            max_changes: 5,
            ..Limits::default()
        };
        assert_eq!(over(&body(), &tight), Some("change count"));
        let mut b = body();
        b.changes.clear();
        b.objects = vec![1; 6];
        assert_eq!(over(&b, &tight), Some("object count"));
        let mut h = head();
        h.prefix = vec![PrefixPart::Entry(3); MAX_SEGMENT_TABLE as usize + 1];
        let r = SegmentHead::decode(&h.encode().unwrap());
        assert!(
            matches!(
                r,
                Err(PackError::OverLimit {
                    what: "prefix parts",
                    ..
                })
            ),
            "{r:?}"
        );
        let mut h = head();
        h.items = vec![h.items[0]; MAX_SEGMENT_TABLE as usize + 1];
        let r = SegmentHead::decode(&h.encode().unwrap());
        assert!(
            matches!(
                r,
                Err(PackError::OverLimit {
                    what: "segment items",
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_segment_head_decodes_what_serde_encodes() {
        let h = head();
        let raw = h.encode().unwrap();
        assert_eq!(SegmentHead::decode(&raw).unwrap(), h);
        let mut longer = raw.clone();
        longer.push(0);
        assert!(matches!(
            SegmentHead::decode(&longer),
            Err(PackError::Trailing("segment head"))
        ));
        assert!(SegmentHead::decode(&raw[..raw.len() - 1]).is_err());
    }

    #[test]
    fn segment_lengths_are_varints_and_a_zero_ends_the_pack() {
        for v in [0u64, 1, 127, 128, 300, 4 << 20, u64::MAX] {
            let mut buf = Vec::new();
            write_varint(v, &mut buf);
            assert_eq!(read_varint(&mut &buf[..]).unwrap(), Some(v));
            assert_eq!(postcard::to_stdvec(&v).unwrap(), buf, "postcard's varint");
        }
        assert_eq!(read_varint(&mut &[][..]).unwrap(), None);
        assert!(matches!(
            read_varint(&mut &[0x80][..]),
            Err(PackError::Truncated)
        ));
        assert!(read_varint(&mut &[0xff; 11][..]).is_err());
    }

    #[test]
    fn limits_follow_the_memory_they_are_given() {
        let l = Limits::for_memory(128 << 20);
        assert_eq!(l, Limits::default());
        assert_eq!((l.max_prefix_bytes, l.max_window_log), (32 << 20, 25));
        assert_eq!(l.decode_memory(), 64 << 20);
        let small = Limits::for_memory(32 << 20);
        assert_eq!(
            (small.max_prefix_bytes, small.max_window_log),
            (8 << 20, 23)
        );
        assert_eq!(small.decode_memory(), 16 << 20);
    }

    #[test]
    fn bytes_after_the_header_body_are_refused() {
        let mut raw = postcard::to_stdvec(&body()).unwrap();
        raw.push(0);
        assert!(matches!(
            HeaderBody::decode(&raw, &Limits::default()),
            Err(PackError::Trailing("header"))
        ));
    }
}
