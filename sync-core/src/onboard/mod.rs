//! The onboard end of the protocol: one [`OnboardService`] per daemon (the volumes, the state,
//! the locks), one [`OnboardSession`] per connection (a message in, replies out: storage I/O,
//! never network I/O).
//!
//! - `session`: the per-connection session: which request a message is, and what the
//!   connection does next ([`Outcome`]).
//! - `refusal`: a failed request as a typed [`Refusal`], turned into the wire's `Error` in one
//!   place.
//! - `manifest`: a pod's manifest and rsync signatures of its files, for the ground's plan.
//! - `receive`: a pack offered, received and made durable; which connection owns it.
//! - `apply`: a received pack decoded, verified and applied; the journal and its roll-forward.
//! - [`pull`]: the downlink: choosing and encoding a pull pack, serving its bytes.

mod apply;
mod follow;
mod manifest;
pub mod pull;
mod receive;
mod refusal;
mod session;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

pub use pull::DEFAULT_PULL_PACK_CAP;
pub use refusal::{Refusal, Staged};
pub use session::{OnboardSession, Outcome};

use crate::id::{NodeId, PackId};
use crate::manifest::{Manifest, ScanOptions, Skipped, scan_dir};
use crate::pack::{Limits, PackError};
use crate::path::PodName;
use crate::state::{Db, IncomingPack};
use crate::volume::{VolumeError, Volumes};
use crate::wire::Message;

