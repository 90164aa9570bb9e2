//! The onboard end: one [`OnboardService`] per daemon, one [`OnboardSession`] per connection.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::fs::Dir;

use crate::delta::rsync;
use crate::id::{ManifestId, NodeId, PackId};
use crate::manifest::{Entry, Manifest, ScanOptions, SkipReason, Skipped, diff, scan_dir};
use crate::pack::{self, BaseReader, Limits, ObjectSink, PackError};
use crate::path::{PodName, VolumePath};
use crate::state::{Db, IncomingPack, JournalEntry};
use crate::volume::{self, ApplyPlan, VolumeError, Volumes};
use crate::wire::{ErrorKind, ManifestBody, Message};

/// Staged bytes are made durable and acknowledged at least every this many bytes; the
/// connection also flushes on a timer ([`crate::link::ACK_INTERVAL`]) and when the link drops.
const ACK_EVERY_BYTES: u64 = 256 * 1024;

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
    /// Most content one pull pack carries; see [`OnboardService::set_pull_pack_cap`].
    pull_pack_cap: u64,
    /// The volumes live on another disk than the staging area: a volume that is full (or
    /// failing) leaves a received pack whole and staged, so the retry sends nothing again.
    /// On one disk, a pack that could not be placed is dropped to give its space back.
    volumes_apart: bool,
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
        let svc = Self {
            volumes,
            state_dir: s,
            db: Mutex::new(db),
            node,
            limits,
            pod_locks: Mutex::new(HashMap::new()),
            receivers: Mutex::new(HashMap::new()),
            next_receiver: std::sync::atomic::AtomicU64::new(1),
            pull_pack_cap: DEFAULT_PULL_PACK_CAP,
            volumes_apart,
        };
        svc.roll_forward()?;
        Ok(svc)
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn session(self: &Arc<Self>) -> OnboardSession {
        OnboardSession {
            svc: self.clone(),
            to_apply: None,
            incoming: None,
        }
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

    /// Finishes every changeset a crash interrupted, and removes temporaries a crash left in
    /// volumes. A changeset that cannot finish now (its volume's disk is full) stays journaled
    /// and is tried again at the next start; the daemon still starts.
    fn roll_forward(&self) -> Result<(), OnboardError> {
        let entries = self.db().journal_entries()?;
        let mut keep: HashMap<PodName, std::collections::HashSet<String>> = HashMap::new();
        for e in entries {
            if let Err(err) = self.finish_journaled(&e) {
                // Escaped: the error may name a path a pod chose (a newline would forge a line).
                eprintln!(
                    "pod {}: cannot finish applying pack {} yet: {}",
                    e.pod,
                    e.pack.short(),
                    crate::path::escape(&err.to_string())
                );
                if let Ok(plan) = postcard::from_bytes::<ApplyPlan>(&e.plan) {
                    keep.entry(e.pod.clone())
                        .or_default()
                        .extend(plan.temps().map(String::from));
                }
            }
        }
        for pod in self.volumes.pods()? {
            if let Some(vol) = self.volumes.pod(&pod)? {
                volume::sweep_temps(&vol, keep.get(&pod).unwrap_or(&Default::default()));
            }
        }
        self.collect_stale_uploads();
        Ok(())
    }

    /// Runs a journaled changeset to its end. One that can never finish (a file it was to
    /// place is gone and the volume holds something else there) is abandoned, with a log line:
    /// the volume keeps what it has, and the next manifest shows it.
    fn finish_journaled(&self, e: &JournalEntry) -> Result<(), OnboardError> {
        let plan: ApplyPlan = postcard::from_bytes(&e.plan)
            .map_err(|_| crate::state::StateError::Corrupt("journal plan"))?;
        let vol = self.volumes.create_pod(&e.pod)?;
        match volume::apply(&vol, &plan, &e.pack.short()) {
            Ok(()) => {
                self.finish_apply(&e.pack)?;
                let now = self.scan_pod(&e.pod)?;
                self.db().remember_applied(&e.pack, &e.pod, &now.root())?;
                Ok(())
            }
            Err(err @ VolumeError::Unrecoverable { .. }) => {
                eprintln!(
                    "pod {}: abandoning pack {}: {}",
                    e.pod,
                    e.pack.short(),
                    crate::path::escape(&err.to_string())
                );
                self.finish_apply(&e.pack)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Before anything reads or changes a pod's volume: a changeset of it still journaled (its
    /// apply failed, the disk was full) is finished first; while it cannot be, the pod's
    /// volume takes no new changes. The caller holds the pod's lock.
    fn settle_pod(&self, pod: &PodName) -> Result<(), Reply> {
        let entries = self.db().journal_entries().map_err(internal)?;
        for e in entries.iter().filter(|e| &e.pod == pod) {
            self.finish_journaled(e).map_err(|err| {
                storage(format!(
                    "the pod's previous changeset could not be finished yet: {err}"
                ))
            })?;
        }
        Ok(())
    }

    /// Uploads nobody has continued for 30 days are dropped (their grounds gave up on them).
    fn collect_stale_uploads(&self) {
        let stale = self.db().stale_incoming(30 * 24 * 3600).unwrap_or_default();
        for pack in stale {
            self.discard(&pack);
        }
        let stale = self
            .db()
            .stale_pull_packs(PULL_PACK_DAYS * 24 * 3600)
            .unwrap_or_default();
        for pack in stale {
            let _ = self.db().delete_pull_pack(&pack);
            let _ = fs::remove_file(self.pull_file(&pack));
        }
    }

    fn finish_apply(&self, pack: &PackId) -> Result<(), OnboardError> {
        let db = self.db();
        db.journal_end(pack)?;
        db.delete_incoming(pack)?;
        drop(db);
        let _ = fs::remove_dir_all(self.staging_dir(pack));
        let _ = fs::remove_file(self.pack_file(pack));
        Ok(())
    }

    fn discard(&self, pack: &PackId) {
        let _ = self.db().delete_incoming(pack);
        let _ = fs::remove_dir_all(self.staging_dir(pack));
        let _ = fs::remove_file(self.pack_file(pack));
    }

    /// The pod's manifest (after what it left out of it, if anything).
    fn manifest_reply(
        &self,
        pod: PodName,
        known: Option<ManifestId>,
    ) -> Result<Vec<Message>, OnboardError> {
        let lock = self.pod_lock(&pod);
        let _held = lock.lock().expect("pod lock");
        if let Err(Reply(m, _)) = self.settle_pod(&pod) {
            return Ok(vec![*m]);
        }
        let (current, left_out) = self.scan_pod_reporting(&pod)?;
        let root = current.root();
        let body = match known {
            Some(k) if k == root => ManifestBody::Same,
            Some(k) => match self.db().pod_manifest(&pod, &k)? {
                Some(old) => ManifestBody::Delta {
                    from: k,
                    blob: compress(&postcard::to_stdvec(&diff(&old, &current)).expect("changes")),
                },
                None => ManifestBody::Full {
                    blob: compress(&current.encode()),
                },
            },
            None => ManifestBody::Full {
                blob: compress(&current.encode()),
            },
        };
        let mut replies = skipped_message(left_out).into_iter().collect::<Vec<_>>();
        replies.push(Message::ManifestReply { pod, root, body });
        Ok(replies)
    }

    fn signatures(
        &self,
        pod: &PodName,
        base_root: &ManifestId,
        entries: &[u32],
    ) -> Result<Message, Reply> {
        let base = self
            .db()
            .pod_manifest(pod, base_root)
            .map_err(internal)?
            .ok_or_else(|| conflict("that manifest of the pod is no longer known; ask again"))?;
        let dir = self
            .volumes
            .pod(pod)
            .map_err(internal)?
            .ok_or_else(|| conflict("the pod has no volume"))?;
        if entries.len() as u64 > self.limits.max_changes {
            return Err(reply(
                ErrorKind::TooLarge,
                format!("{} signatures asked for at once", entries.len()),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut sigs = Vec::with_capacity(entries.len());
        for &i in entries {
            let entry = base
                .entries()
                .get(i as usize)
                .filter(|e| e.file_id().is_some())
                .ok_or_else(|| refused(format!("entry #{i} is not a file")))?;
            // Each file once, and none too large to hold in memory: without its signature the
            // ground sends that file whole.
            if !seen.insert(i) || entry.size() > self.limits.max_rsync_bytes() {
                continue;
            }
            let bytes = VolumeReader(&dir).read_base(entry).map_err(internal)?;
            if Some(crate::id::ContentId::of(&bytes)) != entry.file_id() {
                return Err(conflict(format!("{} changed onboard", entry.path)));
            }
            sigs.push((i, rsync::signature(&bytes)));
        }
        let blob = compress(&postcard::to_stdvec(&sigs).expect("signatures"));
        Ok(Message::Signatures { blob })
    }

    /// Decodes, verifies and applies a completely received pack.
    fn apply_pack(&self, inc: &IncomingPack) -> Result<ManifestId, Reply> {
        let lock = self.pod_lock(&inc.pod);
        let _held = lock.lock().expect("pod lock");
        self.settle_pod(&inc.pod)?;
        // The volume as it is now, and the state the pack was planned on: the same, or (for a
        // push into a folder) differing only outside that folder.
        let now = self.scan_pod(&inc.pod).map_err(internal)?;
        // Another connection applied it a moment ago (the ground reconnected meanwhile).
        if self.db().applied(&inc.pack, &inc.pod).map_err(internal)? == Some(now.root()) {
            return Ok(now.root());
        }
        let base = if now.root() == inc.base_root {
            now.clone()
        } else {
            let base = self
                .db()
                .pod_manifest(&inc.pod, &inc.base_root)
                .map_err(internal)?;
            match (&inc.scope, base) {
                (Some(scope), Some(base)) if base.region(scope) == now.region(scope) => base,
                _ => {
                    return Err(conflict(
                        "the pod's volume changed since this pack was planned; plan again",
                    ));
                }
            }
        };
        let vol = self.volumes.create_pod(&inc.pod).map_err(internal)?;
        let staging = self.staging_dir(&inc.pack);
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(|e| storage(e.to_string()))?;
        let mut file = File::open(self.pack_file(&inc.pack)).map_err(|e| storage(e.to_string()))?;
        let mut sink = StagingSink { dir: &staging };
        let mut reader = std::io::BufReader::new(&mut file);
        let decoded = pack::decode_pack(
            &mut reader,
            &base,
            &VolumeReader(&vol),
            &mut sink,
            &self.limits,
        )
        .map_err(pack_reply)?;
        if decoded.target.root() != inc.target_root {
            return Err(refused("the pack's target differs from what was offered"));
        }
        // Applied to the volume as it is now. Outside the scope, the pod's own changes stay.
        if let Some(scope) = &inc.scope
            && let Some(c) = decoded
                .header
                .changes
                .iter()
                .find(|c| !(c.path().is_within(scope) || scope.is_within(c.path())))
        {
            return Err(refused(format!(
                "the pack changes {} outside its scope {scope}",
                c.path()
            )));
        }
        let result = pack::target_on(&now, &decoded).map_err(|e| match e {
            PackError::Manifest(_) => conflict(format!("the pod changed what the pack uses: {e}")),
            other => pack_reply(other),
        })?;
        // Every file goes into the volume under a temporary name first; if the volume's disk is
        // too small, this fails, the temporaries go, and the pod's files are untouched.
        let plan = volume::prepare(
            &vol,
            &staging,
            &now,
            &decoded.header.changes,
            &decoded.objects,
            &inc.pack.short(),
        )
        .map_err(|e| match e {
            VolumeError::SourceGone { .. } => conflict(e.to_string()),
            other => {
                let mut r = storage(other.to_string());
                if self.volumes_apart {
                    r.1 = Staged::Keep;
                }
                r
            }
        })?;
        let _ = fs::remove_dir_all(&staging);
        self.db()
            .journal_begin(&JournalEntry {
                pack: inc.pack,
                pod: inc.pod.clone(),
                plan: postcard::to_stdvec(&plan).expect("plan"),
            })
            .map_err(internal)?;
        // Renames only. Should one fail, the journal keeps the changeset and the next start
        // finishes it.
        volume::apply(&vol, &plan, &inc.pack.short()).map_err(|e| {
            unfinished(format!(
                "{e}; the changeset stays journaled and is finished when the daemon next starts"
            ))
        })?;
        // The renames are done: the journal entry ends first, whatever happens next.
        self.finish_apply(&inc.pack).map_err(internal)?;
        let db = self.db();
        db.remember_pod_manifest(&inc.pod, &result)
            .map_err(internal)?;
        db.remember_applied(&inc.pack, &inc.pod, &result.root())
            .map_err(internal)?;
        Ok(result.root())
    }
}

/// The message naming what an answer leaves out, when it leaves out anything.
fn skipped_message(left_out: Vec<Skipped>) -> Option<Message> {
    if left_out.is_empty() {
        return None;
    }
    let (entries, more) = crate::manifest::named(left_out);
    Some(Message::Skipped { entries, more })
}

fn compress(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, 19).expect("in-memory zstd")
}

/// Reads base content from a pod's volume (or the ground's copy).
pub(crate) struct VolumeReader<'a>(pub(crate) &'a Dir);

impl BaseReader for VolumeReader<'_> {
    fn read_base(&self, entry: &Entry) -> Result<Vec<u8>, PackError> {
        // No more than the entry's size: the pod may have grown the file since.
        volume::read_file_sized(self.0, &entry.path, entry.size()).map_err(|_| {
            PackError::BaseChanged {
                path: entry.path.to_string(),
                expected: entry.file_id().unwrap_or_else(crate::id::ContentId::empty),
            }
        })
    }
}

/// Writes decoded objects to `o<index>` in the pack's staging folder, synced.
pub(crate) struct StagingSink<'a> {
    pub(crate) dir: &'a Path,
}

impl ObjectSink for StagingSink<'_> {
    fn put(&mut self, index: u32, data: &mut dyn Read) -> Result<(), PackError> {
        let mut f = File::create(self.dir.join(format!("o{index}")))?;
        std::io::copy(data, &mut f)?;
        f.sync_all()?;
        Ok(())
    }
}

/// A failed request, as the message the ground will see, and what becomes of a received pack
/// it concerns.
pub struct Reply(Box<Message>, Staged);

/// Whether a pack whose apply failed stays staged for the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Staged {
    /// Never applicable as it is (it failed verification, or the volume moved on): dropped.
    Drop,
    /// Whole and verified, held up by something that passes (a full volume disk), or journaled.
    Keep,
}

