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
    /// Objects this process has read whole and found intact: a base is read many times while a
    /// large file is encoded against it, and hashed once.
    verified: std::sync::Arc<std::sync::Mutex<HashSet<ContentId>>>,
    /// Threads writing objects a push read (`ground::keeper`): waited for before the store is
    /// pruned, and before the process lets go of it.
    writers: std::sync::Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
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
            verified: Default::default(),
            writers: Default::default(),
        })
    }

    /// Registers a thread writing objects into this store.
    pub fn writing(&self, writer: std::thread::JoinHandle<()>) {
        self.writers.lock().expect("not poisoned").push(writer);
    }

    /// Waits for every thread writing objects into this store to end.
    pub fn settle(&self) {
        let writers = std::mem::take(&mut *self.writers.lock().expect("not poisoned"));
        for w in writers {
            let _ = w.join();
        }
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

    /// The file holding `id`, after its bytes were read once through a fixed buffer and found
    /// to hash to `id`; `None` if absent or damaged (a damaged copy is removed).
    pub fn open_verified(&self, id: &ContentId) -> std::io::Result<Option<fs::File>> {
        let path = self.path(id);
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if self.verified.lock().expect("not poisoned").contains(id) {
            return Ok(Some(f));
        }
        // The store keeps a sparse file's holes (see `push`'s `Tee`): they are not read.
        let (hasher, _) = crate::sparse::hash(&f, u64::MAX)?;
        if ContentId(*hasher.finalize().as_bytes()) != *id {
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        self.verified.lock().expect("not poisoned").insert(*id);
        Ok(Some(f))
    }

    /// A temporary file to write `id`'s bytes into as they are read elsewhere, or `None` when
    /// the store holds `id` already. [`PendingObject::commit`] puts it in place.
    pub fn pending(&self, id: &ContentId) -> std::io::Result<Option<PendingObject>> {
        if self.contains(id) {
            return Ok(None);
        }
        let dest = self.path(id);
        let parent = dest.parent().expect("two levels");
        fs::create_dir_all(parent)?;
        // Its own name: the encoder may read the same content twice at once (its main read and
        // a look at whether it only grew), and one reader's temporary must not be another's.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = parent.join(format!(".tmp-{}-{seq}-{}", std::process::id(), id.short()));
        Ok(Some(PendingObject {
            file: fs::File::create(&tmp)?,
            tmp,
            dest,
        }))
    }

    /// Removes every object not in `keep`; returns how many were removed.
    pub fn retain(&self, keep: &HashSet<ContentId>) -> std::io::Result<usize> {
        // An object being written is a temporary until it is whole: let the writers end first.
        self.settle();
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

/// An object being written into the store (see [`ObjectStore::pending`]).
pub struct PendingObject {
    pub file: fs::File,
    tmp: PathBuf,
    dest: PathBuf,
}

impl PendingObject {
    /// Renames the bytes written into place; the caller has checked they hash to the id.
    /// Not synced: the store is a cache of bases, each verified before it is used
    /// ([`ObjectStore::open_verified`]), so a crash costs at most a base; and a push's encoder
    /// writes thousands of new files into it (an fsync each was a third of a 56 MB tree's
    /// first push through a 100 Mbit/s link).
    pub fn commit(self) -> std::io::Result<()> {
        fs::rename(&self.tmp, &self.dest)
    }

    /// Drops what was written.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
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

    /// Regression: two pending writes of one object shared a temporary name, so the second
    /// (the encoder's look at whether a file only grew, dropped half read) truncated and then
    /// removed the first one's file, and the object never reached the store: the next push of
    /// that file had no base and went by rsync.
    #[test]
    fn two_pending_writes_of_one_object_do_not_share_a_file() {
        let t = tempfile::tempdir().unwrap();
        let s = ObjectStore::open(t.path()).unwrap();
        let body = b"the whole object".to_vec();
        let id = ContentId::of(&body);
        let mut whole = s.pending(&id).unwrap().unwrap();
        let mut half = s.pending(&id).unwrap().unwrap();
        half.file.write_all(&body[..4]).unwrap();
        whole.file.write_all(&body).unwrap();
        half.discard();
        whole.commit().unwrap();
        assert_eq!(s.read(&id).unwrap().unwrap(), body);
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
