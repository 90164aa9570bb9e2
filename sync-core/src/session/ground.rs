//! The ground end: what it knows of each pod ([`Ground`]), and the client that pushes, lists and
//! removes over a [`Link`]. Planning and encoding are the pure functions of [`crate::pack`]; this
//! module sequences the protocol's request/reply steps around them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::id::{ContentId, ManifestId, NodeId, PackId};
use crate::link::{Link, LinkError};
use crate::manifest::{
    Change, Describe, EntryKind, FileSource, Manifest, PutKind, ScanOptions, ScanStats,
    apply_changes, scan_dir,
};
use crate::object::ObjectStore;
use crate::pack::{ContentProvider, Limits, PackError, Plan, PlanStats};
use crate::path::{PodName, VolumePath};
use crate::state::{Db, OutgoingPack};
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
        Ok(Self {
            dir: dir.to_path_buf(),
            db: Db::open(&dir.join("ground.db"))?,
            store: ObjectStore::open(&dir.join("objects")).map_err(io_at(dir))?,
        })
    }

    fn pack_path(&self, pack: &PackId) -> PathBuf {
        self.dir
            .join("packs")
            .join(format!("{}.pack", pack.to_hex()))
    }

    /// Scans a local folder through its stat cache.
    pub fn scan_local(&mut self, folder: &Path) -> Result<(Manifest, ScanStats), GroundError> {
        let abs = std::fs::canonicalize(folder).map_err(io_at(folder))?;
        let dir = Dir::open_ambient_dir(&abs, ambient_authority()).map_err(io_at(&abs))?;
        let scope = abs.display().to_string();
        let cache = self.db.stat_cache(&scope)?;
        let (m, fresh, stats) = scan_dir(&dir, &cache, &ScanOptions::local())?;
        self.db.save_stat_cache(&scope, &cache, &fresh)?;
        Ok((m, stats))
    }
}

/// Reads target content from the local folder being pushed, and bases from the content store.
struct LocalTree<'a> {
    dir: Dir,
    dest: Option<&'a VolumePath>,
    store: &'a ObjectStore,
}

impl LocalTree<'_> {
    fn local_path<'p>(&self, path: &'p VolumePath) -> &'p str {
        match self.dest {
            Some(d) => &path.as_str()[d.as_str().len() + 1..],
            None => path.as_str(),
        }
    }
}

impl ContentProvider for LocalTree<'_> {
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
    pub sent: u64,
    pub acked: u64,
    pub total: u64,
}

/// A connected ground client.
pub struct Client<S> {
    link: Link<S>,
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
    pub async fn start(mut link: Link<S>) -> Result<Self, GroundError> {
        match link.recv().await? {
            Message::Welcome {
                node,
                limits,
                software,
            } => Ok(Self {
                link,
                node,
                limits,
                software,
            }),
            Message::Error { kind, message } => Err(remote(kind, message)),
            _ => Err(GroundError::Unexpected {
                expected: "Welcome",
            }),
        }
    }

    pub fn wire_bytes(&self) -> (u64, u64) {
        let c = self.link.counters();
        (c.sent(), c.received())
    }