fn reply(kind: ErrorKind, message: impl Into<String>) -> Reply {
    Reply(
        Box::new(Message::Error {
            kind,
            message: message.into(),
        }),
        Staged::Drop,
    )
}
fn conflict(m: impl Into<String>) -> Reply {
    reply(ErrorKind::Conflict, m)
}
fn refused(m: impl Into<String>) -> Reply {
    reply(ErrorKind::Refused, m)
}
fn storage(m: impl Into<String>) -> Reply {
    reply(ErrorKind::Storage, m)
}
/// An error after the journal began: the pack must not be discarded.
fn unfinished(m: impl Into<String>) -> Reply {
    let mut r = storage(m);
    if let Message::Error { message, .. } = r.0.as_mut() {
        message.insert_str(0, JOURNALED);
    }
    r.1 = Staged::Keep;
    r
}

const JOURNALED: &str = "journaled: ";

fn internal(e: impl std::fmt::Display) -> Reply {
    reply(ErrorKind::Storage, e.to_string())
}
fn pack_reply(e: PackError) -> Reply {
    let kind = match &e {
        PackError::OverLimit { .. } => ErrorKind::TooLarge,
        PackError::BaseChanged { .. } | PackError::WrongBase => ErrorKind::Conflict,
        PackError::Io(_) => ErrorKind::Storage,
        _ => ErrorKind::Refused,
    };
    reply(kind, e.to_string())
}

