//! End to end: a real `sync-onboard serve` on a free port, driven by the `sync-ground` program,
//! checked by reading the pod volumes straight off the disk.

use std::fs;
use std::path::Path;

use sync_core::testing::random_bytes;
use sync_tests::*;

const MB: usize = 1 << 20;

/// A tree with nested folders, an empty folder, an executable, a private folder, symlinks that
/// stay inside the tree and a 1 MB file of random bytes.
fn sample_tree(root: &Path) {
    write(root, "a/readme.md", "# hello\n");
    write(root, "a/b/c/deep.txt", "deep down\n");
    write(root, "a/b/notes.txt", "some notes\n".repeat(50));
    fs::create_dir_all(root.join("empty")).unwrap();
    write(root, "bin/run.sh", "#!/bin/sh\necho run\n");
    chmod(root, "bin/run.sh", 0o755);
    write(root, "private/secret.txt", "s3cret\n");
    chmod(root, "private/secret.txt", 0o600);
    chmod(root, "private", 0o750);
    write(root, "big.bin", random_bytes(MB, 1));
    symlink(root, "link", "a/readme.md");
    symlink(root, "a/b/up", "../readme.md");
    symlink(root, "dirlink", "a/b");
}

fn local() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn push_then_volume_equals_local_tree_by_hash() {
    let ob = Onboard::start();
    let src = local();
    sample_tree(src.path());
    let r = ob.push(src.path(), "p", &[]);
    assert_eq!(field(&r, "up_to_date"), false, "{r}");
    assert!(num(&r, "changes.added") >= 6, "{r}");
    assert!(num(&r, "content_bytes") >= MB as u64, "{r}");
    assert_same_tree(&ob.volume_path("p"), src.path());
    // The listing really covers what was asked for (guards tree_hash itself).
    let listing = tree_hash(&ob.volume_path("p")).join("\n");
    for want in [
        "empty dir 755",
        "bin/run.sh file 755",
        "private dir 750",
        "private/secret.txt file 600",
        "link symlink -> a/readme.md",
        "a/b/up symlink -> ../readme.md",
    ] {
        assert!(listing.contains(want), "missing {want:?} in\n{listing}");
    }
}

#[test]
fn pushes_that_add_change_rename_delete_and_chmod_keep_the_volume_equal() {
    let ob = Onboard::start();
    let src = local();
    let s = src.path();
    let vol = ob.volume_path("p");
    sample_tree(s);
    ob.push(s, "p", &[]);
    assert_same_tree(&vol, s);

    // add
    write(s, "new/dir/file.txt", "new file\n");
    fs::create_dir_all(s.join("new/empty")).unwrap();
    let r = ob.push(s, "p", &[]);
    assert!(num(&r, "changes.added") >= 1, "{r}");
    assert_same_tree(&vol, s);

    // change
    write(s, "a/readme.md", "# hello, changed\n");
    write(s, "a/b/notes.txt", "other notes\n".repeat(60));
    let r = ob.push(s, "p", &[]);
    assert!(num(&r, "changes.changed") >= 2, "{r}");
    assert_same_tree(&vol, s);

    // rename a 1 MB file of random bytes: the volume already has the content
    fs::create_dir_all(s.join("moved")).unwrap();
    fs::rename(s.join("big.bin"), s.join("moved/big-renamed.bin")).unwrap();
    let r = ob.push(s, "p", &[]);
    assert!(num(&r, "changes.copied") >= 1, "{r}");
    assert!(num(&r, "changes.removed") >= 1, "{r}");
    assert!(num(&r, "wire.total") < 2000, "rename cost too much: {r}");
    assert_same_tree(&vol, s);

    // delete a file and a folder with contents
    fs::remove_file(s.join("a/b/c/deep.txt")).unwrap();
    fs::remove_dir_all(s.join("new")).unwrap();
    let r = ob.push(s, "p", &[]);
    assert!(num(&r, "changes.removed") >= 1, "{r}");
    assert!(num(&r, "changes.dirs_removed") >= 1, "{r}");
    assert_same_tree(&vol, s);

    // chmod a file and a folder
    chmod(s, "a/readme.md", 0o755);
    chmod(s, "bin/run.sh", 0o644);
    chmod(s, "a/b", 0o700);
    let r = ob.push(s, "p", &[]);
    assert!(num(&r, "changes.metadata") >= 2, "{r}");
    assert_eq!(num(&r, "content_bytes"), 0, "{r}");
    assert_same_tree(&vol, s);

    // kinds change: a file becomes a folder, a folder a symlink, a symlink a file
    fs::remove_file(s.join("a/readme.md")).unwrap();
    write(s, "a/readme.md/inner.txt", "now a folder\n");
    fs::remove_dir_all(s.join("empty")).unwrap();
    symlink(s, "empty", "a");
    fs::remove_file(s.join("link")).unwrap();
    write(s, "link", "now a file\n");
    ob.push(s, "p", &[]);
    assert_same_tree(&vol, s);

    // and everything removed
    for e in fs::read_dir(s).unwrap() {
        let p = e.unwrap().path();
        if p.is_symlink() || p.is_file() {
            fs::remove_file(&p).unwrap();
        } else {
            fs::remove_dir_all(&p).unwrap();
        }
    }
    ob.push(s, "p", &[]);
    assert_same_tree(&vol, s);
    assert!(tree_hash(&vol).is_empty());
}

