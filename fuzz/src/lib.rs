//! What the fuzz targets and the seed generator share: a deterministic chunker (so one input also
//! chooses how the stream is split), and a small fixed volume on both ends of a pack (the base
//! manifest and its content, a target, and a sink that checks the decoder's promises; content is
//! held in `sync_core::testing::Blobs`, made with its generators), and the pack target's two
//! halves: [`decode`] with its checks, and [`Structured`], which makes a valid pack of the
//! structured input form.
//!
//! The seeds in `corpus/pack_decode` are packs against [`FIXTURE`]'s base; changing the base
//! (or the pack format) makes them stale (they then only exercise the "wrong base" or "version"
//! refusals): rerun `make-seeds`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::LazyLock;

use sync_core::delta::zstd_ref::window_log_for;
use sync_core::id::ContentId;
use sync_core::manifest::{Entry, EntryKind, Manifest};
use sync_core::pack::format::{FIXED_LEN, FixedHeader, HeaderBody, write_varint};
use sync_core::pack::{
    DecodedPack, Item, Limits, ObjectSink, PackError, PrefixPart, SegmentHead, decode_pack,
    read_header,
};
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

/// Takes objects as the onboard staging area would, and checks what the decoder promises: one
/// object at a time, `begin` and `end` paired, no byte written outside an object, no object
/// over its declared size or `max_object_bytes`, none ended short, all of them together under
/// `max_total_bytes`, no index twice.
pub struct Sink {
    pub limits: Limits,
    /// Objects ended, by index.
    pub objects: HashMap<u32, Vec<u8>>,
    /// Bytes written so far, over all objects.
    pub total: u64,
    /// The object begun and not yet ended: index, declared size, bytes so far.
    pub open: Option<(u32, u64, Vec<u8>)>,
}

impl Sink {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            objects: HashMap::new(),
            total: 0,
            open: None,
        }
    }

    /// The open object's bytes, checked to have room for `len` more.
    fn grow(&mut self, len: u64, how: &str) -> &mut Vec<u8> {
        let Some((index, size, bytes)) = self.open.as_mut() else {
            panic!("{len} bytes ({how}) outside an object");
        };
        let after = (bytes.len() as u64).checked_add(len);
        assert!(
            after.is_some_and(|a| a <= *size),
            "object #{index} written past its declared {size} bytes ({} + {len}, {how})",
            bytes.len()
        );
        self.total += len;
        assert!(
            self.total <= self.limits.max_total_bytes,
            "objects over max_total_bytes"
        );
        bytes
    }
}

impl ObjectSink for Sink {
    fn begin(&mut self, index: u32, size: u64) -> Result<(), PackError> {
        if let Some((open, ..)) = &self.open {
            panic!("object #{index} begins inside object #{open}");
        }
        assert!(
            !self.objects.contains_key(&index),
            "object #{index} begins again after it ended"
        );
        assert!(
            size <= self.limits.max_object_bytes,
            "object #{index} of {size} bytes over max_object_bytes"
        );
        self.open = Some((index, size, Vec::new()));
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.grow(bytes.len() as u64, "write")
            .extend_from_slice(bytes);
        Ok(())
    }

    fn zeros(&mut self, len: u64) -> Result<(), PackError> {
        let v = self.grow(len, "zeros");
        // Within the object's size, itself within max_object_bytes: checked by `grow`.
        v.resize(v.len() + len as usize, 0);
        Ok(())
    }