/// A pack being received on this connection.
struct Receiving {
    info: IncomingPack,
    file: File,
    /// Bytes written but not yet synced and acknowledged.
    unsynced: u64,
    /// This connection's claim on the pack (see `OnboardService::receivers`).
    claim: u64,
}

impl OnboardService {
    fn claim(&self, pack: &PackId) -> u64 {
        let c = self
            .next_receiver
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.receivers.lock().expect("receivers").insert(*pack, c);
        c
    }

    fn holds_claim(&self, pack: &PackId, claim: u64) -> bool {
        self.receivers.lock().expect("receivers").get(pack) == Some(&claim)
    }

    /// Drops a staged pack its ground gave up on, unless a connection is receiving it.
    fn cancel(&self, pack: &PackId) {
        let busy = self.receivers.lock().expect("receivers").contains_key(pack);
        if !busy {
            self.discard(pack);
        }
    }

    fn release(&self, pack: &PackId, claim: u64) {
        let mut r = self.receivers.lock().expect("receivers");
        if r.get(pack) == Some(&claim) {
            r.remove(pack);
        }
    }
}

/// What the connection should do after a message.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub replies: Vec<Message>,
    pub close: bool,
    /// Send the replies, then call [`OnboardSession::go_on`]: a whole pack is acknowledged
    /// before its (possibly long) apply starts, so the ground knows every byte is durable.
    pub more: bool,
}

pub struct OnboardSession {
    svc: Arc<OnboardService>,
    /// A whole pack received and acknowledged, to apply next.
    to_apply: Option<IncomingPack>,
    incoming: Option<Receiving>,
}

impl OnboardSession {
    /// Handles one message from the ground. Blocking (storage I/O); run it off the async reactor.
    pub fn handle(&mut self, msg: Message) -> Outcome {
        match self.dispatch(msg) {
            Ok(o) => o,
            Err(Reply(m, _)) => Outcome {
                replies: vec![*m],
                close: false,
                more: false,
            },
        }
    }