#[test]
fn unchanged_push_costs_under_1kb_on_the_wire() {
    let ob = Onboard::start();
    let src = local();
    sample_tree(src.path());
    ob.push(src.path(), "p", &[]);
    let r = ob.push(src.path(), "p", &[]);
    assert_eq!(field(&r, "up_to_date"), true, "{r}");
    assert!(num(&r, "wire.total") < 1024, "{r}");
    assert_same_tree(&ob.volume_path("p"), src.path());
}

#[test]
fn small_edit_of_large_file_sends_a_delta() {
    let ob = Onboard::start();
    let src = local();
    let mut data = random_bytes(2 * MB, 42);
    write(src.path(), "data.bin", &data);
    let r = ob.push(src.path(), "p", &[]);
    assert!(
        num(&r, "wire.total") > 2 * MB as u64 / 2,
        "random bytes do not compress: {r}"
    );
    let mid = data.len() / 2;
    for (i, b) in data[mid..mid + 100].iter_mut().enumerate() {
        *b = !*b ^ (i as u8);
    }
    write(src.path(), "data.bin", &data);
    let r = ob.push(src.path(), "p", &[]);
    assert_eq!(num(&r, "changes.changed"), 1, "{r}");
    assert!(
        num(&r, "wire.total") < 20 * 1024,
        "edit of 100 bytes cost: {r}"
    );
    assert_same_tree(&ob.volume_path("p"), src.path());
}

