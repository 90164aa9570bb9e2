//! Refusals, process level: a real `sync-onboard serve` is given pushes it must refuse (over its
//! size limits, decompression bombs from a hostile client holding the key, a disk that fills).
//! Every test checks the refusal itself (exit code, reason, or the onboard side's `Error`), that
//! nothing in the volumes changed (tree hash before and after), that the staging area holds
//! nothing afterwards, and that the daemon still serves a normal push.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sync_core::delta::zstd_ref;
use sync_core::id::{ContentId, ManifestId, PackId};
use sync_core::link::Link;
use sync_core::manifest::{Entry, EntryKind, Manifest};
use sync_core::pack::format::write_varint;
use sync_core::pack::format::{FIXED_LEN, FixedHeader, HeaderBody};
use sync_core::pack::{Encoding, Item, Limits, Plan, SegmentHead};
use sync_core::path::{PodName, VolumePath};
use sync_core::testing::random_bytes;
use sync_core::wire::{ErrorKind, LinkKey, ManifestBody, Message};
use sync_tests::*;
use tokio::net::TcpStream;

const MB: usize = 1 << 20;
const GB: u64 = 1 << 30;
/// What the daemon may use at its peak, whatever it is sent (it holds a few MB normally).
const MEMORY_CEILING: u64 = 200_000_000;

fn local() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A small tree: text files in folders and a 64 KiB binary.
fn small_tree(root: &Path) {
    write(root, "a/readme.md", "# hello\n");
    write(root, "a/b/notes.txt", "some notes\n".repeat(50));
    write(root, "bin/tool", random_bytes(64 << 10, 7));
}

/// The reason a refused run gave: exactly one line on stderr, nothing on stdout.
#[track_caller]
fn one_line_reason(r: &Run) -> &str {
    let reason = r.stderr.trim();
    assert_eq!(reason.lines().count(), 1, "not a one-line reason: {r:#?}");
    assert!(reason.starts_with("sync-ground: "), "{r:#?}");
    assert!(
        r.stdout.trim().is_empty(),
        "a refused push printed a report: {r:#?}"
    );
    reason
}

/// The volumes are exactly as `before`, the staging area is empty and the daemon is running.
#[track_caller]
fn assert_nothing_changed(ob: &mut Onboard, before: &[String], what: &str) {
    assert_eq!(
        tree_hash(&ob.volumes()),
        before,
        "{what} changed the volumes; log:\n{}",
        ob.log()
    );
    assert_eq!(
        ob.staging_entries(),
        Vec::<String>::new(),
        "{what} left files in the staging area"
    );
    assert!(
        ob.is_running(),
        "{what} stopped the daemon; log:\n{}",
        ob.log()
    );
}

/// A push of `src` from a ground that has not seen the refusal works and gives the local tree:
/// what is checked is the daemon alone (the refused ground's own queue is checked by
/// `the_ground_whose_push_was_refused_can_push_again`).
#[track_caller]
fn fresh_push(ob: &Onboard, src: &Path, pod: &str) {
    let gstate = local();
    let folder = src.to_str().unwrap();
    ob.ground_with(
        &ob.key(),
        gstate.path(),
        &["push", folder, "--pod", pod, "--json"],
    )
    .ok();
    assert_same_tree(&ob.volume_path(pod), src);
}

/// After a refusal the daemon still serves a normal push (of `src`, edited).
#[track_caller]
fn still_serves(ob: &Onboard, src: &Path, pod: &str) {
    write(src, "a/readme.md", "# hello again, after the refusal\n");
    fresh_push(ob, src, pod);
}

#[test]
fn a_file_over_max_object_bytes_is_refused_naming_the_limit_and_changes_nothing() {
    let mut ob = Onboard::start_in(local(), &["--max-object-bytes", "1048576"]);
    let src = local();
    small_tree(src.path());
    ob.push(src.path(), "p", &[]);
    let before = tree_hash(&ob.volumes());

    write(src.path(), "big.bin", random_bytes(2 * MB, 2));
    write(src.path(), "a/readme.md", "# must not arrive either\n");
    let r = ob.ground(&["push", src.path().to_str().unwrap(), "--pod", "p", "--json"]);
    assert_eq!(
        r.code, 3,
        "refused (by the ground, from the node's limits), no retry: {r:#?}"
    );
    let reason = one_line_reason(&r);
    assert!(
        reason.contains("big.bin is 2.1 MB, over the node's limit of 1.0 MB per file"),
        "{reason}"
    );
    assert_nothing_changed(&mut ob, &before, "an oversized object");

    // A file of exactly the limit is accepted.
    write(src.path(), "big.bin", random_bytes(MB, 3));
    fresh_push(&ob, src.path(), "p");
    still_serves(&ob, src.path(), "p");
}