    fn dispatch(&mut self, msg: Message) -> Result<Outcome, Reply> {
        let one = |m| {
            Ok(Outcome {
                replies: vec![m],
                close: false,
                more: false,
            })
        };
        match msg {
            Message::ManifestRequest { pod, known } => Ok(Outcome {
                replies: self.svc.manifest_reply(pod, known).map_err(internal)?,
                close: false,
                more: false,
            }),
            Message::SignatureRequest {
                pod,
                base_root,
                entries,
            } => one(self.svc.signatures(&pod, &base_root, &entries)?),
            Message::PackOffer {
                pod,
                pack,
                len,
                base_root,
                target_root,
                scope,
            } => self.offer(pod, pack, len, base_root, target_root, scope),
            Message::PackData { offset, bytes } => self.data(offset, &bytes),
            Message::KeepAlive => Ok(Outcome::default()),
            Message::PullRequest {
                pod,
                filter,
                delete,
                base_root,
                base,
                resume,
            } => Ok(Outcome {
                replies: self
                    .svc
                    .pull_request(&pod, &filter, delete, base_root, &base, resume)?,
                close: false,
                more: false,
            }),
            Message::PullRange { pack, offset, len } => Ok(Outcome {
                replies: self.svc.pull_range(&pack, offset, len)?,
                close: false,
                more: false,
            }),
            Message::PullDone { pack } => {
                self.svc.pull_done(&pack)?;
                Ok(Outcome::default())
            }
            Message::PackCancel { pack } => {
                if let Some(rx) = self.incoming.take_if(|r| r.info.pack == pack) {
                    self.svc.release(&pack, rx.claim);
                }
                self.svc.cancel(&pack);
                Ok(Outcome::default())
            }
            // A goodbye gets the last acknowledgement, so the ground knows where the next pass
            // starts.
            Message::Bye => Ok(Outcome {
                replies: self.flush().into_iter().collect(),
                close: true,
                more: false,
            }),
            other => Err(reply(
                ErrorKind::Protocol,
                format!("unexpected message {}", message_name(&other)),
            )),
        }
    }

    fn offer(
        &mut self,
        pod: PodName,
        pack: PackId,
        len: u64,
        base_root: ManifestId,
        target_root: ManifestId,
        scope: Option<VolumePath>,
    ) -> Result<Outcome, Reply> {
        // A pack offered while another is half received on this connection: keep what came.
        self.flush();
        let cap = self.svc.limits.max_total_bytes + self.svc.limits.max_header_bytes;
        if len > cap {
            return Err(reply(
                ErrorKind::TooLarge,
                format!("a pack of {len} bytes is over this node's limit of {cap}"),
            ));
        }
        // Claimed before the state is read, so an older connection still holding the pack
        // stops writing before we look at what it left.
        let claim = self.svc.claim(&pack);
        let known = self.svc.db().incoming(&pack).map_err(internal)?;
        let known = known.filter(|k| k.pod == pod && k.len == len);
        {
            // Before a byte is sent (or resent): is the pack still applicable? Already applied
            // (the ground missed our answer), or built on a volume state that is gone?
            let fit = self.svc.pack_fits(&pod, &pack, &base_root, scope.as_ref());
            let fit = match fit {
                Ok(f) => f,
                Err(e) => {
                    self.svc.release(&pack, claim);
                    return Err(e);
                }
            };
            match fit {
                Fit::Applied(root) => {
                    self.svc.release(&pack, claim);
                    return Ok(Outcome {
                        replies: vec![
                            Message::PackAccept { pack, offset: len },
                            Message::PackApplied { pack, root },
                        ],
                        close: false,
                        more: false,
                    });
                }
                Fit::Stale => {
                    self.svc.release(&pack, claim);
                    if known.is_some() {
                        self.svc.discard(&pack);
                    }
                    return Err(conflict(
                        "the pod's volume changed since this pack was planned; plan again",
                    ));
                }
                Fit::Fits => {}
            }
        }
        let boot = boot_id();
        let path = self.svc.pack_file(&pack);
        let _ = target_root;
        let mut info = known.unwrap_or(IncomingPack {
            pack,
            pod,
            len,
            received: 0,
            base_root,
            target_root,
            boot: String::new(),
            scope,
        });
        let fresh = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| storage(e.to_string()))?;
        if fresh {
            // The staged file's name must survive a power loss like its bytes do.
            let _ = File::open(self.svc.state_dir.join("staging")).and_then(|d| d.sync_all());
        }
        let on_disk = file.metadata().map_err(|e| storage(e.to_string()))?.len();
        // A staged file shorter than its record (lost to a crash before its folder entry was
        // durable, or removed by hand): resume from what is really there.
        info.received = info.received.min(on_disk);
        // Bytes past the synced offset were written by this daemon before it died or lost the
        // link. Within the same boot they are in the page cache, whole and in order (each one
        // came out of an authenticated record), so keep them; after a reboot they may be torn.
        let unsynced = if !boot.is_empty() && info.boot == boot && on_disk > info.received {
            on_disk.min(len) - info.received
        } else {
            0
        };
        file.set_len(info.received + unsynced)
            .map_err(|e| storage(e.to_string()))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| storage(e.to_string()))?;
        info.boot = boot;
        self.svc.db().put_incoming(&info).map_err(internal)?;
        let offset = info.received + unsynced;
        self.incoming = Some(Receiving {
            info,
            file,
            unsynced,
            claim,
        });
        let accept = Message::PackAccept { pack, offset };
        if offset < len {
            return Ok(Outcome {
                replies: vec![accept],
                close: false,
                more: false,
            });
        }
        // Everything is here already (the daemon died between the last byte and the apply).
        let mut out = self.complete()?;
        out.replies.insert(0, accept);
        Ok(out)
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<Outcome, Reply> {
        let Some(rx) = self.incoming.as_mut() else {
            return Err(reply(
                ErrorKind::Protocol,
                "pack data without an accepted pack offer",
            ));
        };
        if !self.svc.holds_claim(&rx.info.pack, rx.claim) {
            self.incoming = None;
            return Err(reply(
                ErrorKind::Superseded,
                "a newer connection took this pack over",
            ));
        }
        let at = rx.info.received + rx.unsynced;
        if offset != at || at + bytes.len() as u64 > rx.info.len {
            return Err(reply(
                ErrorKind::Protocol,
                format!("data at offset {offset} does not continue the pack at {at}"),
            ));
        }
        if let Err(e) = rx.file.write_all(bytes) {
            return Err(self.drop_incoming(e));
        }
        rx.unsynced += bytes.len() as u64;
        if at + bytes.len() as u64 == rx.info.len {
            return self.complete();
        }
        if rx.unsynced >= ACK_EVERY_BYTES {
            return Ok(Outcome {
                replies: self.flush().into_iter().collect(),
                close: false,
                more: false,
            });
        }
        Ok(Outcome::default())
    }

    /// Makes what was received durable, and says so: the acknowledgement, if there was
    /// anything new. The connection calls this on a timer, and when the link goes away.
    pub fn flush(&mut self) -> Option<Message> {
        let rx = self.incoming.as_mut()?;
        if rx.unsynced == 0 || !self.svc.holds_claim(&rx.info.pack, rx.claim) {
            return None;
        }
        if let Err(e) = rx.file.sync_data() {
            eprintln!("staging {}: {e}", rx.info.pack.short());
            return None;
        }
        rx.info.received += rx.unsynced;
        rx.unsynced = 0;
        if let Err(e) = self.svc.db().put_incoming(&rx.info) {
            eprintln!("staging {}: {e}", rx.info.pack.short());
            return None;
        }
        Some(Message::PackAck {
            offset: rx.info.received,
        })
    }

    /// Storage failed while receiving. When the disk is full, what was received is dropped to
    /// give the space back (the pack could not have fitted anyway); other failures keep it for
    /// a resume.
    fn drop_incoming(&mut self, e: std::io::Error) -> Reply {
        let Some(rx) = self.incoming.take() else {
            return storage(e.to_string());
        };
        let full = e.raw_os_error() == Some(28); // ENOSPC
        if full {
            drop(rx.file);
            self.svc.release(&rx.info.pack, rx.claim);
            self.svc.discard(&rx.info.pack);
            storage(format!(
                "no space left on this node's state disk for a {} pack; the partial upload was \
                 dropped",
                crate::units::fmt_bytes(rx.info.len)
            ))
        } else {
            storage(e.to_string())
        }
    }

    /// Bytes received and not yet acknowledged.
    pub fn unacknowledged(&self) -> u64 {
        self.incoming.as_ref().map_or(0, |r| r.unsynced)
    }

    /// The whole pack is here: make it durable, then verify and apply it.
    fn complete(&mut self) -> Result<Outcome, Reply> {
        let rx = self.incoming.as_mut().expect("a pack being received");
        if let Err(e) = rx.file.sync_data() {
            return Err(self.drop_incoming(e));
        }
        rx.info.received += rx.unsynced;
        rx.unsynced = 0;
        self.svc.db().put_incoming(&rx.info).map_err(internal)?;
        let info = rx.info.clone();
        let claim = rx.claim;
        self.incoming = None;
        let pack = info.pack;
        self.svc.release(&pack, claim);
        let ack = Message::PackAck {
            offset: info.received,
        };
        self.to_apply = Some(info);
        Ok(Outcome {
            replies: vec![ack],
            close: false,
            more: true,
        })
    }

    /// Work an earlier [`Outcome`] asked to go on with: applying a whole pack.
    pub fn go_on(&mut self) -> Outcome {
        match self.apply_received() {
            Ok(o) => o,
            Err(Reply(m, _)) => Outcome {
                replies: vec![*m],
                close: false,
                more: false,
            },
        }
    }

    fn apply_received(&mut self) -> Result<Outcome, Reply> {
        let Some(info) = self.to_apply.take() else {
            return Ok(Outcome::default());
        };
        let pack = info.pack;
        match self.svc.apply_pack(&info) {
            Ok(root) => Ok(Outcome {
                replies: vec![Message::PackApplied { pack, root }],
                close: false,
                more: false,
            }),
            Err(e) => {
                // A pack that failed verification is never retried as is; one whose changeset
                // is journaled is finished at the next start; one a full volume disk held up
                // stays staged, so the ground's retry applies it without sending it again.
                match e.1 {
                    Staged::Drop => self.svc.discard(&pack),
                    // Its decoded objects are made again from the pack next time.
                    Staged::Keep => {
                        let _ = fs::remove_dir_all(self.svc.staging_dir(&pack));
                    }
                }
                Err(e)
            }
        }
    }
}

