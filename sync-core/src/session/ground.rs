//! The ground end: what it knows of each pod ([`Ground`]), and the client that pushes, lists and
//! removes over a [`Link`]. Planning and encoding are the pure functions of [`crate::pack`]; this
//! module sequences the protocol's request/reply steps around them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::id::{ContentId, ManifestId, NodeId, PackId};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{ReadHalf, WriteHalf};
use tokio::time::{Instant, sleep_until};

use super::upload::Upload;
use crate::link::{
    ACK_INTERVAL, Counters, KEEPALIVE_INTERVAL, Link, LinkError, LinkReader, LinkWriter,
    sleep_until_opt,
};
use crate::manifest::{
    Change, Describe, EntryKind, FileSource, Manifest, ManifestError, PutKind, ScanOptions,
    ScanStats, SkippedReport, apply_changes, diff, scan_dir,
};
use crate::object::ObjectStore;
use crate::pack::{ContentProvider, DecodedPack, Limits, PackError, Plan, PlanStats};
use crate::path::{PodName, VolumePath};
use crate::state::{Db, FollowUp, OutgoingPack, PullIncoming, PullJournal, Pulled};
use crate::units::fmt_bytes;
use crate::volume::VolumeError;
use crate::wire::{ErrorKind, ManifestBody, Message};

/// Pack bytes per `PackData` message: small enough that a cut link loses little, large enough
/// that framing costs well under 1%.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Largest decompressed manifest or signature set accepted from the onboard side.
const MAX_REPLY_BYTES: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum GroundError {
    #[error(transparent)]
    Link(#[from] LinkError),
    /// the onboard side refused or failed a request
    #[error("onboard: {message}")]
    Remote { kind: ErrorKind, message: String },
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

/// The ground's state folder: `ground.db`, the content store `objects/`, built packs `packs/`.
pub struct Ground {
    dir: PathBuf,
    pub db: Db,
    pub store: ObjectStore,
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

/// What the node held of a queued pack when this connection offered it again: what the node
/// said, not what the ground last heard, which differs when the node lost what it had staged
/// (a full state disk drops a partial upload).
fn held_note(q: &OutgoingPack, r: &PushReport) -> String {
    let held = format!(
        "{} of {} already onboard",
        fmt_bytes(r.resumed_from),
        fmt_bytes(q.len)
    );
    if r.resumed_from < q.acked {
        format!(
            "{held}; the node no longer holds the {} it had acknowledged, so they are sent again",
            fmt_bytes(q.acked)
        )
    } else {
        held
    }
}

/// Whether a push queued into `queued` (None: the whole volume) and a change to `scope` touch
/// the same files: one folder within the other, or either the whole volume.
fn scopes_overlap(queued: Option<&str>, scope: Option<&VolumePath>) -> bool {
    match (queued, scope) {
        (None, _) | (_, None) => true,
        (Some(q), Some(s)) => {
            VolumePath::new(q).map_or(true, |q| q.is_within(s) || s.is_within(&q))
        }
    }
}

/// Reads target content from the local folder being pushed, and bases from the content store.
struct LocalTree {
    dir: Dir,
    dest: Option<VolumePath>,
    store: ObjectStore,
}

impl LocalTree {
    fn local_path<'p>(&self, path: &'p VolumePath) -> &'p str {
        match &self.dest {
            Some(d) => &path.as_str()[d.as_str().len() + 1..],
            None => path.as_str(),
        }
    }
}

impl ContentProvider for LocalTree {
    fn target(&self, path: &VolumePath, id: &ContentId) -> Result<Vec<u8>, PackError> {
        let local = self.local_path(path);
        let changed = || PackError::SourceChanged {
            path: local.to_string(),
        };
        let rel = VolumePath::new(local).map_err(|_| changed())?;
        let bytes = crate::volume::read_file(&self.dir, &rel).map_err(|_| changed())?;
        if ContentId::of(&bytes) != *id {
            return Err(changed());
        }
        Ok(bytes)
    }

    fn base(&self, id: &ContentId) -> Result<Option<Vec<u8>>, PackError> {
        Ok(self.store.read(id)?)
    }
}

/// What a changeset does, in the operator's words.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChangeSummary {
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    /// Files whose content the volume already had elsewhere (renames, copies): no content sent.
    pub copied: u64,
    /// Files whose mode or time alone changed.
    pub metadata: u64,
    pub dirs_added: u64,
    pub dirs_removed: u64,
    pub symlinks: u64,
}

impl ChangeSummary {
    fn add(&mut self, o: &ChangeSummary) {
        self.added += o.added;
        self.changed += o.changed;
        self.removed += o.removed;
        self.copied += o.copied;
        self.metadata += o.metadata;
        self.dirs_added += o.dirs_added;
        self.dirs_removed += o.dirs_removed;
        self.symlinks += o.symlinks;
    }