#[test]
fn a_push_over_max_total_bytes_is_refused_naming_the_limit_and_changes_nothing() {
    let mut ob = Onboard::start_in(local(), &["--max-total-bytes", "1048576"]);
    let src = local();
    small_tree(src.path());
    ob.push(src.path(), "p", &[]);
    let before = tree_hash(&ob.volumes());

    // Each file is small; together they are over the limit.
    write(src.path(), "in/one.bin", random_bytes(700 << 10, 4));
    write(src.path(), "in/two.bin", random_bytes(700 << 10, 5));
    let r = ob.ground(&["push", src.path().to_str().unwrap(), "--pod", "p", "--json"]);
    assert_eq!(
        r.code, 3,
        "refused (by the ground, from the node's limits), no retry: {r:#?}"
    );
    let reason = one_line_reason(&r);
    assert!(
        reason.contains("the new content totals 1.4 MB, over the node's limit of 1.0 MB per push"),
        "{reason}"
    );
    assert_nothing_changed(&mut ob, &before, "a pack over the total");

    // Half of it fits.
    fs::remove_file(src.path().join("in/two.bin")).unwrap();
    fresh_push(&ob, src.path(), "p");
    still_serves(&ob, src.path(), "p");
}

#[test]
fn the_ground_whose_push_was_refused_can_push_again() {
    let ob = Onboard::start_in(local(), &["--max-object-bytes", "1048576"]);
    let src = local();
    small_tree(src.path());
    ob.push(src.path(), "p", &[]);
    write(src.path(), "big.bin", random_bytes(2 * MB, 2));
    let folder = src.path().to_str().unwrap();
    let r = ob.ground(&["push", folder, "--pod", "p", "--json"]);
    assert_eq!(r.code, 3, "{r:#?}");

    // The operator makes the file fit and pushes again from the same ground.
    write(src.path(), "big.bin", random_bytes(MB, 3));
    let r = ob.ground(&["push", folder, "--pod", "p", "--json"]);
    assert_eq!(r.code, 0, "the refused pack blocks the pod: {r:#?}");
    assert_same_tree(&ob.volume_path("p"), src.path());
}

// ---------------------------------------------------------------------------------------------
// A hostile client: it holds the key, so the link accepts it, and sends packs of its own making.

/// What the onboard side made of a hostile pack.
#[derive(Debug)]
enum Answer {
    Error {
        kind: ErrorKind,
        message: String,
    },
    Applied,
    /// The onboard side closed the link (or it failed) instead of answering.
    Closed,
}

/// A pack for the base manifest, and the target root it claims.
struct HostilePack {
    bytes: Vec<u8>,
    target_root: ManifestId,
}

/// Connects with the onboard side's key, learns the pod's manifest as a ground would, and offers
/// and sends the pack `make` builds against it.
fn send_hostile_pack(
    ob: &Onboard,
    pod: &str,
    make: impl FnOnce(&Manifest) -> HostilePack,
) -> Answer {
    let key = LinkKey::from_hex(&fs::read_to_string(ob.key()).unwrap()).unwrap();
    let pod = PodName::new(pod).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stream = TcpStream::connect(&ob.addr).await.unwrap();
        let mut link = Link::connect(stream, &key, Duration::from_secs(120))
            .await
            .expect("the key is right: the handshake passes");
        match next(&mut link).await {
            Some(Message::Welcome { .. }) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        link.send(&Message::ManifestRequest {
            pod: pod.clone(),
            known: None,
        })
        .await
        .unwrap();
        let base = match next(&mut link).await {
            Some(Message::ManifestReply {
                root,
                body: ManifestBody::Full { blob },
                ..
            }) => {
                let m = Manifest::decode(&zstd::decode_all(&blob[..]).unwrap()).unwrap();
                assert_eq!(m.root(), root);
                m
            }
            other => panic!("expected a full manifest, got {other:?}"),
        };
        let HostilePack { bytes, target_root } = make(&base);
        let pack = PackId(*blake3::hash(&bytes).as_bytes());
        link.send(&Message::PackOffer {
            pod,
            pack,
            len: Some(bytes.len() as u64),
            base_root: base.root(),
            target_root,
            scope: None,
        })
        .await
        .unwrap();
        match next(&mut link).await {
            Some(Message::PackAccept { offset: 0, .. }) => {}
            Some(Message::Error { kind, message }) => return Answer::Error { kind, message },
            Some(other) => panic!("expected PackAccept, got {other:?}"),
            None => return Answer::Closed,
        }
        let mut offset = 0u64;
        for chunk in bytes.chunks(60 << 10) {
            let data = Message::PackData {
                offset,
                bytes: chunk.to_vec(),
            };
            if let Err(e) = link.send(&data).await {
                eprintln!("the onboard side closed the link: {e}");
                return Answer::Closed;
            }
            offset += chunk.len() as u64;
        }
        loop {
            match next(&mut link).await {
                Some(Message::PackAck { .. }) => continue,
                Some(Message::Error { kind, message }) => return Answer::Error { kind, message },
                Some(Message::PackApplied { .. }) => return Answer::Applied,
                Some(other) => panic!("unexpected answer {other:?}"),
                None => return Answer::Closed,
            }
        }
    })
}

