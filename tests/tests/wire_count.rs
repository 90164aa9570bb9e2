//! The wire counts `sync-ground push --json` reports are the bytes that really crossed the
//! socket: a counting proxy between the two programs sees the same numbers, exactly, for a first
//! push, a changed push and an unchanged one.

use std::path::Path;
use std::time::Duration;

use sync_core::testing::random_bytes;
use sync_tests::*;

/// The budget for a push that finds nothing to send (both directions).
const UNCHANGED_WIRE_BUDGET: u64 = 1024;

/// Runs `push FOLDER --pod POD --json` through `proxy`, waits for the proxy to see the
/// connection end both ways, and checks the report's wire counts against the proxy's.
/// Returns the report.
#[track_caller]
fn push_counted(ob: &Onboard, proxy: &CountingProxy, folder: &Path, what: &str) -> Value {
    let (opened, closed) = proxy.connections();
    assert_eq!(opened, closed, "a connection is still open before {what}");
    let before = proxy.counts();
    let folder = folder.to_str().expect("utf-8 path");
    let run = ob.ground_to(&proxy.addr, &["push", folder, "--pod", "p", "--json"]);
    let r = run.ok().json();
    assert!(
        proxy.wait_closed(closed + 1, Duration::from_secs(20)),
        "{what}: the proxy did not see the connection end; log:\n{}",
        ob.log()
    );
    assert_eq!(
        proxy.connections(),
        (opened + 1, closed + 1),
        "{what}: one push, one connection"
    );
    let after = proxy.counts();
    let (up, down) = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "{what}: proxy up {up} B, down {down} B; report {}, {} s",
        field(&r, "wire"),
        field(&r, "seconds")
    );
    assert_eq!(
        num(&r, "wire.sent"),
        up,
        "{what}: wire.sent is not the bytes ground → onboard on the socket: {r}"
    );
    assert_eq!(
        num(&r, "wire.received"),
        down,
        "{what}: wire.received is not the bytes onboard → ground on the socket: {r}"
    );
    assert_eq!(num(&r, "wire.total"), up + down, "{what}: {r}");
    r
}

#[test]
fn reported_wire_bytes_equal_the_bytes_a_proxy_counts_on_the_socket() {
    let ob = Onboard::start();
    let proxy = CountingProxy::start(&ob.addr);
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(s, "readme.md", "# wire counts\n");
    write(s, "src/main.rs", "fn main() {}\n".repeat(40));
    write(s, "data/blob.bin", random_bytes(300 * 1024, 7));
    write(s, "data/small.bin", random_bytes(3000, 8));

    let r = push_counted(&ob, &proxy, s, "first push");
    assert_eq!(field(&r, "up_to_date"), false, "{r}");
    assert!(num(&r, "changes.added") >= 4, "{r}");
    assert_same_tree(&ob.volume_path("p"), s);

    // A change to the large file and a new file: a pack with deltas and acknowledgements.
    let mut blob = random_bytes(300 * 1024, 7);
    blob[100_000..100_200].copy_from_slice(&random_bytes(200, 9));
    write(s, "data/blob.bin", blob);
    write(s, "src/lib.rs", "pub fn f() {}\n");
    let r = push_counted(&ob, &proxy, s, "changed push");
    assert_eq!(field(&r, "up_to_date"), false, "{r}");
    assert!(num(&r, "changes.changed") >= 1, "{r}");
    assert!(num(&r, "changes.added") >= 1, "{r}");
    assert_same_tree(&ob.volume_path("p"), s);

    let r = push_counted(&ob, &proxy, s, "unchanged push");
    assert_eq!(field(&r, "up_to_date"), true, "{r}");
    assert!(
        num(&r, "wire.total") <= UNCHANGED_WIRE_BUDGET,
        "an unchanged push cost {} B on the wire, over the budget of {UNCHANGED_WIRE_BUDGET} B: {r}",
        num(&r, "wire.total")
    );
}