    pub fn of(base: &Manifest, changes: &[Change]) -> Self {
        let mut s = Self::default();
        for c in changes {
            match c {
                Change::Remove(p) => match base.get(p).map(|e| &e.kind) {
                    Some(EntryKind::Dir) => s.dirs_removed += 1,
                    _ => s.removed += 1,
                },
                Change::Put(put) => {
                    let old = base.get(&put.path);
                    match &put.kind {
                        PutKind::Dir => {
                            if old.is_some() {
                                s.metadata += 1
                            } else {
                                s.dirs_added += 1
                            }
                        }
                        PutKind::Symlink(_) => s.symlinks += 1,
                        PutKind::File(FileSource::Object(_)) => {
                            if old.is_some() {
                                s.changed += 1
                            } else {
                                s.added += 1
                            }
                        }
                        PutKind::File(FileSource::Known { id, .. }) => {
                            match old.and_then(|e| e.file_id()) {
                                Some(o) if o == *id => s.metadata += 1,
                                Some(_) => s.changed += 1,
                                None if old.is_some() => s.changed += 1,
                                None => s.copied += 1,
                            }
                        }
                    }
                }
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The result of a push or remove.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub pod: String,
    pub node: String,
    pub up_to_date: bool,
    /// Applied onboard. False when the budget or deadline stopped it: it stays queued.
    pub complete: bool,
    /// Pack bytes durable onboard.
    pub acked: u64,
    /// Where this connection's upload started (bytes already onboard from earlier passes).
    pub resumed_from: u64,
    /// What happened to an earlier queued push for the pod, in words.
    pub notes: Vec<String>,
    pub changes: ChangeSummary,
    /// Bytes of new content the pack carries (what a plain copy would send).
    pub content_bytes: u64,
    pub pack_bytes: u64,
    pub pack: Option<String>,
    pub root: String,
    pub plan: PlanCounts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanCounts {
    pub objects: u64,
    pub prefixed: u64,
    pub rsynced: u64,
    pub literal: u64,
}

impl From<&PlanStats> for PlanCounts {
    fn from(s: &PlanStats) -> Self {
        Self {
            objects: s.objects,
            prefixed: s.prefixed,
            rsynced: s.rsynced,
            literal: s.literal,
        }
    }
}

/// Progress of a pack upload, for bars and lines.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub pack: PackId,
    pub sent: u64,
    pub acked: u64,
    pub total: u64,
}

/// What this connection may still spend: wire bytes (both ways, counted on the socket, this
/// connection's handshake included) and time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowance {
    pub budget: Option<u64>,
    pub deadline: Option<Instant>,
    /// The link's rate in bytes per second, if known (given or measured before).
    pub rate: Option<f64>,
}

/// Bytes kept back from a budget for the messages that end a connection cleanly.
const CLOSING_RESERVE: u64 = 256;
/// Time kept back before a deadline, on top of a round trip, for the last acknowledgement (the
/// node syncs its staged bytes before it answers).
const END_SLACK: Duration = Duration::from_secs(1);

/// Wire bytes a budget keeps back: the closing messages, and 2% for the acknowledgements of
/// what is sent now, which arrive later and count too (about 25 bytes per 3 s of link, under 1%
/// of the bytes they acknowledge).
fn budget_reserve(budget: u64) -> u64 {
    CLOSING_RESERVE + budget / 50
}

/// Pack bytes that `wire` bytes carry in frames of `frame` bytes (each costs its framing too).
fn payload_in(wire: u64, frame: usize) -> u64 {
    let cost = Upload::wire_cost(frame as u64);
    (wire / cost) * frame as u64 + (wire % cost).saturating_sub(super::upload::FRAME_OVERHEAD)
}

/// How far a pack upload may go now.
#[derive(Debug, Clone, Copy)]
struct SendLimit {
    offset: u64,
    /// The budget or the time is spent: no acknowledgement can make room again.
    spent: bool,
}

impl Allowance {
    /// Pack bytes a connection that has already moved `wire` bytes can still carry, if the
    /// budget or the deadline (with a known rate) bounds it: what a plan may promise. Each pack
    /// also costs an offer and an acceptance ([`PACK_TURN`] bytes and a round trip).
    pub fn capacity(&self, wire: u64, rtt: Duration) -> Option<u64> {
        let frame = Upload::new(0, 0, rtt, self.rate).frame_size();
        let budget = self
            .budget
            .map(|b| payload_in(b.saturating_sub(wire + budget_reserve(b)), frame));
        let time = match (self.deadline, self.rate) {
            (Some(d), Some(rate)) => {
                let left = d
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(rtt + END_SLACK);
                Some(payload_in((rate * left.as_secs_f64()) as u64, frame))
            }
            _ => None,
        };
        match (budget, time) {
            (Some(b), Some(t)) => Some(b.min(t)),
            (b, t) => b.or(t),
        }
    }
}

/// Wire bytes one pack's offer and acceptance cost, about: a plan counts them per pack.
pub const PACK_TURN: u64 = 160;

/// How a pack's upload ended on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Verified and applied onboard; the volume is at this root.
    Applied(ManifestId),
    /// Stopped by the budget or the deadline; durable onboard up to `acked`.
    Incomplete { acked: u64, total: u64 },
}

/// A connected ground client. The link is kept as its two halves so that a pack upload reads
/// acknowledgements while it writes.
pub struct Client<S> {
    rx: LinkReader<ReadHalf<S>>,
    tx: LinkWriter<WriteHalf<S>>,
    counters: Arc<Counters>,
    rtt: Duration,
    /// A goodbye went out already (an upload that ran out of budget or time sends it early).
    said_bye: bool,
    /// Packs given up on, to tell the node at the next chance.
    cancels: Vec<PackId>,
    /// Pack bytes the node acknowledged on this connection, and the seconds they took on the
    /// link: what `link_log` records for rate estimates.
    on_link: (u64, Duration),
    /// What the node's last answer left out of the pod's volume (`Message::Skipped`).
    skipped: SkippedReport,
    pub node: NodeId,
    pub limits: Limits,
    pub software: String,
}

fn remote(kind: ErrorKind, message: String) -> GroundError {
    GroundError::Remote { kind, message }
}

fn inflate(blob: &[u8]) -> Result<Vec<u8>, GroundError> {
    let mut out = Vec::new();
    let mut dec =
        zstd::stream::read::Decoder::new(blob).map_err(|_| GroundError::BadReply("blob"))?;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&mut dec, MAX_REPLY_BYTES as u64 + 1),
        &mut out,
    )
    .map_err(|_| GroundError::BadReply("blob"))?;
    if out.len() > MAX_REPLY_BYTES {
        return Err(GroundError::BadReply("oversized blob"));
    }
    Ok(out)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Waits for the onboard side's welcome.
    pub async fn start(link: Link<S>) -> Result<Self, GroundError> {
        let counters = link.counters();
        let rtt = link.rtt();
        let (mut rx, tx) = link.split();
        loop {
            match rx.recv().await? {
                Message::Welcome {
                    node,
                    limits,
                    software,
                } => {
                    return Ok(Self {
                        rx,
                        tx,
                        counters,
                        rtt,
                        said_bye: false,
                        cancels: Vec::new(),
                        on_link: (0, Duration::ZERO),
                        skipped: SkippedReport::default(),
                        node,
                        limits,
                        software,
                    });
                }
                Message::KeepAlive => continue,
                Message::Error { kind, message } => return Err(remote(kind, message)),
                _ => {
                    return Err(GroundError::Unexpected {
                        expected: "Welcome",
                    });
                }
            }
        }
    }

    /// Bytes on the wire so far: (sent, received).
    pub fn wire_bytes(&self) -> (u64, u64) {
        (self.counters.sent(), self.counters.received())
    }

    fn wire_total(&self) -> u64 {
        self.counters.sent() + self.counters.received()
    }

    /// What the node's last answer (a manifest, a pull offer) left out of the pod's volume.
    pub fn take_skipped(&mut self) -> SkippedReport {
        std::mem::take(&mut self.skipped)
    }

    /// The round trip measured at connection.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// The next message other than a keep-alive; an `Error` from the onboard side becomes
    /// [`GroundError::Remote`]. Sends keep-alives while it waits (the onboard side may be busy
    /// for long: scanning a large volume, applying a pack).
    async fn recv(&mut self) -> Result<Message, GroundError> {
        loop {
            tokio::select! {
                m = self.rx.recv() => match m? {
                    Message::KeepAlive => continue,
                    // A note that comes with the answer that follows it.
                    Message::Skipped { entries, more } => {
                        self.skipped = SkippedReport { entries, more };
                        continue;
                    }
                    Message::Error { kind, message } => return Err(remote(kind, message)),
                    m => return Ok(m),
                },
                _ = sleep_until(self.tx.last_send() + KEEPALIVE_INTERVAL) => {
                    self.tx.send(&Message::KeepAlive).await?;
                }
            }
        }
    }

    /// The pod's current manifest, learned as cheaply as the ground's knowledge allows, and
    /// recorded as known.
    pub async fn manifest(
        &mut self,
        ground: &Ground,
        pod: &PodName,
    ) -> Result<Manifest, GroundError> {
        let known = ground.db.known_manifest(&self.node, pod)?;
        self.skipped = SkippedReport::default();
        self.tx
            .send(&Message::ManifestRequest {
                pod: pod.clone(),
                known: known.as_ref().map(|k| k.root),
            })
            .await?;
        let (root, body) = match self.recv().await? {
            Message::ManifestReply { root, body, .. } => (root, body),
            _ => {
                return Err(GroundError::Unexpected {
                    expected: "ManifestReply",
                });
            }
        };
        let manifest = match body {
            ManifestBody::Same => known
                .map(|k| k.manifest)
                .ok_or(GroundError::BadReply("'same' manifest"))?,
            ManifestBody::Delta { from, blob } => {
                let base = known
                    .filter(|k| k.root == from)
                    .ok_or(GroundError::BadReply("manifest delta base"))?;
                let changes: Vec<Change> = postcard::from_bytes(&inflate(&blob)?)
                    .map_err(|_| GroundError::BadReply("manifest delta"))?;
                apply_changes(&base.manifest, &changes, &Describe)?
            }
            ManifestBody::Full { blob } => Manifest::decode(&inflate(&blob)?)?,
        };
        if manifest.root() != root {
            return Err(GroundError::BadReply("manifest (root mismatch)"));
        }
        ground.db.set_known_manifest(&self.node, pod, &manifest)?;
        Ok(manifest)
    }

    /// Makes `dest` (or the whole volume) of `pod` hold exactly `local`'s tree, as far as the
    /// allowance goes. A push already queued for the pod is resumed if it carries the same
    /// tree, replaced if none of it was sent yet, and otherwise finished first.
    #[allow(clippy::too_many_arguments)]
    pub async fn push(
        &mut self,
        ground: &mut Ground,
        local_dir: &Path,
        local: &Manifest,
        pod: &PodName,
        dest: Option<&VolumePath>,
        priority: i64,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PushReport, GroundError> {
        // Up to two retries: if the pod changed the volume between our look and the apply,
        // look again and plan again.
        let mut attempt = 0;
        let mut notes = Vec::new();
        loop {
            attempt += 1;
            let base = self.manifest(ground, pod).await?;
            let target = base.with_subtree(dest, local)?;
            let overlaps = |queued: Option<&str>| scopes_overlap(queued, dest);
            let queued = self.settle_queue(ground, pod, &base, &overlaps, &mut notes)?;
            let same_dest = |q: &OutgoingPack| q.dest.as_deref() == dest.map(|d| d.as_str());
            let result = match queued {
                Some(q) if same_dest(&q) && q.target.subtree(dest) == target.subtree(dest) => {
                    let r = self.send_queued(ground, &q, allow, progress).await;
                    if let Ok(r) = &r {
                        notes.push(format!("resuming the queued push: {}", held_note(&q, r)));
                    }
                    self.plan_done(ground, pod, dest, &r)?;
                    r
                }
                Some(q) if same_dest(&q) && q.acked == 0 => {
                    notes.push("replaced the queued push, none of which had been sent".into());
                    self.discard_queued(ground, &q)?;
                    let r = self
                        .plan_and_send(
                            ground, local_dir, pod, dest, priority, &base, &target, allow, progress,
                        )
                        .await;
                    self.plan_done(ground, pod, dest, &r)?;
                    r
                }
                Some(q) => {
                    // Another push of this folder (partly sent), or of a folder that overlaps
                    // it: it goes first, and this one follows. Until the newer changes are
                    // planned into a pack of their own, the promise is kept in the state, so a
                    // pass delivers them even if this connection ends first.
                    ground.db.put_follow_up(&FollowUp {
                        node: self.node,
                        pod: pod.clone(),
                        dest: dest.map(|d| d.to_string()),
                        source: std::fs::canonicalize(local_dir)
                            .map_err(io_at(local_dir))?
                            .display()
                            .to_string(),
                        priority,
                        created_at: crate::state::now_secs(),
                    })?;
                    let first = self.send_queued(ground, &q, allow, progress).await;
                    if let Ok(r) = &first {
                        notes.push(format!(
                            "finishing the queued push first ({}); the newer changes follow it{}",
                            held_note(&q, r),
                            if r.complete {
                                ""
                            } else {
                                " at the next push or pass"
                            }
                        ));
                    }
                    match first {
                        Ok(r) if r.complete => {
                            // Now on top of what the queued push left.
                            let base = q.target.clone();
                            let target = base.with_subtree(dest, local)?;
                            let r = self
                                .plan_and_send(
                                    ground, local_dir, pod, dest, priority, &base, &target, allow,
                                    progress,
                                )
                                .await;
                            self.plan_done(ground, pod, dest, &r)?;
                            r
                        }
                        other => other,
                    }
                }
                None => {
                    let r = self
                        .plan_and_send(
                            ground, local_dir, pod, dest, priority, &base, &target, allow, progress,
                        )
                        .await;
                    self.plan_done(ground, pod, dest, &r)?;
                    r
                }
            };
            match result {
                Err(GroundError::Remote {
                    kind: ErrorKind::Conflict,
                    ..
                }) if attempt < 3 => continue,
                Ok(mut r) => {
                    r.notes = notes;
                    return Ok(r);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The folder's newest changes are planned into a queued pack (or there were none): a
    /// promise that they follow an older push is kept.
    fn plan_done(
        &self,
        ground: &Ground,
        pod: &PodName,
        dest: Option<&VolumePath>,
        planned: &Result<PushReport, GroundError>,
    ) -> Result<(), GroundError> {
        if planned.is_ok() {
            // Promised changes of this folder, or of folders this push replaces, are
            // superseded by what was just planned.
            self.end_follow_ups(ground, pod, &|f: Option<&str>| scopes_overlap(f, dest))?;
        }
        Ok(())
    }

    /// Ends the promises of `pod` whose folder `which` names.
    fn end_follow_ups(
        &self,
        ground: &Ground,
        pod: &PodName,
        which: &dyn Fn(Option<&str>) -> bool,
    ) -> Result<(), GroundError> {
        for f in ground.db.follow_ups(Some(&self.node))? {
            if &f.pod == pod && which(f.dest.as_deref()) {
                ground
                    .db
                    .end_follow_up(&self.node, pod, f.dest.as_deref())?;
            }
        }
        Ok(())
    }

    /// Looks at what is queued for `pod` whose folder overlaps `scope` (None: the whole
    /// volume) against the volume as it is now: drops packs that already applied or can no
    /// longer apply, and returns the one that still can. Pushes queued into other folders of the
    /// pod are theirs: they stay queued.
    fn settle_queue(
        &mut self,
        ground: &mut Ground,
        pod: &PodName,
        base: &Manifest,
        scope: &dyn Fn(Option<&str>) -> bool,
        notes: &mut Vec<String>,
    ) -> Result<Option<OutgoingPack>, GroundError> {
        let mut live = None;
        for q in ground.db.outgoing_for(&self.node, pod)? {
            if !scope(q.dest.as_deref()) {
                continue;
            }
            if q.target_root == base.root() {
                // Applied; the answer was lost with the link.
                ground.db.finish_outgoing(&q.pack)?;
                let _ = std::fs::remove_file(ground.pack_path(&q.pack));
            } else if (q.base_root != base.root() && q.dest.is_none()) || live.is_some() {
                if q.acked > 0 {
                    notes.push(format!(
                        "dropped a queued push: the volume changed since it was planned ({} of \
                         it had been sent)",
                        fmt_bytes(q.acked)
                    ));
                }
                self.discard_queued(ground, &q)?;
            } else {
                live = Some(q);
            }
        }
        Ok(live)
    }

    fn discard_queued(&mut self, ground: &Ground, q: &OutgoingPack) -> Result<(), GroundError> {
        ground.db.delete_outgoing(&q.pack)?;
        let _ = std::fs::remove_file(ground.pack_path(&q.pack));
        // Whatever the node staged of it would otherwise wait there for weeks.
        self.cancels.push(q.pack);
        Ok(())
    }

    /// Tells the node about packs this ground gave up on.
    async fn send_cancels(&mut self) -> Result<(), GroundError> {
        if self.cancels.is_empty() {
            return Ok(());
        }
        let msgs: Vec<Message> = self
            .cancels
            .drain(..)
            .map(|pack| Message::PackCancel { pack })
            .collect();
        self.tx.send_all(&msgs).await?;
        Ok(())
    }

    /// Sends a queued pack from where the onboard side stands.
    pub async fn send_queued(
        &mut self,
        ground: &Ground,
        q: &OutgoingPack,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PushReport, GroundError> {
        let path = ground.pack_path(&q.pack);
        let bytes = std::fs::read(&path).map_err(io_at(&path))?;
        // Packs queued before push ids named their pod are named by their bytes alone.
        let named = PackId::for_push(&bytes, &q.node, q.pod.as_str(), q.dest.as_deref());
        if bytes.len() as u64 != q.len || (q.pack != named && q.pack != PackId::of(&bytes)) {
            // A damaged queue file is dropped; the next push plans again.
            self.discard_queued(ground, q)?;
            return Err(GroundError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other("queued pack is damaged; push again"),
            });
        }
        let summary: ChangeSummary = serde_json::from_str(&q.summary).unwrap_or_default();
        let mut report = PushReport {
            pod: q.pod.to_string(),
            node: self.node.to_hex(),
            up_to_date: false,
            complete: false,
            changes: summary,
            content_bytes: q.content_bytes,
            pack_bytes: q.len,
            pack: Some(q.pack.to_hex()),
            root: q.base_root.to_hex(),
            plan: PlanCounts::default(),
            acked: q.acked,
            resumed_from: q.acked,
            notes: Vec::new(),
        };
        let sent = match self.send_pack(ground, q, &bytes, allow, progress).await {
            Err(
                e @ GroundError::Remote {
                    kind:
                        ErrorKind::Refused
                        | ErrorKind::TooLarge
                        | ErrorKind::Protocol
                        | ErrorKind::Conflict,
                    ..
                },
            ) => {
                // The onboard side will never take this pack (refused, or the volume moved on
                // under its scope): drop it, or it would block every later push to the pod.
                self.discard_queued(ground, q)?;
                return Err(e);
            }
            other => other?,
        };
        match sent {
            (Sent::Applied(root), from) => {
                if root == q.target_root {
                    // The onboard side now holds the target: record it.
                    ground
                        .db
                        .set_known_manifest(&self.node, &q.pod, &q.target)?;
                } else if q.dest.is_none() {
                    return Err(GroundError::BadReply("applied root"));
                }
                // Otherwise the pod changed files outside the push's folder meanwhile; the
                // next manifest request learns them (as a delta from what is known).
                // Let go of content no pod holds any more and no queued pack needs.
                ground.db.finish_outgoing(&q.pack)?;
                let _ = std::fs::remove_file(&path);
                let keep = ground.db.referenced_content()?;
                ground.store.retain(&keep).map_err(io_at(&path))?;
                report.complete = true;
                report.acked = q.len;
                report.resumed_from = from;
                report.root = root.to_hex();
            }
            (Sent::Incomplete { acked, .. }, from) => {
                report.acked = acked;
                report.resumed_from = from;
            }
        }
        Ok(report)
    }

    /// Removes `paths` from the pod's volume.
    pub async fn remove(
        &mut self,
        ground: &mut Ground,
        pod: &PodName,
        paths: &[VolumePath],
        recursive: bool,
    ) -> Result<PushReport, GroundError> {
        let base = self.manifest(ground, pod).await?;
        let mut keep: Vec<_> = base.entries().to_vec();
        for p in paths {
            let e = base
                .get(p)
                .ok_or_else(|| GroundError::NotFound(p.to_string()))?;
            if e.is_dir() && !recursive {
                return Err(GroundError::IsFolder(p.to_string()));
            }
            keep.retain(|e| !e.path.is_within(p));
        }
        let target = Manifest::new(keep)?;
        let mut notes = Vec::new();
        // Pushes queued into folders the removal does not reach stay queued.
        let overlaps = |queued: Option<&str>| paths.iter().any(|p| scopes_overlap(queued, Some(p)));
        // A promise to push a folder again must not bring back what is removed now.
        self.end_follow_ups(ground, pod, &overlaps)?;
        if let Some(q) = self.settle_queue(ground, pod, &base, &overlaps, &mut notes)? {
            // A removal changes the base under a queued push; it would only be dropped later.
            notes.push("replaced the queued push: the volume changes first".into());
            self.discard_queued(ground, &q)?;
        }
        let mut r = self
            .plan_and_send(
                ground,
                Path::new(""),
                pod,
                None,
                i64::MAX,
                &base,
                &target,
                &Allowance::default(),
                &mut |_| {},
            )
            .await?;
        r.notes = notes;
        Ok(r)
    }

    /// Plans `base` → `target`, encodes the pack once, queues it on disk, and sends it.
    #[allow(clippy::too_many_arguments)]
    async fn plan_and_send(
        &mut self,
        ground: &Ground,
        source: &Path,
        pod: &PodName,
        dest: Option<&VolumePath>,
        priority: i64,
        base: &Manifest,
        target: &Manifest,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PushReport, GroundError> {
        let plan = Plan::new(base, target, &|id| ground.store.contains(id));
        let summary = ChangeSummary::of(base, &plan.changes);
        if plan.is_empty() {
            return Ok(PushReport {
                pod: pod.to_string(),
                node: self.node.to_hex(),
                up_to_date: true,
                complete: true,
                changes: summary,
                content_bytes: 0,
                pack_bytes: 0,
                pack: None,
                root: base.root().to_hex(),
                plan: PlanCounts::default(),
                acked: 0,
                resumed_from: 0,
                notes: Vec::new(),
            });
        }
        // The node's limits came with its welcome: refuse here, before a byte is sent, what it
        // would refuse after the whole upload.
        let lim = &self.limits;
        if let Some(big) = plan.objects.iter().find(|o| o.size > lim.max_object_bytes) {
            return Err(GroundError::OverLimit(format!(
                "{} is {}, over the node's limit of {} per file",
                big.path,
                fmt_bytes(big.size),
                fmt_bytes(lim.max_object_bytes)
            )));
        }
        if plan.object_bytes() > lim.max_total_bytes {
            return Err(GroundError::OverLimit(format!(
                "the new content totals {}, over the node's limit of {} per push; push in parts",
                fmt_bytes(plan.object_bytes()),
                fmt_bytes(lim.max_total_bytes)
            )));
        }
        let signatures = self.signatures(pod, &plan).await?;
        let provider: Box<dyn ContentProvider + Send> = if source.as_os_str().is_empty() {
            Box::new(EmptyProvider)
        } else {
            let abs = std::fs::canonicalize(source).map_err(io_at(source))?;
            // The bytes read (and verified) for encoding go straight into the content store,
            // where they become the bases of the next push; nothing is read twice.
            Box::new(Keeping {
                inner: LocalTree {
                    dir: Dir::open_ambient_dir(&abs, ambient_authority()).map_err(io_at(&abs))?,
                    dest: dest.cloned(),
                    store: ground.store.clone(),
                },
                store: ground.store.clone(),
            })
        };
        // Encoding a large pack takes a while (zstd at level 19): off this thread, so the
        // link stays alive meanwhile.
        let (job_plan, job_base, limits) = (plan.clone(), base.clone(), self.limits.clone());
        let job = tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            let stats = job_plan.encode(
                &job_base,
                provider.as_ref(),
                &signatures,
                &limits,
                &mut bytes,
            )?;
            Ok::<_, PackError>((bytes, stats))
        });
        let (bytes, stats) = self.keep_alive_while(job).await??;
        let dest_name = dest.map(|d| d.to_string());
        let pack = PackId::for_push(&bytes, &self.node, pod.as_str(), dest_name.as_deref());
        let path = ground.pack_path(&pack);
        // A queued pack on disk is never torn.
        crate::object::write_durably(&path.with_extension("tmp"), &path, &bytes)
            .map_err(io_at(&path))?;
        let q = OutgoingPack {
            pack,
            node: self.node,
            pod: pod.clone(),
            len: bytes.len() as u64,
            acked: 0,
            base_root: plan.base_root,
            target_root: plan.target_root,
            target: target.clone(),
            source: if source.as_os_str().is_empty() {
                String::new()
            } else {
                std::fs::canonicalize(source)
                    .map_err(io_at(source))?
                    .display()
                    .to_string()
            },
            dest: dest_name,
            state: "queued".into(),
            priority,
            content_bytes: plan.object_bytes(),
            summary: serde_json::to_string(&summary).expect("summary"),
            created_at: crate::state::now_secs(),
            finished_at: None,
        };
        ground.db.insert_outgoing(&q)?;
        let mut report = self.send_queued(ground, &q, allow, progress).await?;
        report.plan = PlanCounts::from(&stats);
        Ok(report)
    }

    /// Waits for local work while keeping the link alive: keep-alives out, the other side's
    /// keep-alives taken.
    async fn keep_alive_while<T>(
        &mut self,
        job: tokio::task::JoinHandle<T>,
    ) -> Result<T, GroundError> {
        tokio::pin!(job);
        loop {
            tokio::select! {
                r = &mut job => {
                    return r.map_err(|e| GroundError::Io {
                        path: "(encoding)".into(),
                        source: std::io::Error::other(e.to_string()),
                    });
                }
                m = self.rx.recv() => match m? {
                    Message::KeepAlive => {}
                    Message::Error { kind, message } => return Err(remote(kind, message)),
                    _ => return Err(GroundError::Unexpected { expected: "nothing while encoding" }),
                },
                _ = sleep_until(self.tx.last_send() + KEEPALIVE_INTERVAL) => {
                    self.tx.send(&Message::KeepAlive).await?;
                }
            }
        }
    }

    async fn signatures(
        &mut self,
        pod: &PodName,
        plan: &Plan,
    ) -> Result<HashMap<u32, Vec<u8>>, GroundError> {
        let entries = plan.signature_requests();
        if entries.is_empty() {
            return Ok(HashMap::new());
        }
        self.tx
            .send(&Message::SignatureRequest {
                pod: pod.clone(),
                base_root: plan.base_root,
                entries,
            })
            .await?;
        match self.recv().await? {
            Message::Signatures { blob } => {
                let list: Vec<(u32, Vec<u8>)> = postcard::from_bytes(&inflate(&blob)?)
                    .map_err(|_| GroundError::BadReply("signatures"))?;
                Ok(list.into_iter().collect())
            }
            _ => Err(GroundError::Unexpected {
                expected: "Signatures",
            }),
        }
    }

    /// Offers a pack and streams it from the offset the onboard side names, with a window of
    /// bytes in flight, reading acknowledgements as they come. Stops at the allowance's budget
    /// or deadline. Returns how it ended and the offset it started from.
    async fn send_pack(
        &mut self,
        ground: &Ground,
        q: &OutgoingPack,
        bytes: &[u8],
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Sent, u64), GroundError> {
        let total = bytes.len() as u64;
        let pack = q.pack;
        self.send_cancels().await?;
        self.tx
            .send(&Message::PackOffer {
                pod: q.pod.clone(),
                pack,
                len: total,
                base_root: q.base_root,
                target_root: q.target_root,
                scope: q
                    .dest
                    .as_deref()
                    .map(VolumePath::new)
                    .transpose()
                    .map_err(|_| GroundError::BadReply("queued destination"))?,
            })
            .await?;
        let from = match self.recv().await? {
            Message::PackAccept { pack: p, offset } if p == pack && offset <= total => offset,
            _ => {
                return Err(GroundError::Unexpected {
                    expected: "PackAccept",
                });
            }
        };
        ground.db.set_outgoing_progress(&pack, from, "sending")?;
        let mut up = Upload::new(total, from, self.rtt, allow.rate);
        let clock = Instant::now();
        // The link's own time, for rate estimates: from the first frame to each
        // acknowledgement in turn (scanning, encoding and the node's apply are not the link).
        let mut on_link: Option<Instant> = None;
        let mut stopped = false;
        let report = |up: &Upload| Progress {
            pack,
            sent: up.sent(),
            acked: up.acked(),
            total,
        };
        progress(report(&up));
        loop {
            let limit = if stopped {
                up.sent()
            } else {
                let l = self.send_limit(&up, allow);
                // The budget or the time is spent: no acknowledgement will make room again.
                // (Otherwise the limit only waits for bytes in flight to land.)
                if l.spent && l.offset <= up.sent() && !up.all_sent() {
                    stopped = true;
                }
                l.offset
            };
            if limit <= up.sent() && !up.all_sent() && up.in_flight() == 0 {
                stopped = true;
            }
            if stopped && up.in_flight() == 0 {
                return Ok((
                    Sent::Incomplete {
                        acked: up.acked(),
                        total,
                    },
                    from,
                ));
            }
            let frame = if stopped { None } else { up.next_frame(limit) };
            let msg = match frame {
                Some((a, b)) => {
                    on_link.get_or_insert_with(Instant::now);
                    Some(Message::PackData {
                        offset: a,
                        bytes: bytes[a as usize..b as usize].to_vec(),
                    })
                }
                // Out of budget or time (`stopped`): ask for a last acknowledgement and stop.
                // Otherwise the window is full, or the rest may not land by the deadline at
                // the rate known so far: wait for acknowledgements.
                None => None,
            };
            // Write (if there is a frame) while reading whatever comes back.
            let incoming = match msg {
                Some(m) => {
                    // Every message that arrives meanwhile is kept: acknowledgements must be
                    // taken as they come, or the window closes on bytes long since durable.
                    let write = self.tx.send(&m);
                    tokio::pin!(write);
                    let mut got = Vec::new();
                    loop {
                        tokio::select! {
                            biased;
                            r = &mut write => { r?; break; }
                            m = self.rx.recv() => got.push(m?),
                        }
                    }
                    got
                }
                None if stopped => {
                    // Out of budget or time with bytes in flight: say goodbye now. The onboard
                    // side handles what is before the goodbye, makes it durable, answers with a
                    // last acknowledgement and closes; no need to wait for its ack timer.
                    if !self.said_bye {
                        self.tx.send(&Message::Bye).await?;
                        self.said_bye = true;
                    }
                    let wait = sleep_until(
                        allow
                            .deadline
                            .unwrap_or_else(|| Instant::now() + ACK_INTERVAL * 3)
                            .min(Instant::now() + ACK_INTERVAL * 3),
                    );
                    let incomplete = Sent::Incomplete {
                        acked: up.acked(),
                        total,
                    };
                    tokio::select! {
                        m = self.rx.recv() => match m {
                            Ok(m) => vec![m],
                            Err(LinkError::Closed) => return Ok((incomplete, from)),
                            Err(e) => return Err(e.into()),
                        },
                        _ = wait => return Ok((incomplete, from)),
                    }
                }
                None => {
                    // Waiting for acknowledgements (window full) or for the apply (all sent).
                    // The deadline still holds: a pack wholly sent applies onboard anyway, and
                    // the next pass hears so at once.
                    let deadline = sleep_until_opt(allow.deadline);
                    tokio::select! {
                        m = self.rx.recv() => vec![m?],
                        _ = sleep_until(self.tx.last_send() + KEEPALIVE_INTERVAL) => {
                            self.tx.send(&Message::KeepAlive).await?;
                            Vec::new()
                        }
                        _ = deadline => {
                            return Ok((Sent::Incomplete { acked: up.acked(), total }, from));
                        }
                    }
                }
            };
            for m in incoming {
                match m {
                    Message::KeepAlive => {}
                    Message::PackAck { offset } => {
                        let before = up.acked();
                        up.on_ack(offset, clock.elapsed())
                            .map_err(|_| GroundError::BadReply("acknowledgement"))?;
                        if let Some(mark) = on_link.as_mut() {
                            self.on_link.0 += offset - before;
                            self.on_link.1 += mark.elapsed();
                            *mark = Instant::now();
                        }
                        ground.db.set_outgoing_progress(&pack, offset, "sending")?;
                        progress(report(&up));
                    }
                    Message::PackApplied { pack: p, root } if p == pack && up.all_sent() => {
                        progress(Progress {
                            pack,
                            sent: total,
                            acked: total,
                            total,
                        });
                        return Ok((Sent::Applied(root), from));
                    }
                    Message::Error { kind, message } => return Err(remote(kind, message)),
                    _ => {
                        return Err(GroundError::Unexpected {
                            expected: "PackAck or PackApplied",
                        });
                    }
                }
            }
            if !stopped {
                progress(report(&up));
            }
        }
    }

    /// How far this connection may send now, given the budget and the deadline.
    fn send_limit(&self, up: &Upload, allow: &Allowance) -> SendLimit {
        self.limit_from(up, allow, up.sent())
    }

    /// Like [`Self::send_limit`] for bytes coming the other way: what was asked for but has
    /// not arrived is not on the counters yet, so the budget counts from what arrived.
    fn pull_limit(&self, up: &Upload, allow: &Allowance) -> u64 {
        self.limit_from(up, allow, up.acked()).offset
    }

    fn limit_from(&self, up: &Upload, allow: &Allowance, counted: u64) -> SendLimit {
        let mut limit = SendLimit {
            offset: up.total(),
            spent: false,
        };
        if let Some(budget) = allow.budget {
            let payload = payload_in(
                budget.saturating_sub(self.wire_total() + budget_reserve(budget)),
                up.frame_size(),
            );
            limit.offset = limit.offset.min(counted + payload);
            // Nothing more fits in the budget, and no acknowledgement will change that.
            limit.spent = payload == 0;
        }
        if let Some(deadline) = allow.deadline {
            // What is sent must land and be acknowledged before the deadline: stop sending a
            // round trip and a second's slack before it, and meanwhile keep no more in flight
            // than the link drains by then. Bytes the rate says cannot land wait for
            // acknowledgements (which may show a faster link) rather than end the pass.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(self.rtt + END_SLACK);
            if left.is_zero() {
                limit.offset = limit.offset.min(up.sent());
                limit.spent = true;
            } else if let Some(rate) = up.rate().or(allow.rate) {
                let drains = payload_in((rate * left.as_secs_f64()) as u64, up.frame_size());
                limit.offset = limit.offset.min(up.acked() + drains);
            }
        }
        limit
    }

    /// Says goodbye, takes the onboard side's last acknowledgement, and closes the link.
    /// Returns the bytes this connection moved, and records them for rate estimates.
    pub async fn bye(mut self, ground: &Ground) -> Result<(u64, u64), GroundError> {
        if !self.said_bye {
            self.send_cancels().await?;
            self.tx.send(&Message::Bye).await?;
        }
        // The onboard side answers a goodbye with a last acknowledgement, then closes.
        let drain = async {
            while let Ok(m) = self.rx.recv().await {
                if let Message::PackAck { .. } = m {
                    // Progress is recorded through the queue on the next connection.
                }
            }
        };
        let _ = tokio::time::timeout(self.rtt * 2 + Duration::from_secs(2), drain).await;
        let counts = self.wire_bytes();
        if self.on_link.0 > 0 {
            let _ = ground.db.log_link(
                &self.node,
                self.on_link.0,
                counts.1,
                self.on_link.1.as_secs_f64(),
            );
        }
        let _ = self.tx.close().await;
        Ok(counts)
    }
}

/// Keeps every target read for encoding in the content store.
struct Keeping {
    inner: LocalTree,
    store: ObjectStore,
}

impl ContentProvider for Keeping {
    fn target(&self, path: &VolumePath, id: &ContentId) -> Result<Vec<u8>, PackError> {
        let bytes = self.inner.target(path, id)?;
        self.store.put(id, &bytes)?;
        Ok(bytes)
    }

    fn base(&self, id: &ContentId) -> Result<Option<Vec<u8>>, PackError> {
        self.inner.base(id)
    }
}

/// `rm` sends no content.
struct EmptyProvider;

impl ContentProvider for EmptyProvider {
    fn target(&self, path: &VolumePath, _: &ContentId) -> Result<Vec<u8>, PackError> {
        Err(PackError::SourceChanged {
            path: path.to_string(),
        })
    }
    fn base(&self, _: &ContentId) -> Result<Option<Vec<u8>>, PackError> {
        Ok(None)
    }
}

/// Appends a frame of pull data at `written`, the only place it may go.
fn write_pull_data(
    file: &mut std::fs::File,
    written: &mut u64,
    total: u64,
    offset: u64,
    bytes: &[u8],
) -> Result<(), GroundError> {
    if offset != *written {
        return Err(GroundError::BadReply("pull data out of order"));
    }
    if *written + bytes.len() as u64 > total {
        return Err(GroundError::BadReply("pull data past the pack's end"));
    }
    std::io::Write::write_all(file, bytes).map_err(io_at(Path::new("pull staging")))?;
    *written += bytes.len() as u64;
    Ok(())
}

/// Makes a pull's staged bytes durable up to `written`: synced, then the offset recorded.
fn persist_pull(
    ground: &Ground,
    file: &mut std::fs::File,
    state: &mut crate::state::PullIncoming,
    written: u64,
) -> Result<(), GroundError> {
    file.sync_data().map_err(io_at(Path::new("pull staging")))?;
    state.received = written;
    ground.db.put_pull_incoming(state)?;
    Ok(())
}

/// What a pull selects, and how it treats the copy.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `--path` patterns: only what they select (none: the whole volume).
    pub filter: Vec<String>,
    /// Remove from the copy what the pod removed (otherwise it stays).
    pub delete: bool,
    /// Overwrite what the copy's user changed since the last pull (otherwise the pull refuses).
    pub force: bool,
}

/// The result of a pull.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub pod: String,
    pub node: String,
    pub into: String,
    pub up_to_date: bool,
    /// Applied to the copy. False when the budget, the deadline or the link stopped it.
    pub complete: bool,
    pub changes: ChangeSummary,
    pub pack: Option<String>,
    pub pack_bytes: u64,
    /// Pack bytes durable on the ground.
    pub received: u64,
    /// Where this connection's transfer started (bytes kept from earlier passes).
    pub resumed_from: u64,
    pub root: String,
    /// Pull packs applied: more than one when the selection was larger than the node puts in
    /// one pack.
    pub packs: u32,
    /// What the node left out of the pull (its last answer's report); shown by the caller.
    #[serde(skip)]
    pub skipped: SkippedReport,
}

impl PullReport {
    /// Adds the report of the next pack of the same pull.
    fn absorb(&mut self, next: PullReport) {
        self.up_to_date &= next.up_to_date;
        self.complete = next.complete;
        self.changes.add(&next.changes);
        self.pack = next.pack.or(self.pack.take());
        self.pack_bytes += next.pack_bytes;
        self.received += next.received;
        self.root = next.root;
        self.packs += next.packs;
        self.skipped = next.skipped;
    }
}

/// Adjacent ranges joined, none longer than `max` unless a single one is.
fn coalesce(ranges: &[(u64, u64)], max: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(a, b) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == a && b - last.0 <= max => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

/// What the ground accepts from a node's pull packs.
fn ground_limits() -> Limits {
    Limits::default()
}

/// Largest range one `PullRange` asks for.
const PULL_RANGE_BYTES: u64 = 256 * 1024;
/// Durable progress of a pull is recorded at least every this many bytes.
const PULL_SYNC_BYTES: u64 = 256 * 1024;

impl Ground {
    /// Where a pull pack for the copy at `into` is received: one file per copy and pack, so two
    /// copies pulling the same pack never share (or truncate) a file.
    fn pull_path(&self, into: &str, pack: &PackId) -> PathBuf {
        self.pull_path_with(into, pack, "pack")
    }

    /// Where a pull pack's objects are decoded to before they go into the copy: per copy too.
    fn pull_staging(&self, into: &str, pack: &PackId) -> PathBuf {
        self.pull_path_with(into, pack, "staging")
    }

    /// Takes the copy at `into` for this process: held for a whole pull, so that two
    /// sync-ground processes never place, rename or sweep in one copy at once. None when
    /// another holds it. The lock goes with the process, however it ends.
    fn lock_copy(&self, into: &str) -> Result<Option<std::fs::File>, GroundError> {
        let copy = blake3::hash(into.as_bytes()).to_hex();
        let dir = self.dir.join("locks");
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let path = dir.join(format!("copy-{}.lock", &copy[..16]));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io_at(&path)(e)),
        }
    }

    fn pull_path_with(&self, into: &str, pack: &PackId, ext: &str) -> PathBuf {
        let copy = blake3::hash(into.as_bytes()).to_hex();
        self.dir
            .join("pulls")
            .join(format!("{}-{}.{ext}", &copy[..16], pack.to_hex()))
    }

    /// Forgets a pull being received: its row, its pack file and its staging folder. The next
    /// pull into that copy plans from the copy as it is then.
    fn drop_pull(&self, r: &PullIncoming) -> Result<(), GroundError> {
        let _ = std::fs::remove_file(self.pull_path(&r.into, &r.pack));
        let _ = std::fs::remove_dir_all(self.pull_staging(&r.into, &r.pack));
        self.db.delete_pull_incoming(r)?;
        Ok(())
    }

    /// Finishes, where it can, every pull whose apply to its copy a crash interrupted. Only
    /// renames and removals are left of such an apply, so this is cheap, and the copy is whole
    /// again before anything looks at it. One that cannot finish now (the copy's disk is not
    /// mounted, say) stays journaled, and the next pull into that copy says why: nothing here
    /// is dropped without a word.
    fn roll_forward_pulls(&self) {
        // An entry that does not decode is reported by the next pull into its copy.
        let Ok(journals) = self.db.pull_journals() else {
            return;
        };
        for j in journals {
            // A copy another process is pulling into is that process's to finish.
            let Ok(Some(_lock)) = self.lock_copy(&j.into) else {
                continue;
            };
            let Ok(dir) = Dir::open_ambient_dir(&j.into, ambient_authority()) else {
                continue;
            };
            if crate::volume::apply(&dir, &j.plan, &j.tag).is_ok()
                && self.db.pull_journal_end(&j.into).is_ok()
            {
                crate::volume::sweep_temps(&dir, &HashSet::new());
            }
        }
    }

    /// Makes the copy at `into` (an absolute path) whole before a pull looks at it: a pull's
    /// apply to it that a crash (or a failed rename) interrupted is finished first (every step
    /// is idempotent), then the engine's temporaries left at the copy's root are removed, those
    /// of a `prepare` that a crash cut short before its plan was journaled included (no journal
    /// names them). While a journaled apply cannot finish, its temporaries are kept and it
    /// stays journaled ([`GroundError::PullUnfinished`]); one that never can (a file it was to
    /// place is gone) is given up, naming the copy ([`GroundError::PullAbandoned`]).
    pub fn settle_copy(&self, into: &Path) -> Result<(), GroundError> {
        let key = into.display().to_string();
        let dir = Dir::open_ambient_dir(into, ambient_authority()).map_err(io_at(into))?;
        let mut keep = HashSet::new();
        let mut outcome = Ok(());
        if let Some(j) = self.db.pull_journal(&key)? {
            match crate::volume::apply(&dir, &j.plan, &j.tag) {
                Ok(()) => self.db.pull_journal_end(&key)?,
                Err(source @ VolumeError::Unrecoverable { .. }) => {
                    // Kept, it would stop every later pull into this copy. The copy holds what
                    // the steps before it did; the next pull plans from the copy as it is and
                    // brings it up to date.
                    self.db.pull_journal_abandon(&key)?;
                    outcome = Err(GroundError::PullAbandoned { into: key, source });
                }
                Err(source) => {
                    keep.extend(j.plan.temps().map(String::from));
                    outcome = Err(GroundError::PullUnfinished { into: key, source });
                }
            }
        }
        crate::volume::sweep_temps(&dir, &keep);
        outcome
    }

    /// Decodes a whole pull pack against `base` (what the node planned from: the copy as the
    /// last pull left it, or `start`, the copy as it was when this pull was asked for) and
    /// applies it to the copy
    /// as it is now, journaled. What the copy's user changed since `since` (the state the last
    /// pull left, or an empty copy when nothing is known; None with --force) and the pack would
    /// overwrite stops it ([`GroundError::LocalChanges`], naming every such path); the pack is
    /// kept for the next try. The pull may have run for minutes: if the copy's user changed
    /// something the pack changes meanwhile, nothing is applied
    /// ([`GroundError::CopyChanged`]). A pack that does not check out, or that can no longer
    /// apply, is dropped with its row, so the next pull plans from the copy as it is.
    fn apply_pull(
        &mut self,
        copy: &Path,
        base: &Manifest,
        since: &Manifest,
        force: bool,
        state: &PullIncoming,
    ) -> Result<AppliedPull, GroundError> {
        let staging = self.pull_staging(&state.into, &state.pack);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io_at(&staging))?;
        let result = self.apply_staged(copy, &staging, base, since, force, state);
        let _ = std::fs::remove_dir_all(&staging);
        let keep = matches!(&result, Err(GroundError::Pack(PackError::Io(_))));
        if !keep
            && let Err(
                GroundError::CopyChanged { .. }
                | GroundError::Pack(_)
                | GroundError::Manifest(_)
                | GroundError::BadReply(_),
            ) = &result
        {
            // Never applicable to this copy again. (An I/O failure, a full disk, keeps it: the
            // next pull tries the same pack again.)
            self.drop_pull(state)?;
        }
        result
    }

    fn apply_staged(
        &mut self,
        copy: &Path,
        staging: &Path,
        base: &Manifest,
        since: &Manifest,
        force: bool,
        state: &PullIncoming,
    ) -> Result<AppliedPull, GroundError> {
        let into = state.into.as_str();
        let dir = Dir::open_ambient_dir(copy, ambient_authority()).map_err(io_at(copy))?;
        let path = self.pull_path(&state.into, &state.pack);
        let file = std::fs::File::open(&path).map_err(io_at(&path))?;
        let mut reader = std::io::BufReader::new(file);
        let mut sink = super::onboard::StagingSink { dir: staging };
        let decoded = crate::pack::decode_pack(
            &mut reader,
            base,
            &super::onboard::VolumeReader(&dir),
            &mut sink,
            // The ground's own limits: a node does not decide what the ground may allocate.
            &ground_limits(),
        );
        let decoded = match decoded {
            Ok(d) if d.target.root() == state.target_root => d,
            // A base read from the copy that no longer is what the copy held when the pull was
            // asked for: its user changed it meanwhile.
            Err(PackError::BaseChanged { path, .. }) => {
                return Err(GroundError::CopyChanged {
                    into: into.to_string(),
                    path,
                });
            }
            Err(e) => return Err(e.into()),
            Ok(_) => return Err(GroundError::BadReply("pull pack target")),
        };
        // Like git, a pull never silently overwrites a change made in the copy since the last
        // pull. (What its user changes while this pull runs is `copy_now`'s to find.)
        let mut decoded = decoded;
        if !force {
            let (kept, lost) = local_changes(since, base, &decoded);
            if !lost.is_empty() {
                return Err(GroundError::LocalChanges {
                    into: into.to_string(),
                    paths: lost.iter().map(|p| p.to_string()).collect(),
                });
            }
            decoded.header.changes.retain(|c| !kept.contains(c.path()));
        }
        let pulled = delivered(since, base, &decoded);
        let changes = &decoded.header.changes;
        // Looked at again just before anything is placed in it.
        let (now, _) = self.copy_now(copy, into, base, &decoded)?;
        let tag = format!("pull{}", state.pack.short());
        // Every file goes into the copy under a temporary name first; should that fail (the
        // copy's disk is full), the temporaries go and the copy is as it was.
        let plan = crate::volume::prepare(&dir, staging, &now, changes, &decoded.objects, &tag)
            .map_err(|e| match e {
                VolumeError::SourceGone { path, .. } => GroundError::CopyChanged {
                    into: into.to_string(),
                    path,
                },
                other => GroundError::Io {
                    path: into.to_string(),
                    source: std::io::Error::other(other.to_string()),
                },
            })?;
        // Placing copies every file's bytes and may take a while: one more look, so that an
        // edit can be lost only if it lands inside the rename loop itself.
        let unplace = |dir: &Dir| {
            for t in plan.temps() {
                let _ = dir.remove_file(t);
            }
        };
        let (now, target) = self
            .copy_now(copy, into, &now, &decoded)
            .inspect_err(|_| unplace(&dir))?;
        self.db
            .pull_journal_begin(
                &PullJournal {
                    into: into.to_string(),
                    tag: tag.clone(),
                    plan: plan.clone(),
                },
                pulled.as_ref().map(|manifest| Pulled {
                    node: &state.node,
                    pod: &state.pod,
                    manifest,
                }),
            )
            .inspect_err(|_| unplace(&dir))?;
        // Renames and removals only. Should one fail, the plan stays journaled and the next
        // pull into this copy (or the next start of the ground) finishes it.
        crate::volume::apply(&dir, &plan, &tag).map_err(|source| GroundError::PullUnfinished {
            into: into.to_string(),
            source,
        })?;
        self.db.pull_journal_end(into)?;
        Ok(AppliedPull {
            changes: decoded.header.changes,
            on: now,
            target,
        })
    }

    /// Scans the copy again and checks that none of the pack's changes touches what its user
    /// changed since `planned` was scanned. Returns the copy as it is now and the pack's target
    /// on it (the user's changes elsewhere stay).
    fn copy_now(
        &mut self,
        copy: &Path,
        into: &str,
        planned: &Manifest,
        decoded: &DecodedPack,
    ) -> Result<(Manifest, Manifest), GroundError> {
        let (now, _) = self.scan_copy(copy)?;
        let changed = |path: &VolumePath| GroundError::CopyChanged {
            into: into.to_string(),
            path: path.to_string(),
        };
        if let Some(path) = overwritten(planned, &now, &decoded.header.changes, &decoded.target)
            .into_iter()
            .next()
        {
            return Err(changed(&path));
        }
        // Content a change copies from elsewhere in the copy may be what the user changed.
        let target = crate::pack::target_on(&now, decoded).map_err(|e| match e {
            PackError::Manifest(m) => match manifest_error_path(&m) {
                Some(path) => changed(path),
                None => GroundError::Manifest(m),
            },
            other => other.into(),
        })?;
        Ok((now, target))
    }
}

