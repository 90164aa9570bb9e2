//! Pack byte layout, version 1. All integers inside postcard values are varints.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `OSPK` |
//! | 4 | 1 | format version, `1` |
//! | 5 | 32 | base root: the manifest the pack applies to |
//! | 37 | 1 | header dictionary: 0 none, 1 the base manifest's canonical encoding |
//! | 38 | 4 | header length H (u32, little-endian) |
//! | 42 | H | header: one zstd frame holding the postcard of [`HeaderBody`] |
//! | 42+H | Σ frame_len | segments, in header order: each one zstd frame of `frame_len` bytes |
//!
//! The header is compressed against the base manifest the receiver already holds, so the paths
//! of changed and removed files, which are all in it, cost next to nothing.
//!
//! A segment's frame is compressed against a reference prefix: the concatenated content of the
//! base manifest entries in [`SegmentSpec::prefix`]. It decodes to the payloads of its items, back
//! to back: an object's bytes ([`Encoding::Literal`]) or a fast_rsync delta against one base entry
//! ([`Encoding::Rsync`]). Bases are named by their index in the base manifest, which the header's
//! `base_root` pins; the receiver verifies each base's BLAKE3 before use.

use serde::{Deserialize, Serialize};

use crate::id::ManifestId;
use crate::manifest::Change;

pub const MAGIC: &[u8; 4] = b"OSPK";
pub const VERSION: u8 = 1;
/// Bytes before the header frame.
pub const FIXED_LEN: usize = 42;
/// A base manifest encoding larger than this is not used as the header's dictionary (it would
/// cost both ends that much memory for a few kilobytes saved).
pub const MAX_HEADER_DICT: usize = 64 << 20;

/// The part of the header inside the compressed frame (the base root is in the fixed part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderBody {
    pub target_root: ManifestId,
    pub changes: Vec<Change>,
    pub objects: Vec<u64>,
    pub segments: Vec<SegmentSpec>,
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
    /// Base manifest entries whose content, concatenated in this order, is the zstd prefix.
    pub prefix: Vec<u32>,
    pub items: Vec<Item>,
    /// Compressed length of the segment's frame.
    pub frame_len: u64,
    /// Window log the frame needs; checked against the receiver's limit.
    pub window_log: u8,
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