/// The next message that is not a keep-alive; `None` when the link closed or failed.
async fn next(link: &mut Link<TcpStream>) -> Option<Message> {
    loop {
        match link.recv().await {
            Ok(Message::KeepAlive) => continue,
            Ok(m) => return Some(m),
            Err(e) => {
                eprintln!("the onboard side closed the link: {e}");
                return None;
            }
        }
    }
}

/// Magic, version, base root, no header dictionary, then the header frame and the segments.
fn pack_bytes(base: &Manifest, header_frame: &[u8], segments: &[u8]) -> Vec<u8> {
    let fixed = FixedHeader {
        base_root: base.root(),
        dictionary: false,
        header_len: header_frame.len() as u32,
    };
    let mut out = Vec::with_capacity(FIXED_LEN + header_frame.len() + segments.len());
    out.extend_from_slice(&fixed.encode());
    out.extend_from_slice(header_frame);
    out.extend_from_slice(segments);
    out
}

fn header_frame(body: &HeaderBody) -> Vec<u8> {
    let raw = postcard::to_stdvec(body).unwrap();
    let mut frame = Vec::new();
    zstd_ref::compress(&[], &mut &raw[..], raw.len() as u64, &mut frame).unwrap();
    frame
}

/// One zstd frame of `len` zero bytes (it says so in its header), with a window of
/// 2^`window_log`: a few kilobytes that expand to anything.
fn zeros_frame(len: u64, window_log: u32) -> Vec<u8> {
    use zstd::stream::raw::CParameter;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.set_parameter(CParameter::WindowLog(window_log))
        .unwrap();
    enc.set_parameter(CParameter::ContentSizeFlag(true))
        .unwrap();
    enc.set_pledged_src_size(Some(len)).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(len), &mut enc).unwrap();
    enc.finish().unwrap()
}

/// The honest plan of adding one file of `size` bytes with content `id` at `path`.
fn plan_adding(base: &Manifest, path: &str, id: ContentId, size: u64) -> Plan {
    let mut entries = base.entries().to_vec();
    entries.push(Entry {
        path: VolumePath::new(path).unwrap(),
        kind: EntryKind::File { id, size },
        mode: 0o644,
        mtime: 1_700_000_000,
    });
    let target = Manifest::new(entries).unwrap();
    let plan = Plan::new(base, &target, &|_| false);
    assert_eq!(plan.objects.len(), 1);
    plan
}

/// A pack whose header is the honest `plan` with one segment carrying its one object as
/// `encoding` in `frame`, which claims window `window_log`.
fn one_object_pack(
    base: &Manifest,
    plan: Plan,
    encoding: Encoding,
    frame: &[u8],
    window_log: u8,
) -> HostilePack {
    let size = plan.objects[0].size;
    let body = HeaderBody {
        target_root: plan.target_root,
        changes: plan.changes,
        objects: vec![size],
    };
    let head = SegmentHead {
        prefix: vec![],
        items: vec![Item {
            object: 0,
            len: size,
            encoding,
        }],
        frame_len: frame.len() as u64,
        window_log,
    }
    .encode()
    .unwrap();
    let mut segments = Vec::new();
    write_varint(head.len() as u64, &mut segments);
    segments.extend_from_slice(&head);
    segments.extend_from_slice(frame);
    segments.push(0); // the end of the pack
    HostilePack {
        bytes: pack_bytes(base, &header_frame(&body), &segments),
        target_root: plan.target_root,
    }
}