/// What a pull did to its copy.
struct AppliedPull {
    changes: Vec<Change>,
    /// The copy the changes applied on (the copy as the pull found it, or as its user left it
    /// while the pull ran).
    on: Manifest,
    /// The copy now.
    target: Manifest,
}

/// The paths where applying `changes` (whose result is `target`) would lose what differs
/// between `planned` (the copy the changes were planned on) and `now` (the copy as it is), in
/// order: the same path, unless the change leaves it as the user did; a folder above a changed
/// path that the user changed or removed (one the user made is only a folder); anything the
/// user has below a removed folder. Empty when the user's changes and the pull's keep apart, so
/// the pull can apply on the copy as the user left it.
fn overwritten(
    planned: &Manifest,
    now: &Manifest,
    changes: &[Change],
    target: &Manifest,
) -> Vec<VolumePath> {
    if planned.root() == now.root() {
        return Vec::new();
    }
    let differ: HashSet<VolumePath> = diff(planned, now)
        .into_iter()
        .map(|c| c.path().clone())
        .collect();
    // The pull leaves the path as the user has it: both made the same file, or both a folder.
    let agrees = |p: &VolumePath| match (target.get(p), now.get(p)) {
        (Some(t), Some(n)) => t.kind == n.kind,
        (None, None) => true,
        _ => false,
    };
    let mut lost = std::collections::BTreeSet::new();
    for c in changes {
        let p = c.path();
        if differ.contains(p) && !agrees(p) {
            lost.insert(p.clone());
        }
        for a in p.ancestors() {
            let made_by_user = planned.get(&a).is_none() && now.get(&a).is_some_and(|e| e.is_dir());
            if differ.contains(&a) && !made_by_user {
                lost.insert(a);
            }
        }
    }
    // Something the user put inside a folder the pull removes.
    let removed: HashSet<&VolumePath> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Remove(p) => Some(p),
            Change::Put(_) => None,
        })
        .collect();
    lost.extend(
        differ
            .into_iter()
            .filter(|d| d.ancestors().any(|a| removed.contains(&a)) && !agrees(d)),
    );
    lost.into_iter().collect()
}