fn ls_paths(ob: &Onboard, pod: &str) -> Vec<String> {
    let v = ob.ground(&["ls", "--pod", pod, "--json"]).ok().json();
    v.as_array()
        .expect("ls --json prints an array")
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pods_are_isolated() {
    let ob = Onboard::start();
    let (ta, tb) = (local(), local());
    write(ta.path(), "only-a/file-a.txt", "a\n");
    write(ta.path(), "shared-name.txt", "from a\n");
    write(tb.path(), "only-b/file-b.txt", "b\n");
    write(tb.path(), "shared-name.txt", "from b\n");
    ob.push(ta.path(), "a", &[]);
    ob.push(tb.path(), "b", &[]);
    assert_same_tree(&ob.volume_path("a"), ta.path());
    assert_same_tree(&ob.volume_path("b"), tb.path());

    let b_paths = ls_paths(&ob, "b");
    for p in ["only-a", "only-a/file-a.txt"] {
        assert!(
            !b_paths.iter().any(|x| x == p),
            "pod b lists {p}: {b_paths:?}"
        );
    }
    let mut want = vec!["only-b", "only-b/file-b.txt", "shared-name.txt"];
    want.sort();
    let mut got = b_paths.clone();
    got.sort();
    assert_eq!(got, want);

    // Pushing to a again leaves b alone.
    write(ta.path(), "shared-name.txt", "from a, again\n");
    ob.push(ta.path(), "a", &[]);
    assert_same_tree(&ob.volume_path("a"), ta.path());
    assert_same_tree(&ob.volume_path("b"), tb.path());
}

#[test]
fn dest_places_tree_under_a_folder_and_leaves_the_rest() {
    let ob = Onboard::start();
    let src = local();
    sample_tree(src.path());
    let vol = ob.volume_path("p");
    let r = ob.push(src.path(), "p", &["--dest", "inputs"]);
    assert_eq!(field(&r, "dest"), "inputs", "{r}");
    assert_same_tree(&vol.join("inputs"), src.path());

    // The pod writes its results next to the inputs.
    write(&vol, "results/out.txt", "result of the run\n");
    let results_before = tree_hash(&vol.join("results"));

    write(src.path(), "a/readme.md", "# changed input\n");
    fs::remove_file(src.path().join("bin/run.sh")).unwrap();
    let r = ob.push(src.path(), "p", &["--dest", "inputs"]);
    assert!(num(&r, "changes.changed") >= 1, "{r}");
    assert_same_tree(&vol.join("inputs"), src.path());
    assert_eq!(tree_hash(&vol.join("results")), results_before);
    let top: Vec<_> = tree_hash(&vol)
        .into_iter()
        .filter(|l| !l.contains('/'))
        .collect();
    assert_eq!(top.len(), 2, "volume top level: {top:?}");

    // A nested --dest (with slashes around it) works too.
    let other = local();
    write(other.path(), "x.txt", "x\n");
    ob.push(other.path(), "p", &["--dest", "/deep/er/"]);
    assert_same_tree(&vol.join("deep/er"), other.path());
    assert_same_tree(&vol.join("inputs"), src.path());
    assert_eq!(tree_hash(&vol.join("results")), results_before);
}

/// Regression (found by the soak): a link cut during the handshake exited 5, "authentication
/// failed (keys differ)", sending the operator to check keys that were fine. The node now
/// refuses a wrong key in so many words; a cut is a link failure (exit 4), and the push
/// succeeds on the next try.
#[test]
fn a_link_cut_during_the_handshake_is_a_link_failure_not_a_wrong_key() {
    let ob = Onboard::start();
    let src = local();
    sample_tree(src.path());
    let link = Throttle::start(&ob.addr);
    // The preamble (8 bytes) gets through; the first handshake message does not.
    link.cut_at(20);
    let folder = src.path().to_str().unwrap();
    let r = ob.ground_to(&link.addr, &["push", folder, "--pod", "p"]);
    assert_eq!(r.code, 4, "{r:#?}");
    assert!(
        r.stderr.contains("closed during the handshake"),
        "{}",
        r.stderr
    );
    link.cut_at(u64::MAX);
    ob.push(src.path(), "p", &[]);
    assert_same_tree(&ob.volume_path("p"), src.path());
}

#[test]
fn wrong_key_is_refused_and_changes_nothing() {
    let ob = Onboard::start();
    let src = local();
    sample_tree(src.path());
    ob.push(src.path(), "p", &[]);
    let before = tree_hash(&ob.volumes());

    let other = local();
    let other_key = other.path().join("other.key");
    keygen(&other_key);
    let state = other.path().join("gstate");
    write(src.path(), "a/readme.md", "# should never arrive\n");
    write(src.path(), "intruder.txt", "x\n");
    let folder = src.path().to_str().unwrap();
    let r = ob.ground_with(
        &other_key,
        &state,
        &["push", folder, "--pod", "p", "--json"],
    );
    assert_eq!(r.code, 5, "{r:#?}");
    let r = ob.ground_with(
        &other_key,
        &state,
        &["push", folder, "--pod", "q", "--json"],
    );
    assert_eq!(r.code, 5, "{r:#?}");
    let r = ob.ground_with(&other_key, &state, &["rm", "-r", "a", "--pod", "p"]);
    assert_eq!(r.code, 5, "{r:#?}");
    let r = ob.ground_with(&other_key, &state, &["ls", "--pod", "p", "--json"]);
    assert_eq!(r.code, 5, "{r:#?}");
    assert!(r.stdout.trim().is_empty(), "ls leaked: {r:#?}");
    assert_eq!(tree_hash(&ob.volumes()), before);

    // The right key still works afterwards.
    ob.push(src.path(), "p", &[]);
    assert_same_tree(&ob.volume_path("p"), src.path());
}

#[test]
fn hostile_inputs_are_refused() {
    let ob = Onboard::start();
    let src = local();
    sample_tree(src.path());
    ob.push(src.path(), "p", &[]);
    let vols_before = tree_hash(&ob.volumes());
    let top_names = || {
        let mut v: Vec<_> = fs::read_dir(ob.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let top_before = top_names();
    let folder = src.path().to_str().unwrap();

    let refused = |args: &[&str]| {
        let r = ob.ground(args);
        assert_ne!(r.code, 0, "{args:?} was accepted: {r:#?}");
        assert_ne!(r.code, 101, "{args:?} panicked: {r:#?}");
        assert_eq!(
            tree_hash(&ob.volumes()),
            vols_before,
            "{args:?} changed the volumes"
        );
        assert_eq!(
            top_names(),
            top_before,
            "{args:?} created something outside the volumes"
        );
    };
    for pod in ["../x", "a/b", "..", ".", "", "/abs", "x/../../y"] {
        refused(&["push", folder, "--pod", pod]);
        refused(&["ls", "--pod", pod]);
    }
    for dest in ["../up", "a/../../up", "a/./b", "a//b"] {
        refused(&["push", folder, "--pod", "p", "--dest", dest]);
    }
    for path in ["../x", "/abs", "/etc/passwd", "a/../..", "a/b/../../../x"] {
        refused(&["rm", path, "--pod", "p"]);
        refused(&["rm", "-r", path, "--pod", "p"]);
    }

    // A local tree with a symlink leaving it.
    for (name, target) in [
        ("evil", "/etc/passwd"),
        ("a/evil", "../../outside"),
        ("evil2", ".."),
    ] {
        let bad = local();
        sample_tree(bad.path());
        symlink(bad.path(), name, target);
        refused(&["push", bad.path().to_str().unwrap(), "--pod", "p"]);
        refused(&[
            "push",
            bad.path().to_str().unwrap(),
            "--pod",
            "p",
            "--dest",
            "in",
        ]);
    }
    assert_same_tree(&ob.volume_path("p"), src.path());
    assert!(!ob.dir.path().join("x").exists());
    assert!(!ob.dir.path().join("up").exists());
}

#[test]
fn rm_removes_files_and_needs_recursive_for_folders() {
    let ob = Onboard::start();
    let src = local();
    let s = src.path();
    sample_tree(s);
    ob.push(s, "p", &[]);
    let vol = ob.volume_path("p");

    ob.ground(&["rm", "a/readme.md", "--pod", "p"]).ok();
    fs::remove_file(s.join("a/readme.md")).unwrap();
    assert_same_tree(&vol, s);

    // Several at once, including a symlink.
    ob.ground(&["rm", "link", "bin/run.sh", "--pod", "p"]).ok();
    fs::remove_file(s.join("link")).unwrap();
    fs::remove_file(s.join("bin/run.sh")).unwrap();
    assert_same_tree(&vol, s);

    // A folder needs -r.
    let before = tree_hash(&vol);
    let r = ob.ground(&["rm", "a/b", "--pod", "p"]);
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(r.stderr.contains("recursive"), "{r:#?}");
    assert_eq!(tree_hash(&vol), before);
    // Even an empty one.
    let r = ob.ground(&["rm", "empty", "--pod", "p"]);
    assert_ne!(r.code, 0, "{r:#?}");
    assert_eq!(tree_hash(&vol), before);

    let r = ob
        .ground(&["rm", "-r", "a/b/", "--pod", "p", "--json"])
        .ok()
        .json();
    assert!(num(&r, "changes.removed") >= 2, "{r}");
    fs::remove_dir_all(s.join("a/b")).unwrap();
    assert_same_tree(&vol, s);
    ob.ground(&["rm", "--recursive", "empty", "--pod", "p"])
        .ok();
    fs::remove_dir(s.join("empty")).unwrap();
    assert_same_tree(&vol, s);

    // Missing paths are an error, and nothing else is removed with them.
    let before = tree_hash(&vol);
    let r = ob.ground(&["rm", "big.bin", "no/such/file", "--pod", "p"]);
    assert_ne!(r.code, 0, "{r:#?}");
    assert_eq!(tree_hash(&vol), before);

    // A push afterwards is a plain push again.
    write(s, "a/readme.md", "back\n");
    ob.push(s, "p", &[]);
    assert_same_tree(&vol, s);
}

#[test]
fn ls_json_lists_hashes_that_match_the_files() {
    let ob = Onboard::start();
    let src = local();
    sample_tree(src.path());
    ob.push(src.path(), "p", &[]);
    let vol = ob.volume_path("p");
    let v = ob.ground(&["ls", "--pod", "p", "--json"]).ok().json();
    let entries = v.as_array().unwrap();
    let listed: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    let on_disk: Vec<String> = tree_hash(&vol)
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, on_disk,
        "ls lists other paths than the volume holds"
    );

    let mut files = 0;
    for e in entries {
        let path = e["path"].as_str().unwrap();
        let p = vol.join(path);
        let meta = fs::symlink_metadata(&p).unwrap();
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        match e["type"].as_str().unwrap() {
            "file" => {
                files += 1;
                let bytes = fs::read(&p).unwrap();
                assert_eq!(
                    e["hash"].as_str(),
                    Some(blake3::hash(&bytes).to_hex().as_str()),
                    "{e}"
                );
                assert_eq!(e["size"].as_u64(), Some(bytes.len() as u64), "{e}");
                assert_eq!(e["mtime"].as_i64(), Some(meta.mtime()), "{e}");
                let mode = format!("{:o}", meta.permissions().mode() & 0o777);
                assert_eq!(e["mode"].as_str(), Some(mode.as_str()), "{e}");
                assert!(e["target"].is_null(), "{e}");
            }
            "dir" => {
                assert!(meta.is_dir(), "{e}");
                assert!(e["hash"].is_null(), "{e}");
                let mode = format!("{:o}", meta.permissions().mode() & 0o777);
                assert_eq!(e["mode"].as_str(), Some(mode.as_str()), "{e}");
            }
            "symlink" => {
                assert!(meta.file_type().is_symlink(), "{e}");
                let t = fs::read_link(&p).unwrap();
                assert_eq!(e["target"].as_str(), t.to_str(), "{e}");
                assert!(e["hash"].is_null(), "{e}");
            }
            other => panic!("unexpected type {other}: {e}"),
        }
    }
    assert_eq!(files, 6);

    // ls PATH lists that folder and what is in it; a missing path is an error.
    let v = ob
        .ground(&["ls", "a/b", "--pod", "p", "--json"])
        .ok()
        .json();
    let mut sub: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    sub.sort();
    assert_eq!(
        sub,
        ["a/b", "a/b/c", "a/b/c/deep.txt", "a/b/notes.txt", "a/b/up"]
    );
    let r = ob.ground(&["ls", "no/such", "--pod", "p", "--json"]);
    assert_ne!(r.code, 0, "{r:#?}");

    // A pod with no volume yet lists as empty.
    let v = ob.ground(&["ls", "--pod", "fresh", "--json"]).ok().json();
    assert_eq!(v.as_array().map(|a| a.len()), Some(0), "{v}");
}

#[test]
fn pod_writes_are_seen_by_ls_and_removed_by_the_next_push_to_the_root() {
    let ob = Onboard::start();
    let src = local();
    sample_tree(src.path());
    ob.push(src.path(), "p", &[]);
    let vol = ob.volume_path("p");

    // The pod writes and changes files in its volume between pushes.
    write(&vol, "pod-output/log.txt", "written by the pod\n");
    write(&vol, "a/readme.md", "# edited by the pod\n");
    let v = ob.ground(&["ls", "--pod", "p", "--json"]).ok().json();
    let log = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "pod-output/log.txt")
        .unwrap_or_else(|| panic!("ls does not show the pod's file: {v}"));
    assert_eq!(
        log["hash"].as_str(),
        Some(blake3::hash(b"written by the pod\n").to_hex().as_str())
    );
    let readme = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "a/readme.md")
        .unwrap();
    assert_eq!(
        readme["hash"].as_str(),
        Some(blake3::hash(b"# edited by the pod\n").to_hex().as_str())
    );

    // Push means "hold exactly the local tree": the pod's file goes, its edit is undone.
    let r = ob.push(src.path(), "p", &[]);
    assert_eq!(field(&r, "up_to_date"), false, "{r}");
    assert!(num(&r, "changes.removed") >= 1, "{r}");
    assert!(!vol.join("pod-output").exists());
    assert_same_tree(&vol, src.path());

    // Without an ls in between the push still sees the pod's writes.
    write(&vol, "sneaky.txt", "another\n");
    let r = ob.push(src.path(), "p", &[]);
    assert_eq!(field(&r, "up_to_date"), false, "{r}");
    assert_same_tree(&vol, src.path());
}

