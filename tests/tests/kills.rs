//! Both programs as real processes, killed with SIGKILL at random moments of a push (while the
//! onboard side receives, while it applies, while the ground sends), then started again: each
//! time the next push resumes, and at the end the volume equals the local tree by hash, with
//! the bytes that crossed the link bounded by the clean run's plus a little per kill.
//!
//! A throttling proxy stands for the link (3 MB/s): slow enough that a kill lands mid-transfer,
//! and it counts what crossed it, both ways.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use sync_core::testing::random_bytes;
use sync_tests::{Onboard, Throttle, assert_same_tree, ground_bin, write};

/// Six MB of incompressible files and two thousand small ones (so the apply takes a while too).
fn make_tree(root: &Path) {
    for i in 0..3 {
        write(root, &format!("big/b{i}.bin"), random_bytes(2_000_000, i));
    }
    for i in 0..2_000u64 {
        write(
            root,
            &format!("small/{}/s{i}.txt", i % 20),
            format!("result {i}\n").repeat(1 + (i % 7) as usize),
        );
    }
}

fn spawn_push(ob: &Onboard, to: &str, folder: &Path) -> Child {
    Command::new(ground_bin())
        .args(["push", folder.to_str().unwrap(), "--pod", "p1", "--json"])
        .args(["--to", to, "--key"])
        .arg(ob.key())
        .arg("--state")
        .arg(ob.ground_state())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs one push to its end; returns its exit code and stderr.
fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-9),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The clean run: (bytes across the link, how long it took).
fn clean_run(local: &Path) -> (u64, Duration) {
    let ob = Onboard::start();
    let link = Throttle::start(&ob.addr);
    let t0 = Instant::now();
    let (code, err) = finish(spawn_push(&ob, &link.addr, local));
    assert_eq!(code, 0, "{err}");
    assert_same_tree(&ob.volume_path("p1"), local);
    (link.carried(), t0.elapsed())
}

/// What one kill may cost beyond the clean run: the frames the dead process had read but not
/// yet written (the largest frame is 32 KiB; one in hand, one in the queue), what the kernel
/// held in its socket buffers, and the new connection's handshake, manifest check and offer.
const PER_KILL: u64 = 3 * 33 * 1024 + 4 * 1024;

#[test]
fn sigkill_of_the_onboard_daemon_while_receiving_or_applying_resumes_and_ends_equal() {
    let local = tempfile::tempdir().unwrap();
    make_tree(local.path());
    let (clean, took) = clean_run(local.path());
    let mut ob = Onboard::start();
    let link = Throttle::start(&ob.addr);
    let mut rng = StdRng::seed_from_u64(75);
    let mut kills = 0;
    for round in 0..5 {
        let child = spawn_push(&ob, &link.addr, local.path());
        // Anywhere from the first bytes to past the last: receive, apply, or after.
        let at = took.mul_f64(rng.random_range(0.05..1.05));
        std::thread::sleep(at);
        let done_already = ob.pid() > 0 && !ob.is_running();
        assert!(!done_already, "the daemon died on its own:\n{}", ob.log());
        ob.restart(); // SIGKILL, then start again on the same folders
        link.retarget(&ob.addr);
        kills += 1;
        let (code, err) = finish(child);
        eprintln!(
            "round {round}: killed at {at:?} of {took:?}; push exited {code}: {}",
            err.lines().last().unwrap_or("")
        );
        assert!(
            [0, 4, 75].contains(&code),
            "round {round}: push exited {code}: {err}"
        );
        if code == 0 {
            break;
        }
    }
    // And now without interruption.
    let (code, err) = finish(spawn_push(&ob, &link.addr, local.path()));
    assert_eq!(code, 0, "{err}\n{}", ob.log());
    assert_same_tree(&ob.volume_path("p1"), local.path());
    let bound = clean + kills * PER_KILL;
    eprintln!("{} bytes with {kills} kills; clean {clean}", link.carried());
    assert!(
        link.carried() <= bound,
        "{} bytes across the link with {kills} kills; clean run {clean}, bound {bound}",
        link.carried()
    );
    // Nothing is left behind in staging once everything applied.
    assert!(
        ob.staging_entries().is_empty(),
        "{:?}",
        ob.staging_entries()
    );
}