/// What the copy's user changed since `since` (the last pull's state) that the pack changes
/// too, split in two: paths where the pack only puts back what `since` had (the pod did not
/// change them: they are left out of the apply, and the user's version stays), and paths where
/// the pod changed them as well (the pull must not overwrite them). `start`: the copy as the
/// pull found it, which the node planned from.
fn local_changes(
    since: &Manifest,
    start: &Manifest,
    decoded: &DecodedPack,
) -> (HashSet<VolumePath>, Vec<VolumePath>) {
    let changes = &decoded.header.changes;
    let changed: HashSet<&VolumePath> = changes.iter().map(|c| c.path()).collect();
    let pod_kept =
        |p: &VolumePath| decoded.target.get(p).map(|e| &e.kind) == since.get(p).map(|e| &e.kind);
    let mut kept = HashSet::new();
    let mut lost = Vec::new();
    for p in overwritten(since, start, changes, &decoded.target) {
        if changed.contains(&p) && pod_kept(&p) {
            kept.insert(p);
        } else {
            lost.push(p);
        }
    }
    (kept, lost)
}

/// What the node delivered to the copy, as later pulls must know it: the pack's target, except
/// where the copy's user changed something since `since` that this pull did not deliver (kept
/// local changes, files of the user's own the node only kept): there, what `since` had. None
/// when that does not form a manifest (then nothing is recorded).
fn delivered(since: &Manifest, start: &Manifest, decoded: &DecodedPack) -> Option<Manifest> {
    let applied: HashSet<&VolumePath> = decoded.header.changes.iter().map(|c| c.path()).collect();
    let mut out: std::collections::BTreeMap<VolumePath, crate::manifest::Entry> = decoded
        .target
        .entries()
        .iter()
        .map(|e| (e.path.clone(), e.clone()))
        .collect();
    for c in diff(since, start) {
        let p = c.path();
        if applied.contains(p) {
            continue;
        }
        match since.get(p) {
            Some(e) => out.insert(p.clone(), e.clone()),
            None => out.remove(p),
        };
    }
    Manifest::new(out.into_values().collect()).ok()
}