/// The onboard side with a pushed tree, for a hostile client to attack.
fn attacked_onboard(extra: &[&str]) -> (Onboard, tempfile::TempDir, Vec<String>) {
    let ob = Onboard::start_in(local(), extra);
    let src = local();
    small_tree(src.path());
    write(src.path(), "big.bin", random_bytes(MB, 9));
    ob.push(src.path(), "p", &[]);
    let before = tree_hash(&ob.volumes());
    (ob, src, before)
}

#[track_caller]
fn assert_memory_bounded(ob: &Onboard, ceiling: u64, what: &str) {
    let peak = ob.peak_memory();
    assert!(
        peak < ceiling,
        "{what}: the daemon's peak memory reached {} MB (ceiling {} MB)",
        peak >> 20,
        ceiling >> 20
    );
}

#[test]
fn a_segment_that_inflates_far_past_its_declared_object_size_is_refused() {
    let (mut ob, src, before) = attacked_onboard(&["--max-object-bytes", "4194304"]);
    // The header declares a 1 MiB object (within the limit) whose id is honest for its first
    // MiB; the segment's frame holds 1 GiB of zeros and says so in its own header.
    let size = MB as u64;
    let frame = zeros_frame(GB, 20);
    assert!(frame.len() < 256 << 10, "bomb of {} bytes", frame.len());
    let answer = send_hostile_pack(&ob, "p", |base| {
        let id = ContentId::of(&vec![0u8; MB]);
        let plan = plan_adding(base, "bomb.bin", id, size);
        one_object_pack(base, plan, Encoding::Literal, &frame, 20)
    });
    match &answer {
        Answer::Error { kind, message } => {
            assert_eq!(*kind, ErrorKind::Refused, "{answer:?}");
            assert!(message.contains("trailing"), "{answer:?}");
        }
        other => panic!("a bomb was not refused: {other:?}"),
    }
    assert_memory_bounded(&ob, MEMORY_CEILING, "a 1 GiB segment");
    assert_nothing_changed(&mut ob, &before, "a segment bomb");
    still_serves(&ob, src.path(), "p");
}

#[test]
fn an_object_declared_over_the_limit_is_refused_before_its_frame_is_read() {
    let (mut ob, src, before) = attacked_onboard(&["--max-object-bytes", "4194304"]);
    let frame = zeros_frame(64 << 20, 20);
    let answer = send_hostile_pack(&ob, "p", |base| {
        let plan = plan_adding(base, "bomb.bin", ContentId::of(b"x"), 64 << 20);
        one_object_pack(base, plan, Encoding::Literal, &frame, 20)
    });
    match &answer {
        Answer::Error { kind, message } => {
            assert_eq!(*kind, ErrorKind::TooLarge, "{answer:?}");
            assert!(
                message.contains("object size of 67108864 is over the limit of 4194304"),
                "{answer:?}"
            );
        }
        other => panic!("an object over the limit was not refused: {other:?}"),
    }
    assert_memory_bounded(&ob, MEMORY_CEILING, "a 64 MiB object over a 4 MiB limit");
    assert_nothing_changed(&mut ob, &before, "an object over the limit");
    still_serves(&ob, src.path(), "p");
}

#[test]
fn a_frame_needing_a_larger_window_than_declared_is_refused() {
    let (mut ob, src, before) = attacked_onboard(&["--max-object-bytes", "4194304"]);
    // Declares window 2^20; the frame asks for 2^30 (1 GiB of decoder memory).
    let size = 2 * MB as u64;
    let frame = zeros_frame(size, 30);
    let answer = send_hostile_pack(&ob, "p", |base| {
        let id = ContentId::of(&vec![0u8; 2 * MB]);
        let plan = plan_adding(base, "bomb.bin", id, size);
        one_object_pack(base, plan, Encoding::Literal, &frame, 20)
    });
    match &answer {
        Answer::Error { message, .. } => {
            assert!(
                message.to_lowercase().contains("memory") || message.contains("window"),
                "{answer:?}"
            );
        }
        other => panic!("a frame over its declared window was not refused: {other:?}"),
    }
    assert_memory_bounded(&ob, MEMORY_CEILING, "a frame asking for a 1 GiB window");
    assert_nothing_changed(&mut ob, &before, "a frame over its window");
    still_serves(&ob, src.path(), "p");
}

