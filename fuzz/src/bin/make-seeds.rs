//! Writes valid encodings into `corpus/<target>/` as starting points for the fuzzer: a record
//! stream, a message stream with every variant, manifests, message blobs, and real packs built
//! with `sync_core::pack::Plan` against the fixed base of the fuzz crate (raw, with and without
//! the header dictionary, and in the structured form the pack target also accepts): whole
//! objects, objects in pieces over several segments, rsync deltas, a grown file sent as a copy
//! of its base, and holes. Every pack seed is checked to decode as the target decodes it. Run
//! from the `fuzz` folder: `cargo run --bin make-seeds`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use sync_core::delta::{rsync, zstd_ref};
use sync_core::id::{ManifestId, NodeId, PackId};
use sync_core::manifest::{Change, Entry, FileSource, Manifest, PutKind};
use sync_core::pack::format::HeaderBody;
use sync_core::pack::{Effort, Encoding, Item, Limits, Plan, PrefixPart, SegmentHead};
use sync_core::path::{PodName, VolumePath};
use sync_core::testing::{Blobs, PackParts};
use sync_core::wire::{ErrorKind, ManifestBody, Message, blob, encode_message};
use sync_core_fuzz::{
    FIXTURE, Fixture, Given, RECEIVER, Structured, decode, file, limits, server_log,
};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create corpus folder");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

fn records() {
    let mut stream = Vec::new();
    for body in [&b""[..], b"x", &[7u8; 300], &[0xffu8; 1000]] {
        stream.extend_from_slice(&(body.len() as u16).to_be_bytes());
        stream.extend_from_slice(body);
    }
    for seed in [0u8, 1, 42] {
        write(
            "record_decoder",
            &format!("stream-{seed}"),
            &with_mode(seed, &stream),
        );
    }
    // A record cut short.
    write(
        "record_decoder",
        "partial",
        &with_mode(3, &[0x01, 0x00, 1, 2, 3]),
    );
}

fn messages() -> Vec<Message> {
    let pod = PodName::new("camera").expect("fixed pod name");
    vec![
        Message::Welcome {
            node: NodeId([1; 16]),
            limits: Limits::default(),
            software: "orbit-sync 0.1.0".into(),
        },
        Message::ManifestRequest {
            pod: pod.clone(),
            known: Some(ManifestId([2; 32])),
        },
        Message::ManifestReply {
            pod: pod.clone(),
            root: ManifestId([3; 32]),
            body: ManifestBody::Same,
        },
        Message::ManifestReply {
            pod: pod.clone(),
            root: ManifestId([3; 32]),
            body: ManifestBody::Delta {
                from: ManifestId([4; 32]),
                blob: vec![5; 40],
            },
        },
        Message::ManifestReply {
            pod: pod.clone(),
            root: ManifestId([3; 32]),
            body: ManifestBody::Full { blob: vec![6; 20] },
        },
        Message::SignatureRequest {
            pod: pod.clone(),
            base_root: ManifestId([7; 32]),
            entries: vec![0, 3, 1000],
        },
        Message::Signatures { blob: vec![8; 30] },
        Message::PackOffer {
            pod: pod.clone(),
            pack: PackId([9; 32]),
            len: Some(123_456),
            base_root: ManifestId([10; 32]),
            target_root: ManifestId([11; 32]),
            scope: Some(VolumePath::new("in/images").unwrap()),
        },
        // Offered while it is still being encoded: its length comes in `PackEnd`.
        Message::PackOffer {
            pod: pod.clone(),
            pack: PackId([18; 32]),
            len: None,
            base_root: ManifestId([10; 32]),
            target_root: ManifestId([11; 32]),
            scope: None,
        },
        Message::PackEnd {
            pack: PackId([18; 32]),
            len: 654_321,
        },
        Message::PackAccept {
            pack: PackId([12; 32]),
            offset: 16384,
        },
        Message::PackData {
            offset: 1 << 40,
            bytes: vec![14; 500],
        },
        Message::PackAck { offset: 262_144 },
        Message::PackApplied {
            pack: PackId([16; 32]),
            root: ManifestId([17; 32]),
        },
        Message::Error {
            kind: ErrorKind::Conflict,
            message: "base changed".into(),
        },
        Message::Bye,
        Message::KeepAlive,
    ]
}

fn message_seeds() {
    let msgs = messages();
    let stream: Vec<u8> = msgs.iter().flat_map(encode_message).collect();
    for seed in [0u8, 5] {
        write(
            "message_decoder",
            &format!("all-{seed}"),
            &with_mode(seed, &stream),
        );
    }
    for (i, m) in msgs.iter().enumerate() {
        write(
            "message_decoder",
            &format!("one-{i:02}"),
            &with_mode(0, &encode_message(m)),
        );
    }
}

fn manifest_seeds(fx: &Fixture) {
    write("manifest_decode", "base", &fx.base.encode());
    write("manifest_decode", "target", &fx.target.encode());
    write("manifest_decode", "empty", &Manifest::default().encode());
}

