//! Whole pushes through a real onboard service over TCP, and pack encoding alone.
//!
//! - `unchanged_push/5000_files`: the cost of finding out there is nothing to send (scan through
//!   the stat cache, connect, handshake, manifest exchange, goodbye). Target: under 0.5 s, and at
//!   most 1 KiB on the wire.
//! - `small_edit_push/2MB_file_of_200`: a 100-byte edit inside a 2 MB file, pushed.
//! - `pack_encode/16MB_1pct_scattered`: encoding a 16 MB file against its base (zstd reference
//!   prefix) after 1% of its bytes changed in scattered patches.
//!
//! Wire bytes of each push scenario are printed once in set-up (stderr).

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sync_benches::{EPOCH, Pushed, Rig, generate_tree, scattered_edit, write_file};
use sync_core::id::ContentId;
use sync_core::manifest::{Entry, EntryKind, Manifest};
use sync_core::pack::build::BaseChoice;
use sync_core::pack::{Effort, Limits, Plan};
use sync_core::path::VolumePath;
use sync_core::testing::{Blobs, random_bytes};

const MB: usize = 1 << 20;
/// The budget for a push that finds nothing to send.
const UNCHANGED_WIRE_BUDGET: u64 = 1024;

/// A daemon whose pod volume already holds a tree equal to a local one.
struct Synced {
    rig: Rig,
    tree: tempfile::TempDir,
}

fn unchanged_setup(files: usize) -> Synced {
    let rig = Rig::start();
    let tree = tempfile::tempdir().expect("temp dir");
    let bytes = generate_tree(tree.path(), files, 1);
    let started = Instant::now();
    let first = rig.push(tree.path(), "bench");
    assert!(!first.report.up_to_date);
    assert_eq!(first.report.changes.added, files as u64);
    eprintln!(
        "unchanged_push: set-up: first push of {files} files ({bytes} B) took {:.1} s, wire {} B",
        started.elapsed().as_secs_f64(),
        first.wire_total()
    );
    // The volume's files are scanned for the first time by the next push; after it both stat
    // caches vouch for every file.
    rig.push(tree.path(), "bench");
    let p = rig.push(tree.path(), "bench");
    assert!(p.report.up_to_date, "{:?}", p.report);
    assert_eq!(p.scan.files, files as u64);
    assert_eq!(
        p.scan.hashed_files, 0,
        "the stat cache should vouch for every file"
    );
    eprintln!(
        "unchanged_push/{files}_files: wire {} B (up {} B, down {} B)",
        p.wire_total(),
        p.sent,
        p.received
    );
    assert!(
        p.wire_total() <= UNCHANGED_WIRE_BUDGET,
        "an unchanged push cost {} B on the wire, over the budget of {UNCHANGED_WIRE_BUDGET} B",
        p.wire_total()
    );
    Synced { rig, tree }
}

fn unchanged_push(c: &mut Criterion) {
    const FILES: usize = 5000;
    // Set-up runs only when the bench does (not when a filter leaves it out).
    let state = OnceCell::new();
    let mut group = c.benchmark_group("unchanged_push");
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(FILES as u64));
    group.bench_function(format!("{FILES}_files"), |b| {
        let s = state.get_or_init(|| unchanged_setup(FILES));
        b.iter(|| {
            let p = s.rig.push(s.tree.path(), "bench");
            assert!(p.report.up_to_date);
            p
        })
    });
    group.finish();
}

/// Overwrites `EDIT_BYTES` bytes in place at a spot that moves with `n`, with bytes no earlier
/// edit wrote, so every push has a new version to send.
fn edit_in_place(path: &Path, len: usize, n: u64) {
    const EDIT_BYTES: usize = 100;
    let mut patch = [0u8; EDIT_BYTES];
    StdRng::seed_from_u64(1_000_000 + n).fill_bytes(&mut patch);
    let at = (n as usize * 7919 * EDIT_BYTES) % (len - EDIT_BYTES);
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("opening the big file");
    file.write_all_at(&patch, at as u64).expect("editing");
}

const BIG: usize = 2 * MB;

/// A synced tree with one large file, and how many edits it has had.
struct Editable {
    synced: Synced,
    big: PathBuf,
    edits: Cell<u64>,
}

