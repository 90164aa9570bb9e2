//! Locked out without the key (issue 9, items 6 and 7): peers that never finish the handshake
//! must not hold the daemon's connections, descriptors, memory or log, and must never keep the
//! ground out. Each test runs the real `sync-onboard serve` on 127.0.0.1 port 0 against peers
//! from 127.0.0.2 (see `sync_tests::Drippers`), and a real `sync-ground`.

use std::path::Path;
use std::time::{Duration, Instant};

use sync_core::testing::random_bytes;
use sync_tests::*;

fn local() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn small_tree(root: &Path) {
    write(root, "a/readme.md", "# hello\n");
    write(root, "bin/tool", random_bytes(256 << 10, 7));
}

/// A push from a ground of its own succeeds and leaves the local tree in the volume.
#[track_caller]
fn push_gets_through(ob: &Onboard, src: &Path, what: &str) {
    let gstate = local();
    let t0 = Instant::now();
    let r = ob.ground_with(
        &ob.key(),
        gstate.path(),
        &["push", src.to_str().unwrap(), "--pod", "p", "--json"],
    );
    assert_eq!(
        r.code,
        0,
        "{what}: the push failed after {:?}: {r:#?}\nonboard log (last 2 KB):\n{}",
        t0.elapsed(),
        tail(&ob.log(), 2048)
    );
    assert_same_tree(&ob.volume_path("p"), src);
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[test]
fn a_peer_dripping_the_handshake_is_cut_at_the_handshake_deadline() {
    let ob = Onboard::start_in(local(), &["--handshake-timeout", "2s"]);
    // A byte every 250 ms: the idle timeout (30 s) alone would never end these connections.
    let mut sets = Vec::new();
    for drip in [Drip::Bytes, Drip::AfterPreamble] {
        let mut plan = DripPlan::new(&ob.addr, "127.0.0.2", 3, drip);
        plan.every = Duration::from_millis(250);
        plan.ramp = Duration::ZERO;
        sets.push(Drippers::start(plan));
    }
    for d in &sets {
        assert!(
            d.wait(Duration::from_secs(8), |s| s.cut() == 3),
            "peers dripping a byte every 250 ms were still connected after 8 s with a 2 s \
             handshake deadline: {:?}; log:\n{}",
            d.stats(),
            ob.log()
        );
        let (first, last) = d.stats().cut_after();
        assert!(
            first >= Duration::from_millis(1800) && last <= Duration::from_millis(4500),
            "cut after {first:?} to {last:?}, not at the 2 s deadline"
        );
    }
}

#[test]
fn dripping_peers_beyond_the_caps_do_not_stop_a_push() {
    // 400 peers would take every one of the daemon's 256 descriptors; the default caps (128
    // connections, 64 of them unauthenticated) keep them to a quarter of it, and the ground's
    // connection is admitted before the oldest dripping peer of the busiest address.
    let ob = Onboard::start_limited(local(), &[], Some(256));
    let src = local();
    small_tree(src.path());
    let mut plan = DripPlan::new(&ob.addr, "127.0.0.2", 400, Drip::AfterPreamble);
    plan.reconnect = Some(Duration::from_millis(500));
    let d = Drippers::start(plan);
    assert!(
        d.wait(Duration::from_secs(10), |s| s.opened() >= 300),
        "the peers could not connect: {:?}",
        d.stats()
    );
    push_gets_through(&ob, src.path(), "400 dripping peers");
    let fds = ob.descriptors();
    eprintln!("{fds} descriptors; peers {:?}", d.stats());
    assert!(fds <= 128 + 32, "the daemon holds {fds} descriptors");
    assert!(
        d.stats().cut() > 0,
        "no peer was ever dropped: {:?}",
        d.stats()
    );
}

#[test]
fn descriptor_exhaustion_is_survived_without_spinning_with_a_bounded_log_and_the_daemon_recovers() {
    // Caps set above what 64 descriptors allow, so that the daemon does run out and its accept
    // fails with EMFILE (it spun on that at a full core, a log line per failure).
    let ob = Onboard::start_limited(
        local(),
        &["--max-connections", "1000", "--max-unauthenticated", "900"],
        Some(64),
    );
    let src = local();
    small_tree(src.path());
    let (log0, cpu0, t0) = (ob.log_bytes(), ob.cpu_seconds(), Instant::now());
    let mut plan = DripPlan::new(&ob.addr, "127.0.0.2", 200, Drip::AfterPreamble);
    plan.reconnect = Some(Duration::from_millis(200));
    let mut d = Drippers::start(plan);
    assert!(
        d.wait(Duration::from_secs(10), |s| s.opened() >= 100),
        "the peers could not connect: {:?}",
        d.stats()
    );
    std::thread::sleep(Duration::from_secs(5).saturating_sub(t0.elapsed()));
    let (cpu, elapsed) = (ob.cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    let log = ob.log_bytes() - log0;
    let text = ob.log();
    eprintln!(
        "{elapsed:.1} s out of descriptors: {cpu:.2} s of CPU, {log} B of log, {} descriptors, \
         peers {:?}",
        ob.descriptors(),
        d.stats()
    );
    assert!(
        log < 4096,
        "{log} bytes of log in {elapsed:.1} s of descriptor exhaustion:\n{}",
        tail(&text, 2048)
    );
    assert!(
        text.contains("Too many open files"),
        "the log does not say descriptors ran out:\n{text}"
    );
    assert!(
        cpu < 0.5 * elapsed,
        "the daemon used {cpu:.2} s of CPU in {elapsed:.1} s of descriptor exhaustion (spinning)"
    );
    assert!(ob.descriptors() <= 64);

    d.stop();
    push_gets_through(&ob, src.path(), "after descriptor exhaustion");
}

#[test]
fn a_declared_record_is_not_buffered_before_the_key_is_proven() {
    // Each peer declares a 65,535-byte handshake record and sends 60,000 bytes of it. The daemon
    // buffered all of it, per connection (690 MB for 10,000), and kept it after they left.
    let n = (raise_descriptor_limit(4096).saturating_sub(256) as usize).min(2000);
    let ob = Onboard::start_limited(local(), &[], Some(n as u64 + 512));
    let before = ob.peak_memory();
    let mut plan = DripPlan::new(&ob.addr, "127.0.0.2", n, Drip::DeclaredRecord);
    plan.ramp = Duration::from_secs(1);
    let d = Drippers::start(plan);
    assert!(
        d.wait(Duration::from_secs(20), |s| s.opened() as usize >= n),
        "the peers could not connect: {:?}",
        d.stats()
    );
    // Time for the daemon to read whatever it is going to read of what they sent.
    std::thread::sleep(Duration::from_secs(2));
    let grown = ob.peak_memory().saturating_sub(before);
    eprintln!(
        "{n} connections declaring a record: peak memory {} kB -> {} kB",
        before >> 10,
        ob.peak_memory() >> 10
    );
    assert!(
        grown < (n as u64) * 8 * 1024,
        "{n} connections declaring a record grew the daemon's peak memory by {} MB ({} B each)",
        grown >> 20,
        grown / n as u64
    );
    assert!(
        d.wait(Duration::from_secs(5), |s| s.cut() as usize == n),
        "a handshake record over the handshake's size was not refused at once: {:?}",
        d.stats()
    );
}

#[test]
fn refusals_are_logged_as_a_summary_not_one_line_each() {
    let ob = Onboard::start();
    let log0 = ob.log_bytes();
    let mut plan = DripPlan::new(&ob.addr, "127.0.0.2", 1000, Drip::BadVersion);
    plan.ramp = Duration::from_secs(1);
    let d = Drippers::start(plan);
    assert!(
        d.wait(Duration::from_secs(15), |s| s.cut() == 1000),
        "peers speaking another version were not all refused: {:?}",
        d.stats()
    );
    let grown = ob.log_bytes() - log0;
    let text = ob.log();
    eprintln!("{grown} B of log for 1,000 refusals:\n{text}");
    assert!(
        grown < 1024,
        "1,000 refusals wrote {grown} bytes of log:\n{}",
        tail(&text, 2048)
    );
    assert!(
        text.contains("protocol version"),
        "the first refusal is not named:\n{text}"
    );
}
