//! Pod volumes on the onboard side, and applying a verified changeset to one.
//!
//! Every operation goes through a directory handle on the volume (cap-std), so no path, however
//! it was made, and no symlink a pod planted, can reach outside that pod's volume.
//!
//! Applying is two phases. `prepare` turns the changes into [`Step`]s and places every new
//! file's bytes inside the volume under a reserved temporary name (`.~sync.<tag>.<n>` at the
//! volume's root), fsynced, with its mode and time: new objects from the pack decoder's staging
//! folder, copies of content the volume already holds (verified). This is where the volume's
//! disk fills up if it is going to; then every temporary is removed again and nothing else has
//! changed. Only after that does the journaled phase touch what a pod sees, and it only renames
//! and removes, so it needs no space and is short. Every step is idempotent, so a crash in the
//! middle is rolled forward by running the journal again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use cap_fs_ext::DirExt;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};

use crate::id::ContentId;
use crate::manifest::{Change, FileSource, Manifest, PutKind};
use crate::path::{PodName, TEMP_PREFIX, VolumePath};
use crate::sparse;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// an I/O failure at a path of a volume or the staging area
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// content to copy within the volume is no longer there
    #[error("content {id:?} for {path} is no longer in the volume (changed by the pod?)")]
    SourceGone { path: String, id: ContentId },
    /// a journal step whose staged file and result are both missing
    #[error("cannot roll forward {path}: its staged file is gone and the volume does not hold it")]
    Unrecoverable { path: String },
}

fn io_at(path: impl Into<String>) -> impl FnOnce(std::io::Error) -> VolumeError {
    let path = path.into();
    move |source| VolumeError::Io { path, source }
}

/// The folder holding one volume per pod.
pub struct Volumes {
    root: PathBuf,
    dir: Dir,
}

impl Volumes {
    pub fn open(root: &Path) -> Result<Self, VolumeError> {
        std::fs::create_dir_all(root).map_err(io_at(root.display().to_string()))?;
        let dir = Dir::open_ambient_dir(root, ambient_authority())
            .map_err(io_at(root.display().to_string()))?;
        Ok(Self {
            root: root.to_path_buf(),
            dir,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pod's volume, if it exists. A pod name is a single plain name, so this can only ever
    /// open a direct child of the volumes folder, and never through a symlink.
    /// The pods that have a volume.
    pub fn pods(&self) -> Result<Vec<PodName>, VolumeError> {
        let mut out = Vec::new();
        for e in self.dir.entries().map_err(io_at("."))? {
            let e = e.map_err(io_at("."))?;
            if let Ok(name) = PodName::new(e.file_name().to_string_lossy().into_owned()) {
                out.push(name);
            }
        }
        Ok(out)
    }

    pub fn pod(&self, pod: &PodName) -> Result<Option<Dir>, VolumeError> {
        match self.dir.open_dir_nofollow(pod.as_str()) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VolumeError::Io {
                path: pod.to_string(),
                source: e,
            }),
        }
    }

    /// The pod's volume, created (mode 0755) on first use.
    pub fn create_pod(&self, pod: &PodName) -> Result<Dir, VolumeError> {
        match self.dir.create_dir(pod.as_str()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_at(pod.to_string())(e)),
        }
        self.dir
            .open_dir_nofollow(pod.as_str())
            .map_err(io_at(pod.to_string()))
    }
}

/// One idempotent action of the journaled phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Remove {
        path: VolumePath,
    },
    Dir {
        path: VolumePath,
        mode: u32,
    },
    /// Rename the temporary `temp` (at the volume's root, already synced with its mode and
    /// time) to `path`.
    File {
        path: VolumePath,
        temp: String,
        id: ContentId,
        mode: u32,
        mtime: i64,
    },
    /// Same content already at `path`: only mode and time change.
    Touch {
        path: VolumePath,
        mode: u32,
        mtime: i64,
    },
    Symlink {
        path: VolumePath,
        target: String,
    },
}