/// Whether an offered pack can apply to the pod's volume as it is now.
enum Fit {
    Fits,
    Applied(ManifestId),
    Stale,
}

impl OnboardService {
    fn pack_fits(
        &self,
        pod: &PodName,
        pack: &PackId,
        base_root: &ManifestId,
        scope: Option<&VolumePath>,
    ) -> Result<Fit, Reply> {
        let applied = self.db().applied(pack, pod).map_err(internal)?;
        let lock = self.pod_lock(pod);
        let _held = lock.lock().expect("pod lock");
        self.settle_pod(pod)?;
        let now = self.scan_pod(pod).map_err(internal)?;
        // Applied, and the volume is still where it left it: the ground missed our answer. (The
        // same pack can come again later: the same change from the same state has the same
        // bytes. Then the volume is back at its base and it applies anew.)
        if applied == Some(now.root()) {
            return Ok(Fit::Applied(now.root()));
        }
        if now.root() == *base_root {
            return Ok(Fit::Fits);
        }
        let base = self.db().pod_manifest(pod, base_root).map_err(internal)?;
        Ok(match (scope, base) {
            (Some(scope), Some(base)) if base.region(scope) == now.region(scope) => Fit::Fits,
            _ => Fit::Stale,
        })
    }
}

/// Largest manifest of a ground's copy a node takes (decoded, it is held in memory): about
/// 200,000 files.
const MAX_COPY_MANIFEST: usize = 16 << 20;
/// Files found changing while a pull pack is encoded (after the check just before encoding
/// found the rest), each pinned to the copy's version, before the pull gives up for this pass.
const MAX_PULL_RETRIES: u32 = 64;
/// Content one pull pack carries at most, by default, with the bases it is encoded against:
/// the node holds them in memory while it encodes, so a first pull of a large volume comes as
/// several packs, and a larger file is left out (see [`OnboardService::set_pull_pack_cap`]).
pub const DEFAULT_PULL_PACK_CAP: u64 = 128 << 20;
/// Pull packs nobody finished for this long are dropped.
const PULL_PACK_DAYS: i64 = 7;

/// Largest range one `PullRange` may ask for; the ground asks for more as data arrives.
const MAX_PULL_RANGE: u64 = 4 << 20;
/// Bytes of pull pack per `PackData` frame.
const PULL_FRAME: u64 = 16 * 1024;

impl OnboardService {
    /// Sets the most a pull pack may hold in memory on the node while it is encoded: its
    /// files, the bases they are encoded against and the signatures they are diffed with
    /// (`pull::object_cost`). A larger selection comes as several packs, one after another
    /// (`PullOffer::more`). A single file larger than this is left out of pulls and named to
    /// the ground (`SkipReason::TooLarge`), whatever its size is made of: a pod's sparse file
    /// of terabytes costs the node nothing but the time to hash it.
    pub fn set_pull_pack_cap(&mut self, bytes: u64) {
        self.pull_pack_cap = bytes.max(1);
    }

    fn pull_file(&self, pack: &PackId) -> PathBuf {
        self.state_dir
            .join("pulls")
            .join(format!("{}.pack", pack.to_hex()))
    }

