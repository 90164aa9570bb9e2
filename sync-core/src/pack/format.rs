//! Pack byte layout, version 2. All integers inside postcard values are varints.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `OSPK` |
//! | 4 | 1 | format version, `2` |
//! | 5 | 32 | base root: the manifest the pack applies to |
//! | 37 | 1 | header dictionary: 0 none, 1 the base manifest's canonical encoding |
//! | 38 | 4 | header length H (u32, little-endian) |
//! | 42 | H | header: one zstd frame holding the postcard of [`HeaderBody`] |
//! | 42+H | Σ frame_len | segments, in header order: each one zstd frame of `frame_len` bytes |
//!
//! The header is compressed against the base manifest the receiver already holds, so the paths
//! of changed and removed files, which are all in it, cost next to nothing.
//!
//! A segment's frame is compressed against a reference prefix: the parts in
//! [`SegmentSpec::prefix`], concatenated: whole base manifest entries, and stretches of base
//! entries ([`PrefixPart::Range`]). It decodes to the payloads of its items, back to back: an
//! object's bytes ([`Encoding::Literal`]), a fast_rsync delta against one base entry
//! ([`Encoding::Rsync`]), or a base's bytes followed by new ones ([`Encoding::Append`]). Bases
//! are named by their index in the base manifest, which the header's `base_root` pins; the
//! receiver verifies each base's BLAKE3 before use.
//!
//! Version 2 added ranges: an rsync delta's literal bytes compress against the unchanged
//! stretches of the same file around them, which both ends hold (the sender in its target, the
//! receiver in its base), so a changed database page costs its change, not its entropy.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::PackError;
use crate::id::ManifestId;
use crate::manifest::Change;

pub const MAGIC: &[u8; 4] = b"OSPK";
pub const VERSION: u8 = 2;
/// Bytes before the header frame.
pub const FIXED_LEN: usize = 42;
/// A base manifest encoding larger than this is not used as the header's dictionary (it would
/// cost both ends that much memory for a few kilobytes saved).
pub const MAX_HEADER_DICT: usize = 64 << 20;

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
    pub objects: Vec<u64>,
    pub segments: Vec<SegmentSpec>,
}

impl HeaderBody {
    /// Decodes the postcard form [`HeaderBody`]'s `Serialize` writes, checking every table's
    /// declared count before anything is allocated for it: changes, objects and prefix parts
    /// (all segments together) against `max_changes`; segments and segment items against the
    /// object count (every segment carries at least one object, and every object travels once). Deserializing with serde alone would
    /// build the whole header first, and an element in memory is far larger than its encoding (a
    /// removal of a one-letter path: 3 bytes, about 100 in memory), so `max_header_bytes` alone
    /// does not bound the memory a header takes. Bytes after the last segment are refused.
    pub fn decode(raw: &[u8], limits: &Limits) -> Result<HeaderBody, PackError> {
        let mut r = Fields(raw);
        let target_root = r.take()?;
        let n = r.count("change count", limits.max_changes)?;
        let changes = r.seq(n)?;
        let n = r.count("object count", limits.max_changes)?;
        let objects: Vec<u64> = r.seq(n)?;
        let object_count = objects.len() as u64;
        let n = r.count("segment count", object_count)?;
        let mut segments = Vec::with_capacity(n.min(r.0.len()));
        let (mut prefix_parts, mut items) = (0u64, 0u64);
        for _ in 0..n {
            let n = r.count("prefix parts", limits.max_changes - prefix_parts)?;
            prefix_parts += n as u64;
            let prefix = r.seq(n)?;
            let n = r.count("segment items", object_count - items)?;
            items += n as u64;
            segments.push(SegmentSpec {
                prefix,
                items: r.seq(n)?,
                frame_len: r.take()?,
                window_log: r.take()?,
            });
        }
        if !r.0.is_empty() {
            return Err(PackError::Trailing("header"));
        }
        Ok(HeaderBody {
            target_root,
            changes,
            objects,
            segments,
        })
    }
}