#[test]
fn a_segment_frame_that_does_not_decode_is_refused_not_blamed_on_storage() {
    let (mut ob, src, before) = attacked_onboard(&["--max-object-bytes", "4194304"]);
    let size = 2 * MB as u64;
    let id = ContentId::of(&vec![0u8; 2 * MB]);
    for (what, frame) in [
        ("a frame over its declared window", zeros_frame(size, 30)),
        ("a frame of random bytes", random_bytes(4096, 41)),
    ] {
        let answer = send_hostile_pack(&ob, "p", |base| {
            let plan = plan_adding(base, "bomb.bin", id, size);
            one_object_pack(base, plan, Encoding::Literal, &frame, 20)
        });
        match &answer {
            Answer::Error { kind, .. } => {
                assert_eq!(*kind, ErrorKind::Refused, "{what}: {answer:?}");
            }
            other => panic!("{what} was not refused: {other:?}"),
        }
        assert_nothing_changed(&mut ob, &before, what);
    }
    still_serves(&ob, src.path(), "p");
}

#[test]
fn a_header_that_inflates_past_its_cap_is_refused_with_bounded_memory() {
    let (mut ob, src, before) = attacked_onboard(&[]);
    let frame = zeros_frame(GB, 20);
    let answer = send_hostile_pack(&ob, "p", |base| HostilePack {
        bytes: pack_bytes(base, &frame, &[]),
        target_root: base.root(),
    });
    match &answer {
        Answer::Error { kind, message } => {
            assert_eq!(*kind, ErrorKind::TooLarge, "{answer:?}");
            let cap = Limits::default().max_header_bytes;
            assert!(
                message.contains(&format!("header of {} is over the limit of {cap}", cap + 1)),
                "{answer:?}"
            );
        }
        other => panic!("a header bomb was not refused: {other:?}"),
    }
    // The decompressed header is held whole, up to its cap (a quarter of the daemon's memory
    // bound): memory stays bounded by the cap, not by what the frame would expand to.
    let cap = Limits::default().max_header_bytes;
    assert_memory_bounded(&ob, cap + (64 << 20), "a header of 1 GiB");
    assert_nothing_changed(&mut ob, &before, "a header bomb");
    still_serves(&ob, src.path(), "p");
}

#[test]
fn an_rsync_delta_that_inflates_within_the_declared_sizes_is_refused_with_bounded_memory() {
    // Default limits: any object up to 16 GiB. The header declares a 1 GiB object sent as an
    // rsync delta of 1 GiB (both within the limits and the delta-to-object ratio); the frame is
    // a few kilobytes of zstd that expand to 1 GiB of zeros.
    let (mut ob, src, before) = attacked_onboard(&[]);
    let frame = zeros_frame(GB, 20);
    let answer = send_hostile_pack(&ob, "p", |base| {
        let b = base.index_of(&VolumePath::new("big.bin").unwrap()).unwrap() as u32;
        let plan = plan_adding(base, "bomb.bin", ContentId::of(b"never"), GB);
        let encoding = Encoding::Rsync {
            base: b,
            delta_len: GB,
        };
        one_object_pack(base, plan, encoding, &frame, 20)
    });
    assert!(
        matches!(answer, Answer::Error { .. } | Answer::Closed),
        "an rsync bomb was not refused: {answer:?}"
    );
    assert_memory_bounded(&ob, MEMORY_CEILING, "an rsync delta of 1 GiB of zeros");
    assert_nothing_changed(&mut ob, &before, "an rsync bomb");
    still_serves(&ob, src.path(), "p");
}

// ---------------------------------------------------------------------------------------------
// A disk that fills: a small tmpfs under the volumes, the state, or both.

/// Mounts a tmpfs of `bytes` at `dir/sub` (or `dir` itself when `sub` is empty); `None` (after
/// saying why) where this machine does not allow mounting.
fn small_disk(dir: &tempfile::TempDir, sub: &str, bytes: u64) -> Option<SmallDisk> {
    let at = if sub.is_empty() {
        dir.path().to_path_buf()
    } else {
        dir.path().join(sub)
    };
    match SmallDisk::mount(&at, bytes, dir.path()) {
        Ok(d) => Some(d),
        Err(why) => {
            eprintln!(
                "SKIPPED: cannot mount a small tmpfs to fill ({why}); this test needs root or \
                 CAP_SYS_ADMIN"
            );
            None
        }
    }
}