#[test]
fn sigkill_of_the_ground_mid_push_resumes_from_the_queued_pack() {
    let local = tempfile::tempdir().unwrap();
    make_tree(local.path());
    let (clean, took) = clean_run(local.path());
    let ob = Onboard::start();
    let link = Throttle::start(&ob.addr);
    let mut rng = StdRng::seed_from_u64(76);
    let mut kills = 0;
    for _ in 0..4 {
        let mut child = spawn_push(&ob, &link.addr, local.path());
        std::thread::sleep(took.mul_f64(rng.random_range(0.2..0.9)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        kills += 1;
    }
    let (code, err) = finish(spawn_push(&ob, &link.addr, local.path()));
    assert_eq!(code, 0, "{err}\n{}", ob.log());
    assert_same_tree(&ob.volume_path("p1"), local.path());
    let bound = clean + kills * PER_KILL;
    assert!(
        link.carried() <= bound,
        "{} bytes across the link with {kills} kills; clean run {clean}, bound {bound}",
        link.carried()
    );
}

/// Real processes, real TCP: the link cut at random byte offsets (the proxy stops forwarding
/// mid-stream and closes both sides). Every push after a cut resumes; the last completes.
#[test]
fn cuts_at_random_byte_offsets_resume_and_end_equal() {
    let local = tempfile::tempdir().unwrap();
    make_tree(local.path());
    let (clean, _) = clean_run(local.path());
    let ob = Onboard::start();
    let link = Throttle::start(&ob.addr);
    let mut rng = StdRng::seed_from_u64(77);
    let mut cuts = 0;
    for _ in 0..5 {
        let sent = link.up.load(Ordering::SeqCst);
        link.cut_at(sent + rng.random_range(1_000..clean / 3));
        let (code, err) = finish(spawn_push(&ob, &link.addr, local.path()));
        if code == 0 {
            break;
        }
        assert!([4, 75].contains(&code), "push exited {code}: {err}");
        cuts += 1;
    }
    link.cut_at(u64::MAX);
    let (code, err) = finish(spawn_push(&ob, &link.addr, local.path()));
    assert_eq!(code, 0, "{err}\n{}", ob.log());
    assert_same_tree(&ob.volume_path("p1"), local.path());
    assert!(cuts >= 2, "only {cuts} cuts landed");
    let bound = clean + cuts * PER_KILL;
    eprintln!("{} bytes with {cuts} cuts; clean {clean}", link.carried());
    assert!(
        link.carried() <= bound,
        "{} bytes across the link with {cuts} cuts; clean run {clean}, bound {bound}",
        link.carried()
    );
}

/// The onboard daemon killed the moment the whole pack is staged, and again a little later:
/// in the middle of verifying, placing or applying. The restarted daemon finishes (from the
/// staged pack or the journal) and the volume ends equal.
#[test]
fn sigkill_of_the_onboard_daemon_once_the_pack_is_staged_finishes_on_restart() {
    let local = tempfile::tempdir().unwrap();
    make_tree(local.path());
    for delay_ms in [0u64, 40, 120] {
        let mut ob = Onboard::start();
        let link = Throttle::start(&ob.addr);
        let child = spawn_push(&ob, &link.addr, local.path());
        // Wait for the staged pack to be whole, then kill.
        let staging = ob.state().join("staging");
        let t0 = Instant::now();
        let whole = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the upload never finished"
            );
            let packs: Vec<u64> = std::fs::read_dir(&staging)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                        .collect()
                })
                .unwrap_or_default();
            let sent = link.up.load(Ordering::SeqCst);
            if packs.iter().any(|&len| len > 6_000_000 && sent >= len) {
                break true;
            }
            if ob.volume_path("p1").join("big/b2.bin").exists() {
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        std::thread::sleep(Duration::from_millis(delay_ms));
        ob.restart();
        link.retarget(&ob.addr);
        let _ = finish(child);
        let (code, err) = finish(spawn_push(&ob, &link.addr, local.path()));
        assert_eq!(code, 0, "{err}\n{}", ob.log());
        assert_same_tree(&ob.volume_path("p1"), local.path());
        eprintln!("killed {delay_ms} ms after the pack was whole (caught in time: {whole})");
    }
}