/// The not yet decoded rest of a header body.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<T: DeserializeOwned>(&mut self) -> Result<T, PackError> {
        let (value, rest) =
            postcard::take_from_bytes(self.0).map_err(|e| PackError::Header(e.to_string()))?;
        self.0 = rest;
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
        let mut v = Vec::with_capacity(n.min(self.0.len()));
        for _ in 0..n {
            v.push(self.take()?);
        }
        Ok(v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackHeader {
    /// The volume manifest the pack was built against.
    pub base_root: ManifestId,
    /// The manifest that base plus changes must give; checks every object's id at once.
    pub target_root: ManifestId,
    pub changes: Vec<Change>,
    /// Size of each object, by object index.
    pub objects: Vec<u64>,
    pub segments: Vec<SegmentSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSpec {
    /// What, concatenated in this order, is the zstd prefix.
    pub prefix: Vec<PrefixPart>,
    pub items: Vec<Item>,
    /// Compressed length of the segment's frame.
    pub frame_len: u64,
    /// Window log the frame needs; checked against the receiver's limit.
    pub window_log: u8,
}

/// A part of a segment's reference prefix: bytes of the receiver's base that the sender holds too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefixPart {
    /// The whole content of base manifest entry `.0`.
    Entry(u32),
    /// `len` bytes of base manifest entry `base` from offset `from`: a stretch an rsync delta in
    /// the segment copies, which the sender therefore holds in its target.
    Range { base: u32, from: u64, len: u64 },
}

impl PrefixPart {
    pub fn base(&self) -> u32 {
        match *self {
            PrefixPart::Entry(b) | PrefixPart::Range { base: b, .. } => b,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub object: u32,
    pub encoding: Encoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The object's bytes (the prefix still helps: zstd finds matches in it).
    Literal,
    /// A fast_rsync delta of `delta_len` bytes against base manifest entry `base`.
    Rsync { base: u32, delta_len: u64 },
    /// The first `keep` bytes of base manifest entry `base`, then the object's remaining bytes
    /// from the stream: a file that only grew (a log). The sender compresses only what is new,
    /// instead of matching the whole old file again.
    Append { base: u32, keep: u64 },
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
    /// Largest object (and base) sent as an rsync delta: the base, the delta and the result are
    /// all held in memory while it is applied.
    pub fn max_rsync_bytes(&self) -> u64 {
        self.max_prefix_bytes / 4
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 256 << 20,
            max_object_bytes: 16 << 30,
            max_total_bytes: 64 << 30,
            max_prefix_bytes: 512 << 20,
            max_window_log: 30,
            max_changes: 4_000_000,
        }
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
            segments: vec![
                SegmentSpec {
                    prefix: vec![PrefixPart::Entry(3)],
                    items: vec![Item {
                        object: 0,
                        encoding: Encoding::Literal,
                    }],
                    frame_len: 120,
                    window_log: 20,
                },
                SegmentSpec {
                    prefix: vec![PrefixPart::Range {
                        base: 5,
                        from: 4096,
                        len: 1024,
                    }],
                    items: vec![Item {
                        object: 1,
                        encoding: Encoding::Rsync {
                            base: 5,
                            delta_len: 900,
                        },
                    }],
                    frame_len: 950,
                    window_log: 20,
                },
            ],
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
        let want = [&b"OSPK"[..], &[2], &[7; 32], &[1], &[4, 3, 2, 1]].concat();
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
    /// every table of the header is refused on its declared count.
    #[test]
    fn every_header_table_is_capped_by_its_count() {
        let tight = Limits {
            max_changes: 5,
            ..Limits::default()
        };
        assert_eq!(over(&body(), &tight), Some("change count"));
        let mut b = body();
        b.changes.clear();
        b.objects = vec![1; 6];
        assert_eq!(over(&b, &tight), Some("object count"));
        let mut b = body();
        b.objects.pop();
        assert_eq!(over(&b, &Limits::default()), Some("segment count"));
        let mut b = body();
        b.changes.clear();
        b.segments[0].prefix = vec![PrefixPart::Entry(3); 6];
        assert_eq!(over(&b, &tight), Some("prefix parts"));
        let mut b = body();
        let extra = b.segments[0].items[0];
        b.segments[1].items.push(extra);
        assert_eq!(over(&b, &Limits::default()), Some("segment items"));
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
