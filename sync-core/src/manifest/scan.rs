//! Scanning a real folder into a [`Manifest`], through a directory handle: every open is relative
//! to the folder and never follows a symlink, so a pod that swaps a folder for a link while its
//! volume is being scanned cannot make the scan read outside the volume.
//!
//! A stat cache keyed by path remembers (size, mtime, ctime, inode) → content id, so an unchanged
//! tree is listed without reading a byte of file content.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::time::{SystemTime, UNIX_EPOCH};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, MetadataExt, OpenOptions};

use super::skipped::{SkipReason, Skipped};
use super::{Entry, EntryKind, MODE_MASK, Manifest, ManifestError};
use crate::id::ContentId;
use crate::path::{PathError, TEMP_PREFIX, VolumePath, check_symlink_target, name_from_os};

/// A file whose mtime is this close to the moment it was hashed may still be written within the
/// same timestamp tick; such a file is not cached, so the next scan hashes it again ("racy clean").
const RACY_NS: i64 = 2_000_000_000;
/// A file that keeps changing while it is hashed is retried this many times, then reported.
const HASH_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// an I/O failure on one path
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// a name the engine cannot carry
    #[error(transparent)]
    Path(#[from] PathError),
    /// a device, socket or FIFO where refusing is asked for
    #[error("{path}: {kind} files cannot be synced")]
    Special { path: String, kind: &'static str },
    /// a file that kept changing while it was read
    #[error("{path}: changed while it was being read ({HASH_ATTEMPTS} attempts); try again")]
    Unstable { path: String },
    /// the result broke a manifest rule (cannot happen for a real folder, but is checked)
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// What to do with devices, sockets and FIFOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialFiles {
    /// A user pushing a folder should hear about them.
    Refuse,
    /// A pod may leave them in its volume; they are simply not synced.
    Skip,
}

#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub special: SpecialFiles,
    /// Refuse symlinks whose target leaves the tree (the ground's rule for what it pushes).
    pub refuse_escaping_symlinks: bool,
    /// Skip entries named with [`TEMP_PREFIX`] (the onboard side's own in-flight files) instead of
    /// refusing them.
    pub skip_engine_temp: bool,
    /// Leave out, and report in [`ScanStats::left_out`], what cannot be synced (a name that is
    /// not UTF-8, a path over the limit, a file that cannot be read or never stops changing)
    /// instead of failing the scan: a pod must not stop its own sync with one bad entry.
    pub leave_out_unsyncable: bool,
}

impl ScanOptions {
    /// For a folder the operator pushes: anything odd is an error the operator should see.
    pub fn local() -> Self {
        Self {
            special: SpecialFiles::Refuse,
            refuse_escaping_symlinks: true,
            skip_engine_temp: false,
            leave_out_unsyncable: false,
        }
    }

    /// For a tree that mirrors a pod's volume (a pull's copy on the ground): links may point
    /// anywhere and special files are not synced, but an entry that cannot be read is an error
    /// its user should see (a pull must not plan around a file it cannot see).
    pub fn volume() -> Self {
        Self {
            special: SpecialFiles::Skip,
            refuse_escaping_symlinks: false,
            skip_engine_temp: true,
            leave_out_unsyncable: false,
        }
    }

    /// For a pod's volume, onboard: the pod may keep anything; what cannot be synced is left
    /// out and reported, and the rest is listed.
    pub fn pod() -> Self {
        Self {
            leave_out_unsyncable: true,
            ..Self::volume()
        }
    }
}

/// What the cache remembers for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub id: ContentId,
}

/// The stat cache of one scanned tree, keyed by relative path.
pub type StatCache = HashMap<String, CachedStat>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Files whose content was read because the cache could not vouch for them.
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    /// Paths left out (special files, engine temporaries).
    pub skipped: Vec<String>,
    /// Entries a pod made that cannot be synced, with the reason, to report to the ground
    /// (only with [`ScanOptions::leave_out_unsyncable`]).
    pub left_out: Vec<Skipped>,
}