/// What the journal records for one changeset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPlan {
    pub steps: Vec<Step>,
}

/// Turns verified changes into steps and places every file's bytes in the volume under a
/// temporary name. `objects` are the pack's objects, staged by the decoder as `o<index>` in
/// `staging`. On failure every temporary made so far is removed: the volume is as it was.
pub fn prepare(
    volume: &Dir,
    staging: &Path,
    base: &Manifest,
    changes: &[Change],
    objects: &[(ContentId, u64)],
    temp_tag: &str,
) -> Result<ApplyPlan, VolumeError> {
    let held = base.content_index();
    // How many steps use each staged object: the last one may take the file itself.
    let mut uses: HashMap<u32, usize> = HashMap::new();
    for c in changes {
        if let Change::Put(p) = c
            && let PutKind::File(FileSource::Object(i)) = p.kind
        {
            *uses.entry(i).or_default() += 1;
        }
    }
    // Should one file fail to place (a full disk), those placed before it go again.
    let mut placed = Placed {
        volume,
        temps: Vec::new(),
    };
    let mut steps = Vec::with_capacity(changes.len());
    for (n, change) in changes.iter().enumerate() {
        let temp = format!("{TEMP_PREFIX}{temp_tag}.{n}");
        let step = match change {
            Change::Remove(path) => Step::Remove { path: path.clone() },
            Change::Put(put) => match &put.kind {
                PutKind::Dir => Step::Dir {
                    path: put.path.clone(),
                    mode: put.mode,
                },
                PutKind::Symlink(target) => Step::Symlink {
                    path: put.path.clone(),
                    target: target.clone(),
                },
                PutKind::File(FileSource::Object(i)) => {
                    let left = uses.get_mut(i).expect("counted above");
                    *left -= 1;
                    let src = staging.join(format!("o{i}"));
                    placed.temps.push(temp.clone());
                    place_staged(volume, &src, &temp, *left == 0)?;
                    file_step(volume, &temp, put, objects[*i as usize].0)?
                }
                PutKind::File(FileSource::Known { id, .. }) => {
                    if base.get(&put.path).and_then(|e| e.file_id()) == Some(*id) {
                        Step::Touch {
                            path: put.path.clone(),
                            mode: put.mode,
                            mtime: put.mtime,
                        }
                    } else {
                        placed.temps.push(temp.clone());
                        place_copy(volume, base, &held, id, &temp, &put.path)?;
                        file_step(volume, &temp, put, *id)?
                    }
                }
            },
        };
        steps.push(step);
    }
    // The temporaries, their bytes and their names, must be durable before the journal names
    // them.
    let files: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::File { temp, .. } => Some(temp.as_str()),
            _ => None,
        })
        .collect();
    make_durable(volume, &files).map_err(io_at("."))?;
    // Every file is placed: the temporaries are the plan's now.
    placed.temps.clear();
    Ok(ApplyPlan { steps })
}

/// The temporaries a `prepare` has placed so far; removed again if it stops before the end.
struct Placed<'a> {
    volume: &'a Dir,
    temps: Vec<String>,
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        for t in &self.temps {
            let _ = self.volume.remove_file(t);
        }
    }
}

/// Makes what was written under `volume` durable: `files` (names relative to it), their names,
/// and the folders written to. On Linux one `syncfs` of the volume's file system does it all at
/// once, where a file and folder at a time cost a push of 6,700 files 16,000 fsyncs (3 of its
/// 13 s here); it also flushes what else was written to that file system, pods' files
/// included. Elsewhere, and on a file system without syncfs, each file, then the root folder.
pub(crate) fn make_durable(volume: &Dir, files: &[&str]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let root = volume.open(".")?;
        // SAFETY: syncfs takes a descriptor this function holds open for the call.
        if unsafe { libc::syncfs(root.as_raw_fd()) } == 0 {
            return Ok(());
        }
        // A file system or kernel without syncfs (some FUSE and network file systems answer
        // ENOSYS or EINVAL): one file at a time, as elsewhere.
        let e = std::io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP)
        ) {
            return Err(e);
        }
    }
    sync_each(volume, files)
}

