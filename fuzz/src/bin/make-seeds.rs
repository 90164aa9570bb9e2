//! Writes valid encodings into `corpus/<target>/` as starting points for the fuzzer: a record
//! stream, a message stream with every variant, manifests, message blobs, and real packs built
//! with `sync_core::pack::Plan` against the fixed base of the fuzz crate (raw, and in the
//! structured form the pack target also accepts). Run from the `fuzz` folder: `cargo run --bin make-seeds`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use sync_core::delta::{rsync, zstd_ref};
use sync_core::id::{ManifestId, NodeId, PackId};
use sync_core::manifest::Manifest;
use sync_core::pack::format::HeaderBody;
use sync_core::pack::{Limits, Plan, read_header};
use sync_core::path::{PodName, VolumePath};
use sync_core::testing::Blobs;
use sync_core::wire::{ErrorKind, ManifestBody, Message, blob, encode_message};
use sync_core_fuzz::{FIXTURE, Fixture, limits, receiver_blobs};

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
            pod,
            pack: PackId([9; 32]),
            len: 123_456,
            base_root: ManifestId([10; 32]),
            target_root: ManifestId([11; 32]),
            scope: Some(VolumePath::new("in/images").unwrap()),
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

/// A real pack from the fixed base to `target`, the sender holding `sender`.
fn pack(fx: &Fixture, target: &Manifest, sender: &Blobs) -> Vec<u8> {
    let receiver = receiver_blobs(fx);
    let plan = Plan::new(&fx.base, target, &|id| sender.0.contains_key(id));
    let mut sigs = HashMap::new();
    for b in plan.signature_requests() {
        let e = &fx.base.entries()[b as usize];
        sigs.insert(
            b,
            rsync::signature(&receiver.0[&e.file_id().expect("a file")]),
        );
    }
    let mut out = Vec::new();
    plan.encode(&fx.base, sender, &sigs, &limits(), &mut out)
        .expect("fixed pack encodes");
    out
}

/// The structured form of a pack: postcard header body, then each segment decompressed.
fn structured(fx: &Fixture, pack: &[u8]) -> Vec<u8> {
    let receiver = receiver_blobs(fx);
    let mut r = pack;
    let h = read_header(&mut r, &fx.base, &limits()).expect("own pack reads");
    let mut out = postcard::to_stdvec(&HeaderBody {
        target_root: h.target_root,
        changes: h.changes.clone(),
        objects: h.objects.clone(),
        segments: h.segments.clone(),
    })
    .expect("header serializes");
    for seg in &h.segments {
        let prefix = receiver.prefix(&fx.base, &seg.prefix);
        let (frame, rest) = r.split_at(seg.frame_len as usize);
        r = rest;
        zstd_ref::decoder(frame, &prefix, u32::from(seg.window_log))
            .expect("zstd decoder")
            .read_to_end(&mut out)
            .expect("own segment decodes");
    }
    out
}

fn pack_seeds(fx: &Fixture) {
    let all = fx.blobs.clone();
    let mut without_data_bin = fx.blobs.clone();
    without_data_bin.0.remove(&fx.data_bin);
    let cases = [
        ("prefix", pack(fx, &fx.target, &all)),
        ("rsync", pack(fx, &fx.target, &without_data_bin)),
        ("nothing", pack(fx, &fx.base, &all)),
        ("remove-all", pack(fx, &Manifest::default(), &all)),
    ];
    for (name, bytes) in &cases {
        write("pack_decode", &format!("raw-{name}"), &with_mode(0, bytes));
        let s = structured(fx, bytes);
        write(
            "pack_decode",
            &format!("structured-{name}"),
            &with_mode(1, &s),
        );
        write(
            "pack_decode",
            &format!("structured-dict-{name}"),
            &with_mode(3, &s),
        );
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
