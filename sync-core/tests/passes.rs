//! Pushes over the simulated link (tokio's paused clock: minutes of link time run in
//! milliseconds): cuts at random byte offsets, corruption, a silent link, budgets and
//! deadlines. Each ends with the volume equal, by hash, to the local tree, and with the wire
//! bytes bounded by the clean run's plus what each cut may cost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};
use sync_core::ground::{Allowance, Ground, GroundError, PushOptions, PushReport};
use sync_core::link::sim::{Action, Direction, Fault, SimConfig, SimNet, Trigger};
use sync_core::onboard::OnboardService;
use sync_core::pack::Limits;
use sync_core::path::{PodName, VolumePath};
use sync_core::window::FRAME_OVERHEAD;
use sync_core::wire::LinkKey;
use tempfile::TempDir;

const GROUND_IDLE: Duration = Duration::from_secs(10);

/// One ground, one onboard node, one simulated network between them.
struct Rig {
    net: SimNet,
    svc: Arc<OnboardService>,
    key: LinkKey,
    ground: Ground,
    local: PathBuf,
    volumes: PathBuf,
    pod: PodName,
    /// `--dest` of the pushes.
    dest: Option<VolumePath>,
    _dirs: TempDir,
}

impl Rig {
    fn new(config: SimConfig, faults: Vec<Fault>) -> Self {
        let dirs = TempDir::new().unwrap();
        let volumes = dirs.path().join("volumes");
        let local = dirs.path().join("local");
        std::fs::create_dir_all(&local).unwrap();
        let svc = OnboardService::open(&volumes, &dirs.path().join("onboard"), Limits::default())
            .unwrap();
        Self {
            net: SimNet::new(config, faults),
            svc: Arc::new(svc),
            key: LinkKey::generate().unwrap(),
            ground: Ground::open(&dirs.path().join("ground")).unwrap(),
            local,
            volumes,
            pod: PodName::new("p1".to_string()).unwrap(),
            dest: None,
            _dirs: dirs,
        }
    }

    /// One connection: push the local tree as far as `allow` lets it.
    async fn attempt(&mut self, allow: &Allowance) -> Result<PushReport, GroundError> {
        let mut client = sync_core::testing::sim_client(
            &self.net,
            self.svc.clone(),
            &self.key,
            Duration::from_secs(20),
            GROUND_IDLE,
        )
        .await?;
        let (manifest, _) = self.ground.scan_local(&self.local)?;
        let report = client
            .push(
                &mut self.ground,
                &self.pod.clone(),
                &PushOptions {
                    folder: &self.local.clone(),
                    local: &manifest,
                    dest: self.dest.clone().as_ref(),
                    priority: 0,
                },
                allow,
                &mut |_| {},
            )
            .await?;
        client.bye(&self.ground).await?;
        Ok(report)
    }

    /// Pushes until the pack is applied, reconnecting after each failure. Returns the number
    /// of connections it took.
    async fn push_to_the_end(&mut self, allow: &Allowance) -> usize {
        for n in 1..=40 {
            match self.attempt(allow).await {
                Ok(r) if r.complete => return n,
                Ok(_) => {}
                Err(GroundError::Link(_)) => {}
                Err(e) => panic!("attempt {n}: {e}"),
            }
        }
        panic!("not done after 40 connections");
    }

    fn volume(&self) -> PathBuf {
        self.volumes.join(self.pod.as_str())
    }

    fn carried(&self) -> u64 {
        let (up, down) = self.net.carried();
        up + down
    }
}

fn slow() -> SimConfig {
    SimConfig::symmetric(9_600, Duration::from_secs(1))
}

/// A few files of incompressible content, `kb` kilobytes in all.
fn write_tree(root: &Path, seed: u64, kb: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let sizes = [kb * 1024 / 2, kb * 1024 / 4, kb * 1024 / 8, kb * 1024 / 8];
    for (i, size) in sizes.iter().enumerate() {
        let mut body = vec![0u8; *size];
        rng.fill_bytes(&mut body);
        let dir = root.join(format!("d{}", i % 2));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.bin")), body).unwrap();
    }
}