/// [`make_durable`] one file at a time, then the folder.
fn sync_each(volume: &Dir, files: &[&str]) -> std::io::Result<()> {
    for f in files {
        // Read-only: a placed file may have a mode that does not let its owner write.
        volume.open(f)?.sync_all()?;
    }
    volume.open(".")?.sync_all()
}

/// Gives a placed temporary its mode and time, and makes its step ([`make_durable`] syncs it).
fn file_step(
    volume: &Dir,
    temp: &str,
    put: &crate::manifest::Put,
    id: ContentId,
) -> Result<Step, VolumeError> {
    let f = volume
        .open_with(temp, cap_std::fs::OpenOptions::new().write(true))
        .map_err(io_at(temp.to_string()))?
        .into_std();
    set_mode_and_time(&f, put.mode, Some(put.mtime)).map_err(io_at(put.path.to_string()))?;
    Ok(Step::File {
        path: put.path.clone(),
        temp: temp.to_string(),
        id,
        mode: put.mode,
        mtime: put.mtime,
    })
}

/// Moves (when it is the object's last use and staging shares the volume's filesystem) or
/// copies a staged object into the volume, its holes kept (a sparse file's copy is as sparse).
fn place_staged(volume: &Dir, src: &Path, temp: &str, last: bool) -> Result<(), VolumeError> {
    let _ = volume.remove_file(temp);
    if last
        && let (Some(folder), Some(name)) = (src.parent(), src.file_name())
        && let Ok(staging) = Dir::open_ambient_dir(folder, ambient_authority())
        && staging.rename(name, volume, temp).is_ok()
    {
        return Ok(());
    }
    let input = std::fs::File::open(src).map_err(io_at(src.display().to_string()))?;
    let out = volume
        .create(temp)
        .map_err(io_at(temp.to_string()))?
        .into_std();
    sparse::copy(&input, &out, None).map_err(io_at(temp.to_string()))?;
    Ok(())
}

/// Copies content `id`, held somewhere in the volume, to a temporary, verifying it; holes
/// stay holes.
fn place_copy(
    volume: &Dir,
    base: &Manifest,
    held: &HashMap<ContentId, usize>,
    id: &ContentId,
    temp: &str,
    for_path: &VolumePath,
) -> Result<(), VolumeError> {
    let gone = || VolumeError::SourceGone {
        path: for_path.to_string(),
        id: *id,
    };
    let _ = volume.remove_file(temp);
    let out = volume
        .create(temp)
        .map_err(io_at(temp.to_string()))?
        .into_std();
    if *id != ContentId::empty() {
        let src = &base.entries()[*held.get(id).ok_or_else(gone)?];
        let f = open_nofollow(volume, &src.path).map_err(|_| gone())?;
        let mut hasher = blake3::Hasher::new();
        // A read error and a write error look alike here; either way the temporary goes.
        sparse::copy(&f.into_std(), &out, Some(&mut hasher)).map_err(io_at(temp.to_string()))?;
        if ContentId(*hasher.finalize().as_bytes()) != *id {
            return Err(gone());
        }
    }
    Ok(())
}

/// Removes temporaries left at a volume's root by a prepare that a crash interrupted, except
/// those a journaled plan still needs.
pub fn sweep_temps(volume: &Dir, keep: &HashSet<String>) {
    let Ok(entries) = volume.entries() else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) && !keep.contains(&name) {
            let _ = volume.remove_file(&name);
        }
    }
}

impl ApplyPlan {
    /// The temporaries this plan renames into place.
    pub fn temps(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().filter_map(|s| match s {
            Step::File { temp, .. } => Some(temp.as_str()),
            _ => None,
        })
    }
}