/// `push FOLDER --pod p` with the ground's state in `gstate` (kept off the small disk).
fn push_run(ob: &Onboard, gstate: &Path, folder: &Path) -> Run {
    ob.ground_with(
        &ob.key(),
        gstate,
        &["push", folder.to_str().unwrap(), "--pod", "p", "--json"],
    )
}

#[track_caller]
fn assert_no_space_refusal(r: &Run) {
    assert_eq!(
        r.code, 4,
        "a full disk is a storage failure, retry later: {r:#?}"
    );
    let reason = one_line_reason(r);
    assert!(reason.to_lowercase().contains("no space left"), "{reason}");
}

#[test]
fn a_full_state_disk_refuses_the_upload_and_leaves_the_volume_alone() {
    let dir = local();
    let Some(_disk) = small_disk(&dir, "state", 4 << 20) else {
        return;
    };
    let mut ob = Onboard::start_in(dir, &[]);
    let gstate = local();
    let src = local();
    small_tree(src.path());
    push_run(&ob, gstate.path(), src.path()).ok();
    let before = tree_hash(&ob.volumes());

    // The pack cannot be staged: 6 MiB of random bytes on a 4 MiB disk.
    write(src.path(), "big.bin", random_bytes(6 * MB, 11));
    let r = push_run(&ob, gstate.path(), src.path());
    assert_no_space_refusal(&r);
    assert_eq!(tree_hash(&ob.volumes()), before, "log:\n{}", ob.log());
    assert!(ob.is_running());

    // The daemon comes back after a reboot with the volume as it was.
    ob.restart();
    assert_eq!(tree_hash(&ob.volumes()), before);
}

#[test]
fn a_full_state_disk_frees_its_staging_space_after_a_refused_upload() {
    let dir = local();
    let Some(disk) = small_disk(&dir, "state", 4 << 20) else {
        return;
    };
    let mut ob = Onboard::start_in(dir, &[]);
    let gstate = local();
    let src = local();
    small_tree(src.path());
    push_run(&ob, gstate.path(), src.path()).ok();
    let free_before = disk.free();
    let before = tree_hash(&ob.volumes());

    write(src.path(), "big.bin", random_bytes(6 * MB, 11));
    assert_no_space_refusal(&push_run(&ob, gstate.path(), src.path()));
    assert_nothing_changed(&mut ob, &before, "an upload onto a full disk");
    assert!(
        disk.free() + (256 << 10) >= free_before,
        "the refused upload still holds {} of the disk's bytes",
        free_before.saturating_sub(disk.free())
    );

    // A push that fits works at once.
    write(src.path(), "big.bin", random_bytes(MB, 12));
    fresh_push(&ob, src.path(), "p");
}

#[test]
fn a_full_volume_disk_refuses_the_apply_and_leaves_the_volume_as_it_was() {
    let dir = local();
    let Some(_disk) = small_disk(&dir, "vols", 3 << 20) else {
        return;
    };
    let mut ob = Onboard::start_in(dir, &[]);
    let gstate = local();
    let src = local();
    small_tree(src.path());
    push_run(&ob, gstate.path(), src.path()).ok();
    let before = tree_hash(&ob.volumes());

    // Staging (on the big disk) takes it all; the volume cannot: the first two files fit, the
    // third does not.
    write(src.path(), "new/1.bin", random_bytes(MB, 21));
    write(src.path(), "new/2.bin", random_bytes(MB, 22));
    write(src.path(), "new/3.bin", random_bytes(3 * MB / 2, 23));
    let r = push_run(&ob, gstate.path(), src.path());
    assert_no_space_refusal(&r);
    assert_eq!(tree_hash(&ob.volumes()), before, "log:\n{}", ob.log());
    // The pack is whole and verified on the staging disk, which has room: it stays there for
    // the retry (see the test below).
    assert_eq!(ob.staging_entries().len(), 1, "{:?}", ob.staging_entries());
    assert!(ob.is_running());

    // The daemon restarts (its journal does not hold a changeset it can no longer apply), and
    // a push that fits works.
    ob.restart();
    assert_eq!(tree_hash(&ob.volumes()), before);
    fs::remove_dir_all(src.path().join("new")).unwrap();
    write(src.path(), "new/1.bin", random_bytes(MB, 24));
    fresh_push(&ob, src.path(), "p");
}

