//! Helpers for the end-to-end tests in `tests/e2e.rs`: build and locate the two programs, run a
//! `sync-onboard serve` on a free port with its own temporary folders, run `sync-ground` against
//! it, and compare folders by content hash.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

pub use serde_json::Value;

/// The workspace root (this package lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `target/<profile>`, from the running test executable (`target/<profile>/deps/<test>-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let deps = exe.parent().expect("test executable's folder");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("target/<profile>").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

fn is_release() -> bool {
    profile_dir().file_name().is_some_and(|n| n == "release")
}

/// Builds `sync-ground` and `sync-onboard` once per test process (same profile as the tests) and
/// returns the folder holding them.
pub fn bin_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .or_else(|| option_env!("CARGO").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("cargo"));
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--quiet",
            "-p",
            "sync-ground",
            "-p",
            "sync-onboard",
        ]);
        if is_release() {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("running cargo build");
        assert!(
            out.status.success(),
            "cargo build -p sync-ground -p sync-onboard failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = profile_dir();
        for b in ["sync-ground", "sync-onboard"] {
            assert!(
                dir.join(b).is_file(),
                "{} was not built",
                dir.join(b).display()
            );
        }
        dir
    })
}

pub fn onboard_bin() -> PathBuf {
    bin_dir().join("sync-onboard")
}

pub fn ground_bin() -> PathBuf {
    bin_dir().join("sync-ground")
}

/// A fresh key from `sync-onboard keygen`, written to `path`.
pub fn keygen(path: &Path) {
    let out = Command::new(onboard_bin())
        .arg("keygen")
        .output()
        .expect("running sync-onboard keygen");
    assert!(out.status.success(), "keygen failed");
    let key = String::from_utf8(out.stdout).expect("utf-8 key");
    let key = key.trim();
    assert_eq!(key.len(), 64, "keygen printed {key:?}");
    assert!(
        key.chars().all(|c| c.is_ascii_hexdigit()),
        "keygen printed {key:?}"
    );
    fs::write(path, format!("{key}\n")).expect("writing the key");
}

/// What one `sync-ground` run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics unless the run succeeded.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "sync-ground failed: {self:#?}");
        self
    }

    /// stdout parsed as JSON (for `--json` runs).
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// A running `sync-onboard serve` with its own temporary volumes, state, key and a ground state.
/// The server is killed when this is dropped.
pub struct Onboard {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub dir: tempfile::TempDir,
    pub addr: String,
}

impl Onboard {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for d in ["vols", "state", "ground"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        keygen(&root.join("link.key"));
        let log = fs::File::create(root.join("onboard.log")).unwrap();
        let mut child = Command::new(onboard_bin())
            .arg("serve")
            .arg("--volumes")
            .arg(root.join("vols"))
            .arg("--state")
            .arg(root.join("state"))
            .args(["--listen", "127.0.0.1:0", "--key"])
            .arg(root.join("link.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning sync-onboard serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading onboard stdout");
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sync-onboard did not say where it listens: {line:?}; log:\n{}",
                fs::read_to_string(root.join("onboard.log")).unwrap_or_default()
            );
        };
        let addr = addr.to_string();
        let port: u16 = addr.rsplit(':').next().unwrap().parse().expect("port");
        assert_ne!(port, 0);
        Self {
            child,
            _stdout: stdout,
            dir,
            addr,
        }
    }

    pub fn volumes(&self) -> PathBuf {
        self.dir.path().join("vols")
    }

    pub fn volume_path(&self, pod: &str) -> PathBuf {
        self.volumes().join(pod)
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("link.key")
    }

    pub fn ground_state(&self) -> PathBuf {
        self.dir.path().join("ground")
    }

    /// Runs `sync-ground ARGS --to ADDR --key KEY --state GSTATE`.
    pub fn ground(&self, args: &[&str]) -> Run {
        self.ground_with(&self.key(), &self.ground_state(), args)
    }

    /// Like [`Onboard::ground`] with another key file and ground state.
    pub fn ground_with(&self, key: &Path, state: &Path, args: &[&str]) -> Run {
        let out = Command::new(ground_bin())
            .args(args)
            .arg("--to")
            .arg(&self.addr)
            .arg("--key")
            .arg(key)
            .arg("--state")
            .arg(state)
            .env_remove("SYNC_TO")
            .env_remove("SYNC_KEY")
            .env_remove("SYNC_STATE")
            .stdin(Stdio::null())
            .output()
            .expect("running sync-ground");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `push FOLDER --pod POD --json [EXTRA...]`, which must succeed; returns its JSON report.
    #[track_caller]
    pub fn push(&self, folder: &Path, pod: &str, extra: &[&str]) -> Value {
        let folder = folder.to_str().expect("utf-8 path");
        let mut args = vec!["push", folder, "--pod", pod, "--json"];
        args.extend_from_slice(extra);
        self.ground(&args).ok().json()
    }

    /// The onboard side's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("onboard.log")).unwrap_or_default()
    }
}

impl Drop for Onboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deterministic listing of a folder's contents, one line per entry, sorted by path:
/// `path type mode(&0o777, not for symlinks) [blake3 mtime-seconds | -> target]`.
/// Two folders with equal listings hold the same tree. A missing folder lists as empty.
pub fn tree_hash(root: &Path) -> Vec<String> {
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, "", &mut out);
    }
    out.into_iter().map(|(p, d)| format!("{p} {d}")).collect()
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().expect("utf-8 name"))
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o777;
        let desc = if ft.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            format!("symlink -> {}", target.display())
        } else if ft.is_dir() {
            walk(&path, &rel, out);
            format!("dir {mode:o}")
        } else if ft.is_file() {
            let bytes = fs::read(&path).unwrap();
            format!(
                "file {mode:o} {} mtime={}",
                blake3::hash(&bytes).to_hex(),
                meta.mtime()
            )
        } else {
            "special".to_string()
        };
        out.insert(rel, desc);
    }
}

/// Asserts that `volume` holds exactly `local`'s tree (by hash, mode, mtime, link target).
#[track_caller]
pub fn assert_same_tree(volume: &Path, local: &Path) {
    let (v, l) = (tree_hash(volume), tree_hash(local));
    if v != l {
        let only_v: Vec<_> = v.iter().filter(|x| !l.contains(x)).collect();
        let only_l: Vec<_> = l.iter().filter(|x| !v.contains(x)).collect();
        panic!(
            "volume {} differs from local {}\n  only in volume: {only_v:#?}\n  only in local: {only_l:#?}",
            volume.display(),
            local.display()
        );
    }
}

/// Deterministic pseudo-random bytes (SplitMix64).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `bytes` to `root/rel`, creating parent folders.
pub fn write(root: &Path, rel: &str, bytes: impl AsRef<[u8]>) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, bytes).unwrap();
}

pub fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

pub fn symlink(root: &Path, rel: &str, target: &str) {
    std::os::unix::fs::symlink(target, root.join(rel)).unwrap();
}

/// Reads a JSON number field by path (`"wire.total"`).
#[track_caller]
pub fn num(v: &Value, path: &str) -> u64 {
    field(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

#[track_caller]
pub fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| {
        v.get(k).unwrap_or_else(|| panic!("no field {path} in {v}"))
    })
}
