//! Builds the pack that turns folder A into folder B (the sender holding all of A) and prints
//! where its bytes go.
//! `cargo run --release -p sync-core --features testing --example packstat -- A B`

use std::collections::HashMap;
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sync_core::manifest::{ScanOptions, StatCache, scan_dir};
use sync_core::pack::format::{FIXED_LEN, FixedHeader};
use sync_core::pack::{Effort, Limits, Plan};
use sync_core::testing::{Blobs, PackParts};

fn load(root: &Path, blobs: &mut Blobs) -> sync_core::manifest::Manifest {
    let dir = Dir::open_ambient_dir(root, ambient_authority()).unwrap();
    let (m, _, _) = scan_dir(&dir, &StatCache::new(), &ScanOptions::local()).unwrap();
    for e in m.entries() {
        if let Some(id) = e.file_id() {
            blobs
                .0
                .insert(id, std::fs::read(root.join(e.path.as_str())).unwrap());
        }
    }
    m
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut blobs = Blobs::default();
    let a = load(Path::new(&args[1]), &mut blobs);
    let b = load(Path::new(&args[2]), &mut blobs);
    let plan = Plan::new(&a, &b, &|id| blobs.0.contains_key(id));
    let mut out = Vec::new();
    let stats = plan
        .encode(
            &a,
            &blobs,
            &HashMap::new(),
            &Limits::default(),
            &Effort::max(),
            &mut out,
        )
        .unwrap();
    let parts = PackParts::of(&out, &a);
    let header = &parts.header;
    let header_raw = postcard::to_stdvec(header).unwrap().len();
    let fixed: &[u8; FIXED_LEN] = out[..FIXED_LEN].try_into().unwrap();
    let header_packed = FixedHeader::decode(fixed, &a.root()).unwrap().header_len;
    let segs: u64 = parts.segments.iter().map(|(h, _)| h.frame_len).sum();
    println!("{stats:?}");
    println!(
        "pack {} = fixed {FIXED_LEN} + header {header_packed} (raw {header_raw}, {} changes) + segments {segs} ({} segments)",
        out.len(),
        header.changes.len(),
        parts.segments.len()
    );
}
