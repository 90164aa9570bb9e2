//! The operator's view of passes, with both programs as processes: a push stopped by its
//! budget exits 75 and says what is left, `status` shows the queue from the ground's state
//! alone, and `pass` finishes queued pushes in priority order.

use std::path::Path;
use std::process::Command;

use sync_tests::{Onboard, Value, assert_same_tree, ground_bin, num, random_bytes, write};

/// `sync-ground status --json` on a ground state folder (no link involved).
fn ground_status(state: &Path) -> Value {
    let out = Command::new(ground_bin())
        .args(["status", "--json", "--state"])
        .arg(state)
        .env_remove("SYNC_STATE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn queued(status: &Value) -> Vec<&Value> {
    status
        .as_array()
        .expect("status --json is an array")
        .iter()
        .filter(|q| q["state"] != "applied")
        .collect()
}

#[test]
fn a_push_over_its_budget_exits_75_and_a_pass_finishes_it() {
    let ob = Onboard::start();
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "model.bin", random_bytes(1, 600_000));
    write(src.path(), "conf/run.toml", "steps = 10\n");
    let folder = src.path().to_str().unwrap();

    let r = ob.ground(&["push", folder, "--pod", "p1", "--budget", "200KB"]);
    assert_eq!(r.code, 75, "{r:#?}");
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("incomplete:") && last.contains("left") && last.contains("next pass"),
        "{last}"
    );
    assert!(!ob.volume_path("p1").join("model.bin").exists());

    // status needs no link: it reads the ground's state.
    let st = ob.ground_state();
    let status = ground_status(&st);
    let q = queued(&status);
    assert_eq!(q.len(), 1, "{status}");
    let acked = num(q[0], "acked");
    assert!(
        acked > 150_000 && acked < num(q[0], "total"),
        "acked {acked} of {}",
        num(q[0], "total")
    );

    let r = ob.ground(&["pass", "--json"]);
    assert_eq!(r.code, 0, "{r:#?}");
    let v = r.json();
    assert_eq!(v["complete"], true, "{v}");
    // Only what was missing crossed the link again.
    assert!(
        num(&v, "wire.sent") < 600_000 - acked + 20_000,
        "pass sent {} after {acked} were already onboard",
        num(&v, "wire.sent")
    );
    assert_same_tree(&ob.volume_path("p1"), src.path());
    assert!(queued(&ground_status(&st)).is_empty());
}

#[test]
fn a_pass_sends_the_higher_priority_push_first() {
    let ob = Onboard::start();
    let (low, high) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(low.path(), "low.bin", random_bytes(2, 300_000));
    write(high.path(), "high.bin", random_bytes(3, 300_000));
    // Queue both without sending (a budget too small for any content).
    for (dir, pod, prio) in [(&low, "p-low", "1"), (&high, "p-high", "9")] {
        let r = ob.ground(&[
            "push",
            dir.path().to_str().unwrap(),
            "--pod",
            pod,
            "--priority",
            prio,
            "--budget",
            "2KB",
        ]);
        assert_eq!(r.code, 75, "{r:#?}");
    }
    // A pass with room for one of them.
    let r = ob.ground(&["pass", "--budget", "350KB", "--json"]);
    assert_eq!(r.code, 75, "{r:#?}");
    assert_same_tree(&ob.volume_path("p-high"), high.path());
    assert!(!ob.volume_path("p-low").join("low.bin").exists());
    let r = ob.ground(&["pass"]);
    assert_eq!(r.code, 0, "{r:#?}");
    assert_same_tree(&ob.volume_path("p-low"), low.path());
}

#[test]
fn bad_budgets_and_rates_are_refused_with_a_hint() {
    let ob = Onboard::start();
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "a", "a");
    let folder = src.path().to_str().unwrap();
    for (flag, value) in [
        ("--budget", "4 parsecs"),
        ("--deadline", "8 fortnights"),
        ("--rate", "9600"),
    ] {
        let r = ob.ground(&["push", folder, flag, value]);
        assert_eq!(r.code, 2, "{flag} {value}: {r:#?}");
        assert!(r.stderr.contains("like"), "{flag}: {}", r.stderr);
    }
    assert!(!ob.volume_path("default").exists());
}

/// Regression: the ground encoded a pack on the link's own thread, sending nothing meanwhile,
/// so a large first push outlasted the onboard side's idle timeout and was cut ("the other side
/// closed the link"). Encoding now runs aside while keep-alives go out.
#[test]
fn regression_a_long_encode_keeps_the_link_alive() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Onboard::start_in(dir, &["--idle-timeout", "4"]);
    let src = tempfile::tempdir().unwrap();
    // Incompressible, so encoding at zstd level 19 takes several seconds here.
    write(src.path(), "big.bin", random_bytes(9, 24_000_000));
    let r = ob.ground(&["push", src.path().to_str().unwrap(), "--pod", "p", "--json"]);
    assert_eq!(r.code, 0, "{r:#?}\n{}", ob.log());
    assert_same_tree(&ob.volume_path("p"), src.path());
}
