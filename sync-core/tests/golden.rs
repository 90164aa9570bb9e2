//! Golden fixtures for every byte format: a manifest (and its root id), a pack, and a message
//! stream, committed under `tests/golden/` (with the stream of protocol 3, `messages-v3.bin`,
//! which today's encoder still produces for the messages protocol 3 had). Each format is checked both ways: encoding today's
//! fixed inputs gives exactly the committed bytes, and decoding the committed bytes gives the
//! expected values. A change to a byte layout without a version bump therefore fails here.
//!
//! After a deliberate format change (with its version bump), regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p sync-core --test golden` and commit the new files.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use sync_core::delta::{rsync, zstd_ref};
use sync_core::id::{ContentId, ManifestId, NodeId, PackId};
use sync_core::manifest::{Entry, EntryKind, Manifest, SkipReason, Skipped};
use sync_core::pack::format::{FIXED_LEN, FixedHeader, PrefixPart};
use sync_core::pack::{BaseReader, Limits, PackHeader, Plan, decode_pack, read_header};
use sync_core::path::{PodName, VolumePath};
use sync_core::testing::{Blobs, Collect, noise, text};
use sync_core::wire::{ErrorKind, ManifestBody, Message, MessageDecoder, encode_message};

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// With `UPDATE_GOLDEN=1`, writes `bytes` as fixture `name`; otherwise asserts the committed
/// fixture holds exactly `bytes`. Returns the fixture's bytes either way.
fn golden(name: &str, bytes: &[u8]) -> Vec<u8> {
    let path = golden_path(name);
    if updating() {
        std::fs::create_dir_all(path.parent().expect("fixture folder")).expect("create folder");
        std::fs::write(&path, bytes).expect("write fixture");
        // Straight to stderr, past the test harness's capture: a regenerated fixture is news.
        let note = format!("UPDATE_GOLDEN=1: wrote {}\n", path.display());
        let _ = std::io::stderr().write_all(note.as_bytes());
        return bytes.to_vec();
    }
    let committed = committed(name);
    if committed != bytes {
        let at = committed
            .iter()
            .zip(bytes)
            .position(|(a, b)| a != b)
            .unwrap_or(committed.len().min(bytes.len()));
        panic!(
            "{name}: today's encoding differs from the committed fixture at byte {at} \
             ({} bytes committed, {} today). A byte format changed: bump its version and \
             regenerate with UPDATE_GOLDEN=1.",
            committed.len(),
            bytes.len()
        );
    }
    committed
}