impl Editable {
    /// Edits the large file again: never a content it had before.
    fn edit(&self) {
        self.edits.set(self.edits.get() + 1);
        edit_in_place(&self.big, BIG, self.edits.get());
    }

    fn push(&self) -> Pushed {
        let p = self.synced.rig.push(self.synced.tree.path(), "bench");
        assert!(!p.report.up_to_date, "an edit was pushed as no change");
        assert_eq!(p.report.changes.changed, 1, "{:?}", p.report);
        p
    }
}

fn small_edit_setup(files: usize) -> Editable {
    let rig = Rig::start();
    let tree = tempfile::tempdir().expect("temp dir");
    generate_tree(tree.path(), files - 1, 2);
    write_file(tree.path(), "data/big.bin", &random_bytes(BIG, 3), EPOCH);
    let big = tree.path().join("data/big.bin");
    let first = rig.push(tree.path(), "bench");
    assert_eq!(first.report.changes.added, files as u64);
    let e = Editable {
        synced: Synced { rig, tree },
        big,
        edits: Cell::new(0),
    };
    e.edit();
    let started = Instant::now();
    let p = e.push();
    eprintln!(
        "small_edit_push: 100 B edit in a 2 MB file: wire {} B (up {} B, down {} B), pack {} B, {:.3} s",
        p.wire_total(),
        p.sent,
        p.received,
        p.report.pack_bytes,
        started.elapsed().as_secs_f64()
    );
    e
}

fn small_edit_push(c: &mut Criterion) {
    const FILES: usize = 200;
    let state = OnceCell::new();
    let mut group = c.benchmark_group("small_edit_push");
    // Each push is about half a second: one push per sample keeps the bench to seconds, where
    // criterion's default (1, 2, …, 10 pushes per sample) would take half a minute.
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function(format!("2MB_file_of_{FILES}"), |b| {
        let s = state.get_or_init(|| small_edit_setup(FILES));
        b.iter_batched(|| s.edit(), |()| s.push(), BatchSize::PerIteration)
    });
    group.finish();
}

/// A manifest of `data/` holding one file.
fn one_file(path: &VolumePath, bytes: &[u8]) -> Manifest {
    let folder = Entry {
        path: path.parent().expect("a file inside a folder"),
        kind: EntryKind::Dir,
        mode: 0o755,
        mtime: 0,
    };
    let file = Entry {
        path: path.clone(),
        kind: EntryKind::File {
            id: ContentId::of(bytes),
            size: bytes.len() as u64,
        },
        mode: 0o644,
        mtime: EPOCH as i64,
    };
    Manifest::new(vec![folder, file]).expect("manifest")
}

fn pack_encode(c: &mut Criterion) {
    const LEN: usize = 16 * MB;
    let base_bytes = random_bytes(LEN, 4);
    let target_bytes = scattered_edit(&base_bytes, 0.01, 100, 5);
    let path = VolumePath::new("data/model.bin").expect("path");
    let base = one_file(&path, &base_bytes);
    let target = one_file(&path, &target_bytes);
    let base_id = ContentId::of(&base_bytes);
    let plan = Plan::new(&base, &target, &|id| *id == base_id);
    assert_eq!(plan.objects.len(), 1);
    assert!(matches!(plan.objects[0].base, BaseChoice::Prefix(_)));
    let provider = Blobs::of(&[&base_bytes, &target_bytes]);
    let limits = Limits::default();
    let signatures = HashMap::new();
    let printed = Cell::new(false);

    let mut group = c.benchmark_group("pack_encode");
    // One encode takes seconds: one per sample, and no warm-up beyond the first.
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Bytes(LEN as u64));
    group.bench_function("16MB_1pct_scattered", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            let stats = plan
                .encode(
                    &base,
                    &provider,
                    &signatures,
                    &limits,
                    &Effort::max(),
                    &mut out,
                )
                .expect("encoding");
            if !printed.replace(true) {
                assert_eq!(stats.prefixed, 1);
                eprintln!(
                    "pack_encode: 16 MB with 1% scattered edit: pack {} B ({:.2}% of the file)",
                    out.len(),
                    out.len() as f64 * 100.0 / LEN as f64,
                );
            }
            black_box(out)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = unchanged_push, small_edit_push, pack_encode
}
criterion_main!(benches);
