//! A push: make a folder of a pod's volume (or the whole volume) hold a local tree. The pod's
//! manifest is learned, the queue settled ([`super::queue`]), the change planned and encoded
//! once, the pack written to `packs/` and queued, then sent ([`super::send`]). Also what a push
//! reports ([`PushReport`]) and where its content comes from (the local tree, kept in the
//! content store as it is read).

use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use super::encoding::{Encoding, Job};
use super::keeper::Keeping;
use super::queue::{self, Fate, Next, held_note, scopes_overlap};
use super::{Allowance, Client, Ground, GroundError, Progress, io_at};
use crate::delta::ReadAt;
use crate::id::{ContentId, ManifestId, NodeId, PackId};
use crate::manifest::{ChangeSummary, Manifest};
use crate::object::ObjectStore;
use crate::pack::{ContentProvider, Effort, PackError, Plan, PlanStats, TargetReader};
use crate::path::{PodName, VolumePath};
use crate::state::{FollowUp, OutgoingPack, PackState};
use crate::units::fmt_bytes;
use crate::wire::ErrorKind;

/// What a push sends, and where it lands.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions<'a> {
    /// The local folder pushed.
    pub folder: &'a Path,
    /// Its tree, as [`Ground::scan_local`] found it.
    pub local: &'a Manifest,
    /// The folder of the pod's volume it replaces (`--dest`); None: the whole volume.
    pub dest: Option<&'a VolumePath>,
    /// Its place in the queue: a pass sends higher priorities first.
    pub priority: i64,
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

impl PushReport {
    /// A report of `changes` to `pod`, whose volume is at `root`, with nothing sent yet.
    pub(super) fn new(
        pod: &PodName,
        node: &NodeId,
        changes: ChangeSummary,
        root: ManifestId,
    ) -> Self {
        Self {
            pod: pod.to_string(),
            node: node.to_hex(),
            up_to_date: false,
            complete: false,
            acked: 0,
            resumed_from: 0,
            notes: Vec::new(),
            changes,
            content_bytes: 0,
            pack_bytes: 0,
            pack: None,
            root: root.to_hex(),
            plan: PlanCounts::default(),
        }
    }
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

/// One push as it goes, across its attempts: what it pushes, and what it has to say.
struct Pushing<'a> {
    pod: &'a PodName,
    opts: &'a PushOptions<'a>,
    /// What happened to earlier queued pushes for the pod, in words.
    notes: Vec<String>,
}

impl<'a> Pushing<'a> {
    /// The update of the volume from `base` to `target` with this push's content.
    fn update<'b>(&'b self, base: &'b Manifest, target: &'b Manifest) -> Update<'b> {
        Update {
            pod: self.pod,
            source: Some(self.opts.folder),
            dest: self.opts.dest,
            priority: self.opts.priority,
            base,
            target,
        }
    }
}