fn committed(name: &str) -> Vec<u8> {
    let path = golden_path(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; generate it with UPDATE_GOLDEN=1", path.display()))
}

fn entry(path: &str, kind: EntryKind, mode: u32, mtime: i64) -> Entry {
    Entry {
        path: VolumePath::new(path).unwrap(),
        kind,
        mode,
        mtime,
    }
}

fn file(path: &str, body: &[u8], mode: u32, mtime: i64) -> Entry {
    let kind = EntryKind::File {
        id: ContentId::of(body),
        size: body.len() as u64,
    };
    entry(path, kind, mode, mtime)
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

// ---- manifest ------------------------------------------------------------------------------

/// Files (one executable, one empty, one older than the epoch), nested folders and a symlink.
fn fixed_manifest() -> Manifest {
    Manifest::new(vec![
        dir("bin"),
        file(
            "bin/run.sh",
            b"#!/bin/sh\nexec ./main\n",
            0o755,
            1_700_000_123,
        ),
        dir("data"),
        dir("data/raw"),
        file(
            "data/raw/frame-0001.bin",
            &noise(300, 1),
            0o644,
            1_700_000_456,
        ),
        file("data/empty", b"", 0o600, 1_700_000_789),
        file("README.md", b"# payload\n", 0o644, -86_400),
        link("latest", "data/raw/frame-0001.bin"),
    ])
    .unwrap()
}

#[test]
fn manifest_encoding_and_root_are_unchanged() {
    let m = fixed_manifest();
    let bytes = golden("manifest.bin", &m.encode());
    let root_hex = golden(
        "manifest.root",
        format!("{}\n", m.root().to_hex()).as_bytes(),
    );

    let decoded = Manifest::decode(&bytes).expect("committed manifest decodes");
    assert_eq!(decoded, m);
    let root = std::str::from_utf8(&root_hex).unwrap().trim();
    assert_eq!(
        decoded.root(),
        ManifestId::from_hex(root).expect("hex root")
    );
    assert_eq!(decoded.len(), 8);
    let exec = decoded
        .get(&VolumePath::new("bin/run.sh").unwrap())
        .unwrap();
    assert_eq!((exec.mode, exec.mtime), (0o755, 1_700_000_123));
}

// ---- pack ----------------------------------------------------------------------------------

struct PackCase {
    base: Manifest,
    target: Manifest,
    /// What the receiver holds: the base content.
    receiver: Blobs,
    /// What the sender holds: the target content and every base but `data.bin`, so that one
    /// object travels as an rsync delta.
    sender: Blobs,
    /// Content of each new object, by what the pack must carry.
    new_content: Vec<Vec<u8>>,
}

/// Every kind of change and encoding: a prefixed edit (main.py), a literal new file, an rsync
/// delta (data.bin, whose old bytes the sender lacks), a rename (no object), a removal, a new
/// folder, a changed symlink and a mode change.
fn pack_case() -> PackCase {
    let main1 = text(80, 1);
    let mut main2 = main1.clone();
    main2.splice(900..900, b"# a new line\n".iter().copied());
    // Text, so that its changed block compresses against the unchanged ones around it (a
    // prefix range).
    let data1 = text(400, 7);
    let mut data2 = data1.clone();
    data2[3000..3010].copy_from_slice(b"0123456789");
    let notes = text(20, 5);
    let run = b"#!/bin/sh\nexec python3 main.py\n".to_vec();
    let old = text(10, 9);
    let t = 1_700_000_000;
    let base = Manifest::new(vec![
        dir("app"),
        file("app/main.py", &main1, 0o644, t),
        file("app/run.sh", &run, 0o644, t),
        file("data.bin", &data1, 0o644, t),
        file("old.txt", &old, 0o644, t),
        link("latest", "app/main.py"),
    ])
    .unwrap();
    let target = Manifest::new(vec![
        dir("app"),
        file("app/main.py", &main2, 0o644, t + 60),
        file("app/run.sh", &run, 0o755, t),
        file("data.bin", &data2, 0o644, t + 60),
        dir("docs"),
        file("docs/notes.txt", &notes, 0o600, t + 60),
        file("docs/old.txt", &old, 0o644, t),
        link("latest", "docs/notes.txt"),
    ])
    .unwrap();
    PackCase {
        base,
        target,
        receiver: Blobs::of(&[&main1, &run, &data1, &old]),
        sender: Blobs::of(&[&main1, &main2, &run, &data2, &notes, &old]),
        new_content: vec![main2, data2, notes],
    }
}

fn encode_pack(case: &PackCase) -> Vec<u8> {
    let plan = Plan::new(&case.base, &case.target, &|id| {
        case.sender.0.contains_key(id)
    });
    let mut sigs = HashMap::new();
    for b in plan.signature_requests() {
        let bytes = case
            .receiver
            .read_base(&case.base.entries()[b as usize])
            .unwrap();
        sigs.insert(b, rsync::signature(&bytes));
    }
    let mut out = Vec::new();
    plan.encode(
        &case.base,
        &case.sender,
        &sigs,
        &Limits::default(),
        &mut out,
    )
    .unwrap();
    out
}

/// What a pack says, independent of how zstd compressed it: the fixed part but the header
/// length, the header with frame lengths cleared, and each segment's decompressed payload.
fn pack_layout(
    pack: &[u8],
    base: &Manifest,
    receiver: &Blobs,
) -> (FixedHeader, PackHeader, Vec<u8>) {
    let mut r = pack;
    let mut header = read_header(&mut r, base, &Limits::default()).expect("header reads");
    let mut payloads = Vec::new();
    for seg in &header.segments {
        let prefix = receiver.prefix(base, &seg.prefix);
        let (frame, rest) = r.split_at(seg.frame_len as usize);
        r = rest;
        zstd_ref::decoder(frame, &prefix, seg.window_log.into())
            .unwrap()
            .read_to_end(&mut payloads)
            .unwrap();
    }
    for seg in &mut header.segments {
        seg.frame_len = 0;
    }
    let fixed = pack[..FIXED_LEN].try_into().expect("a fixed part");
    let fixed = FixedHeader::decode(fixed, &base.root()).expect("fixed part decodes");
    // The header's length depends on how zstd compressed it.
    (
        FixedHeader {
            header_len: 0,
            ..fixed
        },
        header,
        payloads,
    )
}

/// The pack's bytes are compared exactly only when the zstd library that compresses its header
/// and segments is the one the fixture was made with: zstd promises a stable frame format, not
/// stable compressed bytes across releases, so after a zstd upgrade the exact bytes may differ
/// while the pack still means the same. Then the zstd-independent layout (fixed part, header
/// fields but frame lengths, decompressed payloads) is compared instead, and the committed pack
/// must still decode (which is what compatibility is about).
#[test]
fn pack_encoding_is_unchanged() {
    let case = pack_case();
    let pack = encode_pack(&case);
    // Same inputs, same bytes: the encoder (zstd with one worker thread) is deterministic.
    assert_eq!(
        encode_pack(&case),
        pack,
        "pack encoding is not deterministic"
    );

    let zstd_now = format!("{}\n", zstd::zstd_safe::version_number());
    if updating() {
        golden("pack.bin", &pack);
        golden("pack.zstd-version", zstd_now.as_bytes());
        return;
    }
    let zstd_then = String::from_utf8(committed("pack.zstd-version")).unwrap();
    if zstd_then == zstd_now {
        golden("pack.bin", &pack);
    } else {
        eprintln!(
            "zstd is {} now, the fixture was made with {}: comparing the layout, not the bytes",
            zstd_now.trim(),
            zstd_then.trim()
        );
        let ours = pack_layout(&pack, &case.base, &case.receiver);
        let theirs = pack_layout(&committed("pack.bin"), &case.base, &case.receiver);
        assert_eq!(ours.0, theirs.0, "fixed part of the pack changed");
        assert_eq!(ours.1, theirs.1, "pack header changed");
        assert_eq!(ours.2, theirs.2, "segment payloads changed");
    }
}

#[test]
fn committed_pack_decodes_to_the_target() {
    let case = pack_case();
    let bytes = if updating() {
        encode_pack(&case)
    } else {
        committed("pack.bin")
    };
    let mut sink = Collect::default();
    let d = decode_pack(
        &mut &bytes[..],
        &case.base,
        &case.receiver,
        &mut sink,
        &Limits::default(),
    )
    .expect("committed pack decodes");
    assert_eq!(d.header.base_root, case.base.root());
    assert_eq!(d.header.target_root, case.target.root());
    assert_eq!(d.target, case.target);
    // Three objects: main.py against its old bytes, data.bin by rsync, notes.txt literal; the
    // renamed old.txt and the mode change of run.sh carry no content.
    assert_eq!(d.header.objects.len(), 3);
    let mut got: Vec<Vec<u8>> = (0..3).map(|i| sink.0[&i].clone()).collect();
    let mut want = case.new_content.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let rsynced = d
        .header
        .segments
        .iter()
        .flat_map(|s| &s.items)
        .filter(|i| matches!(i.encoding, sync_core::pack::Encoding::Rsync { .. }))
        .count();
    assert_eq!(rsynced, 1, "data.bin travels as an rsync delta");
    let ranges = d
        .header
        .segments
        .iter()
        .flat_map(|s| &s.prefix)
        .filter(|p| matches!(p, PrefixPart::Range { .. }))
        .count();
    assert!(
        ranges > 0,
        "data.bin's delta compresses against its unchanged neighbours"
    );
    // The header in its decoded form matches what the builder plans today.
    let plan = Plan::new(&case.base, &case.target, &|id| {
        case.sender.0.contains_key(id)
    });
    assert_eq!(d.header.changes, plan.changes);
    let sizes: Vec<u64> = plan.objects.iter().map(|o| o.size).collect();
    assert_eq!(d.header.objects, sizes);
}

// ---- messages ------------------------------------------------------------------------------

/// Every variant of the protocol (a new variant belongs here too).
fn fixed_messages() -> Vec<Message> {
    let pod = PodName::new("camera-1").unwrap();
    vec![
        Message::Welcome {
            node: NodeId([0x11; 16]),
            limits: Limits::default(),
            software: "orbit-sync 0.1.0".into(),
        },
        Message::ManifestRequest {
            pod: pod.clone(),
            known: Some(ManifestId([0x22; 32])),
        },
        Message::ManifestReply {
            pod: pod.clone(),
            root: ManifestId([0x33; 32]),
            body: ManifestBody::Delta {
                from: ManifestId([0x22; 32]),
                blob: vec![1, 2, 3, 4, 5],
            },
        },
        Message::SignatureRequest {
            pod: pod.clone(),
            base_root: ManifestId([0x33; 32]),
            entries: vec![0, 127, 128, 70_000],
        },
        Message::Signatures {
            blob: vec![9, 8, 7],
        },
        Message::PackOffer {
            pod,
            pack: PackId([0x44; 32]),
            len: 1 << 33,
            base_root: ManifestId([0x33; 32]),
            target_root: ManifestId([0x55; 32]),
            scope: Some(VolumePath::new("in/images").unwrap()),
        },
        Message::PackAccept {
            pack: PackId([0x44; 32]),
            offset: 262_144,
        },
        Message::PackData {
            offset: 16_384,
            bytes: vec![0xab; 40],
        },
        Message::PackAck { offset: 262_144 },
        Message::PackApplied {
            pack: PackId([0x44; 32]),
            root: ManifestId([0x55; 32]),
        },
        Message::Error {
            kind: ErrorKind::Conflict,
            message: "base changed onboard".into(),
        },
        Message::KeepAlive,
        Message::Bye,
        Message::PackCancel {
            pack: PackId([0x66; 32]),
        },
        Message::Error {
            kind: ErrorKind::Superseded,
            message: "taken over".into(),
        },
        Message::PullRequest {
            pod: PodName::new("camera-1").unwrap(),
            filter: vec!["out/**".into(), "*.csv".into()],
            delete: true,
            base_root: ManifestId([0x77; 32]),
            base: vec![0x28, 0xb5, 0x2f, 0xfd],
            resume: Some(PackId([0x88; 32])),
        },
        Message::PullOffer {
            pack: PackId([0x88; 32]),
            len: 70_000,
            base_root: ManifestId([0x77; 32]),
            target_root: ManifestId([0x99; 32]),
            more: true,
        },
        Message::PullSame {
            root: ManifestId([0x99; 32]),
        },
        Message::PullRange {
            pack: PackId([0x88; 32]),
            offset: 65_536,
            len: 4_464,
        },
        Message::PullDone {
            pack: PackId([0x88; 32]),
        },
        // Protocol 4.
        Message::Skipped {
            entries: vec![
                Skipped::new(&b"out/caf\xe9.csv"[..], SkipReason::NotUtf8),
                Skipped::new(
                    "frames/huge.img",
                    SkipReason::TooLarge {
                        size: 5 << 30,
                        cap: 128 << 20,
                    },
                ),
                Skipped::new("live/state.txt", SkipReason::Changing { listed: false }),
                Skipped::new(
                    "secret.bin",
                    SkipReason::Unreadable {
                        error: "Permission denied (os error 13)".into(),
                    },
                ),
            ],
            more: 3,
        },
    ]
}

/// How many of [`fixed_messages`] protocol 3 had: protocol 4 only added `Skipped`.
const PROTOCOL_3_MESSAGES: usize = 20;

#[test]
fn message_stream_is_unchanged() {
    let msgs = fixed_messages();
    let stream: Vec<u8> = msgs.iter().flat_map(encode_message).collect();
    let bytes = golden("messages.bin", &stream);

    let mut dec = MessageDecoder::default();
    dec.push(&bytes);
    let mut decoded = Vec::new();
    while let Some(m) = dec.next_message().expect("committed stream decodes") {
        decoded.push(m);
    }
    assert_eq!(decoded, msgs);
}

/// Protocol 4 added a message and changed none: the messages protocol 3 had encode exactly as
/// its fixture (committed with protocol 3) has them.
#[test]
fn protocol_3_messages_encode_as_before() {
    let msgs = fixed_messages();
    let stream: Vec<u8> = msgs[..PROTOCOL_3_MESSAGES]
        .iter()
        .flat_map(encode_message)
        .collect();
    assert_eq!(stream, committed("messages-v3.bin"));
}
