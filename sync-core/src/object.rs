//! The ground's content store: the exact bytes of everything it has sent, by content id, so the
//! next push can encode against what the onboard side holds. Files live at `xx/<id>`; each is
//! written to a temporary name, synced, then renamed, and read back only if its BLAKE3 matches.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::id::ContentId;

#[derive(Clone)]
pub struct ObjectStore {
    dir: PathBuf,
}

/// Writes `bytes` to `tmp`, syncs it and renames it to `dest`: `dest` is either absent or
/// whole, never torn.
pub(crate) fn write_durably(tmp: &Path, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(tmp, dest)
}

impl ObjectStore {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, id: &ContentId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    pub fn contains(&self, id: &ContentId) -> bool {
        *id == ContentId::empty() || self.path(id).is_file()
    }

    /// The bytes of `id`; `None` if absent or damaged (a damaged copy is removed).
    pub fn read(&self, id: &ContentId) -> std::io::Result<Option<Vec<u8>>> {
        if *id == ContentId::empty() {
            return Ok(Some(Vec::new()));
        }
        match fs::read(self.path(id)) {
            Ok(bytes) if ContentId::of(&bytes) == *id => Ok(Some(bytes)),
            Ok(_) => {
                let _ = fs::remove_file(self.path(id));
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores `bytes`, which must hash to `id` (checked by the caller's construction).
    pub fn put(&self, id: &ContentId, bytes: &[u8]) -> std::io::Result<()> {
        if self.contains(id) {
            return Ok(());
        }
        let dest = self.path(id);
        let parent = dest.parent().expect("two levels");
        fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(".tmp-{}-{}", std::process::id(), id.short()));
        write_durably(&tmp, &dest, bytes)
    }

    /// Removes every object not in `keep`; returns how many were removed.
    pub fn retain(&self, keep: &HashSet<ContentId>) -> std::io::Result<usize> {
        let mut removed = 0;
        for shard in fs::read_dir(&self.dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(shard.path())? {
                let f = f?;
                let name = f.file_name();
                let name = name.to_string_lossy();
                match ContentId::from_hex(&name) {
                    Some(id) if keep.contains(&id) => {}
                    _ => {
                        fs::remove_file(f.path())?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_retain() {
        let t = tempfile::tempdir().unwrap();
        let s = ObjectStore::open(t.path()).unwrap();
        let a = ContentId::of(b"a");
        let b = ContentId::of(b"b");
        s.put(&a, b"a").unwrap();
        s.put(&b, b"b").unwrap();
        assert_eq!(s.read(&a).unwrap().unwrap(), b"a");
        assert_eq!(s.retain(&[a].into_iter().collect()).unwrap(), 1);
        assert!(s.contains(&a) && !s.contains(&b));
    }

    #[test]
    fn damaged_object_is_not_served() {
        let t = tempfile::tempdir().unwrap();
        let s = ObjectStore::open(t.path()).unwrap();
        let a = ContentId::of(b"right");
        s.put(&a, b"right").unwrap();
        fs::write(s.path(&a), b"wrong").unwrap();
        assert_eq!(s.read(&a).unwrap(), None);
        assert!(!s.contains(&a));
    }
}