/// Opens a regular file of a volume for reading without following a final symlink.
pub fn open_nofollow(volume: &Dir, path: &VolumePath) -> std::io::Result<cap_std::fs::File> {
    use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
    use cap_std::fs::OpenOptionsExt;
    let mut opts = cap_std::fs::OpenOptions::new();
    // Without O_NONBLOCK, a named pipe a pod put where a file was would block the open until
    // someone writes to it: whoever reads pod files would wait for ever.
    opts.read(true)
        .follow(FollowSymlinks::No)
        .custom_flags(libc::O_NONBLOCK);
    let f = volume.open_with(path.as_str(), &opts)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// The content id of a file of a volume, read through a fixed buffer (the pod may have put a
/// file of any size there), its holes unread.
pub fn content_id(volume: &Dir, path: &VolumePath) -> std::io::Result<ContentId> {
    let file = open_nofollow(volume, path)?.into_std();
    let (hasher, _) = sparse::hash(&file, u64::MAX)?;
    Ok(ContentId(*hasher.finalize().as_bytes()))
}

/// Parent folder handle of `path` inside the volume, and the final name.
fn parent_of<'a>(volume: &Dir, path: &'a VolumePath) -> Result<(Dir, &'a str), VolumeError> {
    let dir = match path.parent() {
        Some(p) => volume
            .open_dir_nofollow(p.as_str())
            .map_err(io_at(p.to_string()))?,
        None => volume.try_clone().map_err(io_at("."))?,
    };
    Ok((dir, path.name()))
}

fn set_mode_and_time(file: &std::fs::File, mode: u32, mtime: Option<i64>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Some(t) = mtime {
        let when = if t >= 0 {
            UNIX_EPOCH + Duration::from_secs(t as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
        };
        file.set_modified(when)?;
    }
    Ok(())
}

/// Runs the journaled phase: renames and removals only. Safe to run again after a crash at
/// any point.
pub fn apply(volume: &Dir, plan: &ApplyPlan, temp_tag: &str) -> Result<(), VolumeError> {
    let mut touched: HashSet<Option<VolumePath>> = HashSet::new();
    for (n, step) in plan.steps.iter().enumerate() {
        match step {
            Step::Remove { path } => {
                remove_entry(volume, path, false)?;
                touched.insert(path.parent());
            }
            Step::Dir { path, mode } => {
                make_dir(volume, path, *mode)?;
                touched.insert(path.parent());
            }
            Step::File { path, temp, id, .. } => {
                if rename_into_place(volume, path, temp, id)? {
                    touched.insert(path.parent());
                }
            }
            Step::Touch { path, mode, mtime } => {
                if let Ok(f) = open_nofollow(volume, path) {
                    let f = f.into_std();
                    set_mode_and_time(&f, *mode, Some(*mtime)).map_err(io_at(path.to_string()))?;
                }
            }
            Step::Symlink { path, target } => {
                let (parent, name) = parent_of(volume, path)?;
                clear_dir_in_the_way(&parent, name, path)?;
                let tmp = format!("{TEMP_PREFIX}{temp_tag}.{n}");
                let _ = parent.remove_file(&tmp);
                parent
                    .symlink(target, &tmp)
                    .map_err(io_at(path.to_string()))?;
                parent
                    .rename(&tmp, &parent, name)
                    .map_err(io_at(path.to_string()))?;
                touched.insert(path.parent());
            }
        }
    }
    // Make the renames themselves durable: on Linux one syncfs ([`make_durable`]), elsewhere
    // each folder renamed into.
    if cfg!(target_os = "linux") {
        // The journal ends once this returns: a failed flush keeps it, and the renames are
        // made (idempotently) again.
        return make_durable(volume, &[]).map_err(io_at("."));
    }
    for dir in touched {
        let handle = match &dir {
            Some(p) => volume.open_dir_nofollow(p.as_str()),
            None => volume.try_clone(),
        };
        if let Ok(d) = handle {
            let _ = d.open(".").and_then(|f| f.sync_all());
        }
    }
    Ok(())
}

/// The folder at `path`, with `mode`: made, or put in place of what the pod left there.
fn make_dir(volume: &Dir, path: &VolumePath, mode: u32) -> Result<(), VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    match volume.symlink_metadata(path.as_str()) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            remove_entry(volume, path, true)?;
            volume
                .create_dir(path.as_str())
                .map_err(io_at(path.to_string()))?;
        }
        Err(_) => match volume.create_dir(path.as_str()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_at(path.to_string())(e)),
        },
    }
    volume
        .set_permissions(
            path.as_str(),
            cap_std::fs::Permissions::from_std(std::fs::Permissions::from_mode(mode)),
        )
        .map_err(io_at(path.to_string()))
}