    /// Builds (or finds again) the pack that takes the ground's copy to the pod's selection.
    fn pull_request(
        &self,
        pod: &PodName,
        filter: &[String],
        delete: bool,
        base_root: ManifestId,
        base_blob: &[u8],
        resume: Option<PackId>,
    ) -> Result<Vec<Message>, Reply> {
        let offer = |p: &crate::state::PullPack, more: bool| Message::PullOffer {
            pack: p.pack,
            len: p.len,
            base_root: p.base_root,
            target_root: p.target_root,
            more,
        };
        // A ground that asks from the state one of our pull packs leads to has applied it,
        // whether or not its `PullDone` arrived (the link may have been cut right after the
        // apply): what it delivered serves as bases from now on, or the next pull would send
        // whole files.
        let applied = self
            .db()
            .pull_pack(pod, crate::state::PullPackKey::Target(base_root))
            .map_err(internal)?;
        if let Some(done) = applied {
            self.pull_done(&done.pack)?;
        }
        if let Some(pack) = resume
            && let Some(p) = self
                .db()
                .pull_pack(pod, crate::state::PullPackKey::Id(pack))
                .map_err(internal)?
            && self.pull_file(&pack).exists()
        {
            // Whether more follows was not kept: the ground asks once more to find out.
            return Ok(vec![offer(&p, true)]);
        }
        let filter =
            crate::manifest::PathFilter::new(filter).map_err(|e| refused(e.to_string()))?;
        let lock = self.pod_lock(pod);
        let _held = lock.lock().expect("pod lock");
        self.settle_pod(pod)?;
        let (now, left_out) = self.scan_pod_reporting(pod).map_err(internal)?;
        let base = if !base_blob.is_empty() {
            let raw = zstd::bulk::decompress(base_blob, MAX_COPY_MANIFEST).map_err(|_| {
                refused("the copy's manifest does not decompress (or is too large)")
            })?;
            let m = Manifest::decode(&raw).map_err(|e| refused(e.to_string()))?;
            if m.root() != base_root {
                return Err(refused("the copy's manifest does not match its root"));
            }
            m
        } else if base_root == Manifest::default().root() {
            Manifest::default()
        } else {
            // A copy is usually what an earlier pull made it; a copy that equals the volume as a
            // push left it is found too.
            let db = self.db();
            db.copy_manifest(pod, &base_root)
                .transpose()
                .or_else(|| db.pod_manifest(pod, &base_root).transpose())
                .transpose()
                .map_err(internal)?
                .ok_or_else(|| {
                    reply(
                        ErrorKind::NotFound,
                        "this node does not know the copy's manifest; send it",
                    )
                })?
        };
        let mut target = now.filtered(&filter);
        // A pod's symlink that leads outside its volume means nothing on the ground (and a
        // copy must never hold one): it is not pulled.
        let escaping: Vec<VolumePath> = target
            .entries()
            .iter()
            .filter(|e| match &e.kind {
                crate::manifest::EntryKind::Symlink { target } => {
                    crate::path::check_symlink_target(&e.path, target).is_err()
                }
                _ => false,
            })
            .map(|e| e.path.clone())
            .collect();
        if !escaping.is_empty() {
            let kept: Vec<Entry> = target
                .entries()
                .iter()
                .filter(|e| !escaping.contains(&e.path))
                .cloned()
                .collect();
            target = Manifest::new(kept).map_err(internal)?;
        }
        if !delete {
            target = super::pull::keep_removed(&base, target);
        }
        // What the scan left out, in the selection, is reported; what of it has a path stays
        // as the copy has it (with --delete too): unreadable or changing now is not removed.
        let mut report: Vec<Skipped> = left_out
            .into_iter()
            .filter(|s| filter.selects_raw(&s.path))
            .collect();
        let held_back: Vec<VolumePath> = report
            .iter()
            .filter_map(|s| std::str::from_utf8(&s.path).ok())
            .filter_map(|p| VolumePath::new(p).ok())
            .collect();
        target = super::pull::hold_back(&target, &base, &held_back).map_err(internal)?;
        let answer = |report: Vec<Skipped>, m: Message| {
            let mut replies: Vec<Message> = skipped_message(report).into_iter().collect();
            replies.push(m);
            replies
        };
        if target.root() == base.root() {
            return Ok(answer(report, Message::PullSame { root: base.root() }));
        }
        let dir = self
            .volumes
            .pod(pod)
            .map_err(internal)?
            .ok_or_else(|| reply(ErrorKind::NotFound, "the pod has no volume yet"))?;
        let held: Vec<crate::id::ContentId> =
            base.entries().iter().filter_map(|e| e.file_id()).collect();
        let sent = self.db().sent_versions(pod, &held).map_err(internal)?;
        let cap = self.pull_pack_cap;
        // A file larger than a pull may hold in memory is left out, whatever its size is made
        // of (a sparse file counts at its full size: the node would read every byte of it).
        {
            let source = super::pull::VolumeSource::new(&dir, &now, &sent, cap);
            let plan = pack::Plan::new(&base, &target, &|id| source.may_hold(id));
            let large = super::pull::too_large(&plan, cap);
            if !large.is_empty() {
                let paths: HashSet<VolumePath> = large.iter().map(|(p, _)| p.clone()).collect();
                target = super::pull::pin(&target, &base, &paths).map_err(internal)?;
                report.extend(
                    large.into_iter().map(|(p, size)| {
                        Skipped::new(p.as_str(), SkipReason::TooLarge { size, cap })
                    }),
                );
            }
        }
        if target.root() == base.root() {
            return Ok(answer(report, Message::PullSame { root: base.root() }));
        }
        if let Some(p) = self
            .db()
            .pull_pack(
                pod,
                crate::state::PullPackKey::Roots(base.root(), target.root()),
            )
            .map_err(internal)?
            && self.pull_file(&p.pack).exists()
        {
            return Ok(answer(report, offer(&p, false)));
        }
        // A file a pod is writing changes under the encoder: leave it at the copy's version in
        // this pack (it comes with the next pull), never torn.
        let mut bytes = Vec::new();
        let mut plan;
        let mut tries = 0;
        let mut kept_sigs;
        let mut more;
        // Everything asked for, and the files found changing while they were read.
        let selection = target;
        let mut changing: HashSet<VolumePath> = HashSet::new();
        // Objects read since the scan and found as it saw them.
        let mut checked: HashSet<crate::id::ContentId> = HashSet::new();
        loop {
            let source =
                super::pull::Signing::new(super::pull::VolumeSource::new(&dir, &now, &sent, cap));
            target = super::pull::pin(&selection, &base, &changing).map_err(internal)?;
            plan = pack::Plan::new(&base, &target, &|id| source.may_hold(id));
            // The cap is taken after the changing files are out, so that one file a pod keeps
            // writing never holds back the rest of the selection.
            let over = super::pull::over_cap(&plan, &base, cap);
            more = !over.is_empty();
            if more {
                // The rest stays at the copy's version for this pack and comes with the next.
                target = super::pull::pin(&target, &base, &over).map_err(internal)?;
                plan = pack::Plan::new(&base, &target, &|id| source.may_hold(id));
            }
            // Every file of this pack the pod wrote since the scan, found in one pass through
            // a fixed buffer rather than one encoding attempt at a time.
            let moved = source.changed_since_scan(&plan, &mut checked);
            if !moved.is_empty() {
                changing.extend(moved);
                continue;
            }
            tries += 1;
            // Files changed in place (a database): deltas against the signature the node kept
            // of the version it sent.
            let wanted: Vec<u32> = plan.signature_requests();
            let ids: Vec<crate::id::ContentId> = wanted
                .iter()
                .filter_map(|&i| base.entries()[i as usize].file_id())
                .collect();
            let by_id = self.db().sent_signatures(pod, &ids).map_err(internal)?;
            let signatures: HashMap<u32, Vec<u8>> = wanted
                .iter()
                .filter_map(|&i| {
                    let id = base.entries()[i as usize].file_id()?;
                    by_id.get(&id).map(|s| (i, s.clone()))
                })
                .collect();
            bytes.clear();
            let encoded = plan.encode(&base, &source, &signatures, &self.limits, &mut bytes);
            kept_sigs = source.into_signatures();
            match encoded {
                Ok(_) => break,
                // Each changed file is pinned to the copy's version and the pack encoded again.
                Err(PackError::SourceChanged { path }) if tries < MAX_PULL_RETRIES => {
                    changing.insert(VolumePath::new(path).map_err(internal)?);
                }
                Err(e) => return Err(pack_reply(e)),
            }
        }
        let mut changing: Vec<VolumePath> = changing.into_iter().collect();
        changing.sort();
        for p in changing {
            if !report.iter().any(|s| s.path == p.as_str().as_bytes()) {
                report.push(Skipped::new(
                    p.as_str(),
                    SkipReason::Changing { listed: true },
                ));
            }
        }
        if target.root() == base.root() {
            return Ok(answer(report, Message::PullSame { root: base.root() }));
        }
        let pack_id = PackId::of(&bytes);
        let path = self.pull_file(&pack_id);
        fs::create_dir_all(path.parent().expect("pulls folder"))
            .and_then(|()| crate::object::write_durably(&path.with_extension("tmp"), &path, &bytes))
            .map_err(|e| storage(e.to_string()))?;
        let p = crate::state::PullPack {
            pack: pack_id,
            pod: pod.clone(),
            len: bytes.len() as u64,
            base_root: base.root(),
            target_root: target.root(),
            sent: plan
                .objects
                .iter()
                .map(|o| {
                    (
                        super::pull::SentVersion {
                            id: o.id,
                            path: o.path.clone(),
                            len: o.size,
                        },
                        kept_sigs.remove(&o.id),
                    )
                })
                .collect(),
        };
        let db = self.db();
        db.put_pull_pack(&p).map_err(internal)?;
        // The copy's manifest once this pack is applied: the next pull names it by its root.
        db.remember_copy_manifest(pod, &target).map_err(internal)?;
        Ok(answer(report, offer(&p, more)))
    }