/// The path a manifest error names, for errors a changed copy can cause.
fn manifest_error_path(e: &ManifestError) -> Option<&VolumePath> {
    match e {
        ManifestError::Missing(p) | ManifestError::Orphan(p) | ManifestError::KindClash(p) => {
            Some(p)
        }
        ManifestError::UnknownContent { path, .. } => Some(path),
        _ => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Brings the copy at `into` up to the pod's selection: only what is new or changed
    /// crosses the link, as a delta against the copy. Resumes a pull a cut link stopped. A
    /// selection larger than the node puts in one pull pack comes as several, each applied
    /// before the next is asked for, while the budget and the deadline allow.
    pub async fn pull(
        &mut self,
        ground: &mut Ground,
        pod: &PodName,
        into: &Path,
        opts: &PullOptions,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PullReport, GroundError> {
        std::fs::create_dir_all(into).map_err(io_at(into))?;
        let copy = std::fs::canonicalize(into).map_err(io_at(into))?;
        let key = copy.display().to_string();
        let _lock = ground
            .lock_copy(&key)?
            .ok_or(GroundError::CopyBusy { into: key })?;
        let mut report: Option<PullReport> = None;
        loop {
            let (next, more) = self
                .pull_pack(ground, pod, &copy, opts, allow, progress)
                .await?;
            let mut all = match report {
                Some(mut all) => {
                    all.absorb(next);
                    all
                }
                None => next,
            };
            if !more || !all.complete {
                return Ok(all);
            }
            if !self.room_for_another_pull(allow) {
                // The next pack is built when the next pull asks: nothing is lost.
                all.complete = false;
                return Ok(all);
            }
            report = Some(all);
        }
    }

    /// Whether the budget and the deadline leave room to ask for another pull pack (a request
    /// and an offer, and some of the pack) rather than make the node build one for nothing.
    fn room_for_another_pull(&self, allow: &Allowance) -> bool {
        const ROUND: u64 = 4096;
        let bytes = allow
            .budget
            .is_none_or(|b| self.wire_total() + CLOSING_RESERVE + ROUND <= b);
        let time = allow
            .deadline
            .is_none_or(|d| Instant::now() + 2 * self.rtt + Duration::from_secs(1) < d);
        bytes && time
    }

    /// One pull pack: asked for, received (or resumed) and applied. True with it when the node
    /// has more of the selection for a next pack. `copy`: the copy's folder, made and
    /// canonical.
    async fn pull_pack(
        &mut self,
        ground: &mut Ground,
        pod: &PodName,
        copy: &Path,
        opts: &PullOptions,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(PullReport, bool), GroundError> {
        let (filter, delete) = (opts.filter.as_slice(), opts.delete);
        let into_key = copy.display().to_string();
        // An earlier pull into this copy may have stopped inside its apply (a crash): it is
        // finished before the copy is looked at, so this one plans from a whole copy.
        ground.settle_copy(copy)?;
        let (start, _) = ground.scan_copy(copy)?;
        // The node plans from the copy as it is (every base it names is really there). What the
        // copy's user changed since the last pull (`pulled`: what that pull delivered) is
        // theirs: where the node would only put back what it delivered before, the change is
        // left out and the user's version stays; where the pod changed it too, the pull is
        // refused (like git), unless --force.
        let pulled = ground.db.pulled_copy(&into_key, &self.node, pod)?;
        let base = start.clone();
        // A pull asked differently (other --path, --delete) does not resume this one.
        let request = format!("{filter:?} delete={delete}");
        let mut report = PullReport {
            pod: pod.to_string(),
            node: self.node.to_hex(),
            into: into_key.clone(),
            up_to_date: false,
            complete: false,
            changes: ChangeSummary::default(),
            pack: None,
            pack_bytes: 0,
            received: 0,
            resumed_from: 0,
            root: base.root().to_hex(),
            packs: 0,
            skipped: SkippedReport::default(),
        };
        // A pull cut earlier continues, unless the copy changed since (then it could not apply).
        let mut resume = ground.db.pull_incoming(&self.node, pod, &into_key)?;
        if let Some(r) = resume
            .as_ref()
            .filter(|r| r.base_root != base.root() || r.request != request)
        {
            if r.target_root == base.root() {
                // The copy holds what that pull delivers: it was applied (the ground stopped
                // before it said so; the journal finished it). The node now records what it
                // delivered, as bases for the next pull.
                self.tx.send(&Message::PullDone { pack: r.pack }).await?;
            }
            ground.drop_pull(r)?;
            resume = None;
        }
        let ask = |with_base: bool| Message::PullRequest {
            pod: pod.clone(),
            filter: filter.to_vec(),
            delete,
            base_root: base.root(),
            base: if with_base {
                zstd::bulk::compress(&base.encode(), 19).expect("in-memory zstd")
            } else {
                Vec::new()
            },
            resume: resume.as_ref().map(|r| r.pack),
        };
        self.skipped = SkippedReport::default();
        self.tx.send(&ask(false)).await?;
        let mut reply = self.recv().await;
        let mut known = true;
        if let Err(GroundError::Remote {
            kind: ErrorKind::NotFound,
            ..
        }) = reply
        {
            // The node does not know the copy's manifest (a fresh ground, a copy changed by
            // hand): send it once.
            known = false;
            self.tx.send(&ask(true)).await?;
            reply = self.recv().await;
        }
        // What the copy's user changed, and the pull must not overwrite, is what differs from:
        // the last pull's state; a state the node built (a copy as a pull or push left it);
        // or, for a copy nobody knows, nothing (everything in it is the user's).
        let empty = Manifest::default();
        let since = match &pulled {
            Some(p) => p,
            None if known => &start,
            None => &empty,
        };
        let reply = reply?;
        report.skipped = self.take_skipped();
        let (pack, len, target_root, more) = match reply {
            Message::PullSame { .. } => {
                // A cut pull the node no longer needs (the copy holds the selection by now).
                if let Some(r) = &resume {
                    ground.drop_pull(r)?;
                }
                if pulled.is_none() && known {
                    // The copy is a state the node built: later pulls start from it. (A copy
                    // nobody knows may hold files of its user's own, which the node would keep:
                    // they must never be taken for the pod's.)
                    ground
                        .db
                        .set_pulled_copy(&into_key, &self.node, pod, &base)?;
                }
                report.up_to_date = true;
                report.complete = true;
                return Ok((report, false));
            }
            Message::PullOffer {
                pack,
                len,
                base_root,
                target_root,
                more,
            } if base_root == base.root() && len <= ground_limits().max_total_bytes => {
                (pack, len, target_root, more)
            }
            Message::PullOffer { len, .. } if len > ground_limits().max_total_bytes => {
                return Err(GroundError::OverLimit(format!(
                    "the node offers a {} pull pack, over this ground's limit",
                    fmt_bytes(len)
                )));
            }
            _ => {
                return Err(GroundError::Unexpected {
                    expected: "PullOffer or PullSame",
                });
            }
        };
        report.pack = Some(pack.to_hex());
        report.pack_bytes = len;
        let mut state = match resume.filter(|r| r.pack == pack && r.len == len) {
            Some(r) => r,
            None => crate::state::PullIncoming {
                pack,
                node: self.node,
                pod: pod.clone(),
                into: into_key.clone(),
                request: request.clone(),
                len,
                received: 0,
                base_root: base.root(),
                target_root,
            },
        };
        ground.db.put_pull_incoming(&state)?;
        let path = ground.pull_path(&into_key, &pack);
        std::fs::create_dir_all(path.parent().expect("pulls folder")).map_err(io_at(&path))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        let on_disk = file.metadata().map_err(io_at(&path))?.len();
        state.received = state.received.min(on_disk);
        file.set_len(state.received).map_err(io_at(&path))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(state.received))
            .map_err(io_at(&path))?;
        report.resumed_from = state.received;
        if !self
            .receive_pull(ground, &mut state, &mut file, allow, progress)
            .await?
        {
            report.received = state.received;
            return Ok((report, more));
        }
        report.received = len;
        drop(file);
        // Whole: verify every byte against the copy and apply it, files replaced by rename.
        // Applied, and (with the journal's end) recorded as what the copy holds.
        let applied = ground.apply_pull(copy, &base, since, opts.force, &state)?;
        report.changes = ChangeSummary::of(&applied.on, &applied.changes);
        report.complete = true;
        report.root = applied.target.root().to_hex();
        ground.db.delete_pull_incoming(&state)?;
        let _ = std::fs::remove_file(&path);
        self.tx.send(&Message::PullDone { pack }).await?;
        // The copy's stat cache learns the new files now, so the next scan reads nothing.
        let _ = ground.scan_copy(copy);
        report.packs = 1;
        Ok((report, more))
    }

    /// Asks for the pack's bytes in a window of ranges and writes them as they come. True when
    /// the whole pack is here and durable; false when the budget or deadline stopped it.
    async fn receive_pull(
        &mut self,
        ground: &Ground,
        state: &mut crate::state::PullIncoming,
        file: &mut std::fs::File,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<bool, GroundError> {
        let mut written = state.received;
        let result = self
            .receive_pull_into(ground, state, file, allow, progress, &mut written)
            .await;
        if result.is_err() && written > state.received {
            // The link failed: every byte written came out of an authenticated record, so keep
            // them, and the next pull asks only for the rest (it asked again for up to 256 KiB
            // after a cut).
            let _ = persist_pull(ground, file, state, written);
        }
        result
    }

    /// Takes the pull data already received when the link failed, in order, until the link
    /// ends or stays silent for a moment.
    async fn drain_pull_data(&mut self, file: &mut std::fs::File, written: &mut u64, total: u64) {
        let wait = self.rtt + Duration::from_millis(500);
        while let Ok(Ok(m)) = tokio::time::timeout(wait, self.rx.recv()).await {
            match m {
                Message::PackData { offset, bytes } => {
                    if write_pull_data(file, written, total, offset, &bytes).is_err() {
                        return;
                    }
                }
                Message::KeepAlive => {}
                _ => return,
            }
        }
    }

    async fn receive_pull_into(
        &mut self,
        ground: &Ground,
        state: &mut crate::state::PullIncoming,
        file: &mut std::fs::File,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
        written: &mut u64,
    ) -> Result<bool, GroundError> {
        let total = state.len;
        let mut up = Upload::new(total, state.received, self.rtt, allow.rate);
        let clock = Instant::now();
        let mut last_sync = Instant::now();
        let pack = state.pack;
        let report = |written: u64, durable: u64| Progress {
            pack,
            sent: written,
            acked: durable,
            total,
        };
        loop {
            if *written == total {
                break;
            }
            let limit = self.pull_limit(&up, allow);
            // Frames the window allows, asked for in ranges of up to 256 KiB: one request costs
            // about 60 bytes of the scarce uplink.
            let mut frames = Vec::new();
            while let Some(f) = up.next_frame(limit) {
                frames.push(f);
            }
            let asked = !frames.is_empty();
            for (a, b) in coalesce(&frames, PULL_RANGE_BYTES) {
                let ask = Message::PullRange {
                    pack: state.pack,
                    offset: a,
                    len: b - a,
                };
                if let Err(e) = self.tx.send(&ask).await {
                    // The link failed on the way up; what the node sent before may still be
                    // in this side's buffers: take it, it came in authenticated records.
                    self.drain_pull_data(file, written, total).await;
                    return Err(e.into());
                }
            }
            if !asked && up.in_flight() == 0 {
                // Out of budget or time: what arrived is kept for the next pass.
                persist_pull(ground, file, state, *written)?;
                return Ok(false);
            }
            let deadline = sleep_until_opt(allow.deadline);
            let m = tokio::select! {
                m = self.rx.recv() => m?,
                _ = sleep_until(self.tx.last_send() + KEEPALIVE_INTERVAL) => {
                    self.tx.send(&Message::KeepAlive).await?;
                    continue;
                }
                _ = deadline, if up.in_flight() > 0 => {
                    persist_pull(ground, file, state, *written)?;
                    return Ok(false);
                }
            };
            match m {
                Message::KeepAlive => {}
                Message::PackData { offset, bytes } => {
                    write_pull_data(file, written, total, offset, &bytes)?;
                    up.on_ack(*written, clock.elapsed())
                        .map_err(|_| GroundError::BadReply("pull data"))?;
                    if *written - state.received >= PULL_SYNC_BYTES
                        || last_sync.elapsed() >= ACK_INTERVAL
                        || *written == total
                    {
                        persist_pull(ground, file, state, *written)?;
                        last_sync = Instant::now();
                    }
                    progress(report(*written, state.received));
                }
                Message::Error { kind, message } => return Err(remote(kind, message)),
                _ => {
                    return Err(GroundError::Unexpected {
                        expected: "PackData",
                    });
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::sim::{SimConfig, SimNet};
    use crate::link::{ServeOptions, serve_connection};
    use crate::manifest::StatCache;
    use crate::path::TEMP_PREFIX;
    use crate::session::onboard::OnboardService;
    use crate::volume::{self, ApplyPlan, Step};
    use crate::wire::LinkKey;

    fn write(root: &Path, rel: &str, body: impl AsRef<[u8]>) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    fn scan(root: &Path) -> Manifest {
        let dir = Dir::open_ambient_dir(root, ambient_authority()).unwrap();
        scan_dir(&dir, &StatCache::new(), &ScanOptions::volume())
            .unwrap()
            .0
    }

    fn temps(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect();
        v.sort();
        v
    }

    /// A node with pod `p`, a ground, a copy, and a fast simulated link between them.
    struct Rig {
        t: tempfile::TempDir,
        svc: Arc<OnboardService>,
        key: LinkKey,
        net: SimNet,
        ground: Ground,
        pod: PodName,
    }

    impl Rig {
        fn new() -> Self {
            let t = tempfile::tempdir().unwrap();
            let svc = OnboardService::open(
                &t.path().join("vols"),
                &t.path().join("onboard"),
                Limits::default(),
            )
            .unwrap();
            std::fs::create_dir_all(t.path().join("vols/p")).unwrap();
            std::fs::create_dir_all(t.path().join("copy")).unwrap();
            Self {
                svc: Arc::new(svc),
                key: LinkKey::generate().unwrap(),
                net: SimNet::new(
                    SimConfig::symmetric(10_000_000, Duration::from_millis(20)),
                    vec![],
                ),
                ground: Ground::open(&t.path().join("ground")).unwrap(),
                pod: PodName::new("p".to_string()).unwrap(),
                t,
            }
        }

        fn vol(&self) -> PathBuf {
            self.t.path().join("vols/p")
        }

        /// The copy, by its canonical path (the key its rows are kept under).
        fn copy(&self) -> PathBuf {
            std::fs::canonicalize(self.t.path().join("copy")).unwrap()
        }

        fn copy_key(&self) -> String {
            self.copy().display().to_string()
        }

        /// One pull over a new connection; `progress` runs as the pack's bytes arrive (after
        /// the copy was scanned, before it is applied).
        async fn pull(
            &mut self,
            progress: impl FnMut(Progress),
        ) -> Result<PullReport, GroundError> {
            self.pull_with(&PullOptions::default(), progress).await
        }

        async fn pull_with(
            &mut self,
            opts: &PullOptions,
            mut progress: impl FnMut(Progress),
        ) -> Result<PullReport, GroundError> {
            let mut client = self.connect().await?;
            let (pod, copy) = (self.pod.clone(), self.copy());
            let report = client
                .pull(
                    &mut self.ground,
                    &pod,
                    &copy,
                    opts,
                    &Allowance::default(),
                    &mut progress,
                )
                .await;
            client.bye(&self.ground).await?;
            report
        }

        /// A new connection to the node, served on the simulated link.
        async fn connect(&self) -> Result<Client<crate::link::sim::SimStream>, GroundError> {
            let (ground_end, onboard_end) = self.net.connect();
            let (svc, key) = (self.svc.clone(), self.key.clone());
            tokio::spawn(async move {
                let opts = ServeOptions {
                    idle_timeout: Duration::from_secs(20),
                    ..ServeOptions::default()
                };
                let _ = serve_connection(onboard_end, svc, &key, &opts).await;
            });
            let link = Link::connect(ground_end, &self.key, Duration::from_secs(10)).await?;
            Client::start(link).await
        }

        /// The node's id, as a connection learns it.
        async fn node(&mut self) -> NodeId {
            let client = self.connect().await.unwrap();
            let node = client.node;
            client.bye(&self.ground).await.unwrap();
            node
        }

        /// Files of the ground's `pulls/` folder (packs being received, staging folders).
        fn pull_files(&self) -> Vec<String> {
            std::fs::read_dir(self.t.path().join("ground/pulls"))
                .map(|rd| {
                    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        }

        /// A crash in the middle of a pull's apply: every file of the pod's volume placed in
        /// the copy under a temporary name, the plan journaled, and only its first `done` steps
        /// run. Returns the target (the pod's volume).
        fn crash_inside_apply(&mut self, done: usize) -> Manifest {
            let (copy, vol) = (self.copy(), self.vol());
            let base = scan(&copy);
            let target = scan(&vol);
            let mut changes = diff(&base, &target);
            // New content becomes pack objects, staged as the decoder would.
            let staging = self.t.path().join("staging");
            std::fs::create_dir_all(&staging).unwrap();
            let held = base.content_index();
            let mut objects = Vec::new();
            for c in &mut changes {
                if let Change::Put(p) = c
                    && let PutKind::File(FileSource::Known { id, size }) = p.kind
                    && !held.contains_key(&id)
                {
                    let i = objects.len() as u32;
                    std::fs::copy(vol.join(p.path.as_str()), staging.join(format!("o{i}")))
                        .unwrap();
                    objects.push((id, size));
                    p.kind = PutKind::File(FileSource::Object(i));
                }
            }
            let dir = Dir::open_ambient_dir(&copy, ambient_authority()).unwrap();
            let tag = "pullcrash";
            let plan = volume::prepare(&dir, &staging, &base, &changes, &objects, tag).unwrap();
            assert!(plan.steps.len() > done, "{plan:?}");
            self.ground
                .db
                .pull_journal_begin(
                    &PullJournal {
                        into: self.copy_key(),
                        tag: tag.into(),
                        plan: plan.clone(),
                    },
                    None,
                )
                .unwrap();
            let first = ApplyPlan {
                steps: plan.steps[..done].to_vec(),
            };
            volume::apply(&dir, &first, tag).unwrap();
            assert_ne!(scan(&copy).root(), target.root(), "left half-applied");
            target
        }

        /// A pod volume and a copy that differ in every way a pull can change a copy.
        fn diverged(&self) {
            let (vol, copy) = (self.vol(), self.copy());
            write(&vol, "a.txt", "the pod's a\n");
            write(&vol, "d/same.txt", "same\n");
            write(&vol, "d/new.txt", "brand new\n");
            write(&vol, "moved/r.txt", "renamed by the pod\n");
            write(&copy, "a.txt", "the copy's a\n");
            write(&copy, "d/same.txt", "same\n");
            write(&copy, "r.txt", "renamed by the pod\n");
            write(&copy, "gone.txt", "removed by the pod\n");
        }
    }

    /// Regression: a ground that died inside the renames of a pull left the copy half-updated,
    /// with the pull's temporaries in it. The next pull now finishes the journaled plan before
    /// it scans the copy, so it finds the copy at the target (nothing left to pull), sweeps
    /// the temporaries, and tells the node the cut pull was applied.
    #[tokio::test(start_paused = true)]
    async fn a_pull_journaled_but_not_applied_is_finished_by_the_next_pull() {
        let mut rig = Rig::new();
        rig.diverged();
        let base = scan(&rig.copy());
        let target = rig.crash_inside_apply(2);
        // A prepare that a crash cut short before its plan was journaled left this one.
        write(&rig.copy(), ".~sync.pullother.3", "orphan");
        // The cut pull's row: received whole, never reported applied to the node.
        let node = rig.node().await;
        rig.ground
            .db
            .put_pull_incoming(&PullIncoming {
                pack: PackId([4; 32]),
                node,
                pod: rig.pod.clone(),
                into: rig.copy_key(),
                request: format!("{:?} delete={}", Vec::<String>::new(), false),
                len: 10,
                received: 10,
                base_root: base.root(),
                target_root: target.root(),
            })
            .unwrap();
        let r = rig.pull(|_| {}).await.unwrap();
        // Nothing left to pull: the copy was at the target before it was scanned.
        assert!(r.up_to_date, "{r:?}");
        assert_eq!(scan(&rig.copy()).root(), target.root());
        assert_eq!(rig.ground.db.pull_journal(&rig.copy_key()).unwrap(), None);
        assert_eq!(temps(&rig.copy()), Vec::<String>::new());
        assert_eq!(
            std::fs::read_to_string(rig.copy().join("moved/r.txt")).unwrap(),
            "renamed by the pod\n"
        );
        assert!(!rig.copy().join("gone.txt").exists());
        let row = rig
            .ground
            .db
            .pull_incoming(&node, &rig.pod, &rig.copy_key());
        assert_eq!(row.unwrap(), None);
    }

    /// The same crash, finished when the ground next opens its state (any command), before
    /// anything else looks at the copy.
    #[test]
    fn opening_the_ground_finishes_a_journaled_pull() {
        let mut rig = Rig::new();
        rig.diverged();
        let target = rig.crash_inside_apply(1);
        let ground = Ground::open(&rig.t.path().join("ground")).unwrap();
        assert_eq!(scan(&rig.copy()).root(), target.root());
        assert!(ground.db.pull_journals().unwrap().is_empty());
        assert_eq!(temps(&rig.copy()), Vec::<String>::new());
    }

    /// Regression (review): opening the ground (any command) rolled forward a journaled apply
    /// that another process's pull was in the middle of, and swept its temporaries. A copy
    /// another process holds is left to it; a pull into it is refused as busy.
    #[tokio::test(start_paused = true)]
    async fn a_copy_another_process_is_pulling_into_is_left_alone() {
        let mut rig = Rig::new();
        rig.diverged();
        let before = scan(&rig.copy());
        let _target = rig.crash_inside_apply(1);
        let half = scan(&rig.copy());
        assert_ne!(half.root(), before.root());
        let other = rig
            .ground
            .lock_copy(&rig.copy_key())
            .unwrap()
            .expect("free");
        let ground = Ground::open(&rig.t.path().join("ground")).unwrap();
        assert_eq!(
            ground.db.pull_journals().unwrap().len(),
            1,
            "left journaled"
        );
        assert_eq!(scan(&rig.copy()).root(), half.root(), "left as it was");
        let r = rig.pull(|_| {}).await;
        assert!(matches!(r, Err(GroundError::CopyBusy { .. })), "{r:?}");
        drop(other);
        rig.pull(|_| {}).await.unwrap();
        assert!(rig.ground.db.pull_journals().unwrap().is_empty());
    }

    /// Temporaries that no journal names (a prepare a crash cut short) are swept; those of a
    /// journaled apply that cannot finish yet are kept for it, and it finishes once it can.
    #[test]
    fn temporaries_left_in_a_copy_are_swept_unless_a_journaled_pull_needs_them() {
        let rig = Rig::new();
        let copy = rig.copy();
        write(&copy, "mine.txt", "the user's\n");
        write(&copy, ".~sync.pulldead.0", "orphan");
        write(&copy, ".~sync.pulldead.7", "orphan");
        rig.ground.settle_copy(&copy).unwrap();
        assert_eq!(temps(&copy), Vec::<String>::new());
        assert_eq!(
            std::fs::read_to_string(copy.join("mine.txt")).unwrap(),
            "the user's\n"
        );

        // A plan whose first step cannot run yet: a file stands where its folder goes.
        write(&copy, "blocker", "in the way");
        write(&copy, ".~sync.pulljour.1", "placed");
        write(&copy, ".~sync.pulldead.2", "orphan");
        let plan = ApplyPlan {
            steps: vec![
                Step::Dir {
                    path: VolumePath::new("blocker/sub").unwrap(),
                    mode: 0o755,
                },
                Step::File {
                    path: VolumePath::new("x").unwrap(),
                    temp: ".~sync.pulljour.1".into(),
                    id: ContentId::of(b"placed"),
                    mode: 0o644,
                    mtime: 0,
                },
            ],
        };
        let journal = PullJournal {
            into: rig.copy_key(),
            tag: "pulljour".into(),
            plan,
        };
        rig.ground.db.pull_journal_begin(&journal, None).unwrap();
        let err = rig.ground.settle_copy(&copy).unwrap_err();
        assert!(
            matches!(&err, GroundError::PullUnfinished { into, .. } if *into == rig.copy_key()),
            "{err}"
        );
        assert!(err.to_string().contains(&rig.copy_key()), "{err}");
        assert_eq!(temps(&copy), vec![".~sync.pulljour.1".to_string()]);
        assert_eq!(
            rig.ground.db.pull_journal(&rig.copy_key()).unwrap(),
            Some(journal)
        );
        // Out of the way now (its user made it the folder it was to be).
        std::fs::remove_file(copy.join("blocker")).unwrap();
        std::fs::create_dir(copy.join("blocker")).unwrap();
        rig.ground.settle_copy(&copy).unwrap();
        assert_eq!(std::fs::read_to_string(copy.join("x")).unwrap(), "placed");
        assert!(copy.join("blocker/sub").is_dir());
        assert_eq!(temps(&copy), Vec::<String>::new());
        assert_eq!(rig.ground.db.pull_journal(&rig.copy_key()).unwrap(), None);
    }

    /// A journaled apply that can never finish (a file it was to place is gone, and the copy
    /// does not hold it) is reported, naming the copy, and given up so later pulls can repair
    /// the copy.
    #[test]
    fn a_journaled_pull_that_can_never_finish_is_reported_naming_the_copy() {
        let rig = Rig::new();
        let copy = rig.copy();
        rig.ground
            .db
            .pull_journal_begin(
                &PullJournal {
                    into: rig.copy_key(),
                    tag: "pulllost".into(),
                    plan: ApplyPlan {
                        steps: vec![Step::File {
                            path: VolumePath::new("x").unwrap(),
                            temp: ".~sync.pulllost.0".into(),
                            id: ContentId::of(b"never placed"),
                            mode: 0o644,
                            mtime: 0,
                        }],
                    },
                },
                None,
            )
            .unwrap();
        let err = rig.ground.settle_copy(&copy).unwrap_err();
        assert!(
            matches!(&err, GroundError::PullAbandoned { into, source: VolumeError::Unrecoverable { path } }
                if *into == rig.copy_key() && path == "x"),
            "{err}"
        );
        assert!(err.to_string().contains(&rig.copy_key()), "{err}");
        assert_eq!(rig.ground.db.pull_journal(&rig.copy_key()).unwrap(), None);
        rig.ground.settle_copy(&copy).unwrap();
    }

    /// The pod's first version of every file, pulled into the copy.
    async fn pulled_once(rig: &mut Rig) {
        let vol = rig.vol();
        write(&vol, "a.txt", "version 1\n");
        write(&vol, "keep.txt", "the pod's keep\n");
        write(&vol, "log.txt", "step 0 loss 1.0\n".repeat(1_000));
        let r = rig.pull(|_| {}).await.unwrap();
        assert!(r.complete, "{r:?}");
        assert_eq!(scan(&rig.copy()).root(), scan(&vol).root());
    }

    /// Regression: the copy was scanned only when a pull started, so a file its user edited
    /// while the pull ran was overwritten by the pull's version. Now the copy is scanned again
    /// before anything is placed: the edit is kept, nothing is applied, and the pack is
    /// dropped so the next pull plans from the copy as it is.
    #[tokio::test(start_paused = true)]
    async fn an_edit_to_a_file_the_pull_changes_stops_the_pull_and_is_kept() {
        let mut rig = Rig::new();
        pulled_once(&mut rig).await;
        let (vol, copy) = (rig.vol(), rig.copy());
        // Unrelated to the copy's version, and small: sent literal, not decoded against it.
        write(&vol, "a.txt", "the pod's second version\n");
        write(&vol, "new.txt", "new\n");
        let before = scan(&copy);
        let mut edited = false;
        let err = rig
            .pull(|_| {
                if !std::mem::replace(&mut edited, true) {
                    write(&copy, "a.txt", "the user's edit\n");
                }
            })
            .await
            .unwrap_err();
        assert!(edited);
        assert!(
            matches!(&err, GroundError::CopyChanged { path, .. } if path == "a.txt"),
            "{err}"
        );
        assert!(err.to_string().contains("run the pull again"), "{err}");
        assert_eq!(
            std::fs::read_to_string(copy.join("a.txt")).unwrap(),
            "the user's edit\n"
        );
        // Nothing else was applied either, and nothing of the pull is left behind.
        assert!(!copy.join("new.txt").exists());
        assert_eq!(
            scan(&copy).entries().len(),
            before.entries().len(),
            "{:?}",
            scan(&copy)
        );
        assert_eq!(temps(&copy), Vec::<String>::new());
        assert_eq!(rig.pull_files(), Vec::<String>::new());
        let node = rig.node().await;
        let row = rig
            .ground
            .db
            .pull_incoming(&node, &rig.pod, &rig.copy_key());
        assert_eq!(row.unwrap(), None);
        // Run again, the pull finds the edit a local change, which it does not overwrite
        // unless told to.
        let err = rig.pull(|_| {}).await.unwrap_err();
        assert!(
            matches!(&err, GroundError::LocalChanges { paths, .. } if paths == &["a.txt"]),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(copy.join("a.txt")).unwrap(),
            "the user's edit\n"
        );
        let force = PullOptions {
            force: true,
            ..PullOptions::default()
        };
        let r = rig.pull_with(&force, |_| {}).await.unwrap();
        assert!(r.complete, "{r:?}");
        assert_eq!(scan(&copy).root(), scan(&vol).root());
    }

    /// The same for a file the pack is decoded against (a grown log travels as its new part
    /// appended to the copy's version): the edit is kept and nothing is applied.
    #[tokio::test(start_paused = true)]
    async fn an_edit_to_a_file_the_pull_decodes_against_stops_the_pull_and_is_kept() {
        let mut rig = Rig::new();
        pulled_once(&mut rig).await;
        let (vol, copy) = (rig.vol(), rig.copy());
        let mut log = std::fs::read_to_string(vol.join("log.txt")).unwrap();
        log.push_str("step 1 loss 0.5\n");
        write(&vol, "log.txt", &log);
        let mut edited = false;
        let err = rig
            .pull(|_| {
                if !std::mem::replace(&mut edited, true) {
                    write(&copy, "log.txt", "the user's notes\n");
                }
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, GroundError::CopyChanged { path, .. } if path == "log.txt"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(copy.join("log.txt")).unwrap(),
            "the user's notes\n"
        );
        assert_eq!(temps(&copy), Vec::<String>::new());
        assert_eq!(rig.pull_files(), Vec::<String>::new());
    }

    /// Edits elsewhere in the copy (a file the pull does not touch, a new folder) while the
    /// pull runs: the pull applies on the copy as the user left it, and the edits stay.
    #[tokio::test(start_paused = true)]
    async fn an_edit_elsewhere_in_the_copy_during_a_pull_is_kept_and_the_pull_applies() {
        let mut rig = Rig::new();
        pulled_once(&mut rig).await;
        let (vol, copy) = (rig.vol(), rig.copy());
        write(&vol, "a.txt", "the pod's second version\n");
        write(&vol, "new.txt", "new\n");
        let mut edited = false;
        let r = rig
            .pull(|_| {
                if !std::mem::replace(&mut edited, true) {
                    write(&copy, "keep.txt", "the user's keep\n");
                    write(&copy, "mine/notes.txt", "the user's notes\n");
                }
            })
            .await
            .unwrap();
        assert!(edited);
        assert!(r.complete, "{r:?}");
        assert_eq!(
            std::fs::read_to_string(copy.join("a.txt")).unwrap(),
            "the pod's second version\n"
        );
        assert_eq!(
            std::fs::read_to_string(copy.join("new.txt")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(copy.join("keep.txt")).unwrap(),
            "the user's keep\n"
        );
        assert_eq!(
            std::fs::read_to_string(copy.join("mine/notes.txt")).unwrap(),
            "the user's notes\n"
        );
        // The report names the copy as it now is.
        assert_eq!(r.root, scan(&copy).root().to_hex());
        assert_eq!(r.changes.changed, 1, "{r:?}");
        assert_eq!(r.changes.added, 1, "{r:?}");
        assert_eq!(temps(&copy), Vec::<String>::new());
    }

    #[test]
    fn a_budget_carries_whole_frames_and_their_framing() {
        let cost = Upload::wire_cost(4096);
        assert_eq!(payload_in(0, 4096), 0);
        assert_eq!(payload_in(super::super::upload::FRAME_OVERHEAD, 4096), 0);
        assert_eq!(payload_in(cost, 4096), 4096);
        assert_eq!(payload_in(3 * cost + 100, 4096), 3 * 4096 + 100 - 33);
        assert_eq!(budget_reserve(1_000_000), CLOSING_RESERVE + 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_plan_counts_what_the_time_left_carries_not_the_whole_deadline() {
        let rtt = Duration::from_millis(500);
        let allow = Allowance {
            budget: None,
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            rate: Some(100_000.0),
        };
        // 10 s less a round trip and the closing slack, at 100 kB/s, less framing.
        let c = allow.capacity(0, rtt).unwrap();
        assert!(c < 850_000 && c > 800_000, "{c}");
        // The budget, less what the connection moved and the reserve, bounds it further.
        let tight = Allowance {
            budget: Some(300_000),
            ..allow
        };
        let b = tight.capacity(10_000, rtt).unwrap();
        assert!(b < 300_000 - 10_000 - 6_000 && b > 270_000, "{b}");
        assert_eq!(Allowance::default().capacity(0, rtt), None);
    }

    #[test]
    fn changes_touch_what_differs_at_their_path_above_it_or_below_a_removal() {
        let file = |p: &str, body: &str| crate::manifest::Entry {
            path: VolumePath::new(p).unwrap(),
            kind: EntryKind::File {
                id: ContentId::of(body.as_bytes()),
                size: body.len() as u64,
            },
            mode: 0o644,
            mtime: 0,
        };
        let dir = |p: &str, mode: u32| crate::manifest::Entry {
            path: VolumePath::new(p).unwrap(),
            kind: EntryKind::Dir,
            mode,
            mtime: 0,
        };
        let m = |e: Vec<crate::manifest::Entry>| Manifest::new(e).unwrap();
        let planned = m(vec![
            dir("a", 0o755),
            file("a/x", "x"),
            dir("b", 0o755),
            file("b/y", "y"),
            file("c", "c"),
        ]);
        let put = |p: &str| {
            Change::Put(crate::manifest::Put {
                path: VolumePath::new(p).unwrap(),
                kind: PutKind::File(FileSource::Object(0)),
                mode: 0o644,
                mtime: 0,
            })
        };
        let remove = |p: &str| Change::Remove(VolumePath::new(p).unwrap());
        // What the pod made of each path: every file changed, folder b kept.
        let pod = m(vec![
            dir("a", 0o755),
            file("a/x", "pod"),
            dir("b", 0o755),
            file("b/y", "pod"),
            file("c", "pod"),
        ]);
        let touched_by_changes = |planned: &Manifest, now: &Manifest, changes: &[Change]| {
            overwritten(planned, now, changes, &pod).into_iter().next()
        };
        let vp = |p: &str| Some(VolumePath::new(p).unwrap());
        // Unchanged copy: nothing to check.
        assert_eq!(touched_by_changes(&planned, &planned, &[put("a/x")]), None);
        // The user edited c.
        let now = m(vec![
            dir("a", 0o755),
            file("a/x", "x"),
            dir("b", 0o755),
            file("b/y", "y"),
            file("c", "edited"),
        ]);
        assert_eq!(touched_by_changes(&planned, &now, &[put("a/x")]), None);
        assert_eq!(
            touched_by_changes(&planned, &now, &[put("a/x"), put("c")]),
            vp("c")
        );
        // The user changed folder a's mode: a change below it is touched.
        let now = m(vec![
            dir("a", 0o700),
            file("a/x", "x"),
            dir("b", 0o755),
            file("b/y", "y"),
            file("c", "c"),
        ]);
        assert_eq!(touched_by_changes(&planned, &now, &[put("a/x")]), vp("a"));
        assert_eq!(touched_by_changes(&planned, &now, &[put("b/y")]), None);
        // The user added a file in folder b: removing b touches it, changing b/y does not.
        let now = m(vec![
            dir("a", 0o755),
            file("a/x", "x"),
            dir("b", 0o755),
            file("b/mine", "mine"),
            file("b/y", "y"),
            file("c", "c"),
        ]);
        assert_eq!(touched_by_changes(&planned, &now, &[put("b/y")]), None);
        assert_eq!(
            touched_by_changes(&planned, &now, &[remove("b/y"), remove("b")]),
            vp("b/mine")
        );
        // Every path is named, in order, not only the first; a change that leaves a path as
        // the user has it loses nothing.
        let now = m(vec![
            dir("a", 0o755),
            file("a/x", "pod"),
            dir("b", 0o755),
            file("b/y", "mine"),
            file("c", "mine"),
            dir("d", 0o755),
            file("d/new", "mine"),
        ]);
        let all = overwritten(&planned, &now, &[put("a/x"), put("b/y"), put("c")], &pod);
        assert_eq!(all, vec![vp("b/y").unwrap(), vp("c").unwrap()]);
        // A folder the user made is only a folder: what the pod puts in it is not a conflict.
        let mut with_d = pod.entries().to_vec();
        with_d.extend([dir("d", 0o755), file("d/z", "pod")]);
        let pod_d = m(with_d);
        assert_eq!(
            overwritten(&planned, &now, &[put("d/z")], &pod_d),
            Vec::<VolumePath>::new()
        );
    }
}