/// Renames the placed temporary `temp` to `path`. `false` when an earlier run of the journal
/// renamed it already (the volume holds `id` there); a temporary gone and the volume holding
/// something else can never finish.
fn rename_into_place(
    volume: &Dir,
    path: &VolumePath,
    temp: &str,
    id: &ContentId,
) -> Result<bool, VolumeError> {
    // A pod may have removed the folder meanwhile: the push decides it exists.
    if let Some(p) = path.parent()
        && volume.symlink_metadata(p.as_str()).is_err()
    {
        volume
            .create_dir_all(p.as_str())
            .map_err(io_at(p.to_string()))?;
    }
    let (parent, name) = parent_of(volume, path)?;
    if volume.symlink_metadata(temp).is_err() {
        // Renamed by an earlier run of this journal: the volume must hold it now.
        return match content_id(volume, path) {
            Ok(held) if held == *id => Ok(false),
            _ => Err(VolumeError::Unrecoverable {
                path: path.to_string(),
            }),
        };
    }
    clear_dir_in_the_way(&parent, name, path)?;
    volume
        .rename(temp, &parent, name)
        .map_err(io_at(path.to_string()))?;
    Ok(true)
}

/// A pod may have made a folder where a file or link is to go: the push decides what the folder
/// holds, so it goes.
fn clear_dir_in_the_way(parent: &Dir, name: &str, path: &VolumePath) -> Result<(), VolumeError> {
    match parent.symlink_metadata(name) {
        Ok(m) if m.is_dir() => parent.remove_dir_all(name).map_err(io_at(path.to_string())),
        _ => Ok(()),
    }
}

