//! The operator's view of passes, with both programs as processes: a push stopped by its
//! budget exits 75 and says what is left, `status` shows the queue from the ground's state
//! alone, and `pass` finishes queued pushes in priority order.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sync_core::id::ContentId;
use sync_core::manifest::{Entry, EntryKind, Manifest};
use sync_core::pack::{Limits, Plan};
use sync_core::path::VolumePath;
use sync_core::testing::Blobs;

use sync_core::testing::random_bytes;
use sync_tests::{
    CountingProxy, Onboard, Throttle, Value, assert_same_tree, ground_bin, num, write,
};

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
    write(src.path(), "model.bin", random_bytes(600_000, 1));
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
    write(low.path(), "low.bin", random_bytes(300_000, 2));
    write(high.path(), "high.bin", random_bytes(300_000, 3));
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
/// closed the link"). Encoding now runs aside, the pack goes as it is encoded, and while the
/// ground waits for the encoder's next segment keep-alives go out.
///
/// The encode is made long by construction: the file is sized from how fast this machine
/// encodes, to take about [`ENCODE_FOR`], whatever the machine; loopback is far faster, so the
/// ground spends most of the push waiting for the encoder. A proxy watches the ground's side of
/// the link meanwhile: the test checks that the push did outlast the idle timeout (or it proves
/// nothing) and that the ground was never silent that long.
#[test]
fn regression_a_long_encode_keeps_the_link_alive() {
    const IDLE: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir().unwrap();
    let ob = Onboard::start_in(dir, &["--idle-timeout", "4"]);
    let src = tempfile::tempdir().unwrap();
    // Incompressible, so encoding takes zstd level 19 its longest.
    let len = bytes_encoded_in(ENCODE_FOR);
    write(src.path(), "big.bin", random_bytes(len, 9));
    let proxy = CountingProxy::start(&ob.addr);
    let args = ["push", src.path().to_str().unwrap(), "--pod", "p", "--json"];
    let (r, watch) = std::thread::scope(|s| {
        let ground = s.spawn(|| ob.ground_to(&proxy.addr, &args));
        let watch = watch_the_encode(&proxy, || ground.is_finished());
        (ground.join().unwrap(), watch)
    });
    assert_eq!(r.code, 0, "{r:#?}\n{}", ob.log());
    assert_same_tree(&ob.volume_path("p"), src.path());
    let encode = watch.lasted;
    eprintln!(
        "{len} B: pushed (and encoded) for {encode:?}, the ground silent for {:?} at most",
        watch.longest_silence
    );
    assert!(
        encode > IDLE + Duration::from_secs(1),
        "the push of {len} B took {encode:?}, not longer than the idle timeout: the test \
         proves nothing"
    );
    assert!(
        watch.longest_silence < IDLE,
        "the ground fell silent for {:?} while it encoded (for {encode:?})",
        watch.longest_silence
    );
}

/// How long the ground's encode in [`regression_a_long_encode_keeps_the_link_alive`] should
/// take: twice the idle timeout.
const ENCODE_FOR: Duration = Duration::from_secs(8);

/// The size of an incompressible file the ground would take about `time` to encode into a
/// pack on this machine: measured by encoding 1 MiB the way it does (a first push: literal,
/// zstd level 19), a few times over, taking the fastest.
fn bytes_encoded_in(time: Duration) -> usize {
    const SAMPLE: usize = 1 << 20;
    let data = random_bytes(SAMPLE, 8);
    let path = VolumePath::new("big.bin").unwrap();
    let target = Manifest::new(vec![Entry {
        path,
        kind: EntryKind::File {
            id: ContentId::of(&data),
            size: SAMPLE as u64,
        },
        mode: 0o644,
        mtime: 1_700_000_000,
    }])
    .unwrap();
    let base = Manifest::default();
    let plan = Plan::new(&base, &target, &|_| false);
    let blobs = Blobs::of(&[&data]);
    let fastest = (0..3)
        .map(|_| {
            let t0 = Instant::now();
            let mut out = Vec::new();
            plan.encode(
                &base,
                &blobs,
                &HashMap::new(),
                &Limits::default(),
                &sync_core::pack::Effort::max(),
                &mut out,
            )
            .unwrap();
            t0.elapsed()
        })
        .min()
        .unwrap();
    let len = SAMPLE as f64 * time.as_secs_f64() / fastest.as_secs_f64();
    // Bounds for a machine far slower or faster than any seen: a few seconds of encode at
    // least, and no more than the disk comfortably holds four times (source, queued pack,
    // staging, volume).
    (len as usize).clamp(4 << 20, 256 << 20)
}

/// What the proxy saw of the ground's side of a push.
struct EncodeWatch {
    /// From the connection's start to the push's end.
    lasted: Duration,
    /// The longest the ground sent nothing, over the same stretch.
    longest_silence: Duration,
}

