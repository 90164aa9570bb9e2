//! A flood (issue 9, items 6 and 7): 2,000 peers without the key hold connections to a real
//! `sync-onboard serve` and drip bytes into their handshakes, reconnecting whenever the daemon
//! drops them, while a real `sync-ground push` runs. The push succeeds, and the daemon's
//! descriptors, memory and log stay bounded throughout.
//!
//! Bounded in time (about 15 s) and in load (the peers drip a byte a second and pause a second
//! before reconnecting), so it runs on a 2-core machine shared with other work.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sync_core::testing::random_bytes;
use sync_tests::*;

/// The daemon's default caps (`--max-connections`, `--max-unauthenticated`).
const MAX_CONNECTIONS: usize = 128;
/// Descriptors the daemon holds besides its connections (stdio, the listener, the runtime,
/// SQLite, a push's staging and volume handles), with room to spare.
const OTHER_DESCRIPTORS: usize = 48;
/// Peak memory the flood may add to the daemon (a push of 2 MB included).
const MEMORY_BUDGET: u64 = 64 << 20;
/// Log the flood may add: a refusal named once, then a summary line per 10 s.
const LOG_BUDGET: u64 = 4096;

fn local() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn tree(root: &Path) {
    write(root, "a/readme.md", "# hello\n");
    write(root, "bin/tool", random_bytes(1 << 20, 7));
    write(root, "data/log.csv", "t,x\n".repeat(20_000));
}

/// Samples the daemon's descriptors and resident memory until stopped; the largest seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    fds: Arc<AtomicU64>,
    rss: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let (stop, fds, rss) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, f, r) = (stop.clone(), fds.clone(), rss.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    f.fetch_max(rd.count() as u64, Ordering::SeqCst);
                }
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let kb = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().strip_suffix("kB"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    r.fetch_max(kb * 1024, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            stop,
            fds,
            rss,
            thread: Some(thread),
        }
    }

    /// Stops sampling: (most descriptors, most resident memory) seen.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.fds.load(Ordering::SeqCst),
            self.rss.load(Ordering::SeqCst),
        )
    }
}

#[test]
fn a_push_gets_through_2000_dripping_peers_with_bounded_descriptors_memory_and_log() {
    // The peers live in this process: it needs a descriptor for each.
    let n = (raise_descriptor_limit(4096).saturating_sub(256) as usize).min(2000);
    assert!(n >= 1000, "this process may only open {n} connections");
    // The usual limit of a service: the flood alone would take every descriptor.
    let ob = Onboard::start_limited(local(), &["--handshake-timeout", "2s"], Some(1024));
    let src = local();
    tree(src.path());
    let (mem0, log0, t0) = (ob.peak_memory(), ob.log_bytes(), Instant::now());
    let sampler = Sampler::start(ob.pid());

    // Half drip the whole handshake byte by byte; half send the preamble and drip the first
    // handshake message (they know the protocol, not the key). From two addresses.
    let mut sets = Vec::new();
    for (source, drip) in [
        ("127.0.0.2", Drip::Bytes),
        ("127.0.0.3", Drip::AfterPreamble),
    ] {
        let mut plan = DripPlan::new(&ob.addr, source, n / 2, drip);
        plan.ramp = Duration::from_secs(1);
        plan.reconnect = Some(Duration::from_secs(1));
        sets.push(Drippers::start(plan));
    }
    // Checked at the end: a daemon that stops accepting fails the push first.
    for d in &sets {
        d.wait(Duration::from_secs(10), |s| s.opened() as usize >= n / 2);
    }

    // A first push, then an edit and a second one, all while the peers drip.
    let gstate = local();
    let folder = src.path().to_str().unwrap();
    for what in ["first push", "second push"] {
        let t = Instant::now();
        let r = ob.ground_with(
            &ob.key(),
            gstate.path(),
            &["push", folder, "--pod", "p", "--json"],
        );
        assert_eq!(
            r.code,
            0,
            "{what} failed during the flood after {:?}: {r:#?}\nlog:\n{}",
            t.elapsed(),
            ob.log()
        );
        assert_same_tree(&ob.volume_path("p"), src.path());
        eprintln!("{what}: {:?} during the flood", t.elapsed());
        write(src.path(), "a/readme.md", "# edited during the flood\n");
    }

    // The refusals are summed up once per 10 s: wait for the first summary.
    let until = t0 + Duration::from_secs(14);
    while !ob.log().contains("refused ") && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (fds, rss) = sampler.finish();
    let peak = ob.peak_memory();
    let log = ob.log_bytes() - log0;
    let text = ob.log();
    let (opened, cut): (u64, u64) = sets
        .iter()
        .map(|d| (d.stats().opened(), d.stats().cut()))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    eprintln!(
        "flood of {n} peers, {:?}: {opened} connections, {cut} dropped by the daemon; daemon \
         peak {fds} descriptors, {} MB resident (peak {} MB, {} MB before); {log} B of log:\n{text}",
        t0.elapsed(),
        rss >> 20,
        peak >> 20,
        mem0 >> 20
    );
    assert!(
        fds as usize <= MAX_CONNECTIONS + OTHER_DESCRIPTORS,
        "the daemon held {fds} descriptors"
    );
    assert!(
        peak < mem0 + MEMORY_BUDGET,
        "the daemon's peak memory grew from {} MB to {} MB",
        mem0 >> 20,
        peak >> 20
    );
    assert!(log < LOG_BUDGET, "{log} bytes of log during the flood");
    assert!(
        text.contains("refused "),
        "no summary of the refusals in the log"
    );
    assert!(
        opened as usize >= n,
        "only {opened} of the {n} peers could connect"
    );
    assert!(
        cut as usize >= n,
        "the daemon dropped only {cut} of the {opened} connections"
    );
    drop(sets);
}