/// An update of a pod's volume, from `base` to `target`, to plan, encode, queue and send.
pub(super) struct Update<'a> {
    pub(super) pod: &'a PodName,
    /// The local folder new content is read from; None: there is none (a removal).
    pub(super) source: Option<&'a Path>,
    pub(super) dest: Option<&'a VolumePath>,
    pub(super) priority: i64,
    pub(super) base: &'a Manifest,
    pub(super) target: &'a Manifest,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Makes `opts.dest` (or the whole volume) of `pod` hold exactly the local tree, as far as
    /// the allowance goes. A push already queued for the pod is resumed if it carries the same
    /// tree, replaced if none of it was sent yet, and otherwise finished first.
    pub async fn push(
        &mut self,
        ground: &mut Ground,
        pod: &PodName,
        opts: &PushOptions<'_>,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PushReport, GroundError> {
        let mut push = Pushing {
            pod,
            opts,
            notes: Vec::new(),
        };
        // Up to two retries: if the pod changed the volume between our look and the apply,
        // look again and plan again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.push_once(ground, &mut push, allow, progress).await? {
                Err(GroundError::Remote {
                    kind: ErrorKind::Conflict,
                    ..
                }) if attempt < 3 => continue,
                Ok(mut r) => {
                    r.notes = push.notes;
                    return Ok(r);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One look at the volume and the queue, and the push that follows from it. The outer
    /// error ends the push; the inner result is this attempt's own outcome, which the caller
    /// tries again after a conflict (the pod changed the volume meanwhile).
    async fn push_once(
        &mut self,
        ground: &mut Ground,
        push: &mut Pushing<'_>,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Result<PushReport, GroundError>, GroundError> {
        let (pod, opts) = (push.pod, push.opts);
        let base = self.manifest(ground, pod).await?;
        let target = base.with_subtree(opts.dest, opts.local)?;
        let overlaps = |queued: Option<&str>| scopes_overlap(queued, opts.dest);
        let live = self.settle_queue(ground, pod, &base, &overlaps, &mut push.notes)?;
        let result = match queue::next(live, opts.dest, &target) {
            Next::Resume(q) => {
                let r = self.send_queued(ground, &q, allow, progress).await;
                if let Ok(r) = &r {
                    let note = format!("resuming the queued push: {}", held_note(&q, r));
                    push.notes.push(note);
                }
                r
            }
            Next::Replace(q) => {
                let note = "replaced the queued push, none of which had been sent";
                push.notes.push(note.into());
                self.discard_queued(ground, &q)?;
                let update = push.update(&base, &target);
                self.plan_and_send(ground, &update, allow, progress).await
            }
            Next::FinishFirst(q) => {
                return self.finish_first(ground, push, q, allow, progress).await;
            }
            Next::Fresh => {
                let update = push.update(&base, &target);
                self.plan_and_send(ground, &update, allow, progress).await
            }
        };
        self.plan_done(ground, pod, opts.dest, &result)?;
        Ok(result)
    }

    /// Another push of this folder (partly sent), or of a folder that overlaps it: it goes
    /// first, and this one follows. Until the newer changes are planned into a pack of their
    /// own, the promise is kept in the state, so a pass delivers them even if this connection
    /// ends first. Errors as [`Self::push_once`].
    async fn finish_first(
        &mut self,
        ground: &mut Ground,
        push: &mut Pushing<'_>,
        q: OutgoingPack,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Result<PushReport, GroundError>, GroundError> {
        let (pod, opts) = (push.pod, push.opts);
        ground.db.put_follow_up(&FollowUp {
            node: self.node,
            pod: pod.clone(),
            dest: opts.dest.map(|d| d.to_string()),
            source: std::fs::canonicalize(opts.folder)
                .map_err(io_at(opts.folder))?
                .display()
                .to_string(),
            priority: opts.priority,
            created_at: crate::state::now_secs(),
        })?;
        let first = self.send_queued(ground, &q, allow, progress).await;
        if let Ok(r) = &first {
            push.notes.push(format!(
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
                let base = &q.target;
                let target = base.with_subtree(opts.dest, opts.local)?;
                let update = push.update(base, &target);
                let r = self.plan_and_send(ground, &update, allow, progress).await;
                self.plan_done(ground, pod, opts.dest, &r)?;
                Ok(r)
            }
            other => Ok(other),
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
    pub(super) fn end_follow_ups(
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
    pub(super) fn settle_queue(
        &mut self,
        ground: &mut Ground,
        pod: &PodName,
        base: &Manifest,
        scope: &dyn Fn(Option<&str>) -> bool,
        notes: &mut Vec<String>,
    ) -> Result<Option<OutgoingPack>, GroundError> {
        let queue = ground.db.outgoing_for(&self.node, pod)?;
        let fates = queue::fates(&queue, base.root(), scope);
        let mut live = None;
        for (q, fate) in queue.into_iter().zip(fates) {
            match fate {
                Fate::Apart => {}
                Fate::Applied => {
                    ground.db.finish_outgoing(&q.pack)?;
                    let _ = std::fs::remove_file(ground.pack_path(&q.pack));
                }
                Fate::Stale => {
                    notes.extend(queue::dropped_note(&q));
                    self.discard_queued(ground, &q)?;
                }
                Fate::Live => live = Some(q),
            }
        }
        Ok(live)
    }

    /// Plans `base` → `target`, encodes the pack once, queues it on disk, and sends it.
    pub(super) async fn plan_and_send(
        &mut self,
        ground: &Ground,
        u: &Update<'_>,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PushReport, GroundError> {
        let plan = Plan::new(u.base, u.target, &|id| ground.store.contains(id));
        let summary = ChangeSummary::of(u.base, &plan.changes);
        if plan.is_empty() {
            return Ok(PushReport {
                up_to_date: true,
                complete: true,
                ..PushReport::new(u.pod, &self.node, summary, u.base.root())
            });
        }
        self.check_limits(&plan)?;
        let signatures = self.signatures(u.pod, &plan).await?;
        let provider = content_provider(ground, u)?;
        let q = self.outgoing_row(u, &plan, &summary)?;
        // Uploads a process killed while encoding left at the node: dropped there.
        self.cancels.extend(ground.abandoned_encodings(&self.node));
        let job = Job {
            plan,
            base: u.base.clone(),
            provider,
            signatures,
            limits: self.limits.clone(),
            // The link's rate (given, or measured in earlier passes) sets how hard to work;
            // --jobs, how many segments at once.
            effort: Effort {
                jobs: allow.jobs.max(1),
                ..Effort::for_link(
                    allow.rate,
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                )
            },
        };
        let path = ground.encoding_path(&self.node, &q.pack);
        let encoding = Encoding::start(path.clone(), job).map_err(io_at(&path))?;
        let (mut report, stats) = self
            .send_encoding(ground, q, encoding, allow, progress)
            .await?;
        report.plan = PlanCounts::from(&stats);
        Ok(report)
    }

    /// The node's limits came with its welcome: refuse here, before a byte is sent, what it
    /// would refuse after the whole upload.
    fn check_limits(&self, plan: &Plan) -> Result<(), GroundError> {
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
        Ok(())
    }

    /// The queue row of the push `u` plans: written once its pack is whole.
    fn outgoing_row(
        &self,
        u: &Update<'_>,
        plan: &Plan,
        summary: &ChangeSummary,
    ) -> Result<OutgoingPack, GroundError> {
        let dest_name = u.dest.map(|d| d.to_string());
        let pack = PackId::for_plan(
            &self.node,
            u.pod.as_str(),
            dest_name.as_deref(),
            &plan.base_root,
            &plan.target_root,
        );
        Ok(OutgoingPack {
            pack,
            node: self.node,
            pod: u.pod.clone(),
            len: 0,
            acked: 0,
            base_root: plan.base_root,
            target_root: plan.target_root,
            target: u.target.clone(),
            source: u
                .source
                .map(|source| {
                    std::fs::canonicalize(source)
                        .map(|p| p.display().to_string())
                        .map_err(io_at(source))
                })
                .transpose()?,
            dest: dest_name,
            state: PackState::Queued,
            priority: u.priority,
            content_bytes: plan.object_bytes(),
            summary: summary.clone(),
            created_at: crate::state::now_secs(),
            finished_at: None,
            hash: None,
        })
    }
}

/// Where an update's new content is read from: its local folder, or nowhere (a removal).
fn content_provider(
    ground: &Ground,
    u: &Update<'_>,
) -> Result<Box<dyn ContentProvider + Send>, GroundError> {
    let Some(source) = u.source else {
        return Ok(Box::new(EmptyProvider));
    };
    let abs = std::fs::canonicalize(source).map_err(io_at(source))?;
    // The bytes read (and verified) for encoding go to the content store, where they become
    // the bases of the next push; nothing is read twice.
    let tree = LocalTree {
        dir: Dir::open_ambient_dir(&abs, ambient_authority()).map_err(io_at(&abs))?,
        dest: u.dest.cloned(),
        store: ground.store.clone(),
    };
    Ok(Box::new(
        Keeping::new(tree, ground.store.clone()).map_err(io_at(&abs))?,
    ))
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
    fn open_target(
        &self,
        path: &VolumePath,
        _id: &ContentId,
        size: u64,
    ) -> Result<Box<dyn TargetReader + '_>, PackError> {
        let local = self.local_path(path);
        let changed = || PackError::SourceChanged {
            path: local.to_string(),
        };
        let rel = VolumePath::new(local).map_err(|_| changed())?;
        let file = crate::volume::open_nofollow(&self.dir, &rel).map_err(|_| changed())?;
        // A sparse file's holes are passed over unread.
        Ok(Box::new(crate::sparse::SparseReader::new(
            file.into_std(),
            size,
        )))
    }

    fn open_base(
        &self,
        id: &ContentId,
        _size: u64,
    ) -> Result<Option<Box<dyn ReadAt + '_>>, PackError> {
        Ok(self
            .store
            .open_verified(id)?
            .map(|f| Box::new(f) as Box<dyn ReadAt>))
    }
}

/// `rm` sends no content.
struct EmptyProvider;

impl ContentProvider for EmptyProvider {
    fn open_target(
        &self,
        path: &VolumePath,
        _: &ContentId,
        _: u64,
    ) -> Result<Box<dyn TargetReader + '_>, PackError> {
        Err(PackError::SourceChanged {
            path: path.to_string(),
        })
    }
    fn open_base(&self, _: &ContentId, _: u64) -> Result<Option<Box<dyn ReadAt + '_>>, PackError> {
        Ok(None)
    }
}
