//! Builds the pack that turns folder A into folder B (the sender holding all of A) and prints
//! where its bytes go. `cargo run --release -p sync-core --example packstat -- A B`

use std::collections::HashMap;
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sync_core::id::ContentId;
use sync_core::manifest::{Entry, ScanOptions, StatCache, scan_dir};
use sync_core::pack::{ContentProvider, Limits, PackError, Plan, read_header};
use sync_core::path::VolumePath;

struct Trees(HashMap<ContentId, Vec<u8>>);

impl ContentProvider for Trees {
    fn target(&self, path: &VolumePath, id: &ContentId) -> Result<Vec<u8>, PackError> {
        self.0.get(id).cloned().ok_or(PackError::SourceChanged {
            path: path.to_string(),
        })
    }
    fn base(&self, id: &ContentId) -> Result<Option<Vec<u8>>, PackError> {
        Ok(self.0.get(id).cloned())
    }
}

fn load(root: &Path, blobs: &mut HashMap<ContentId, Vec<u8>>) -> sync_core::manifest::Manifest {
    let dir = Dir::open_ambient_dir(root, ambient_authority()).unwrap();
    let (m, _, _) = scan_dir(&dir, &StatCache::new(), &ScanOptions::local()).unwrap();
    for e in m.entries() {
        if let Some(id) = e.file_id() {
            blobs.insert(id, std::fs::read(root.join(e.path.as_str())).unwrap());
        }
    }
    m
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut blobs = HashMap::new();
    let a = load(Path::new(&args[1]), &mut blobs);
    let b = load(Path::new(&args[2]), &mut blobs);
    let trees = Trees(blobs);
    let plan = Plan::new(&a, &b, &|id| trees.0.contains_key(id));
    let mut out = Vec::new();
    let stats = plan
        .encode(&a, &trees, &HashMap::new(), &Limits::default(), &mut out)
        .unwrap();
    let header = read_header(&mut &out[..], &a, &Limits::default()).unwrap();
    let header_raw = postcard::to_stdvec(&header).unwrap().len();
    let header_packed = u32::from_le_bytes(out[38..42].try_into().unwrap());
    let segs: u64 = header.segments.iter().map(|s| s.frame_len).sum();
    println!("{stats:?}");
    println!(
        "pack {} = fixed 42 + header {header_packed} (raw {header_raw}, {} changes) + segments {segs} ({} segments)",
        out.len(),
        header.changes.len(),
        header.segments.len()
    );
    let _: Option<&Entry> = None;
}
