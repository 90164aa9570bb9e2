//! What the fuzz targets and the seed generator share: a deterministic chunker (so one input also
//! chooses how the stream is split), and a small fixed volume on both ends of a pack (the base
//! manifest and its content, a target, and a sink that checks the decoder's limits; content is
//! held in `sync_core::testing::Blobs`, made with its generators).
//!
//! The seeds in `corpus/pack_decode` are packs against [`base`]; changing the base makes them
//! stale (they then only exercise the "wrong base" refusal): rerun `make-seeds`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::LazyLock;

use sync_core::id::ContentId;
use sync_core::manifest::{Entry, EntryKind, Manifest};
use sync_core::pack::{Limits, ObjectSink, PackError};
use sync_core::path::VolumePath;
use sync_core::testing::{Blobs, noise, text};

/// Splits `data` into chunks whose lengths follow a xorshift sequence seeded by `seed`: runs of
/// single bytes, short pieces, and long ones, so record and message boundaries fall everywhere.
pub fn chunks(seed: u8, data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut x = 0x9e37_79b9u32 ^ (u32::from(seed) << 8 | u32::from(seed));
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let want = match x % 8 {
            0..=2 => 1,
            3..=5 => 1 + (x >> 8) as usize % 16,
            6 => 1 + (x >> 8) as usize % 1024,
            _ => rest.len(),
        };
        let (head, tail) = rest.split_at(want.min(rest.len()));
        rest = tail;
        Some(head)
    })
}

/// Tight limits: a bomb is refused long before the fuzzer's memory limit.
pub fn limits() -> Limits {
    Limits {
        max_header_bytes: 1 << 20,
        max_object_bytes: 2 << 20,
        max_total_bytes: 4 << 20,
        max_prefix_bytes: 1 << 20,
        max_window_log: 21,
        max_changes: 10_000,
    }
}

/// Takes objects as the onboard staging area would, and checks what the decoder promises: no
/// object over its declared size or the limits, no index twice.
pub struct Sink {
    pub limits: Limits,
    pub objects: HashMap<u32, Vec<u8>>,
    pub total: u64,
}

impl Sink {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            objects: HashMap::new(),
            total: 0,
        }
    }
}

impl ObjectSink for Sink {
    fn put(&mut self, index: u32, data: &mut dyn Read) -> Result<(), PackError> {
        let mut v = Vec::new();
        // Read one byte past the cap: a decoder that hands more is a finding.
        data.take(self.limits.max_object_bytes + 1)
            .read_to_end(&mut v)?;
        assert!(
            v.len() as u64 <= self.limits.max_object_bytes,
            "object #{index} over max_object_bytes"
        );
        self.total += v.len() as u64;
        assert!(
            self.total <= self.limits.max_total_bytes,
            "objects over max_total_bytes"
        );
        assert!(
            self.objects.insert(index, v).is_none(),
            "object #{index} stored twice"
        );
        Ok(())
    }
}

fn entry(path: &str, kind: EntryKind, mode: u32, mtime: i64) -> Entry {
    Entry {
        path: VolumePath::new(path).expect("fixed path"),
        kind,
        mode,
        mtime,
    }
}

fn file(blobs: &mut Blobs, path: &str, body: &[u8], mode: u32) -> Entry {
    let kind = EntryKind::File {
        id: blobs.add(body),
        size: body.len() as u64,
    };
    entry(path, kind, mode, 1_700_000_000)
}

fn dir(path: &str) -> Entry {
    entry(path, EntryKind::Dir, 0o755, 0)
}

fn link(path: &str, target: &str) -> Entry {
    let kind = EntryKind::Symlink {
        target: target.into(),
    };
    entry(path, kind, 0o777, 0)
}

/// The receiver's volume: a folder, text, an executable, a binary big enough for rsync (both
/// sides ≥ 4 KiB) and a symlink.
pub struct Fixture {
    pub base: Manifest,
    pub target: Manifest,
    /// Everything: what the receiver holds of the base and the sender of the target.
    pub blobs: Blobs,
    /// The content id of `data.bin` in the base; a sender without it must use rsync.
    pub data_bin: ContentId,
}

pub static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let mut blobs = Blobs::default();
    let data_bin = noise(6000, 7);
    let base = Manifest::new(vec![
        dir("app"),
        file(&mut blobs, "app/main.py", &text(60, 1), 0o644),
        file(
            &mut blobs,
            "app/run.sh",
            b"#!/bin/sh\nexec python3 main.py\n",
            0o755,
        ),
        file(&mut blobs, "data.bin", &data_bin, 0o644),
        file(&mut blobs, "README", b"v1 readme\n", 0o644),
        link("latest", "app/main.py"),
    ])
    .expect("fixed base");
    let mut main2 = text(60, 1);
    main2.splice(600..600, b"# a new line\n".iter().copied());
    let mut data2 = data_bin.clone();
    data2[3000..3010].copy_from_slice(b"0123456789");
    let target = Manifest::new(vec![
        dir("app"),
        file(&mut blobs, "app/main.py", &main2, 0o644),
        file(&mut blobs, "app/new.txt", &text(20, 5), 0o600),
        dir("bin"),
        file(
            &mut blobs,
            "bin/run.sh",
            b"#!/bin/sh\nexec python3 main.py\n",
            0o755,
        ),
        file(&mut blobs, "data.bin", &data2, 0o644),
        file(&mut blobs, "README", b"v2 readme\n", 0o644),
        link("latest", "app/new.txt"),
    ])
    .expect("fixed target");
    Fixture {
        base,
        target,
        blobs,
        data_bin: ContentId::of(&data_bin),
    }
});

/// The base content the receiver holds (and nothing of the target).
pub fn receiver_blobs(fx: &Fixture) -> Blobs {
    let mut b = Blobs::default();
    for e in fx.base.entries() {
        if let Some(id) = e.file_id() {
            b.0.insert(id, fx.blobs.0[&id].clone());
        }
    }
    b
}

/// Compresses `content` as one zstd frame against `prefix` (fast level: the fuzz target does
/// this for every structured input). Returns the frame.
pub fn compress_with_prefix(prefix: &[u8], content: &[u8], window_log: u32) -> Vec<u8> {
    use zstd::stream::raw::CParameter;
    let mut out = Vec::new();
    let mut enc =
        zstd::stream::write::Encoder::with_ref_prefix(&mut out, 1, prefix).expect("zstd encoder");
    enc.set_parameter(CParameter::WindowLog(window_log))
        .expect("window log in range");
    enc.set_parameter(CParameter::ContentSizeFlag(true))
        .expect("content size flag");
    enc.set_pledged_src_size(Some(content.len() as u64))
        .expect("pledged size");
    enc.write_all(content).expect("in-memory write");
    enc.finish().expect("in-memory finish");
    out
}