/// Path → BLAKE3 of every file under `root`.
fn tree_hash(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                let h = blake3::hash(&std::fs::read(&p).unwrap());
                out.insert(rel, h.to_hex().to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

/// The clean run's wire bytes for the same tree on the same link: (up, down).
async fn clean_run_each_way(kb: usize, seed: u64) -> (u64, u64) {
    let mut rig = Rig::new(slow(), vec![]);
    write_tree(&rig.local, seed, kb);
    assert_eq!(rig.push_to_the_end(&Allowance::default()).await, 1);
    assert_eq!(tree_hash(&rig.local), tree_hash(&rig.volume()));
    rig.net.carried()
}

async fn clean_run(kb: usize, seed: u64) -> u64 {
    let (up, down) = clean_run_each_way(kb, seed).await;
    up + down
}

/// What one cut may cost beyond the clean run: the frame it interrupted (at 9.6 kbit/s a frame
/// carries four seconds of link, 4,800 bytes), and the new connection's handshake, manifest
/// check and offer (under 600 bytes).
const PER_CUT: u64 = 4_800 + FRAME_OVERHEAD + 600;

#[tokio::test(start_paused = true)]
async fn cuts_at_random_offsets_resume_where_the_bytes_stopped() {
    let kb = 96;
    let (up, down) = clean_run_each_way(kb, 7).await;
    let clean = up + down;
    let mut rng = StdRng::seed_from_u64(2026);
    for round in 0..3 {
        let cuts: Vec<Fault> = (0..4)
            .map(|_| Fault {
                at: if rng.random_bool(0.8) {
                    Trigger::Byte(Direction::Up, rng.random_range(0..up * 9 / 10))
                } else {
                    Trigger::Byte(Direction::Down, rng.random_range(0..down * 9 / 10))
                },
                action: Action::Cut,
            })
            .collect();
        let mut rig = Rig::new(slow(), cuts.clone());
        write_tree(&rig.local, 7, kb);
        let connections = rig.push_to_the_end(&Allowance::default()).await;
        let fired = rig.net.fired().len() as u64;
        assert_eq!(fired, 4, "every cut lies within the run");
        assert_eq!(
            tree_hash(&rig.local),
            tree_hash(&rig.volume()),
            "round {round}"
        );
        assert!(
            connections as u64 >= fired,
            "{connections} connections, {fired} cuts"
        );
        let bound = clean + fired * PER_CUT;
        assert!(
            rig.carried() <= bound,
            "round {round}: {} bytes with {fired} cuts {cuts:?}; clean run {clean}, bound {bound}",
            rig.carried()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_corrupted_byte_is_detected_and_never_applied() {
    let kb = 64;
    let clean = clean_run(kb, 11).await;
    let mut rig = Rig::new(
        slow(),
        vec![
            Fault {
                at: Trigger::Byte(Direction::Up, clean / 2),
                action: Action::Corrupt,
            },
            Fault {
                at: Trigger::Byte(Direction::Down, 300),
                action: Action::Corrupt,
            },
        ],
    );
    write_tree(&rig.local, 11, kb);
    let connections = rig.push_to_the_end(&Allowance::default()).await;
    assert_eq!(rig.net.fired().len(), 2);
    assert!(
        connections >= 2,
        "a corrupted record must end the connection"
    );
    assert_eq!(tree_hash(&rig.local), tree_hash(&rig.volume()));
}

#[tokio::test(start_paused = true)]
async fn a_silent_link_is_noticed_within_the_idle_timeout_and_resumed() {
    let kb = 64;
    let mut rig = Rig::new(
        slow(),
        vec![Fault {
            at: Trigger::Byte(Direction::Up, 30_000),
            action: Action::Silence,
        }],
    );
    write_tree(&rig.local, 5, kb);
    let t0 = tokio::time::Instant::now();
    let err = rig.attempt(&Allowance::default()).await.unwrap_err();
    let silent_at = rig.net.fired()[0].1;
    let noticed = t0.elapsed() - silent_at;
    assert!(
        matches!(
            err,
            GroundError::Link(sync_core::link::LinkError::Timeout(_))
        ),
        "{err}"
    );
    // Bytes already on the link still arrive for a moment; then the idle timeout runs.
    assert!(
        noticed <= GROUND_IDLE + Duration::from_secs(6),
        "noticed after {noticed:?}"
    );
    // The onboard side kept what arrived; the next connection resumes after it.
    let before = rig.carried();
    let r = rig.attempt(&Allowance::default()).await.unwrap();
    assert!(r.complete);
    assert!(r.resumed_from > 20_000, "resumed from {}", r.resumed_from);
    assert!(rig.carried() - before < (kb as u64 * 1024) - 20_000);
    assert_eq!(tree_hash(&rig.local), tree_hash(&rig.volume()));
}

#[tokio::test(start_paused = true)]
async fn a_budget_stops_cleanly_and_the_next_pass_resumes_without_reencoding() {
    let kb = 200;
    let clean = clean_run(kb, 3).await;
    let mut rig = Rig::new(slow(), vec![]);
    write_tree(&rig.local, 3, kb);
    let budget = 60_000;
    let first = rig
        .attempt(&Allowance {
            budget: Some(budget),
            ..Allowance::default()
        })
        .await
        .unwrap();
    assert!(!first.complete);
    let after_first = rig.carried();
    assert!(
        after_first <= budget,
        "{after_first} > budget {budget}: {:?}, acked {} of {}",
        rig.net.carried(),
        first.acked,
        first.pack_bytes
    );
    // Nearly all of the budget went into the pack, durably.
    assert!(
        first.acked > budget - 8_000,
        "only {} acknowledged of a {budget} budget",
        first.acked
    );
    assert!(tree_hash(&rig.volume()).is_empty(), "nothing applied yet");
    let pack = first.pack.clone();
    let mut passes = 1;
    loop {
        passes += 1;
        let r = rig
            .attempt(&Allowance {
                budget: Some(budget),
                ..Allowance::default()
            })
            .await
            .unwrap();
        assert_eq!(r.pack, pack, "the queued pack is resumed, not rebuilt");
        if r.complete {
            break;
        }
        assert!(passes < 10);
    }
    assert_eq!(tree_hash(&rig.local), tree_hash(&rig.volume()));
    // Each extra connection costs its handshake, manifest check and offer, and nothing else.
    assert!(
        rig.carried() <= clean + (passes - 1) * 700,
        "{} in {passes} passes, clean {clean}",
        rig.carried()
    );
}

#[tokio::test(start_paused = true)]
async fn passes_with_a_deadline_take_the_fewest_passes_the_link_allows_plus_one() {
    let kb = 300;
    let clean = clean_run(kb, 9).await;
    let pass = Duration::from_secs(60);
    let mut rig = Rig::new(slow(), vec![]);
    write_tree(&rig.local, 9, kb);
    let mut passes = 0;
    loop {
        passes += 1;
        let t0 = tokio::time::Instant::now();
        let r = rig
            .attempt(&Allowance {
                deadline: Some(t0 + pass),
                rate: Some(1_200.0),
                ..Allowance::default()
            })
            .await
            .unwrap();
        let took = t0.elapsed();
        assert!(took <= pass + Duration::from_secs(2), "pass ran {took:?}");
        if r.complete {
            break;
        }
        assert!(passes < 20);
    }
    assert_eq!(tree_hash(&rig.local), tree_hash(&rig.volume()));
    let minimum = (clean as f64 / (1_200.0 * pass.as_secs_f64())).ceil() as u32;
    assert!(
        passes <= minimum + 1,
        "{passes} passes for a {clean}-byte push; the link allows it in {minimum}"
    );
}

/// Pods write into their volumes between passes. A queued push into a folder (`--dest`) still
/// resumes when the pod changed only files elsewhere: nothing sent is lost, and the pod's files
/// stay.
#[tokio::test(start_paused = true)]
async fn a_queued_push_into_a_folder_resumes_after_the_pod_wrote_elsewhere() {
    let kb = 120;
    let mut rig = Rig::new(slow(), vec![]);
    rig.dest = Some(VolumePath::new("inputs").unwrap());
    write_tree(&rig.local, 21, kb);
    let budget = Allowance {
        budget: Some(50_000),
        ..Allowance::default()
    };
    let first = rig.attempt(&budget).await.unwrap();
    assert!(!first.complete);
    // The pod writes its results meanwhile.
    let results = rig.volume().join("outputs");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("r1.csv"), "t,v\n1,2\n").unwrap();
    let second = rig.attempt(&Allowance::default()).await.unwrap();
    assert!(second.complete);
    assert_eq!(second.pack, first.pack, "the same pack, resumed");
    assert!(second.resumed_from >= first.acked && first.acked > 30_000);
    assert_eq!(
        tree_hash(&rig.local),
        tree_hash(&rig.volume().join("inputs"))
    );
    assert_eq!(
        std::fs::read_to_string(results.join("r1.csv")).unwrap(),
        "t,v\n1,2\n"
    );
    // And the ground knows the volume again at the next push: nothing to send.
    let third = rig.attempt(&Allowance::default()).await.unwrap();
    assert!(third.up_to_date, "{third:?}");
}

/// If the pod changed something inside the push's folder, the queued pack cannot apply: it is
/// dropped and the push planned again, and the volume still ends equal to the local tree.
#[tokio::test(start_paused = true)]
async fn a_queued_push_whose_folder_the_pod_changed_is_planned_again() {
    let mut rig = Rig::new(slow(), vec![]);
    rig.dest = Some(VolumePath::new("inputs").unwrap());
    write_tree(&rig.local, 22, 120);
    let first = rig
        .attempt(&Allowance {
            budget: Some(50_000),
            ..Allowance::default()
        })
        .await
        .unwrap();
    assert!(!first.complete);
    let inputs = rig.volume().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(inputs.join("stray.txt"), "written by the pod").unwrap();
    let second = rig.attempt(&Allowance::default()).await.unwrap();
    assert!(second.complete);
    assert_ne!(second.pack, first.pack, "planned again");
    assert_eq!(tree_hash(&rig.local), tree_hash(&inputs));
}

/// The local tree changes while a push is queued. Nothing of it sent yet: it is replaced.
/// Partly sent: it is finished first and the new changes follow on top. Either way the volume
/// ends equal to the newest tree, and the note says which happened.
#[tokio::test(start_paused = true)]
async fn a_changed_tree_replaces_an_unsent_queued_push_or_follows_a_started_one() {
    for (budget, expect) in [
        (1, "replaced the queued push"),
        (40_000, "finishing the queued push first"),
    ] {
        let mut rig = Rig::new(slow(), vec![]);
        write_tree(&rig.local, 31, 80);
        let first = rig
            .attempt(&Allowance {
                budget: Some(budget),
                ..Allowance::default()
            })
            .await
            .unwrap();
        assert!(!first.complete);
        std::fs::write(rig.local.join("d0/new.txt"), "added while queued").unwrap();
        std::fs::remove_file(rig.local.join("d1/f1.bin")).unwrap();
        let second = rig.attempt(&Allowance::default()).await.unwrap();
        assert!(second.complete, "{second:?}");
        assert!(
            second.notes.iter().any(|n| n.contains(expect)),
            "budget {budget}: {:?}",
            second.notes
        );
        assert_eq!(
            tree_hash(&rig.local),
            tree_hash(&rig.volume()),
            "budget {budget}"
        );
    }
}