/// Scans everything below `root`. Returns the manifest, the new stat cache (only entries that
/// may be trusted next time) and counters.
pub fn scan_dir(
    root: &Dir,
    cache: &StatCache,
    opts: &ScanOptions,
) -> Result<(Manifest, StatCache, ScanStats), ScanError> {
    let mut scan = Scan {
        opts,
        old: cache,
        new: StatCache::new(),
        stats: ScanStats::default(),
        entries: Vec::new(),
        now_ns: now_ns(),
    };
    scan.walk(root, None)?;
    let manifest = Manifest::new(scan.entries)?;
    Ok((manifest, scan.new, scan.stats))
}

struct Scan<'a> {
    opts: &'a ScanOptions,
    old: &'a StatCache,
    new: StatCache,
    stats: ScanStats,
    entries: Vec<Entry>,
    now_ns: i64,
}

fn io_err(path: &str) -> impl FnOnce(std::io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: if path.is_empty() {
            ".".into()
        } else {
            path.to_string()
        },
        source,
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Scan<'_> {
    fn walk(&mut self, dir: &Dir, prefix: Option<&VolumePath>) -> Result<(), ScanError> {
        let shown = prefix.map(|p| p.as_str()).unwrap_or("");
        for item in dir.entries().map_err(io_err(shown))? {
            let item = item.map_err(io_err(shown))?;
            let os_name = item.file_name();
            let name = match name_from_os(&os_name) {
                Ok(name) => name,
                Err(_) if self.opts.leave_out_unsyncable => {
                    let raw = join_raw(shown, os_name.as_bytes());
                    self.leave_out(raw, SkipReason::NotUtf8);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if self.opts.skip_engine_temp && name.starts_with(TEMP_PREFIX) {
                self.stats.skipped.push(join_shown(shown, name));
                continue;
            }
            let path = match prefix {
                Some(p) => p.join(name),
                None => VolumePath::new(name),
            };
            let path = match path {
                Ok(path) => path,
                Err(e) if self.opts.leave_out_unsyncable => {
                    let reason = match e {
                        PathError::PathTooLong { len } | PathError::NameTooLong { len } => {
                            SkipReason::PathTooLong { len: len as u64 }
                        }
                        other => SkipReason::BadName {
                            error: other.to_string(),
                        },
                    };
                    self.leave_out(join_raw(shown, name.as_bytes()), reason);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let listed = self.entries.len();
            match self.entry(dir, name, &path) {
                Ok(()) => {}
                Err(e) if self.opts.leave_out_unsyncable => {
                    // Whatever of it was listed goes: a folder is listed whole or not at all.
                    self.entries.truncate(listed);
                    if let Some(reason) = unsyncable(e) {
                        self.leave_out(path.as_str().as_bytes().to_vec(), reason);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Lists one entry of `dir` (a folder with everything in it).
    fn entry(&mut self, dir: &Dir, name: &str, path: &VolumePath) -> Result<(), ScanError> {
        let meta = dir.symlink_metadata(name).map_err(io_err(path.as_str()))?;
        let ft = meta.file_type();
        let mode = meta.mode() & MODE_MASK;
        if ft.is_dir() {
            let sub = dir.open_dir_nofollow(name).map_err(io_err(path.as_str()))?;
            self.stats.dirs += 1;
            self.entries.push(Entry {
                path: path.clone(),
                kind: EntryKind::Dir,
                mode,
                mtime: 0,
            });
            self.walk(&sub, Some(path))?;
        } else if ft.is_symlink() {
            let target = dir
                .read_link_contents(name)
                .map_err(io_err(path.as_str()))?;
            let target = name_from_os(target.as_os_str())?.to_string();
            if self.opts.refuse_escaping_symlinks {
                check_symlink_target(path, &target)?;
            }
            self.stats.symlinks += 1;
            self.entries.push(Entry {
                path: path.clone(),
                kind: EntryKind::Symlink { target },
                mode: 0o777,
                mtime: 0,
            });
        } else if ft.is_file() {
            let (stat, mtime) = match self.file_stat(dir, name, path, &meta) {
                Ok(stat) => (stat, meta.mtime()),
                // A file a pod never stops writing: the last version read whole, if there was
                // one, else nothing; reported either way. It must not fail the whole scan.
                Err(ScanError::Unstable { .. }) if self.opts.leave_out_unsyncable => {
                    let last = self.old.get(path.as_str()).copied();
                    let reason = SkipReason::Changing {
                        listed: last.is_some(),
                    };
                    self.leave_out(path.as_str().as_bytes().to_vec(), reason);
                    let Some(last) = last else { return Ok(()) };
                    // Kept for the next scan, which reads the file again (its stat differs).
                    self.new.insert(path.to_string(), last);
                    (last, last.mtime_ns.div_euclid(1_000_000_000))
                }
                Err(e) => return Err(e),
            };
            self.stats.files += 1;
            self.entries.push(Entry {
                path: path.clone(),
                kind: EntryKind::File {
                    id: stat.id,
                    size: stat.size,
                },
                mode,
                mtime,
            });
        } else {
            let kind = special_kind(&ft);
            match self.opts.special {
                SpecialFiles::Skip => self.stats.skipped.push(path.to_string()),
                SpecialFiles::Refuse => {
                    return Err(ScanError::Special {
                        path: path.to_string(),
                        kind,
                    });
                }
            }
        }
        Ok(())
    }

    fn leave_out(&mut self, path: Vec<u8>, reason: SkipReason) {
        self.stats.left_out.push(Skipped::new(path, reason));
    }

    fn file_stat(
        &mut self,
        dir: &Dir,
        name: &str,
        path: &VolumePath,
        meta: &cap_std::fs::Metadata,
    ) -> Result<CachedStat, ScanError> {
        let seen = stat_of(meta, ContentId::empty());
        if let Some(cached) = self.old.get(path.as_str())
            && same_stat(cached, &seen)
        {
            self.new.insert(path.to_string(), *cached);
            return Ok(*cached);
        }
        let stat = hash_stable(dir, name, path)?;
        self.stats.hashed_files += 1;
        self.stats.hashed_bytes += stat.size;
        if self.now_ns - stat.mtime_ns > RACY_NS {
            self.new.insert(path.to_string(), stat);
        }
        Ok(stat)
    }
}

/// Why an entry that failed to scan is left out; `None` when it simply vanished (a pod removed
/// it while the scan ran: it is not there to sync).
fn unsyncable(e: ScanError) -> Option<SkipReason> {
    match e {
        ScanError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => None,
        ScanError::Io { source, .. } => Some(SkipReason::Unreadable {
            error: source.to_string(),
        }),
        ScanError::Path(PathError::NotUtf8(_)) => Some(SkipReason::TargetNotUtf8),
        ScanError::Unstable { .. } => Some(SkipReason::Changing { listed: false }),
        other => Some(SkipReason::BadName {
            error: other.to_string(),
        }),
    }
}

/// `prefix/name` as the pod's bytes.
fn join_raw(prefix: &str, name: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        raw.extend_from_slice(prefix.as_bytes());
        raw.push(b'/');
    }
    raw.extend_from_slice(name);
    raw
}

fn join_shown(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

fn special_kind(ft: &cap_std::fs::FileType) -> &'static str {
    use cap_std::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "special"
    }
}

fn stat_of(meta: &cap_std::fs::Metadata, id: ContentId) -> CachedStat {
    CachedStat {
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        ino: meta.ino(),
        id,
    }
}

fn same_stat(a: &CachedStat, b: &CachedStat) -> bool {
    a.size == b.size && a.mtime_ns == b.mtime_ns && a.ctime_ns == b.ctime_ns && a.ino == b.ino
}

/// Opens a regular file without following links, hashes it, and checks that its stat did not
/// move while it was read; a file written meanwhile is read again.
pub fn hash_stable(dir: &Dir, name: &str, path: &VolumePath) -> Result<CachedStat, ScanError> {
    use cap_std::fs::OpenOptionsExt;
    let mut opts = OpenOptions::new();
    // Non-blocking: a named pipe swapped in after the listing must not hold the scan.
    opts.read(true)
        .follow(FollowSymlinks::No)
        .custom_flags(libc::O_NONBLOCK);
    for _ in 0..HASH_ATTEMPTS {
        let file = dir.open_with(name, &opts).map_err(io_err(path.as_str()))?;
        let before = file.metadata().map_err(io_err(path.as_str()))?;
        if !before.is_file() {
            return Err(io_err(path.as_str())(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        // Through a fixed buffer, holes unread: a pod's huge sparse file costs its data's
        // reads and the hashing of its zeros.
        let file = file.into_std();
        let (hasher, read) = crate::sparse::hash(&file, u64::MAX).map_err(io_err(path.as_str()))?;
        let after = cap_std::fs::File::from_std(file)
            .metadata()
            .map_err(io_err(path.as_str()))?;
        let id = ContentId(*hasher.finalize().as_bytes());
        let (b, a) = (stat_of(&before, id), stat_of(&after, id));
        if same_stat(&b, &a) && read == a.size {
            return Ok(a);
        }
    }
    Err(ScanError::Unstable {
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;
    use std::os::unix::fs::PermissionsExt;

    fn open(p: &std::path::Path) -> Dir {
        Dir::open_ambient_dir(p, ambient_authority()).unwrap()
    }

    #[test]
    fn scan_lists_files_dirs_links_and_modes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::create_dir(t.path().join("empty")).unwrap();
        std::fs::write(t.path().join("a/b/x"), b"hello").unwrap();
        std::fs::write(t.path().join("run.sh"), b"#!/bin/sh").unwrap();
        std::fs::set_permissions(
            t.path().join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("b/x", t.path().join("a/link")).unwrap();
        let (m, _, stats) =
            scan_dir(&open(t.path()), &StatCache::new(), &ScanOptions::local()).unwrap();
        let names: Vec<(&str, &str)> = m
            .entries()
            .iter()
            .map(|e| (e.path.as_str(), e.type_name()))
            .collect();
        assert_eq!(
            names,
            [
                ("a", "dir"),
                ("a/b", "dir"),
                ("a/b/x", "file"),
                ("a/link", "symlink"),
                ("empty", "dir"),
                ("run.sh", "file"),
            ]
        );
        let x = m.get(&VolumePath::new("a/b/x").unwrap()).unwrap();
        assert_eq!(x.file_id(), Some(ContentId::of(b"hello")));
        assert_eq!(
            m.get(&VolumePath::new("run.sh").unwrap()).unwrap().mode,
            0o755
        );
        assert_eq!(stats.hashed_files, 2);
    }

    #[test]
    fn unchanged_tree_is_not_read_again() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(t.path().join(format!("f{i}")), format!("body {i}")).unwrap();
        }
        // Back-date the files so the cache may trust them (fresh files are "racy").
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        for i in 0..20 {
            let f = std::fs::File::options()
                .write(true)
                .open(t.path().join(format!("f{i}")))
                .unwrap();
            f.set_modified(old).unwrap();
        }
        let dir = open(t.path());
        let (m1, cache, s1) = scan_dir(&dir, &StatCache::new(), &ScanOptions::local()).unwrap();
        assert_eq!(s1.hashed_files, 20);
        let (m2, _, s2) = scan_dir(&dir, &cache, &ScanOptions::local()).unwrap();
        assert_eq!(s2.hashed_files, 0);
        assert_eq!(m1.root(), m2.root());
        // A rewrite with the same size is seen (ctime moves even if mtime is put back).
        std::fs::write(t.path().join("f3"), "BODY 3").unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(t.path().join("f3"))
            .unwrap();
        f.set_modified(old).unwrap();
        let (m3, _, s3) = scan_dir(&dir, &cache, &ScanOptions::local()).unwrap();
        assert_eq!(s3.hashed_files, 1);
        assert_ne!(m3.root(), m1.root());
    }

    /// A sparse file is hashed without reading its holes, and its id is still its bytes'.
    #[test]
    fn a_sparse_files_id_is_that_of_its_bytes() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(t.path().join("disk.img")).unwrap();
        f.write_all_at(b"data in the middle", 40 << 20).unwrap();
        f.set_len(64 << 20).unwrap();
        let bytes = std::fs::read(t.path().join("disk.img")).unwrap();
        let (m, _, _) = scan_dir(&open(t.path()), &StatCache::new(), &ScanOptions::pod()).unwrap();
        let e = m.get(&VolumePath::new("disk.img").unwrap()).unwrap();
        assert_eq!(e.file_id(), Some(ContentId::of(&bytes)));
        assert_eq!(e.size(), 64 << 20);
    }

    #[test]
    fn escaping_symlink_is_refused_locally_and_kept_in_volumes() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("evil")).unwrap();
        let dir = open(t.path());
        assert!(matches!(
            scan_dir(&dir, &StatCache::new(), &ScanOptions::local()),
            Err(ScanError::Path(PathError::SymlinkEscapes { .. }))
        ));
        let (m, _, _) = scan_dir(&dir, &StatCache::new(), &ScanOptions::volume()).unwrap();
        assert_eq!(m.len(), 1);
    }

    /// A pod's bad entries (a name that is not UTF-8, a path over the limit, a file the daemon
    /// cannot read) are left out and reported; everything else is listed. Scanning the same
    /// tree as a local folder still fails, naming the entry.
    #[test]
    fn a_pods_unsyncable_entries_are_left_out_and_reported() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("out")).unwrap();
        std::fs::write(t.path().join("out/good.csv"), b"1,2\n").unwrap();
        let bad = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(t.path().join("out").join(bad), b"x").unwrap();
        // Deep enough that the path passes MAX_PATH_BYTES (3840) at the 16th folder, and short
        // enough for the OS to make (PATH_MAX, 4096, from here).
        let mut deep = t.path().join("deep");
        for _ in 0..16 {
            deep = deep.join("d".repeat(250));
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"lost").unwrap();
        let locked = t.path().join("out/locked.bin");
        std::fs::write(&locked, b"secret").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Root reads anything: then the unreadable case cannot happen here (the end-to-end
        // test runs the daemon as another user for it).
        let can_lock = std::fs::read(&locked).is_err();

        let dir = open(t.path());
        let (m, _, stats) = scan_dir(&dir, &StatCache::new(), &ScanOptions::pod()).unwrap();
        assert!(m.get(&VolumePath::new("out/good.csv").unwrap()).is_some());
        let reasons: Vec<(String, &str)> = stats
            .left_out
            .iter()
            .map(|s| (s.shown(), s.reason.code()))
            .collect();
        assert!(
            reasons.contains(&("out/caf\\xe9.txt".into(), "not_utf8")),
            "{reasons:?}"
        );
        let long: Vec<&(String, &str)> = reasons
            .iter()
            .filter(|(_, c)| *c == "path_too_long")
            .collect();
        assert_eq!(long.len(), 1, "{reasons:?}");
        assert!(long[0].0.len() > crate::path::MAX_PATH_BYTES);
        // The folders above the limit are listed; nothing at or below it is.
        assert!(m.entries().iter().all(|e| e.path.as_str().len() <= 3840));
        assert_eq!(m.entries().iter().map(|e| e.path.depth()).max(), Some(16));
        if can_lock {
            assert!(reasons.contains(&("out/locked.bin".into(), "unreadable")));
            assert!(m.get(&VolumePath::new("out/locked.bin").unwrap()).is_none());
        } else {
            eprintln!("running as root: the unreadable file is read; that case is not tested here");
        }
        assert!(matches!(
            scan_dir(&dir, &StatCache::new(), &ScanOptions::local()),
            Err(ScanError::Path(PathError::NotUtf8(name))) if name == "caf\\xe9.txt"
        ));
    }

    #[test]
    fn fifo_is_refused_locally_and_skipped_in_volumes() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::write(t.path().join(".~sync.tmp.1"), b"x").unwrap();
        let dir = open(t.path());
        let (m, _, stats) = scan_dir(&dir, &StatCache::new(), &ScanOptions::volume()).unwrap();
        assert!(m.is_empty());
        assert_eq!(stats.skipped.len(), 2);
        assert!(matches!(
            scan_dir(&dir, &StatCache::new(), &ScanOptions::local()),
            Err(ScanError::Special { .. }) | Err(ScanError::Path(PathError::Reserved(_)))
        ));
    }
}