/// A blob of each kind, the first byte choosing its decoder as `blob_decode` reads it.
fn blob_seeds(fx: &Fixture) {
    write(
        "blob_decode",
        "manifest",
        &with_mode(0, &blob::encode_manifest(&fx.target)),
    );
    let changes = sync_core::manifest::diff(&fx.base, &fx.target);
    write(
        "blob_decode",
        "changes",
        &with_mode(1, &blob::encode_changes(&changes)),
    );
    let sigs: Vec<(u32, Vec<u8>)> = fx
        .base
        .entries()
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let bytes = fx.blobs.0.get(&e.file_id()?)?;
            Some((i as u32, rsync::signature(bytes)))
        })
        .collect();
    write(
        "blob_decode",
        "signatures",
        &with_mode(2, &blob::encode_signatures(&sigs)),
    );
}

/// A real pack from the fixed base to `target`, the sender holding `sender`, encoded with the
/// fuzz target's limits in segments of about `effort.segment_bytes`.
fn pack(fx: &Fixture, target: &Manifest, sender: &Blobs, effort: &Effort) -> Vec<u8> {
    let plan = Plan::new(&fx.base, target, &|id| sender.0.contains_key(id));
    let mut sigs = HashMap::new();
    for b in plan.signature_requests() {
        let e = &fx.base.entries()[b as usize];
        sigs.insert(b, rsync::signature(&RECEIVER.bytes_of(e)));
    }
    let mut out = Vec::new();
    plan.encode(&fx.base, sender, &sigs, &limits(), effort, &mut out)
        .expect("fixed pack encodes");
    out
}

/// A pack taken apart into what its structured form holds: the header body, and each segment's
/// head with its decompressed payload.
struct Parts {
    body: HeaderBody,
    segments: Vec<(SegmentHead, Vec<u8>)>,
}

impl Parts {
    fn of(fx: &Fixture, pack: &[u8]) -> Parts {
        let p = PackParts::of(pack, &fx.base);
        let body = HeaderBody {
            target_root: p.header.target_root,
            changes: p.header.changes,
            objects: p.header.objects,
        };
        let segments = p
            .segments
            .into_iter()
            .map(|(head, frame)| {
                let mut payload = Vec::new();
                if head.frame_len > 0 {
                    let prefix = RECEIVER.prefix(&fx.base, &head.prefix);
                    zstd_ref::decoder(&frame[..], &prefix, u32::from(head.window_log))
                        .expect("zstd decoder")
                        .read_to_end(&mut payload)
                        .expect("own segment decodes");
                }
                (head, payload)
            })
            .collect();
        Parts { body, segments }
    }

    /// The structured form: postcard `(HeaderBody, Vec<SegmentHead>)`, then the payloads.
    fn input(&self) -> Vec<u8> {
        let heads: Vec<&SegmentHead> = self.segments.iter().map(|(h, _)| h).collect();
        let mut out = postcard::to_stdvec(&(&self.body, heads)).expect("serializes");
        for (_, payload) in &self.segments {
            out.extend_from_slice(payload);
        }
        out
    }

    fn items(&self) -> impl Iterator<Item = &Item> {
        self.segments.iter().flat_map(|(h, _)| &h.items)
    }

    /// The index of the object `path` is put with.
    fn object_at(&self, path: &str) -> u32 {
        self.body
            .changes
            .iter()
            .find_map(|c| match c {
                Change::Put(put) if put.path.as_str() == path => match put.kind {
                    PutKind::File(FileSource::Object(i)) => Some(i),
                    _ => None,
                },
                _ => None,
            })
            .unwrap_or_else(|| panic!("{path} is not an object of the pack"))
    }

    /// Object `object`'s literal items (all zeros) made holes: `Zeros` items, their bytes out of
    /// the payloads. The encoder never writes `Zeros`; this is how a pack with holes looks.
    fn make_holes(&mut self, object: u32) {
        let mut given = Given::default();
        for (head, payload) in &mut self.segments {
            let mut kept = Vec::with_capacity(payload.len());
            let mut at = 0usize;
            for item in &mut head.items {
                let n = item
                    .encoding
                    .frame_bytes(given.take(&self.body.objects, item))
                    as usize;
                let bytes = &payload[at..at + n];
                at += n;
                if item.object == object && item.encoding == Encoding::Literal {
                    assert!(bytes.iter().all(|&b| b == 0), "a hole of zeros");
                    item.encoding = Encoding::Zeros;
                } else {
                    kept.extend_from_slice(bytes);
                }
            }
            assert_eq!(at, payload.len(), "payload split by the items");
            *payload = kept;
        }
    }
}

/// `base` with `changed` put in place of (or beside) its entries of the same paths.
fn with_files(base: &Manifest, changed: Vec<Entry>) -> Manifest {
    let mut entries: Vec<Entry> = base
        .entries()
        .iter()
        .filter(|e| changed.iter().all(|c| c.path != e.path))
        .cloned()
        .collect();
    entries.extend(changed);
    Manifest::new(entries).expect("fixed manifest")
}

/// Names of the pack seeds this writes; others of that form left by an older run (an older
/// pack format) are removed.
fn is_pack_seed(name: &str) -> bool {
    name.starts_with("raw-") || name.starts_with("structured-")
}