/// Regression: after a full volume disk, the retried push re-sent the whole pack while its
/// note said it was all onboard. The staged pack (on a disk with room) now stays, and the retry
/// applies it without sending it again; the note says what the node holds.
#[test]
fn a_pack_held_up_by_a_full_volume_disk_is_applied_without_sending_it_again() {
    let dir = local();
    let Some(_disk) = small_disk(&dir, "vols", 4 << 20) else {
        return;
    };
    let ob = Onboard::start_in(dir, &[]);
    let gstate = local();
    let src = local();
    small_tree(src.path());
    let push = |extra: &[&str]| {
        let mut args = vec!["push", src.path().to_str().unwrap(), "--pod", "p", "--json"];
        args.extend_from_slice(&["--dest", "inputs"]);
        args.extend_from_slice(extra);
        ob.ground_with(&ob.key(), gstate.path(), &args)
    };
    push(&[]).ok();
    // The pod fills its volume, outside the pushed folder.
    write(
        &ob.volume_path("p"),
        "scratch/junk.bin",
        random_bytes(3 * MB, 51),
    );
    write(src.path(), "new/model.bin", random_bytes(3 * MB / 2, 52));
    assert_no_space_refusal(&push(&[]));
    // The pod frees its scratch space; the retry sends next to nothing.
    fs::remove_dir_all(ob.volume_path("p").join("scratch")).unwrap();
    let r = push(&[]).ok().json();
    assert_eq!(r["complete"], true, "{r}");
    let pack = num(&r, "pack_bytes");
    assert_eq!(num(&r, "resumed_from"), pack, "{r}");
    assert!(num(&r, "wire.sent") < 20_000, "sent again: {r}");
    let notes = r["notes"].to_string();
    assert!(notes.contains("already onboard"), "{notes}");
    assert_same_tree(&ob.volume_path("p").join("inputs"), src.path());
    assert_eq!(ob.staging_entries(), Vec::<String>::new());
}

/// Regression: after a full state disk (which drops the partial upload, to give its space
/// back), the retried push's note said "19.9 MB already onboard" and then sent everything
/// again. A note states what the node holds.
#[test]
fn a_note_after_a_full_state_disk_says_what_the_node_still_holds() {
    let dir = local();
    let Some(disk) = small_disk(&dir, "state", 4 << 20) else {
        return;
    };
    let ob = Onboard::start_in(dir, &[]);
    let gstate = local();
    let src = local();
    small_tree(src.path());
    push_run(&ob, gstate.path(), src.path()).ok();
    write(src.path(), "big.bin", random_bytes(6 * MB, 53));
    assert_no_space_refusal(&push_run(&ob, gstate.path(), src.path()));
    disk.resize(32 << 20);
    let r = push_run(&ob, gstate.path(), src.path()).ok().json();
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(num(&r, "resumed_from"), 0, "{r}");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains("0 B of") && notes.contains("no longer holds"),
        "{notes}"
    );
    assert_same_tree(&ob.volume_path("p"), src.path());
}

#[test]
fn a_disk_too_full_to_stage_the_decoded_objects_refuses_the_pack_and_recovers() {
    // Volumes, state and staging on one small disk (as on the satellite): the pack is received
    // whole, but its decoded objects do not fit beside it.
    let dir = local();
    let Some(disk) = small_disk(&dir, "", 8 << 20) else {
        return;
    };
    let mut ob = Onboard::start_in(dir, &[]);
    let gstate = local();
    let src = local();
    small_tree(src.path());
    push_run(&ob, gstate.path(), src.path()).ok();
    let before = tree_hash(&ob.volumes());
    let free = disk.free();

    let big = (free as usize) * 5 / 8;
    write(src.path(), "big.bin", random_bytes(big, 31));
    let r = push_run(&ob, gstate.path(), src.path());
    assert_no_space_refusal(&r);
    assert_nothing_changed(&mut ob, &before, "a pack whose objects do not fit");
    assert!(
        disk.free() + (256 << 10) >= free,
        "the refused pack still holds {} bytes",
        free.saturating_sub(disk.free())
    );

    // A push that fits works, and so does a reboot.
    write(src.path(), "big.bin", random_bytes(big / 3, 32));
    fresh_push(&ob, src.path(), "p");
    ob.restart();
    assert_same_tree(&ob.volume_path("p"), src.path());
    still_serves(&ob, src.path(), "p");
}