    fn end(&mut self) -> Result<(), PackError> {
        let Some((index, size, bytes)) = self.open.take() else {
            panic!("an object ends that never began");
        };
        assert_eq!(
            bytes.len() as u64,
            size,
            "object #{index} ended short of its declared size"
        );
        assert!(
            self.objects.insert(index, bytes).is_none(),
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

/// A file entry at `path` holding `body` (added to `blobs`).
pub fn file(blobs: &mut Blobs, path: &str, body: &[u8], mode: u32) -> Entry {
    let kind = EntryKind::File {
        id: blobs.add(body),
        size: body.len() as u64,
    };
    entry(path, kind, mode, 1_700_000_000)
}

pub fn dir(path: &str) -> Entry {
    entry(path, EntryKind::Dir, 0o755, 0)
}

fn link(path: &str, target: &str) -> Entry {
    let kind = EntryKind::Symlink {
        target: target.into(),
    };
    entry(path, kind, 0o777, 0)
}

/// The receiver's volume: a folder, text, an executable, a binary big enough for rsync (both
/// sides ≥ 4 KiB), a log big enough to travel as a copy of its base plus its new lines (≥ 64
/// KiB) and a symlink. In the target, a new text file larger than a small segment.
pub struct Fixture {
    pub base: Manifest,
    pub target: Manifest,
    /// Everything: what the receiver holds of the base and the sender of the target.
    pub blobs: Blobs,
    /// The content id of `data.bin` in the base; a sender without it must use rsync.
    pub data_bin: ContentId,
    /// The content id of `app/server.log` in the base.
    pub server_log: ContentId,
}

/// The log's lines in the base, and those the target appends.
pub fn server_log() -> (Vec<u8>, Vec<u8>) {
    (text(4000, 9), text(40, 11))
}

pub static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let mut blobs = Blobs::default();
    let data_bin = noise(6000, 7);
    let (log, appended) = server_log();
    // The encoder copies a base that a file only grew from at this size.
    assert!(log.len() >= 64 << 10, "server.log too small to be copied");
    let base = Manifest::new(vec![
        dir("app"),
        file(&mut blobs, "app/main.py", &text(60, 1), 0o644),
        file(
            &mut blobs,
            "app/run.sh",
            b"#!/bin/sh\nexec python3 main.py\n",
            0o755,
        ),
        file(&mut blobs, "app/server.log", &log, 0o644),
        file(&mut blobs, "data.bin", &data_bin, 0o644),
        file(&mut blobs, "README", b"v1 readme\n", 0o644),
        link("latest", "app/main.py"),
    ])
    .expect("fixed base");
    let mut main2 = text(60, 1);
    main2.splice(600..600, b"# a new line\n".iter().copied());
    let mut data2 = data_bin.clone();
    data2[3000..3010].copy_from_slice(b"0123456789");
    let log2 = [&log[..], &appended].concat();
    let target = Manifest::new(vec![
        dir("app"),
        file(&mut blobs, "app/main.py", &main2, 0o644),
        file(&mut blobs, "app/new.txt", &text(250, 5), 0o600),
        file(&mut blobs, "app/server.log", &log2, 0o644),
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
        server_log: ContentId::of(&log),
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

/// The receiver's end of the pack target: the bases of [`FIXTURE`].
pub static RECEIVER: LazyLock<Blobs> = LazyLock::new(|| receiver_blobs(&FIXTURE));

/// Decodes `pack` against [`FIXTURE`]'s base with [`limits`], into a [`Sink`], and checks what a
/// decoded pack promises: its root is the header's, every object reached the sink whole, and
/// each object's id is the hash of its bytes.
pub fn decode(pack: &[u8]) -> Result<(DecodedPack, Sink), PackError> {
    let fx = &*FIXTURE;
    let limits = limits();
    if let Ok(h) = read_header(&mut &pack[..], &fx.base, &limits) {
        assert_eq!(h.base_root, fx.base.root());
    }
    let mut sink = Sink::new(limits.clone());
    let d = decode_pack(&mut &pack[..], &fx.base, &*RECEIVER, &mut sink, &limits)?;
    assert_eq!(d.target.root(), d.header.target_root);
    assert!(sink.open.is_none(), "a decoded pack left an object open");
    assert_eq!(
        sink.objects.len(),
        d.objects.len(),
        "an object never reached the sink"
    );
    assert_eq!(d.objects.len(), d.header.objects.len());
    for (i, (id, size)) in d.objects.iter().enumerate() {
        let body = &sink.objects[&(i as u32)];
        assert_eq!(
            ContentId::of(body),
            *id,
            "object #{i} id is not its bytes' hash"
        );
        assert_eq!(body.len() as u64, *size);
        assert_eq!(
            *size, d.header.objects[i],
            "object #{i} size is not declared"
        );
    }
    Ok((d, sink))
}

/// Most prefix bytes one structured input builds over all its segments; later segments are
/// compressed without a prefix (their frames still decode: a frame that refers to nothing of
/// its prefix decodes against any), so an input of many heads naming a large base stays fast.
const PREFIX_BUDGET: u64 = 8 << 20;

/// The pack target's structured form, made into a pack: header body, each segment's head (its
/// `frame_len`, and `window_log` unless kept, filled in) and its frame, and whether the header
/// is compressed against the base manifest.
///
/// Input: a postcard `(HeaderBody, Vec<SegmentHead>)`, then the segments' decompressed payloads
/// back to back. Each head takes the bytes its items take from a frame
/// ([`sync_core::pack::Encoding::frame_bytes`] of each item's length, an item's 0 being the rest
/// of its object: [`Given`]), or what is left; they are compressed against
/// the prefix the head names when that is valid (else none: the decode then fails on the head
/// or the content, both fine).
pub struct Structured {
    pub body: HeaderBody,
    pub segments: Vec<(SegmentHead, Vec<u8>)>,
    pub dictionary: bool,
}

impl Structured {
    /// Mode bits (the input's first byte, odd): bit 1, header compressed against the base
    /// manifest; bit 2, the heads' window logs kept as the input has them.
    pub fn build(mode: u8, input: &[u8]) -> Option<Structured> {
        let fx = &*FIXTURE;
        let limits = limits();
        let max_wl = u32::from(limits.max_window_log);
        let ((body, heads), mut payloads) =
            postcard::take_from_bytes::<(HeaderBody, Vec<SegmentHead>)>(input).ok()?;
        let mut budget = PREFIX_BUDGET;
        let mut segments = Vec::with_capacity(heads.len());
        let mut given = Given::default();
        for mut head in heads {
            let need = head
                .items
                .iter()
                .map(|it| it.encoding.frame_bytes(given.take(&body.objects, it)))
                .fold(0u64, u64::saturating_add);
            let short = need > payloads.len() as u64;
            let (content, tail) = payloads.split_at(need.min(payloads.len() as u64) as usize);
            payloads = tail;
            let prefix = prefix_of(&fx.base, &head.prefix, limits.max_prefix_bytes, budget);
            budget -= prefix.len() as u64;
            let (frame, wl) = if need == 0 {
                // No item takes from a frame: none, as the encoder writes it.
                (Vec::new(), 0)
            } else {
                let wl = window_log_for(prefix.len() as u64, content.len() as u64).min(max_wl);
                (compress_with_prefix(&prefix, content, wl), wl)
            };
            head.frame_len = frame.len() as u64;
            if mode & 4 == 0 {
                head.window_log = wl as u8;
            }
            segments.push((head, frame));
            if short {
                // This segment's frame ends before its items do: the decoder stops here.
                break;
            }
        }
        Some(Structured {
            body,
            segments,
            dictionary: mode & 2 != 0,
        })
    }

    /// The pack: fixed part, header frame, each segment's head length, head and frame, and the
    /// 0 that ends the segments.
    pub fn pack(&self) -> Vec<u8> {
        let fx = &*FIXTURE;
        let raw = postcard::to_stdvec(&self.body).expect("header serializes");
        let dict = if self.dictionary {
            fx.base.encode()
        } else {
            Vec::new()
        };
        let wl = window_log_for(dict.len() as u64, raw.len() as u64)
            .min(u32::from(limits().max_window_log));
        let packed = compress_with_prefix(&dict, &raw, wl);
        let fixed = FixedHeader {
            base_root: fx.base.root(),
            dictionary: self.dictionary,
            header_len: packed.len() as u32,
        };
        let mut out = Vec::with_capacity(FIXED_LEN + packed.len());
        out.extend_from_slice(&fixed.encode());
        out.extend_from_slice(&packed);
        for (head, frame) in &self.segments {
            let raw = head.encode().expect("segment head serializes");
            write_varint(raw.len() as u64, &mut out);
            out.extend_from_slice(&raw);
            out.extend_from_slice(frame);
        }
        out.push(0);
        out
    }
}

/// How much of each object the items walked so far gave, to know an item's length as the
/// decoder takes it: its `len`, or when that is 0, what is left of its object.
#[derive(Default)]
pub struct Given(HashMap<u32, u64>);

impl Given {
    /// The length of `item`, the next item in pack order, of a pack whose header declares
    /// `objects`; counted as given.
    pub fn take(&mut self, objects: &[u64], item: &Item) -> u64 {
        let done = self.0.entry(item.object).or_default();
        let len = if item.len == 0 {
            let size = objects.get(item.object as usize).copied().unwrap_or(0);
            size.saturating_sub(*done)
        } else {
            item.len
        };
        *done = done.saturating_add(len);
        len
    }
}

/// The bytes of a segment's prefix `parts`, from the receiver's bases, if every part is a valid
/// stretch of a base file and they come to at most `max` bytes (and `budget`); else nothing.
fn prefix_of(base: &Manifest, parts: &[PrefixPart], max: u64, budget: u64) -> Vec<u8> {
    let mut prefix = Vec::new();
    for part in parts {
        let held = base
            .entries()
            .get(part.base() as usize)
            .and_then(|e| e.file_id())
            .map(|id| &RECEIVER.0[&id][..]);
        let bytes = match (held, *part) {
            (Some(all), PrefixPart::Entry(_)) => Some(all),
            (Some(all), PrefixPart::Range { from, len, .. }) => usize::try_from(from)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(from, len)| all.get(from..from.checked_add(len)?)),
            (None, _) => None,
        };
        match bytes {
            Some(bytes) if (prefix.len() + bytes.len()) as u64 <= max.min(budget) => {
                prefix.extend_from_slice(bytes);
            }
            _ => return Vec::new(),
        }
    }
    prefix
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