/// Watches the bytes the ground sends through `proxy` until `done`.
fn watch_the_encode(proxy: &CountingProxy, done: impl Fn() -> bool) -> EncodeWatch {
    let mut opened: Option<Instant> = None;
    let mut last = (0u64, Instant::now());
    let mut watch = EncodeWatch {
        lasted: Duration::ZERO,
        longest_silence: Duration::ZERO,
    };
    while !done() {
        let now = Instant::now();
        let (up, _) = proxy.counts();
        if opened.is_none() && proxy.connections().0 > 0 {
            opened = Some(now);
            last = (up, now);
        }
        if let Some(start) = opened {
            if up != last.0 {
                watch.longest_silence = watch.longest_silence.max(now - last.1);
                last = (up, now);
            }
            watch.lasted = now - start;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    watch
}

/// Regression: identical folders give identical packs, and the queue kept one row per pack, so
/// the first pod's queued push vanished when the second was queued (`pass` knew only the
/// second; the first volume was never made). A queued push belongs to its node, pod and
/// folder, whatever its bytes.
#[test]
fn identical_folders_pushed_to_two_pods_are_two_queued_pushes() {
    let ob = Onboard::start();
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "model.bin", random_bytes(300_000, 41));
    write(src.path(), "run.toml", "steps = 3\n");
    let folder = src.path().to_str().unwrap();
    for pod in ["twin-a", "twin-b"] {
        let r = ob.ground(&["push", folder, "--pod", pod, "--budget", "2KB"]);
        assert_eq!(r.code, 75, "{pod}: {r:#?}");
    }
    let st = ob.ground_state();
    let status = ground_status(&st);
    let q = queued(&status);
    let pods: Vec<&str> = q.iter().map(|q| q["pod"].as_str().unwrap()).collect();
    assert_eq!(pods.len(), 2, "{status}");
    assert!(
        pods.contains(&"twin-a") && pods.contains(&"twin-b"),
        "{status}"
    );
    assert_ne!(q[0]["pack"], q[1]["pack"], "two pushes, two ids: {status}");

    let r = ob.ground(&["pass", "--json"]);
    assert_eq!(r.code, 0, "{r:#?}");
    assert_same_tree(&ob.volume_path("twin-a"), src.path());
    assert_same_tree(&ob.volume_path("twin-b"), src.path());
    // Both stay listed as done.
    let status = ground_status(&st);
    assert!(queued(&status).is_empty(), "{status}");
    let done: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["state"] == "applied")
        .map(|q| q["pod"].as_str().unwrap())
        .collect();
    assert!(
        done.contains(&"twin-a") && done.contains(&"twin-b"),
        "{status}"
    );
}

/// Regression: a push into another folder of the same pod replaced the first folder's queued
/// push ("none of which had been sent"), and the first folder's files never arrived.
#[test]
fn pushes_into_two_folders_of_a_pod_both_stay_queued_and_arrive() {
    let ob = Onboard::start();
    let (inputs, config) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(inputs.path(), "data.bin", random_bytes(200_000, 42));
    write(config.path(), "run.toml", "steps = 3\n");
    write(config.path(), "weights.bin", random_bytes(100_000, 48));
    for (dir, dest) in [(&inputs, "inputs"), (&config, "config")] {
        let r = ob.ground(&[
            "push",
            dir.path().to_str().unwrap(),
            "--pod",
            "p",
            "--dest",
            dest,
            "--budget",
            "2KB",
        ]);
        assert_eq!(r.code, 75, "{dest}: {r:#?}");
        assert!(!r.stderr.contains("replaced"), "{dest}: {}", r.stderr);
    }
    assert_eq!(queued(&ground_status(&ob.ground_state())).len(), 2);
    let r = ob.ground(&["pass"]);
    assert_eq!(r.code, 0, "{r:#?}");
    assert_same_tree(&ob.volume_path("p").join("inputs"), inputs.path());
    assert_same_tree(&ob.volume_path("p").join("config"), config.path());
}

/// Regression: a folder changed while an older push of it was partly sent got the note "the
/// newer changes follow it", yet when the connection ended before they were planned, `pass`
/// said everything was done and `status` showed nothing: the newer changes waited for another
/// `push`. Now the promise is kept in the state, shown by `status`, and delivered by `pass`.
#[test]
fn newer_changes_a_note_promises_are_delivered_by_the_next_pass() {
    let ob = Onboard::start();
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "model.bin", random_bytes(600_000, 43));
    let folder = src.path().to_str().unwrap();
    let r = ob.ground(&["push", folder, "--pod", "p", "--budget", "200KB"]);
    assert_eq!(r.code, 75, "{r:#?}");

    // The folder changes; this push finishes the older one first, and runs out of budget.
    write(
        src.path(),
        "notes/new.txt",
        "added while the first push was queued\n",
    );
    write(src.path(), "model.bin", random_bytes(600_000, 44));
    let r = ob.ground(&["push", folder, "--pod", "p", "--budget", "150KB"]);
    assert_eq!(r.code, 75, "{r:#?}");
    assert!(
        r.stderr.contains("the newer changes follow it"),
        "{}",
        r.stderr
    );
    let status = ground_status(&ob.ground_state());
    assert!(
        queued(&status).iter().any(|q| q["state"] == "follows"),
        "status must show the promised changes as still queued: {status}"
    );

    let r = ob.ground(&["pass", "--json"]);
    assert_eq!(r.code, 0, "{r:#?}");
    assert_same_tree(&ob.volume_path("p"), src.path());
    assert!(queued(&ground_status(&ob.ground_state())).is_empty());
}