/// A ground state that has never seen any pod (so the onboard side sends full manifests).
fn fresh_state(tmp: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    tmp.path().join(name)
}

#[test]
fn pod_symlinks_leaving_the_volume_never_redirect_a_push_outside() {
    let ob = Onboard::start();
    let src = local();
    let s = src.path();
    write(s, "a/f.txt", "hi\n");
    write(s, "t.txt", "top\n");
    ob.push(s, "p", &[]);
    let vol = ob.volume_path("p");

    let outside = local();
    write(outside.path(), "canary.txt", "do not touch\n");
    let outside_before = tree_hash(outside.path());
    let out = outside.path().to_str().unwrap();

    // The pod swaps a folder for a link out of its volume, and adds more such links.
    fs::remove_dir_all(vol.join("a")).unwrap();
    symlink(&vol, "a", out);
    symlink(&vol, "inputs", out);
    symlink(&vol, "up", "../..");
    write(s, "a/f.txt", "changed\n");
    write(s, "a/g.txt", "new\n");
    write(s, "up/h.txt", "through a link?\n");
    write(s, "canary.txt", "overwritten?\n");

    // Whatever a ground that knew the old volume makes of it, nothing lands outside.
    let folder = s.to_str().unwrap();
    let r = ob.ground(&["push", folder, "--pod", "p", "--json"]);
    assert_ne!(r.code, 101, "{r:#?}");
    assert_eq!(tree_hash(outside.path()), outside_before, "{r:#?}");

    // A ground that learns the volume afresh replaces the links with the local tree.
    let states = local();
    let r = ob.ground_with(
        &ob.key(),
        &fresh_state(&states, "g1"),
        &["push", folder, "--pod", "p", "--json"],
    );
    r.ok();
    assert_same_tree(&vol, s);
    assert_eq!(tree_hash(outside.path()), outside_before);

    // The same with --dest pointing at a link the pod made.
    symlink(&vol, "results", out);
    let r = ob.ground_with(
        &ob.key(),
        &fresh_state(&states, "g2"),
        &[
            "push",
            folder,
            "--pod",
            "p",
            "--dest",
            "results/run1",
            "--json",
        ],
    );
    r.ok();
    assert!(!vol.join("results").is_symlink());
    assert_same_tree(&vol.join("results/run1"), s);
    assert_eq!(tree_hash(outside.path()), outside_before);

    // A file the pod put where --dest wants a folder is replaced by the folder.
    write(&vol, "plain", "a file\n");
    ob.ground_with(
        &ob.key(),
        &fresh_state(&states, "g3"),
        &["push", folder, "--pod", "p", "--dest", "plain", "--json"],
    )
    .ok();
    assert_same_tree(&vol.join("plain"), s);
    assert_eq!(tree_hash(outside.path()), outside_before);
}

