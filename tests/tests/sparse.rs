//! Sparse files, both ways: a file of holes with a little data in it costs its data on the
//! wire, its data's reads at the sender, and its data's blocks at the receiver, which makes
//! the holes again; its content is the source's, byte for byte.

use std::time::Instant;

use sync_core::testing::random_bytes;
use sync_tests::*;

const MIB: u64 = 1 << 20;

/// `n` stretches of `each` random bytes spread over `len` bytes, away from block boundaries.
fn scattered(len: u64, n: u64, each: usize) -> Vec<(u64, Vec<u8>)> {
    (0..n)
        .map(|i| (i * (len / n) + 12_345, random_bytes(each, i)))
        .collect()
}

fn data_bytes(data: &[(u64, Vec<u8>)]) -> u64 {
    data.iter().map(|(_, d)| d.len() as u64).sum()
}

/// A 5 GiB file holding 4 MiB of data goes as its data (before, the ground read, compressed
/// and stored 5 GiB of zeros, and the node wrote them all out), and the node's copy is as
/// sparse as the source, with the same bytes.
#[test]
fn a_sparse_file_is_pushed_as_its_data_and_lands_sparse() {
    let ob = Onboard::start();
    let src = tempfile::tempdir().unwrap();
    let len = 5 << 30;
    let data = scattered(len, 8, 512 << 10);
    write_sparse(src.path(), "disk.img", len, &data);
    let data = data_bytes(&data);
    let started = Instant::now();
    let r = ob.push(src.path(), "p", &[]);
    let secs = started.elapsed().as_secs_f64();
    let landed = ob.volume_path("p").join("disk.img");
    let (wire, blocks) = (num(&r, "wire.total"), allocated(&landed));
    eprintln!(
        "5 GiB sparse file, {data} bytes of data: pushed in {secs:.1} s, {wire} bytes on the \
         wire, {blocks} bytes allocated onboard, {} in the ground's store",
        allocated_below(&ob.ground_state().join("objects"))
    );
    assert!(
        wire < data + (64 << 10),
        "{wire} bytes on the wire for {data} bytes of data"
    );
    assert_eq!(std::fs::metadata(&landed).unwrap().len(), len);
    assert_same_tree(&ob.volume_path("p"), src.path());
    assert!(
        blocks < data + 8 * MIB,
        "{blocks} bytes allocated onboard for {data} bytes of data"
    );
    // The ground keeps what it sent as the next push's base: sparse too.
    let stored = allocated_below(&ob.ground_state().join("objects"));
    assert!(
        stored < data + 8 * MIB,
        "{stored} bytes in the ground's store for {data} bytes of data"
    );
}

/// A pod's sparse file comes back to the ground as its data, and the copy is as sparse as the
/// pod's file: 5 GiB of holes with 1 MiB of data in them. (Before pulls streamed, a file over
/// the node's `--max-pull-pack`, counted at its full length, was left out of pulls.)
#[test]
fn a_pods_sparse_file_is_pulled_as_its_data_and_lands_sparse() {
    let ob = Onboard::start();
    let vol = ob.volume_path("p1");
    let len = 5 << 30;
    let data = scattered(len, 4, 256 << 10);
    write_sparse(&vol, "out/scratch.img", len, &data);
    let data = data_bytes(&data);
    let copy = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let r = ob.pull(copy.path(), &[]).ok().json();
    let secs = started.elapsed().as_secs_f64();
    let landed = copy.path().join("out/scratch.img");
    let (wire, blocks) = (num(&r, "wire.total"), allocated(&landed));
    eprintln!(
        "5 GiB sparse file, {data} bytes of data: pulled in {secs:.1} s with {wire} bytes on \
         the wire, {blocks} bytes allocated in the copy, daemon VmHWM {} MiB",
        ob.peak_memory() >> 20
    );
    assert!(
        wire < data + (64 << 10),
        "{wire} bytes on the wire for {data} bytes of data"
    );
    assert_eq!(std::fs::metadata(&landed).unwrap().len(), len);
    assert_same_tree(&vol, copy.path());
    assert!(
        blocks < data + 8 * MIB,
        "{blocks} bytes allocated in the copy for {data} bytes of data"
    );
}
