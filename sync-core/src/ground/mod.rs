//! The ground end: what it knows of each pod ([`Ground`], its state folder), and the client
//! ([`Client`]) that pushes, lists, removes and pulls over a [`Link`](crate::link::Link).
//! Planning and encoding are the pure functions of [`crate::pack`]; this module sequences the
//! protocol's request/reply steps around them.
//!
//! Layout:
//! - here: [`Ground`], the state folder and its on-disk layout, and [`GroundError`];
//! - `client`: [`Client`], one connection: the welcome, messages in (keeping the link alive
//!   while it waits), the pod's manifest, rsync signatures, the goodbye;
//! - `queue`: what becomes of queued pushes when a new push or a removal comes (pure);
//! - `push`: a push, planned, encoded once, queued on disk and sent; what it reports;
//! - `send`: the windowed sender of a queued pack, and cancelling packs given up on;
//! - `budget`: what a byte budget and a deadline allow (arithmetic);
//! - `rm`: removing paths from a pod's volume;
//! - `pull/`: pulling a pod's files into a local copy (request, receive, apply, the copy).

use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::id::PackId;
use crate::link::LinkError;
use crate::manifest::{Manifest, ScanOptions, ScanStats, scan_dir};
use crate::object::ObjectStore;
use crate::pack::PackError;
use crate::state::Db;
use crate::volume::VolumeError;
use crate::wire::ErrorKind;

mod budget;
mod client;
mod encoding;
mod keeper;
pub mod pass;
mod pull;
mod push;
mod queue;
mod rm;
mod send;

pub use crate::manifest::ChangeSummary;
pub use budget::{Allowance, PACK_TURN};
pub use client::{Client, Progress};
pub use pull::{PullOptions, PullReport};
pub use push::{PlanCounts, PushOptions, PushReport};

#[derive(Debug, thiserror::Error)]
pub enum GroundError {
    #[error(transparent)]
    Link(#[from] LinkError),
    /// the onboard side refused or failed a request
    #[error("onboard: {message}")]
    Remote { kind: ErrorKind, message: String },
    /// the encoder of the pack being sent stopped (its own error says why)
    #[error("the pack's encoder stopped")]
    EncodingStopped,
    /// the onboard side sent something out of turn
    #[error("protocol error: expected {expected}, got another message")]
    Unexpected { expected: &'static str },
    /// a reply that does not check out
    #[error("onboard sent an inconsistent {0}")]
    BadReply(&'static str),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Scan(#[from] crate::manifest::ScanError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// a push the onboard side's limits would refuse
    #[error("{0}")]
    OverLimit(String),
    /// a path the operator named that the pod's volume does not have
    #[error("{0}: no such file or folder in the pod's volume")]
    NotFound(String),
    /// a folder named without --recursive
    #[error("{0} is a folder; use --recursive to remove it and everything in it")]
    IsFolder(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// placing a pull's files in the copy failed (its disk is full, say): the copy is as it was
    #[error("{into}: {source}")]
    Placing {
        into: String,
        source: crate::volume::VolumeError,
    },
    /// the copy a pull was applying to changed, while the pull ran, where the pull changes it
    #[error(
        "{into}: the copy changed at {path} during the pull; nothing of this pull pack was \
         applied: run the pull again"
    )]
    CopyChanged { into: String, path: String },
    /// a pull's journaled apply to its copy that cannot be finished now; it stays journaled
    #[error(
        "{into}: a pull was applied to this copy only in part and cannot be finished yet \
         ({source}); it is finished at the next pull into it"
    )]
    PullUnfinished { into: String, source: VolumeError },
    /// a pull's journaled apply to its copy that can never be finished: given up
    #[error(
        "{into}: a pull was applied to this copy only in part and can never be finished \
         ({source}); the copy is left as it is: run the pull again to bring it up to date"
    )]
    PullAbandoned { into: String, source: VolumeError },
    /// a pull that would overwrite what the copy's user changed since the last pull
    #[error(
        "{into}: the pull would overwrite {} local change(s) made since the last pull: {}; \
         nothing was applied. Move them aside (or undo them) and pull again, or pull with \
         --force to take the pod's versions",
        paths.len(),
        list_paths(paths)
    )]
    LocalChanges { into: String, paths: Vec<String> },
    /// the node dropped the pull pack this ground was receiving (it failed to encode it, or
    /// restarted): asked again, it offers a new one
    #[error("the node dropped the pull pack it was sending ({}); run the pull again", crate::path::escape(.0))]
    PullDropped(String),
    /// another process is pulling into the same copy
    #[error("{into}: another sync-ground is pulling into this copy; try again when it is done")]
    CopyBusy { into: String },
}

/// Up to 20 paths, escaped, for a message; the rest counted.
fn list_paths(paths: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut out: Vec<String> = paths
        .iter()
        .take(SHOWN)
        .map(|p| p.escape_debug().to_string())
        .collect();
    if paths.len() > SHOWN {
        out.push(format!("and {} more", paths.len() - SHOWN));
    }
    out.join(", ")
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> GroundError + '_ {
    move |source| GroundError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The ground's state folder: `ground.db`, the content store `objects/`, built packs `packs/`;
/// for pulls, packs being received and their staging folders `pulls/`, and the copies' locks
/// `locks/`.
pub struct Ground {
    dir: PathBuf,
    pub db: Db,
    pub store: ObjectStore,
}

impl Drop for Ground {
    /// Objects a push read are still being stored (`keeper`): they are the next push's bases.
    fn drop(&mut self) {
        self.store.settle();
    }
}

impl Ground {
    pub fn open(dir: &Path) -> Result<Self, GroundError> {
        std::fs::create_dir_all(dir.join("packs")).map_err(io_at(dir))?;
        let ground = Self {
            dir: dir.to_path_buf(),
            db: Db::open(&dir.join("ground.db"))?,
            store: ObjectStore::open(&dir.join("objects")).map_err(io_at(dir))?,
        };
        ground.roll_forward_pulls();
        Ok(ground)
    }

    /// Where a queued push's pack is kept until it applies.
    fn pack_path(&self, pack: &PackId) -> PathBuf {
        self.dir
            .join("packs")
            .join(format!("{}.pack", pack.to_hex()))
    }

    /// Scans a local folder through its stat cache.
    pub fn scan_local(&mut self, folder: &Path) -> Result<(Manifest, ScanStats), GroundError> {
        self.scan_with(folder, &ScanOptions::local())
    }

    /// Scans a pull's copy: like a pod's volume, it may hold symlinks that point outside it
    /// (the pod made them), and the engine's own temporaries are not part of it.
    pub fn scan_copy(&mut self, folder: &Path) -> Result<(Manifest, ScanStats), GroundError> {
        self.scan_with(folder, &ScanOptions::volume())
    }

    fn scan_with(
        &mut self,
        folder: &Path,
        opts: &ScanOptions,
    ) -> Result<(Manifest, ScanStats), GroundError> {
        let abs = std::fs::canonicalize(folder).map_err(io_at(folder))?;
        let dir = Dir::open_ambient_dir(&abs, ambient_authority()).map_err(io_at(&abs))?;
        let scope = abs.display().to_string();
        let cache = self.db.stat_cache(&scope)?;
        let (m, fresh, stats) = scan_dir(&dir, &cache, opts)?;
        self.db.save_stat_cache(&scope, &cache, &fresh)?;
        Ok((m, stats))
    }
}