#[test]
fn ground_that_knows_the_pod_still_works_after_the_pod_links_outside() {
    let ob = Onboard::start();
    let src = local();
    let s = src.path();
    write(s, "a/f.txt", "hi\n");
    write(s, "t.txt", "top\n");
    ob.push(s, "p", &[]);
    let vol = ob.volume_path("p");
    let outside = local();

    // The pod is free to keep any symlink in its volume (the volume scan keeps them).
    symlink(&vol, "escape", outside.path().to_str().unwrap());
    let v = ob.ground(&["ls", "--pod", "p", "--json"]).ok().json();
    assert!(
        v.as_array().unwrap().iter().any(|e| e["path"] == "escape"),
        "{v}"
    );
    ob.ground(&["rm", "escape", "--pod", "p"]).ok();
    assert!(!vol.join("escape").is_symlink());

    symlink(&vol, "escape", outside.path().to_str().unwrap());
    ob.push(s, "p", &[]);
    assert_same_tree(&vol, s);
}

/// Regression: `sync-ground ls | head` used to panic ("failed printing to stdout: Broken pipe")
/// when the reader went away; a closed pipe must end the listing quietly with status 0.
#[test]
fn ls_into_a_closed_pipe_exits_cleanly() {
    let ob = Onboard::start();
    let src = tempfile::tempdir().unwrap();
    for i in 0..2000 {
        write(src.path(), &format!("d/file-{i:05}.txt"), format!("{i}\n"));
    }
    ob.push(src.path(), "p", &[]);
    let mut child = std::process::Command::new(ground_bin())
        .args(["ls", "--pod", "p", "--to", &ob.addr])
        .arg("--key")
        .arg(ob.key())
        .arg("--state")
        .arg(ob.ground_state())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// The files of `dir` whose names start with `prefix`, with their sizes.
fn files_named(dir: &Path, prefix: &str) -> Vec<(String, u64)> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let len = e.metadata().ok()?.len();
                    name.starts_with(prefix).then_some((name, len))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A pack goes on the link as it is encoded: while the ground is still writing it (its file in
/// `packs/` still has the name it has until it is whole), the node has staged its first bytes.
/// (Before, the whole pack was encoded before the offer: 8 MB of new content at level 19 kept
/// the link idle for seconds, and minutes for larger pushes.)
#[test]
fn a_pack_is_on_the_link_before_its_encoding_ends() {
    let ob = Onboard::start();
    let src = local();
    for i in 0..2 {
        write(
            src.path(),
            &format!("data/{i}.bin"),
            random_bytes(4 * MB, 40 + i),
        );
    }
    let (key, state) = (ob.key(), ob.ground_state());
    let args = [
        "push",
        src.path().to_str().unwrap(),
        "--pod",
        "p",
        "--json",
        "--to",
        &ob.addr,
        "--key",
        key.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ];
    let mut push = std::process::Command::new(ground_bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (packs, staging) = (
        ob.ground_state().join("packs"),
        ob.dir.path().join("state/staging"),
    );
    let mut overlap = None;
    let t0 = std::time::Instant::now();
    let (mut seen_encoding, mut seen_staged) = (None, None);
    while push.try_wait().unwrap().is_none() {
        let encoding = files_named(&packs, ".encoding-");
        let staged: u64 = files_named(&staging, "").iter().map(|f| f.1).sum();
        if !encoding.is_empty() {
            seen_encoding.get_or_insert(t0.elapsed());
        }
        if staged > 0 {
            seen_staged.get_or_insert(t0.elapsed());
        }
        if !encoding.is_empty() && staged > 0 {
            overlap = Some((encoding[0].1, staged));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // (Regression: after the first segment the sender waited for a keep-alive tick, 3 s,
    // rather than for the encoder; the node then staged nothing until then.)
    eprintln!("pack file seen at {seen_encoding:?}, staged bytes at {seen_staged:?}");
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (written, staged) = overlap.expect("the node staged nothing while the pack was encoded");
    eprintln!("while encoding: {written} bytes written, {staged} staged onboard");
    assert_same_tree(&ob.volume_path("p"), src.path());
    // Queued whole, sent whole: nothing of it is left in packs/.
    assert!(
        files_named(&packs, "").is_empty(),
        "{:?}",
        files_named(&packs, "")
    );
}

/// The daemon decodes within the memory it is given (`--memory`), whatever the size of a
/// file: a 128 MiB file pushed new, then with 1% of it changed in scattered places (decoded
/// against stretches of its old version), under a 32 MiB bound. (Before, a segment held up to
/// 128 MiB and the decoder's window with it: the daemon peaked at 300 MB for a 300 MB push.)
#[test]
fn the_daemon_stays_within_its_memory_bound_for_a_large_file() {
    const BOUND: u64 = 32 << 20;
    let ob = Onboard::start_in(tempfile::tempdir().unwrap(), &["--memory", "32MiB"]);
    let src = local();
    let mut big = image_like(128 * MB, 1);
    write(src.path(), "disk.img", &big);
    ob.push(src.path(), "p", &[]);
    assert_same_tree(&ob.volume_path("p"), src.path());
    let first = ob.peak_memory();
    for at in (300_000..big.len()).step_by(400 << 10) {
        big[at..at + 4096].copy_from_slice(&random_bytes(4096, at as u64));
    }
    write(src.path(), "disk.img", &big);
    let v = ob.push(src.path(), "p", &[]);
    assert_same_tree(&ob.volume_path("p"), src.path());
    let second = ob.peak_memory();
    eprintln!(
        "daemon VmHWM: {} MiB after the first push, {} MiB after the second ({} pack bytes)",
        first >> 20,
        second >> 20,
        num(&v, "pack_bytes")
    );
    assert!(
        second <= BOUND,
        "the daemon peaked at {} MiB, over its {} MiB bound",
        second >> 20,
        BOUND >> 20
    );
}

/// Regression: the ground's content store lost a file the encoder also read to see whether it
/// only grew (both reads wrote the same temporary), so the next push of that file had no base
/// the ground held and went by rsync against the node's signature.
#[test]
fn a_pushed_file_is_the_base_of_its_next_version() {
    let ob = Onboard::start();
    let src = local();
    // Over 1 MiB, edited near the start: the look at whether it only grew stops early.
    let mut data = random_bytes(3 * MB, 3);
    for round in 0..3u64 {
        data[100_000..100_100].copy_from_slice(&random_bytes(100, round));
        write(src.path(), "state.bin", &data);
        let v = ob.push(src.path(), "p", &[]);
        eprintln!("round {round}: {}", field(&v, "plan"));
        if round == 2 {
            assert_eq!(num(&v, "plan.prefixed"), 1, "{v}");
            assert_eq!(num(&v, "plan.rsynced"), 0, "{v}");
        }
    }
    assert_same_tree(&ob.volume_path("p"), src.path());
}