    /// Bytes of a kept pull pack, as `PackData` frames.
    fn pull_range(&self, pack: &PackId, offset: u64, len: u64) -> Result<Vec<Message>, Reply> {
        let path = self.pull_file(pack);
        let mut f = File::open(&path)
            .map_err(|_| reply(ErrorKind::NotFound, "that pull pack is gone; ask again"))?;
        let total = f.metadata().map_err(|e| storage(e.to_string()))?.len();
        if offset > total {
            return Err(refused(format!(
                "offset {offset} is past the pack's {total} bytes"
            )));
        }
        let end = (offset + len.min(MAX_PULL_RANGE)).min(total);
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| storage(e.to_string()))?;
        let mut buf = vec![0u8; (end - offset) as usize];
        f.read_exact(&mut buf).map_err(|e| storage(e.to_string()))?;
        Ok(buf
            .chunks(PULL_FRAME as usize)
            .enumerate()
            .map(|(i, c)| Message::PackData {
                offset: offset + i as u64 * PULL_FRAME,
                bytes: c.to_vec(),
            })
            .collect())
    }

    /// The ground applied a pull pack: what it delivered is now what the ground holds.
    fn pull_done(&self, pack: &PackId) -> Result<(), Reply> {
        let row = self.db().pull_pack_any(pack).map_err(internal)?;
        if let Some(p) = row {
            self.db().remember_sent(&p.pod, &p.sent).map_err(internal)?;
            self.db().delete_pull_pack(pack).map_err(internal)?;
        }
        let _ = fs::remove_file(self.pull_file(pack));
        Ok(())
    }
}

