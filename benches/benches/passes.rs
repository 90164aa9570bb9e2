//! Passes over the simulated link, in virtual time (tokio's paused clock): what the link would
//! take, not what this machine takes. Criterion's throughput is therefore goodput: pack bytes
//! per second of link time. Each scenario also prints its wire bytes and protocol overhead.
//!
//! - `goodput/9.6kbit_1s_rtt` and `goodput/10Mbit_50ms_rtt`: one clean push (target: goodput
//!   ≥ 95% of the link rate, overhead ≤ 2% of the bytes).
//! - `passes/20MB_9.6kbit_8min`: a 20 MB push in 8-minute passes (target: the fewest passes the
//!   link allows, plus at most one; wire bytes ≤ the clean run's plus one frame per pass).
//! - `cuts/every_30s_9.6kbit`: the connection cut every 30 s of link time (target: wire bytes ≤
//!   the clean run's plus one frame per cut).
//!
//! Every run starts from the same prepared state (a queued pack and a fresh node), copied, so
//! nothing is encoded inside the measurement.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use sync_core::ground::{Allowance, Client, Ground, GroundError, PushOptions};
use sync_core::link::sim::{Action, Fault, SimConfig, SimNet, Trigger};
use sync_core::onboard::OnboardService;
use sync_core::pack::Limits;
use sync_core::path::PodName;
use sync_core::wire::LinkKey;
use tempfile::TempDir;
use tokio::time::Instant;

/// A queued push of `bytes` of incompressible content for a fresh node, kept as folders to copy.
struct Prepared {
    dir: TempDir,
    key: LinkKey,
    pack_len: u64,
}

impl Prepared {
    fn new(bytes: usize) -> Self {
        let dir = TempDir::new().unwrap();
        let root = dir.path();
        let local = root.join("local");
        std::fs::create_dir_all(&local).unwrap();
        let mut rng = StdRng::seed_from_u64(bytes as u64);
        let mut body = vec![0u8; bytes / 2];
        for name in ["a.bin", "b.bin"] {
            rng.fill_bytes(&mut body);
            std::fs::write(local.join(name), &body).unwrap();
        }
        let key = LinkKey::generate().unwrap();
        let rt = runtime();
        let pack_len = rt.block_on(async {
            let net = SimNet::new(SimConfig::symmetric(1_000_000_000, Duration::ZERO), vec![]);
            let svc = service(&root.join("volumes"), &root.join("onboard"));
            let mut ground = Ground::open(&root.join("ground")).unwrap();
            let mut client = connect(&net, svc, &key).await.unwrap();
            let (m, _) = ground.scan_local(&local).unwrap();
            // A budget too small for any content: the pack is encoded and queued, not sent.
            let r = client
                .push(
                    &mut ground,
                    &pod(),
                    &PushOptions {
                        folder: &local,
                        local: &m,
                        dest: None,
                        priority: 0,
                    },
                    &Allowance {
                        budget: Some(1),
                        ..Allowance::default()
                    },
                    &mut |_| {},
                )
                .await
                .unwrap();
            assert!(!r.complete && r.acked == 0);
            r.pack_bytes
        });
        Self { dir, key, pack_len }
    }