#[derive(Debug, thiserror::Error)]
pub enum OnboardError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Scan(#[from] crate::manifest::ScanError),
    #[error(transparent)]
    Pack(#[from] PackError),
    /// the state folder and the volumes folder overlap
    #[error("the state folder must not be inside the volumes folder, nor contain it")]
    Overlap,
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> OnboardError + '_ {
    move |source| OnboardError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One per daemon: the pods' volumes, the state folder and database, and the locks and claims
/// that keep connections from interleaving on one volume or one pack.
pub struct OnboardService {
    volumes: Volumes,
    state_dir: PathBuf,
    db: Mutex<Db>,
    node: NodeId,
    limits: Limits,
    /// One lock per pod: scans and applies of one volume never interleave.
    pod_locks: Mutex<HashMap<PodName, Arc<Mutex<()>>>>,
    /// Which connection owns each pack being received: a ground that reconnects after a silent
    /// cut takes its pack over from the old connection, which may not have noticed yet; the old
    /// one then writes and records nothing more.
    receivers: Mutex<HashMap<PackId, u64>>,
    next_receiver: std::sync::atomic::AtomicU64,
    /// What one pull pack may carry; see [`OnboardService::set_pull_pack_cap`].
    pull_caps: pull::PullCaps,
    /// zstd worker threads a pull's encoding takes ([`OnboardService::set_pull_cpu`]).
    pull_threads: u32,
    /// The nice value of a pull's encoder threads.
    pull_nice: i32,
    /// The prefix and window a pull pack's encoder holds at most.
    pull_limits: Limits,
    /// Pull packs being encoded.
    live_pulls: pull::LivePulls,
    /// The pushed pack being decoded as it arrives (one at a time: see `follow`).
    follower: Mutex<Option<follow::Follower>>,
    /// Files each pod wrote while a pull pack carrying them was encoded, and when the last
    /// was found.
    pull_changing: Mutex<pull::Changing>,
    /// The volumes live on another disk than the staging area: a volume that is full (or
    /// failing) leaves a received pack whole and staged, so the retry sends nothing again.
    /// On one disk, a pack that could not be placed is dropped to give its space back.
    volumes_apart: bool,
    /// This boot of the machine ([`boot_id`]), read once at open: staged bytes past the synced
    /// offset are trusted only when this boot wrote them. Empty where the machine names none.
    /// A field, so that tests can be on either side of a reboot.
    boot: String,
}

impl OnboardService {
    /// Opens (creating) the volumes and state folders, and rolls forward any changeset a crash
    /// interrupted.
    pub fn open(volumes: &Path, state: &Path, limits: Limits) -> Result<Self, OnboardError> {
        fs::create_dir_all(state).map_err(io_at(state))?;
        let volumes = Volumes::open(volumes)?;
        let (v, s) = (
            fs::canonicalize(volumes.root()).map_err(io_at(volumes.root()))?,
            fs::canonicalize(state).map_err(io_at(state))?,
        );
        if v.starts_with(&s) || s.starts_with(&v) {
            return Err(OnboardError::Overlap);
        }
        fs::create_dir_all(s.join("staging")).map_err(io_at(&s))?;
        let db = Db::open(&s.join("onboard.db"))?;
        let node = db.node_id()?;
        let device = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(p).map(|m| m.dev()).map_err(io_at(p))
        };
        let volumes_apart = device(&v)? != device(&s.join("staging"))?;
        // The memory bound (`--memory`): the decoder's prefix is a quarter of it.
        let memory = 4 * limits.max_prefix_bytes;
        let pull_limits = pull_encoder_limits(pull::pull_encoder_memory(memory));
        let svc = Self {
            volumes,
            state_dir: s,
            db: Mutex::new(db),
            node,
            limits,
            pod_locks: Mutex::new(HashMap::new()),
            receivers: Mutex::new(HashMap::new()),
            next_receiver: std::sync::atomic::AtomicU64::new(1),
            pull_caps: pull::PullCaps {
                content: DEFAULT_PULL_PACK_CAP,
                // Kept signatures: a quarter of an encoder's memory.
                memory: pull::pull_encoder_memory(memory) / 4,
            },
            pull_threads: 1,
            pull_nice: 0,
            pull_limits,
            live_pulls: pull::LivePulls::default(),
            follower: Mutex::default(),
            pull_changing: Mutex::default(),
            volumes_apart,
            boot: boot_id(),
        };
        svc.roll_forward()?;
        svc.collect_stale_uploads();
        svc.drop_unfinished_pull_packs();
        Ok(svc)
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn session(self: &Arc<Self>) -> OnboardSession {
        OnboardSession::new(self.clone())
    }

    pub fn welcome(&self) -> Message {
        Message::Welcome {
            node: self.node,
            limits: self.limits.clone(),
            software: concat!("sync-onboard ", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    fn pod_lock(&self, pod: &PodName) -> Arc<Mutex<()>> {
        self.pod_locks
            .lock()
            .expect("pod lock table")
            .entry(pod.clone())
            .or_default()
            .clone()
    }

    /// The memory bound (`--memory`): the decoder's prefix is a quarter of it.
    fn memory(&self) -> u64 {
        4 * self.limits.max_prefix_bytes
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().expect("state database lock")
    }

    fn staging_dir(&self, pack: &PackId) -> PathBuf {
        self.state_dir.join("staging").join(pack.to_hex())
    }

    fn pack_file(&self, pack: &PackId) -> PathBuf {
        self.state_dir
            .join("staging")
            .join(format!("{}.pack", pack.to_hex()))
    }

    /// Starts decoding `info`'s pack as it arrives, `written` bytes of it staged already;
    /// returns the tail the receiving connection moves. None when another pack is being
    /// followed, or the state it was planned on is not known here (the apply decodes it).
    fn follow(&self, info: &IncomingPack, written: u64) -> Option<Arc<follow::Tail>> {
        let mut slot = self.follower.lock().expect("follower");
        match slot.take() {
            // An earlier connection's follower of this pack, or one that is done (its pack
            // then decodes again at its apply): stopped.
            Some(f) if f.pack == info.pack || f.is_finished() => drop(f),
            Some(busy) => {
                *slot = Some(busy);
                return None;
            }
            None => {}
        }
        let base = self
            .db()
            .pod_manifest(&info.pod, &info.base_root)
            .ok()
            .flatten()?;
        let bases = match self.volumes.pod(&info.pod).ok()? {
            Some(dir) => dir,
            // No volume yet: no bases to read either.
            None if base.entries().is_empty() => {
                Dir::open_ambient_dir(self.state_dir.join("staging"), ambient_authority()).ok()?
            }
            None => return None,
        };
        let job = follow::FollowJob {
            pack: info.pack,
            file: self.pack_file(&info.pack),
            written,
            staging: self.staging_dir(&info.pack),
            base,
            bases,
            limits: self.limits.clone(),
        };
        match follow::Follower::start(job) {
            Ok((f, tail)) => {
                *slot = Some(f);
                Some(tail)
            }
            Err(e) => {
                eprintln!("decoding {} as it arrives: {e}", info.pack.short());
                None
            }
        }
    }

    /// The follower of `pack`, if one is decoding it.
    fn take_follower(&self, pack: &PackId) -> Option<follow::Follower> {
        self.follower
            .lock()
            .expect("follower")
            .take_if(|f| f.pack == *pack)
    }

    /// Scans a pod's volume (through the stat cache) and remembers the manifest.
    /// The caller holds the pod's lock.
    fn scan_pod(&self, pod: &PodName) -> Result<Manifest, OnboardError> {
        Ok(self.scan_pod_reporting(pod)?.0)
    }

    /// [`OnboardService::scan_pod`], with the entries the pod made that cannot be synced (left
    /// out of the manifest, or listed at their last version read whole), to report.
    fn scan_pod_reporting(&self, pod: &PodName) -> Result<(Manifest, Vec<Skipped>), OnboardError> {
        let Some(dir) = self.volumes.pod(pod)? else {
            // Remembered too: a push planned on an empty volume can then resume after the pod
            // wrote elsewhere in it.
            let empty = Manifest::default();
            self.db().remember_pod_manifest(pod, &empty)?;
            return Ok((empty, Vec::new()));
        };
        let scope = format!("pod:{pod}");
        let cache = self.db().stat_cache(&scope)?;
        let (manifest, fresh, stats) = scan_dir(&dir, &cache, &ScanOptions::pod())?;
        let mut db = self.db();
        db.save_stat_cache(&scope, &cache, &fresh)?;
        db.remember_pod_manifest(pod, &manifest)?;
        Ok((manifest, stats.left_out))
    }

    /// Uploads nobody has continued for 30 days are dropped (their grounds gave up on them),
    /// and so are pull packs nobody finished.
    fn collect_stale_uploads(&self) {
        let stale = self.db().stale_incoming(30 * 24 * 3600).unwrap_or_default();
        for pack in stale {
            self.discard(&pack);
        }
        self.collect_stale_pull_packs();
    }

    /// Drops what was staged of a pack, and its record.
    fn discard(&self, pack: &PackId) {
        // Stopped before its staging folder goes.
        drop(self.take_follower(pack));
        let _ = self.db().delete_incoming(pack);
        let _ = fs::remove_dir_all(self.staging_dir(pack));
        let _ = fs::remove_file(self.pack_file(pack));
    }
}

/// An answer, after the message naming what it leaves out when it leaves out anything.
/// What a pull pack's encoder holds within a `memory` bound: an eighth for the prefix and one
/// for zstd's window (it keeps its own copy of the prefix and the content it matches against),
/// and never more than a ground decodes with.
fn pull_encoder_limits(memory: u64) -> Limits {
    let ground = Limits::default();
    let eighth = (memory / 8).max(1 << 20);
    Limits {
        max_prefix_bytes: eighth.min(ground.max_prefix_bytes),
        max_window_log: ((63 - eighth.leading_zeros()) as u8).clamp(20, ground.max_window_log),
        ..ground
    }
}

fn with_skipped(left_out: Vec<Skipped>, answer: Message) -> Vec<Message> {
    let mut replies = Vec::with_capacity(2);
    if !left_out.is_empty() {
        let (entries, more) = crate::manifest::named(left_out);
        replies.push(Message::Skipped { entries, more });
    }
    replies.push(answer);
    replies
}

/// This boot of the machine, as the kernel names it; "" where there is no such name (then
/// unsynced bytes are never trusted after a restart).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A service in a fresh temporary folder, for tests.
#[cfg(test)]
fn service_for_test() -> (tempfile::TempDir, OnboardService) {
    let t = tempfile::tempdir().unwrap();
    let svc =
        OnboardService::open(&t.path().join("v"), &t.path().join("s"), Limits::default()).unwrap();
    (t, svc)
}