/// Regression: `pass --deadline 30s --budget 2MB` on loopback stopped after 281 KB (exit 75)
/// because it planned with a rate far below the link's: it stopped sending for good as soon as
/// the bytes in flight could not drain at that rate by the deadline. A rate now only paces what
/// is in flight; the acknowledgements show the real link, and the pass uses its budget.
#[test]
fn a_pass_uses_its_whole_budget_whatever_rate_it_planned_with() {
    let ob = Onboard::start();
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "model.bin", random_bytes(4_000_000, 45));
    let folder = src.path().to_str().unwrap();
    let r = ob.ground(&["push", folder, "--pod", "p", "--budget", "2KB"]);
    assert_eq!(r.code, 75, "{r:#?}");
    let r = ob.ground(&[
        "pass",
        "--deadline",
        "30s",
        "--budget",
        "2MB",
        "--rate",
        "75kbit",
        "--json",
    ]);
    assert_eq!(r.code, 75, "{r:#?}");
    let v = r.json();
    let wire = num(&v, "wire.total");
    assert!(
        wire > 1_800_000 && wire <= 2_000_000,
        "a 2 MB budget moved {wire} bytes: {v}"
    );
}

/// Regression: the rate a pass plans with was measured over whole connections, scanning and
/// encoding included, so a push that spent seconds encoding recorded a link as slow as its CPU.
/// Now a connection records the pack bytes acknowledged and the time they took on the link,
/// and (since a pack goes while it is encoded) not the time the sender waited for the encoder
/// with nothing in flight.
#[test]
fn the_measured_rate_is_the_links_not_the_encoders() {
    let ob = Onboard::start();
    let src = tempfile::tempdir().unwrap();
    // Seconds of zstd at level 19, then a few hundred KB on loopback.
    write(src.path(), "model.bin", random_bytes(8_000_000, 46));
    let folder = src.path().to_str().unwrap();
    let r = ob.ground(&["push", folder, "--pod", "p", "--budget", "600KB"]);
    assert_eq!(r.code, 75, "{r:#?}");
    let db = rusqlite::Connection::open(ob.ground_state().join("ground.db")).unwrap();
    let rows: Vec<(i64, f64)> = db
        .prepare("SELECT sent, secs FROM link_log")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        !rows.is_empty(),
        "the connection moved pack bytes: it is recorded"
    );
    for (sent, secs) in rows {
        let rate = sent as f64 / secs.max(1e-6);
        assert!(
            rate > 1_000_000.0,
            "loopback recorded at {rate:.0} B/s ({sent} B in {secs:.2} s)"
        );
    }
}

/// Regression: with `--rate 8Mbit` through a link of that rate, the plan said the pack
/// "completes" and the pass delivered 97% of it: the plan counted the whole deadline, as if
/// connecting, the last acknowledgement and framing took no time. What a plan promises, the
/// pass delivers.
#[test]
fn a_pass_delivers_what_its_plan_promises_through_a_slow_link() {
    let ob = Onboard::start();
    let link = Throttle::start_at(&ob.addr, 1_000_000.0);
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "model.bin", random_bytes(6_000_000, 47));
    let folder = src.path().to_str().unwrap();
    let r = ob.ground(&["push", folder, "--pod", "p", "--budget", "2KB"]);
    assert_eq!(r.code, 75, "{r:#?}");
    let r = ob.ground_to(
        &link.addr,
        &["pass", "--deadline", "5s", "--rate", "8Mbit", "--json"],
    );
    assert_eq!(r.code, 75, "{r:#?}");
    let v = r.json();
    let promised = num(&v["planned"][0], "fits");
    let delivered = num(&v["results"][0], "acked");
    // 5 s at 1 MB/s, less the connection's start, a round trip, the closing slack and framing.
    assert!(
        promised < 4_100_000,
        "the plan promised {promised} bytes of a 5 s pass at 1 MB/s"
    );
    assert!(
        delivered >= promised * 9 / 10,
        "promised {promised}, delivered {delivered}: {v}"
    );
}