fn remove_stale_pack_seeds() {
    let Ok(dir) = std::fs::read_dir(Path::new("corpus").join("pack_decode")) else {
        return;
    };
    for entry in dir.flatten() {
        if entry.file_name().to_str().is_some_and(is_pack_seed) {
            std::fs::remove_file(entry.path()).expect("remove stale seed");
        }
    }
}

/// A raw pack seed, checked to decode in the target.
fn raw_seed(name: &str, pack: &[u8]) {
    if let Err(e) = decode(pack) {
        panic!("seed {name} does not decode: {e}");
    }
    write("pack_decode", name, &with_mode(0, pack));
}

/// A structured seed with `mode`, checked to make a pack that decodes in the target.
fn structured_seed(name: &str, mode: u8, input: &[u8]) {
    let pack = Structured::build(mode, input).expect("own structured form parses");
    if let Err(e) = decode(&pack.pack()) {
        panic!("seed {name} (mode {mode}) does not decode: {e}");
    }
    write("pack_decode", name, &with_mode(mode, input));
}

fn pack_seeds(fx: &Fixture) {
    let all = fx.blobs.clone();
    let mut receiver_only = fx.blobs.clone();
    receiver_only.0.remove(&fx.data_bin);
    receiver_only.0.remove(&fx.server_log);
    let max = Effort::max();
    // Objects in several pieces, segment after segment.
    let small = Effort {
        segment_bytes: 2048,
        ..Effort::max()
    };
    // Only the log grew, at its end: a copy of its base and the new lines.
    let mut grown_blobs = fx.blobs.clone();
    let (log, appended) = server_log();
    let grown = with_files(
        &fx.base,
        vec![file(
            &mut grown_blobs,
            "app/server.log",
            &[&log[..], &appended].concat(),
            0o644,
        )],
    );
    // A new file of zeros, which the pack carries as holes.
    let mut holes_blobs = fx.blobs.clone();
    let holes = with_files(
        &fx.target,
        vec![file(&mut holes_blobs, "zeros.img", &[0u8; 5000], 0o644)],
    );

    remove_stale_pack_seeds();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("prefix", pack(fx, &fx.target, &all, &max)),
        ("rsync", pack(fx, &fx.target, &receiver_only, &max)),
        ("nothing", pack(fx, &fx.base, &all, &max)),
        ("remove-all", pack(fx, &Manifest::default(), &all, &max)),
        ("grown", pack(fx, &grown, &grown_blobs, &max)),
        ("pieces", pack(fx, &fx.target, &all, &small)),
        ("pieces-rsync", pack(fx, &fx.target, &receiver_only, &small)),
        ("holes", pack(fx, &holes, &holes_blobs, &small)),
    ];
    for (name, bytes) in &cases {
        let mut parts = Parts::of(fx, bytes);
        let items: Vec<Item> = parts.items().copied().collect();
        let has = |f: fn(&Encoding) -> bool| items.iter().any(|i| f(&i.encoding));
        match *name {
            "prefix" | "grown" | "pieces" => {
                assert!(
                    has(|e| matches!(e, Encoding::Copy { from: 0, .. })),
                    "{name}: {items:?}"
                )
            }
            "rsync" | "pieces-rsync" => {
                assert!(
                    has(|e| matches!(e, Encoding::Rsync { .. })),
                    "{name}: {items:?}"
                )
            }
            _ => {}
        }
        if name.starts_with("pieces") {
            let pieces = |o: u32| items.iter().filter(|i| i.object == o).count();
            assert!(
                (0..parts.body.objects.len() as u32).any(|o| pieces(o) >= 3),
                "{name}: an object in pieces: {items:?}"
            );
        }
        if *name == "rsync" {
            // The unchanged neighbours of the deltas' changes.
            assert!(
                parts.segments.iter().any(|(h, _)| h
                    .prefix
                    .iter()
                    .any(|p| matches!(p, PrefixPart::Range { .. }))),
                "{name}: stretches of bases in a prefix"
            );
        }
        let raw = if *name == "holes" {
            let zeros = parts.object_at("zeros.img");
            parts.make_holes(zeros);
            assert!(parts.items().any(|i| i.encoding == Encoding::Zeros));
            // The encoder's own pack has no holes: the raw seed is the structured one assembled.
            Structured::build(3, &parts.input()).expect("parses").pack()
        } else {
            bytes.clone()
        };
        let input = parts.input();
        raw_seed(&format!("raw-{name}"), &raw);
        let plain = Structured::build(1, &input).expect("parses").pack();
        raw_seed(&format!("raw-nodict-{name}"), &plain);
        structured_seed(&format!("structured-{name}"), 1, &input);
        structured_seed(&format!("structured-dict-{name}"), 3, &input);
        if name.starts_with("pieces") {
            // The window logs as the encoder wrote them.
            structured_seed(&format!("structured-keepwl-{name}"), 7, &input);
        }
    }
}

fn main() {
    let fx = &*FIXTURE;
    records();
    message_seeds();
    manifest_seeds(fx);
    blob_seeds(fx);
    pack_seeds(fx);
    println!("seeds written under corpus/");
}