    /// The next message; an `Error` from the onboard side becomes [`GroundError::Remote`].
    async fn recv(&mut self) -> Result<Message, GroundError> {
        match self.link.recv().await? {
            Message::Error { kind, message } => Err(remote(kind, message)),
            m => Ok(m),
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
        self.link
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

    /// Makes `dest` (or the whole volume) of `pod` hold exactly `local`'s tree.
    pub async fn push(
        &mut self,
        ground: &mut Ground,
        local_dir: &Path,
        local: &Manifest,
        pod: &PodName,
        dest: Option<&VolumePath>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PushReport, GroundError> {
        // One retry: if the pod changed a base between our look and the apply, look again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let base = self.manifest(ground, pod).await?;
            let target = base.with_subtree(dest, local)?;
            let abs = std::fs::canonicalize(local_dir).map_err(io_at(local_dir))?;
            let provider = LocalTree {
                dir: Dir::open_ambient_dir(&abs, ambient_authority()).map_err(io_at(&abs))?,
                dest,
                store: &ground.store,
            };
            match self
                .apply_target(ground, pod, &base, &target, &provider, &abs, progress)
                .await
            {
                Err(GroundError::Remote {
                    kind: ErrorKind::Conflict,
                    ..
                }) if attempt < 2 => continue,
                other => return other,
            }
        }
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
        let empty = EmptyProvider;
        self.apply_target(
            ground,
            pod,
            &base,
            &target,
            &empty,
            Path::new(""),
            &mut |_| {},
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_target(
        &mut self,
        ground: &Ground,
        pod: &PodName,
        base: &Manifest,
        target: &Manifest,
        provider: &dyn ContentProvider,
        source: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PushReport, GroundError> {
        let plan = Plan::new(base, target, &|id| ground.store.contains(id));
        let summary = ChangeSummary::of(base, &plan.changes);
        let mut report = PushReport {
            pod: pod.to_string(),
            node: self.node.to_hex(),
            up_to_date: plan.is_empty(),
            changes: summary,
            content_bytes: plan.object_bytes(),
            pack_bytes: 0,
            pack: None,
            root: base.root().to_hex(),
            plan: PlanCounts::default(),
        };
        if plan.is_empty() {
            return Ok(report);
        }
        let signatures = self.signatures(pod, &plan).await?;
        let mut bytes = Vec::new();
        // The bytes read (and verified) for encoding go straight into the content store, where
        // they become the bases of the next push; nothing is read twice.
        let keeping = Keeping {
            inner: provider,
            store: &ground.store,
        };
        let stats = plan.encode(base, &keeping, &signatures, &self.limits, &mut bytes)?;
        let pack = PackId(*blake3::hash(&bytes).as_bytes());
        let path = ground.pack_path(&pack);
        std::fs::write(&path, &bytes).map_err(io_at(&path))?;
        ground.db.insert_outgoing(&OutgoingPack {
            pack,
            node: self.node,
            pod: pod.clone(),
            len: bytes.len() as u64,
            acked: 0,
            base_root: plan.base_root,
            target_root: plan.target_root,
            target: target.clone(),
            source: source.display().to_string(),
            state: "queued".into(),
        })?;
        let root = self
            .send_pack(ground, pod, &plan, pack, &bytes, progress)
            .await?;
        if root != plan.target_root {
            return Err(GroundError::BadReply("applied root"));
        }
        // The onboard side now holds the target: record it, and let go of content no pod holds
        // any more (including anything kept for a push that never applied).
        ground.db.set_known_manifest(&self.node, pod, target)?;
        let keep = ground.db.referenced_content()?;
        ground.store.retain(&keep).map_err(io_at(&path))?;
        ground.db.delete_outgoing(&pack)?;
        let _ = std::fs::remove_file(&path);
        report.pack_bytes = stats.pack_bytes;
        report.pack = Some(pack.to_hex());
        report.root = root.to_hex();
        report.plan = PlanCounts::from(&stats);
        Ok(report)
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
        self.link
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

    async fn send_pack(
        &mut self,
        ground: &Ground,
        pod: &PodName,
        plan: &Plan,
        pack: PackId,
        bytes: &[u8],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ManifestId, GroundError> {
        let total = bytes.len() as u64;
        self.link
            .send(&Message::PackOffer {
                pod: pod.clone(),
                pack,
                len: total,
                base_root: plan.base_root,
                target_root: plan.target_root,
            })
            .await?;
        let mut offset = match self.recv().await? {
            Message::PackAccept { pack: p, offset } if p == pack && offset <= total => offset,
            _ => {
                return Err(GroundError::Unexpected {
                    expected: "PackAccept",
                });
            }
        };
        let mut acked = offset;
        while offset < total {
            let end = (offset + CHUNK_BYTES as u64).min(total);
            self.link
                .send(&Message::PackData {
                    pack,
                    offset,
                    bytes: bytes[offset as usize..end as usize].to_vec(),
                })
                .await?;
            offset = end;
            progress(Progress {
                sent: offset,
                acked,
                total,
            });
        }
        loop {
            match self.recv().await? {
                Message::PackAck { pack: p, offset } if p == pack => {
                    acked = offset;
                    ground.db.set_outgoing_progress(&pack, acked, "sending")?;
                    progress(Progress {
                        sent: total,
                        acked,
                        total,
                    });
                }
                Message::PackApplied { pack: p, root } if p == pack => return Ok(root),
                _ => {
                    return Err(GroundError::Unexpected {
                        expected: "PackApplied",
                    });
                }
            }
        }
    }

    /// Says goodbye and closes the link.
    pub async fn bye(mut self) -> Result<(u64, u64), GroundError> {
        self.link.send(&Message::Bye).await?;
        let counts = self.wire_bytes();
        let _ = self.link.close().await;
        Ok(counts)
    }
}

/// Keeps every target read for encoding in the content store.
struct Keeping<'a> {
    inner: &'a dyn ContentProvider,
    store: &'a ObjectStore,
}

impl ContentProvider for Keeping<'_> {
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