/// This boot of the machine, as the kernel names it; "" where there is no such name (then
/// unsynced bytes are never trusted after a restart).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::Welcome { .. } => "Welcome",
        Message::ManifestRequest { .. } => "ManifestRequest",
        Message::ManifestReply { .. } => "ManifestReply",
        Message::SignatureRequest { .. } => "SignatureRequest",
        Message::Signatures { .. } => "Signatures",
        Message::PackOffer { .. } => "PackOffer",
        Message::PackAccept { .. } => "PackAccept",
        Message::PackData { .. } => "PackData",
        Message::PackAck { .. } => "PackAck",
        Message::PackApplied { .. } => "PackApplied",
        Message::Error { .. } => "Error",
        Message::Bye => "Bye",
        Message::KeepAlive => "KeepAlive",
        Message::PackCancel { .. } => "PackCancel",
        Message::PullRequest { .. } => "PullRequest",
        Message::PullOffer { .. } => "PullOffer",
        Message::PullSame { .. } => "PullSame",
        Message::PullRange { .. } => "PullRange",
        Message::PullDone { .. } => "PullDone",
        Message::Skipped { .. } => "Skipped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partly received pack whose staged file is longer than its synced offset.
    fn half_received(boot: &str) -> (tempfile::TempDir, Arc<OnboardService>, PackId, u64) {
        let t = tempfile::tempdir().unwrap();
        let svc = Arc::new(
            OnboardService::open(&t.path().join("v"), &t.path().join("s"), Limits::default())
                .unwrap(),
        );
        let pod = PodName::new("p".to_string()).unwrap();
        let pack = PackId([7; 32]);
        let len = 1_000;
        svc.db()
            .put_incoming(&IncomingPack {
                pack,
                pod,
                len,
                received: 200,
                base_root: Manifest::default().root(),
                target_root: ManifestId([1; 32]),
                boot: boot.to_string(),
                scope: None,
            })
            .unwrap();
        fs::write(svc.pack_file(&pack), vec![5u8; 700]).unwrap();
        (t, svc, pack, len)
    }

    /// Regression (found by the soak): a link cut right after the ground applied a pull lost
    /// its `PullDone`, the node never recorded what it delivered, and the next pull sent whole
    /// files instead of deltas. A pull asked from the state a kept pull pack leads to now
    /// counts as its `PullDone`.
    #[test]
    fn a_pull_asked_from_a_packs_target_counts_as_its_done() {
        let t = tempfile::tempdir().unwrap();
        let svc = Arc::new(
            OnboardService::open(&t.path().join("v"), &t.path().join("s"), Limits::default())
                .unwrap(),
        );
        let pod = PodName::new("p".to_string()).unwrap();
        let body = b"results, line after line\n".repeat(100);
        fs::create_dir_all(t.path().join("v/p")).unwrap();
        fs::write(t.path().join("v/p/r.txt"), &body).unwrap();
        let ask = |base_root| Message::PullRequest {
            pod: pod.clone(),
            filter: Vec::new(),
            delete: false,
            base_root,
            base: Vec::new(),
            resume: None,
        };
        let mut s = svc.session();
        let out = s.handle(ask(Manifest::default().root()));
        let Some(Message::PullOffer { target_root, .. }) = out.replies.last().cloned() else {
            panic!("{:?}", out.replies);
        };
        // No PullDone: the link was cut.
        let id = crate::id::ContentId::of(&body);
        assert!(svc.db().sent_versions(&pod, &[id]).unwrap().is_empty());
        let out = s.handle(ask(target_root));
        assert!(
            matches!(out.replies.last(), Some(Message::PullSame { .. })),
            "{:?}",
            out.replies
        );
        assert_eq!(svc.db().sent_versions(&pod, &[id]).unwrap().len(), 1);
    }

    fn offer(svc: &Arc<OnboardService>, pack: PackId, len: u64) -> Message {
        let mut s = svc.session();
        let out = s.handle(Message::PackOffer {
            pod: PodName::new("p".to_string()).unwrap(),
            pack,
            len,
            base_root: Manifest::default().root(),
            target_root: ManifestId([1; 32]),
            scope: None,
        });
        out.replies.into_iter().next().unwrap()
    }

    #[test]
    fn unsynced_bytes_are_kept_within_the_same_boot() {
        let (_t, svc, pack, len) = half_received(&boot_id());
        if boot_id().is_empty() {
            eprintln!("no boot id on this system: the same-boot case cannot be told apart");
            return;
        }
        assert_eq!(
            offer(&svc, pack, len),
            Message::PackAccept { pack, offset: 700 }
        );
    }

    #[test]
    fn a_staged_file_shorter_than_its_record_resumes_from_what_is_there() {
        let (_t, svc, pack, len) = half_received(&boot_id());
        fs::write(svc.pack_file(&pack), vec![5u8; 120]).unwrap();
        assert_eq!(
            offer(&svc, pack, len),
            Message::PackAccept { pack, offset: 120 }
        );
    }

    #[test]
    fn a_cancelled_pack_is_dropped_from_staging() {
        let (_t, svc, pack, _) = half_received(&boot_id());
        let out = svc.session().handle(Message::PackCancel { pack });
        assert!(out.replies.is_empty());
        assert!(!svc.pack_file(&pack).exists());
        assert!(svc.db().incoming(&pack).unwrap().is_none());
    }

    /// Regression: an apply that failed half-way stayed half-done until the next start, and the
    /// pod's volume took new changes meanwhile. Now the journaled changeset is finished before
    /// the volume is read or changed again.
    #[test]
    fn a_journaled_changeset_is_finished_before_the_pod_is_read_again() {
        let t = tempfile::tempdir().unwrap();
        let svc = Arc::new(
            OnboardService::open(&t.path().join("v"), &t.path().join("s"), Limits::default())
                .unwrap(),
        );
        let pod = PodName::new("p".to_string()).unwrap();
        let vol = t.path().join("v/p");
        fs::create_dir_all(&vol).unwrap();
        fs::write(vol.join(".~sync.t.0"), "placed").unwrap();
        let plan = ApplyPlan {
            steps: vec![volume::Step::File {
                path: crate::path::VolumePath::new("in/x").unwrap(),
                temp: ".~sync.t.0".into(),
                id: crate::id::ContentId::of(b"placed"),
                mode: 0o644,
                mtime: 0,
            }],
        };
        svc.db()
            .journal_begin(&JournalEntry {
                pack: PackId([9; 32]),
                pod: pod.clone(),
                plan: postcard::to_stdvec(&plan).unwrap(),
            })
            .unwrap();
        let out = svc
            .session()
            .handle(Message::ManifestRequest { pod, known: None });
        assert!(
            matches!(out.replies[0], Message::ManifestReply { .. }),
            "{:?}",
            out.replies
        );
        assert_eq!(fs::read_to_string(vol.join("in/x")).unwrap(), "placed");
        assert!(svc.db().journal_entries().unwrap().is_empty());
    }

    #[test]
    fn after_a_reboot_only_the_synced_offset_counts() {
        let (_t, svc, pack, len) = half_received("a-boot-before-the-last-reboot");
        assert_eq!(
            offer(&svc, pack, len),
            Message::PackAccept { pack, offset: 200 }
        );
        assert_eq!(fs::metadata(svc.pack_file(&pack)).unwrap().len(), 200);
    }
}