    /// A fresh copy: (ground state, onboard volumes, onboard state), in `into`.
    fn copy(&self, into: &Path) -> (PathBuf, PathBuf, PathBuf) {
        for d in ["ground", "volumes", "onboard"] {
            copy_dir(&self.dir.path().join(d), &into.join(d));
        }
        (
            into.join("ground"),
            into.join("volumes"),
            into.join("onboard"),
        )
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn pod() -> PodName {
    PodName::new("bench".to_string()).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn service(volumes: &Path, state: &Path) -> Arc<OnboardService> {
    Arc::new(OnboardService::open(volumes, state, Limits::default()).unwrap())
}

async fn connect(
    net: &SimNet,
    svc: Arc<OnboardService>,
    key: &LinkKey,
) -> Result<Client<sync_core::link::sim::SimStream>, GroundError> {
    sync_core::testing::sim_client(
        net,
        svc,
        key,
        Duration::from_secs(30),
        Duration::from_secs(12),
    )
    .await
}

/// What one scenario run measured.
struct Run {
    link_time: Duration,
    up: u64,
    down: u64,
    connections: u32,
}

/// Sends the prepared pack over `net`, one connection per pass of `pass` link time (or one
/// connection if `None`), reconnecting after cuts, until it is applied.
fn run(prep: &Prepared, config: SimConfig, faults: Vec<Fault>, pass: Option<Duration>) -> Run {
    let work = TempDir::new().unwrap();
    let (g, v, o) = prep.copy(work.path());
    runtime().block_on(async {
        let net = SimNet::new(config.clone(), faults);
        let svc = service(&v, &o);
        let ground = Ground::open(&g).unwrap();
        let t0 = Instant::now();
        let mut connections = 0;
        let mut last_start;
        loop {
            connections += 1;
            assert!(connections < 10_000, "no progress");
            let pass_start = Instant::now();
            last_start = pass_start;
            let allow = Allowance {
                deadline: pass.map(|p| pass_start + p),
                rate: Some(config.up_bps as f64 / 8.0),
                budget: None,
                jobs: 1,
            };
            let mut client = match connect(&net, svc.clone(), &prep.key).await {
                Ok(c) => c,
                Err(_) => continue,
            };
            let queue = ground.db.queued_for_node(&client.node).unwrap();
            let Some(q) = queue.first() else {
                break;
            };
            match client.send_queued(&ground, q, &allow, &mut |_| {}).await {
                Ok(r) => {
                    if std::env::var_os("PASS_TRACE").is_some() {
                        eprintln!(
                            "pass {connections}: from {} to {} at {:?} after start",
                            r.resumed_from,
                            r.acked,
                            pass_start.elapsed()
                        );
                    }
                    let _ = client.bye(&ground).await;
                    if r.complete {
                        break;
                    }
                }
                Err(GroundError::Link(_)) => {}
                Err(e) => panic!("{e}"),
            }
            if let Some(p) = pass {
                // The link is down until the next pass.
                tokio::time::sleep_until(pass_start + p).await;
            }
        }
        let (up, down) = net.carried();
        let link_time = match pass {
            // Every pass but the last used its whole window; the last, until it was done.
            Some(p) => p * (connections - 1) + last_start.elapsed(),
            None => t0.elapsed(),
        };
        Run {
            link_time,
            up,
            down,
            connections,
        }
    })
}

fn report(name: &str, prep: &Prepared, r: &Run, rate_bps: u64) {
    let wire = r.up + r.down;
    let goodput = prep.pack_len as f64 / r.link_time.as_secs_f64();
    eprintln!(
        "{name}: pack {} B, wire {wire} B (up {}, down {}), overhead {:.2}%, {} connection(s), \
         link time {:.1} s, goodput {:.1}% of the link rate",
        prep.pack_len,
        r.up,
        r.down,
        (wire - prep.pack_len) as f64 * 100.0 / wire as f64,
        r.connections,
        r.link_time.as_secs_f64(),
        goodput * 800.0 / rate_bps as f64,
    );
}

fn goodput(c: &mut Criterion) {
    let mut g = c.benchmark_group("goodput");
    g.sample_size(10);
    for (name, bps, rtt, bytes) in [
        ("9.6kbit_1s_rtt", 9_600, Duration::from_secs(1), 576_000),
        (
            "10Mbit_50ms_rtt",
            10_000_000,
            Duration::from_millis(50),
            20_000_000,
        ),
    ] {
        let prep = Prepared::new(bytes);
        let config = SimConfig::symmetric(bps, rtt);
        report(name, &prep, &run(&prep, config.clone(), vec![], None), bps);
        g.throughput(Throughput::Bytes(prep.pack_len));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| run(&prep, config.clone(), vec![], None).link_time)
                    .sum()
            })
        });
    }
    g.finish();
}

fn passes(c: &mut Criterion) {
    let mut g = c.benchmark_group("passes");
    g.sample_size(10);
    let bps = 9_600;
    let config = SimConfig::symmetric(bps, Duration::from_secs(1));
    let prep = Prepared::new(20_000_000);
    let clean = run(&prep, config.clone(), vec![], None);
    report("passes/clean", &prep, &clean, bps);
    let pass = Duration::from_secs(8 * 60);
    let r = run(&prep, config.clone(), vec![], Some(pass));
    report("passes/20MB_9.6kbit_8min", &prep, &r, bps);
    let per_pass = bps as f64 / 8.0 * pass.as_secs_f64();
    let minimum = ((clean.up + clean.down) as f64 / per_pass).ceil() as u32;
    eprintln!(
        "passes/20MB_9.6kbit_8min: {} passes; the link allows {minimum}; wire {} B vs clean {} B \
         (+{} B, {:.0} B per extra connection)",
        r.connections,
        r.up + r.down,
        clean.up + clean.down,
        (r.up + r.down) - (clean.up + clean.down),
        ((r.up + r.down) - (clean.up + clean.down)) as f64 / (r.connections - 1).max(1) as f64
    );
    g.throughput(Throughput::Bytes(prep.pack_len));
    g.bench_function("20MB_9.6kbit_8min", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run(&prep, config.clone(), vec![], Some(pass)).link_time)
                .sum()
        })
    });
    g.finish();
}

fn cuts(c: &mut Criterion) {
    let mut g = c.benchmark_group("cuts");
    g.sample_size(10);
    let bps = 9_600;
    let config = SimConfig::symmetric(bps, Duration::from_secs(1));
    let prep = Prepared::new(1_000_000);
    let clean = run(&prep, config.clone(), vec![], None);
    let every_30s = || -> Vec<Fault> {
        (1..200)
            .map(|i| Fault {
                at: Trigger::Time(Duration::from_secs(30 * i)),
                action: Action::Cut,
            })
            .collect()
    };
    let r = run(&prep, config.clone(), every_30s(), None);
    report("cuts/every_30s_9.6kbit", &prep, &r, bps);
    let cuts = r.connections - 1;
    eprintln!(
        "cuts/every_30s_9.6kbit: {cuts} cuts; wire {} B vs clean {} B: +{} B, {:.0} B per cut",
        r.up + r.down,
        clean.up + clean.down,
        (r.up + r.down) - (clean.up + clean.down),
        ((r.up + r.down) - (clean.up + clean.down)) as f64 / cuts.max(1) as f64
    );
    g.throughput(Throughput::Bytes(prep.pack_len));
    g.bench_function("every_30s_9.6kbit", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run(&prep, config.clone(), every_30s(), None).link_time)
                .sum()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // The samples are link time on the simulated link's paused clock, the same every run:
    // criterion's plots of a second run against the first (zero variance both) panic in its
    // density estimate, and say nothing a figure does not.
    config = Criterion::default().without_plots();
    targets = goodput, passes, cuts
}
criterion_main!(benches);
