//! Pulls over a simulated link, against a real onboard service: crashes inside an apply, the
//! copy's lock, its settling, and edits to the copy while a pull runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use super::*;
use crate::ground::Client;
use crate::id::{ContentId, NodeId, PackId};
use crate::link::sim::{SimConfig, SimNet};
use crate::manifest::{
    Change, FileSource, Manifest, PutKind, ScanOptions, StatCache, diff, scan_dir,
};
use crate::onboard::OnboardService;
use crate::pack::Limits;
use crate::path::{TEMP_PREFIX, VolumePath};
use crate::state::{PullIncoming, PullJournal, PullRequestKey};
use crate::volume::{self, ApplyPlan, Step, VolumeError};
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
    async fn pull(&mut self, progress: impl FnMut(Progress)) -> Result<PullReport, GroundError> {
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
        crate::testing::sim_client(
            &self.net,
            self.svc.clone(),
            &self.key,
            Duration::from_secs(20),
            Duration::from_secs(10),
        )
        .await
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
                std::fs::copy(vol.join(p.path.as_str()), staging.join(format!("o{i}"))).unwrap();
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
            request: PullRequestKey::new(&[], false),
            len: Some(10),
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