fn remove_entry(volume: &Dir, path: &VolumePath, recursive: bool) -> Result<(), VolumeError> {
    match volume.symlink_metadata(path.as_str()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path.to_string())(e)),
        Ok(m) if m.is_dir() => {
            let r = if recursive {
                volume.remove_dir_all(path.as_str())
            } else {
                volume.remove_dir(path.as_str())
            };
            match r {
                // A pod wrote into a folder the push removes: its new files stay, and so does
                // the folder; the next manifest shows them.
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(()),
                other => other.map_err(io_at(path.to_string())),
            }
        }
        Ok(_) => volume
            .remove_file_or_symlink(path.as_str())
            .map_err(io_at(path.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ScanOptions, StatCache, diff, scan_dir};

    /// Regression (review): a pod that put a named pipe where a pull's file was (after the
    /// check before encoding) made the encoder's open block until someone wrote to the pipe:
    /// the pull, and the node's shutdown, waited for ever. The open returns at once now, and
    /// anything but a regular file is refused.
    #[test]
    fn a_named_pipe_in_a_volume_is_refused_not_waited_on() {
        let t = tempfile::tempdir().unwrap();
        let fifo = std::ffi::CString::new(t.path().join("out.csv").to_str().unwrap()).unwrap();
        // SAFETY: a valid C string for the call's duration.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let dir = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let path = VolumePath::new("out.csv").unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(open_nofollow(&dir, &path).map(|_| ()));
        });
        let r = done
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the open of a named pipe blocked");
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    }

    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (p, body) in files {
            let full = root.join(p);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, body).unwrap();
        }
    }

    fn scan(dir: &Dir) -> Manifest {
        scan_dir(dir, &StatCache::new(), &ScanOptions::volume())
            .unwrap()
            .0
    }

    /// A folder the push removes that the pod has written into meanwhile is not an error: the
    /// pod's files stay, and so does the folder (told by its error kind, not an errno).
    #[test]
    fn removing_a_folder_the_pod_wrote_into_keeps_it() {
        let t = tempfile::tempdir().unwrap();
        tree(t.path(), &[("out/new.csv", "the pod's")]);
        let dir = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let plan = ApplyPlan {
            steps: vec![Step::Remove {
                path: VolumePath::new("out").unwrap(),
            }],
        };
        apply(&dir, &plan, "t").unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("out/new.csv")).unwrap(),
            "the pod's"
        );
    }

    /// Applies `diff(volume, wanted)` using only copies of content the volume holds, plus `new`
    /// objects staged by hand, and checks the volume then scans as `wanted`.
    #[test]
    fn apply_reaches_the_target_and_can_run_twice() {
        let t = tempfile::tempdir().unwrap();
        let (vol_path, want_path, staging) = (
            t.path().join("vol"),
            t.path().join("want"),
            t.path().join("stage"),
        );
        std::fs::create_dir_all(&staging).unwrap();
        tree(
            &vol_path,
            &[("a/x", "same"), ("a/old", "gone soon"), ("b/y", "moved")],
        );
        tree(
            &want_path,
            &[
                ("a/x", "same"),
                ("c/y2", "moved"),
                ("c/y3", "moved"),
                ("n", "brand new"),
            ],
        );
        let vol = Dir::open_ambient_dir(&vol_path, ambient_authority()).unwrap();
        let want = Dir::open_ambient_dir(&want_path, ambient_authority()).unwrap();
        let base = scan(&vol);
        let target = scan(&want);
        let mut changes = diff(&base, &target);
        // Turn the one new content into object 0, staged as the decoder would.
        let new_id = ContentId::of(b"brand new");
        for c in &mut changes {
            if let Change::Put(p) = c
                && p.kind
                    == PutKind::File(FileSource::Known {
                        id: new_id,
                        size: 9,
                    })
            {
                p.kind = PutKind::File(FileSource::Object(0));
            }
        }
        std::fs::write(staging.join("o0"), "brand new").unwrap();
        let before = scan(&vol).root();
        let plan = prepare(&vol, &staging, &base, &changes, &[(new_id, 9)], "t").unwrap();
        // Prepared: the temporaries are in the volume, and a scan (what a pod's manifest shows)
        // does not see them.
        assert_eq!(scan(&vol).root(), before);
        assert!(plan.temps().count() >= 3);
        apply(&vol, &plan, "t").unwrap();
        assert_eq!(scan(&vol).root(), target.root());
        // Rolling forward again changes nothing.
        apply(&vol, &plan, "t").unwrap();
        assert_eq!(scan(&vol).root(), target.root());
        let left: Vec<_> = std::fs::read_dir(&vol_path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_prepare_that_fails_leaves_no_temporaries() {
        let t = tempfile::tempdir().unwrap();
        let (vol_path, staging) = (t.path().join("vol"), t.path().join("stage"));
        std::fs::create_dir_all(&staging).unwrap();
        tree(&vol_path, &[("keep", "k")]);
        std::fs::write(staging.join("o0"), "first").unwrap();
        // Object 1 was never staged: placing it fails after object 0 was placed.
        let vol = Dir::open_ambient_dir(&vol_path, ambient_authority()).unwrap();
        let base = scan(&vol);
        let put = |p: &str, i: u32| {
            Change::Put(crate::manifest::Put {
                path: VolumePath::new(p).unwrap(),
                kind: PutKind::File(FileSource::Object(i)),
                mode: 0o644,
                mtime: 0,
            })
        };
        let objects = [(ContentId::of(b"first"), 5), (ContentId::of(b"x"), 1)];
        let r = prepare(
            &vol,
            &staging,
            &base,
            &[put("a", 0), put("b", 1)],
            &objects,
            "t",
        );
        assert!(r.is_err());
        let names: Vec<_> = std::fs::read_dir(&vol_path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["keep".to_string()]);
    }

    /// A file of `len` bytes at `path`, holes but for `data` at `at`.
    fn sparse_file(path: &Path, len: u64, at: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(path).unwrap();
        f.write_all_at(data, at).unwrap();
        f.set_len(len).unwrap();
    }

    fn allocated(path: &Path) -> u64 {
        sparse::allocated(&std::fs::File::open(path).unwrap()).unwrap()
    }

    /// A staged sparse object placed at two paths (copied for the first, moved for the last)
    /// and content the volume holds copied to a third keep their holes: a 256 MiB file of
    /// holes costs the volume its data, not 256 MiB. (The copies filled them with zeros.)
    #[test]
    fn placed_and_copied_files_keep_their_holes() {
        let t = tempfile::tempdir().unwrap();
        let (vol_path, staging) = (t.path().join("vol"), t.path().join("stage"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::create_dir_all(&vol_path).unwrap();
        let len = 256u64 << 20;
        let data = crate::testing::random_bytes(100_000, 1);
        sparse_file(&staging.join("o0"), len, 100 << 20, &data);
        sparse_file(&vol_path.join("held.img"), len, 7 << 20, &data);
        let vol = Dir::open_ambient_dir(&vol_path, ambient_authority()).unwrap();
        let base = scan(&vol);
        let id_of = |p: &Path| {
            let (h, _) = sparse::hash(&std::fs::File::open(p).unwrap(), u64::MAX).unwrap();
            ContentId(*h.finalize().as_bytes())
        };
        let (new_id, held_id) = (
            id_of(&staging.join("o0")),
            id_of(&vol_path.join("held.img")),
        );
        let put = |p: &str, kind| {
            Change::Put(crate::manifest::Put {
                path: VolumePath::new(p).unwrap(),
                kind,
                mode: 0o644,
                mtime: 0,
            })
        };
        let changes = [
            put("a.img", PutKind::File(FileSource::Object(0))),
            put("b.img", PutKind::File(FileSource::Object(0))),
            put(
                "c.img",
                PutKind::File(FileSource::Known {
                    id: held_id,
                    size: len,
                }),
            ),
        ];
        let plan = prepare(&vol, &staging, &base, &changes, &[(new_id, len)], "t").unwrap();
        apply(&vol, &plan, "t").unwrap();
        for (name, id) in [("a.img", new_id), ("b.img", new_id), ("c.img", held_id)] {
            let p = vol_path.join(name);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), len, "{name}");
            assert_eq!(id_of(&p), id, "{name}");
            assert!(
                allocated(&p) < 4 << 20,
                "{name}: {} bytes allocated for {} bytes of data",
                allocated(&p),
                data.len()
            );
        }
    }

    #[test]
    fn pod_symlink_cannot_redirect_writes_outside() {
        let t = tempfile::tempdir().unwrap();
        let vol_path = t.path().join("vol");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&vol_path).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, vol_path.join("in")).unwrap();
        let staging = t.path().join("stage");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("o0"), "x").unwrap();
        let vol = Dir::open_ambient_dir(&vol_path, ambient_authority()).unwrap();
        std::fs::write(vol_path.join(".~sync.t.0"), "x").unwrap();
        let plan = ApplyPlan {
            steps: vec![Step::File {
                path: VolumePath::new("in/file").unwrap(),
                temp: ".~sync.t.0".into(),
                id: ContentId::of(b"x"),
                mode: 0o644,
                mtime: 0,
            }],
        };
        assert!(apply(&vol, &plan, "t").is_err());
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    }
}
