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
/// returns the folder holding them. `SYNC_TEST_BIN_DIR` names a folder of programs built
/// before instead (to run today's tests against an older build, say).
pub fn bin_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SYNC_TEST_BIN_DIR") {
            return PathBuf::from(dir);
        }
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
        // As from a shell: cargo gives a test the package's CARGO_MANIFEST_DIR (and more), and
        // ring's build script watches that variable, so building with it would rebuild ring and
        // everything above it, here and again at the next build from a shell (40 s each on two
        // cores).
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_MANIFEST_") || k.starts_with("CARGO_PKG_") {
                cmd.env_remove(&*k);
            }
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
    /// Extra `serve` flags, kept so that [`Onboard::restart`] runs the same daemon again.
    extra: Vec<String>,
    /// The user the daemon runs as, when not the test's own (see
    /// [`Onboard::start_unprivileged`]).
    user: Option<u32>,
    /// The daemon's descriptor limit (`RLIMIT_NOFILE`), when a test sets one.
    nofile: Option<u64>,
}

impl Onboard {
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), &[])
    }

    /// Like [`Onboard::start`] with extra `serve` flags (`--max-object-bytes`, ...), in `dir`,
    /// which may already hold `vols` or `state` (a small disk mounted there, say).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_limited(dir, extra, None)
    }

    /// Like [`Onboard::start_in`], with the daemon's descriptor limit (`ulimit -n`, soft and
    /// hard) set to `nofile` when given.
    pub fn start_limited(dir: tempfile::TempDir, extra: &[&str], nofile: Option<u64>) -> Self {
        let root = dir.path();
        for d in ["vols", "state", "ground"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        keygen(&root.join("link.key"));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, stdout, addr) = spawn_serve(root, &extra, None, nofile);
        Self {
            child,
            _stdout: stdout,
            dir,
            addr,
            extra,
            user: None,
            nofile,
        }
    }

    /// Like [`Onboard::start`], with the daemon running as an ordinary user, as it should on a
    /// real node: when the tests run as root, as `nobody` (65534), owning its state (and,
    /// through [`Onboard::give_to_daemon`], the volumes it writes to); otherwise as the test's
    /// own user, which is not root either. Root reads any file, so a pod's unreadable file
    /// can only be tested this way.
    pub fn start_unprivileged() -> Self {
        if !running_as_root() {
            return Self::start();
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for d in ["vols", "state", "ground"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        keygen(&root.join("link.key"));
        for p in [
            root,
            &root.join("vols"),
            &root.join("state"),
            &root.join("link.key"),
        ] {
            std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
        }
        let (child, stdout, addr) = spawn_serve(root, &[], Some(NOBODY), None);
        Self {
            child,
            _stdout: stdout,
            dir,
            addr,
            extra: Vec::new(),
            user: Some(NOBODY),
            nofile: None,
        }
    }

    /// The user the daemon runs as, when it is not the test's own.
    pub fn daemon_user(&self) -> Option<u32> {
        self.user
    }

    /// Makes the daemon's user own `path` (a pod's volume folder the daemon writes into), when
    /// the daemon runs as another user; the files in it stay the pod's.
    pub fn give_to_daemon(&self, path: &Path) {
        if let Some(uid) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown to the daemon");
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
        run_ground(&self.addr, key, state, args)
    }

    /// `push FOLDER --pod POD --json [EXTRA...]`, which must succeed; returns its JSON report.
    #[track_caller]
    pub fn push(&self, folder: &Path, pod: &str, extra: &[&str]) -> Value {
        let folder = folder.to_str().expect("utf-8 path");
        let mut args = vec!["push", folder, "--pod", pod, "--json"];
        args.extend_from_slice(extra);
        self.ground(&args).ok().json()
    }

    /// `pull --pod p1 --into INTO --json [EXTRA...]`.
    pub fn pull(&self, into: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["pull", "--pod", "p1", "--into"];
        args.push(into.to_str().expect("utf-8 path"));
        args.push("--json");
        args.extend_from_slice(extra);
        self.ground(&args)
    }

    /// The onboard side's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("onboard.log")).unwrap_or_default()
    }
}

/// `nobody`: the user an unprivileged daemon runs as when the tests run as root.
const NOBODY: u32 = 65534;

/// Whether this process runs as root (and so reads any file, whatever its mode).
pub fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Spawns `sync-onboard serve` on the folders under `root` (as `user`, if given) and waits for
/// its address.
fn spawn_serve(
    root: &Path,
    extra: &[String],
    user: Option<u32>,
    nofile: Option<u64>,
) -> (Child, BufReader<ChildStdout>, String) {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("onboard.log"))
        .unwrap();
    let mut cmd = Command::new(onboard_bin());
    if let Some(uid) = user {
        use std::os::unix::process::CommandExt;
        // Run as root, std drops the supplementary groups too.
        cmd.uid(uid).gid(uid);
    }
    if let Some(n) = nofile {
        limit_descriptors(&mut cmd, n);
    }
    let mut child = cmd
        .arg("serve")
        .arg("--volumes")
        .arg(root.join("vols"))
        .arg("--state")
        .arg(root.join("state"))
        .args(["--listen", "127.0.0.1:0", "--key"])
        .arg(root.join("link.key"))
        .args(extra)
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
    (child, stdout, addr)
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
            format!(
                "file {mode:o} {} mtime={}",
                content_hash(&path),
                meta.mtime()
            )
        } else {
            "special".to_string()
        };
        out.insert(rel, desc);
    }
}

/// The BLAKE3 of a file's bytes (hex), read through a fixed buffer: a test's files may be
/// larger than its memory (a sparse file of gigabytes, say). Holes are read like any byte.
pub fn content_hash(path: &Path) -> String {
    use std::io::Read;
    let mut hasher = blake3::Hasher::new();
    let mut file =
        fs::File::open(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return hasher.finalize().to_hex().to_string(),
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading {}: {e}", path.display()),
        }
    }
}

/// Writes a sparse file of `len` bytes at `root/rel`: holes, but for each `(offset, bytes)`.
pub fn write_sparse(root: &Path, rel: &str, len: u64, data: &[(u64, Vec<u8>)]) {
    use std::os::unix::fs::FileExt;
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    let f = fs::File::create(&p).unwrap();
    for (at, bytes) in data {
        f.write_all_at(bytes, *at).unwrap();
    }
    f.set_len(len).unwrap();
}

/// Bytes the file system holds for the file at `path` (its blocks): a sparse file's data, not
/// its length.
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .blocks()
        * 512
}

/// [`allocated`], summed over every file below `root`.
pub fn allocated_below(root: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            total += allocated_below(&e.path());
        } else if ft.is_file() {
            total += allocated(&e.path());
        }
    }
    total
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

impl Onboard {
    /// Stops the daemon and starts it again on the same folders, key and flags (a reboot). The
    /// new daemon listens on a new port; [`Onboard::addr`] follows it.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, stdout, addr) =
            spawn_serve(self.dir.path(), &self.extra, self.user, self.nofile);
        self.child = child;
        self._stdout = stdout;
        self.addr = addr;
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the daemon process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The daemon's peak resident memory so far (`VmHWM` of `/proc/<pid>/status`), in bytes.
    pub fn peak_memory(&self) -> u64 {
        vm_hwm(self.pid()).expect("the daemon's VmHWM (is it still running?)")
    }

    /// The daemon's resident memory now (`VmRSS`), in bytes.
    pub fn memory(&self) -> u64 {
        proc_status(self.pid(), "VmRSS:").expect("the daemon's VmRSS (is it still running?)") * 1024
    }

    /// Descriptors the daemon holds open now (entries of `/proc/<pid>/fd`).
    pub fn descriptors(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }

    /// CPU time the daemon has used so far (user and system), in seconds: a loop that spins
    /// shows here as about one second per second.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("reading the daemon's /proc stat");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let after = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line (11 and 12 here).
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        ticks as f64 / hz
    }

    /// Bytes the daemon has written to its log (stderr) so far.
    pub fn log_bytes(&self) -> u64 {
        fs::metadata(self.dir.path().join("onboard.log")).map_or(0, |m| m.len())
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Watches the daemon's peak memory while a test runs, and kills the daemon the moment it
    /// passes `limit` bytes: a regression then fails the test at once instead of taking the
    /// machine's memory (a daemon that reads a 5 GiB sparse file grows to gigabytes).
    pub fn memory_guard(&self, limit: u64) -> MemoryGuard {
        MemoryGuard::watch(self.pid(), limit)
    }

    /// Names in the daemon's staging folder (packs being received, decoded objects).
    pub fn staging_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.state().join("staging"))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The peak memory (`VmHWM`) of a process, watched every 20 ms by a thread; see
/// [`Onboard::memory_guard`].
pub struct MemoryGuard {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, bool)>>,
}

impl MemoryGuard {
    fn watch(pid: u32, limit: u64) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::SeqCst) {
                let Some(now) = vm_hwm(pid) else { break };
                peak = peak.max(now);
                if now > limit {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    return (peak, true);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (peak.max(vm_hwm(pid).unwrap_or(0)), false)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching: the peak seen (bytes), and whether the guard killed the process.
    pub fn finish(mut self) -> (u64, bool) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .take()
            .expect("watching")
            .join()
            .expect("memory guard thread")
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `VmHWM` of `/proc/<pid>/status` in bytes; `None` once the process is gone.
fn vm_hwm(pid: u32) -> Option<u64> {
    proc_status(pid, "VmHWM:").map(|kb| kb * 1024)
}

/// A field of `/proc/<pid>/status` given in kB (`VmHWM:`, `VmRSS:`); `None` once the process
/// is gone.
fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// Makes `cmd` run with at most `n` open descriptors (soft and hard `RLIMIT_NOFILE`), as
/// `ulimit -n` would.
fn limit_descriptors(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and calls only setrlimit,
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Raises this process's soft descriptor limit towards `want` (as far as the hard limit
/// allows), so a test can hold thousands of connections; returns the soft limit it got.
pub fn raise_descriptor_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: (want as libc::rlim_t).min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// A small tmpfs mounted for one test, so that a disk can be filled. Unmounted when dropped,
/// after which `cleanup` (the temporary folder the mount point was in, whose own removal fails
/// while something is mounted inside it) is removed.
pub struct SmallDisk {
    mount_point: PathBuf,
    cleanup: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on `mount_point` (created if missing). Fails with the reason
    /// when this machine does not allow it (not root, no CAP_SYS_ADMIN, no tmpfs).
    pub fn mount(mount_point: &Path, bytes: u64, cleanup: &Path) -> Result<Self, String> {
        fs::create_dir_all(mount_point).map_err(|e| format!("creating the mount point: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0755"))
            .arg("tmpfs")
            .arg(mount_point)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            mount_point: mount_point.to_path_buf(),
            cleanup: cleanup.to_path_buf(),
        })
    }

    /// Grows (or shrinks) the disk to `bytes`, keeping what it holds: an operator who made room.
    pub fn resize(&self, bytes: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "remounting {} at {bytes} bytes",
            self.mount_point.display()
        );
    }

    /// Bytes still free on the disk.
    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.mount_point)
            .output()
            .expect("running df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df said {out:?}"))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file there: detach it now, it goes when released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
        let _ = fs::remove_dir_all(&self.cleanup);
    }
}

impl Onboard {
    /// Like [`Onboard::ground`], but connecting to `addr` (a proxy in front of the daemon).
    pub fn ground_to(&self, addr: &str, args: &[&str]) -> Run {
        run_ground(addr, &self.key(), &self.ground_state(), args)
    }
}

/// Runs `sync-ground ARGS --to ADDR --key KEY --state STATE`, with nothing from the
/// environment.
fn run_ground(addr: &str, key: &Path, state: &Path, args: &[&str]) -> Run {
    let out = Command::new(ground_bin())
        .args(args)
        .arg("--to")
        .arg(addr)
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

pub use counting_proxy::CountingProxy;

mod drip;
pub use drip::{Drip, DripPlan, DripStats, Drippers};

mod counting_proxy {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// A TCP proxy on `127.0.0.1:0` in front of a daemon: forwards both directions and counts
    /// the bytes it forwards each way, so a test can hold a program's own wire counts against
    /// what really crossed the socket. It keeps every open connection, so a test can also cut
    /// them.
    pub struct CountingProxy {
        /// Where clients connect (`127.0.0.1:PORT`).
        pub addr: String,
        shared: Arc<Shared>,
        accept: Option<JoinHandle<()>>,
    }

    struct Shared {
        upstream: String,
        /// Bytes forwarded from clients to the upstream (ground → onboard).
        up: AtomicU64,
        /// Bytes forwarded from the upstream to clients (onboard → ground).
        down: AtomicU64,
        opened: AtomicU64,
        /// Connections whose two directions have both ended.
        closed: AtomicU64,
        stopping: AtomicBool,
        /// Both sockets of every open connection, by connection number: what [`cut`] shuts.
        live: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    }

    impl CountingProxy {
        /// Starts forwarding to `upstream` (`HOST:PORT`).
        pub fn start(upstream: &str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
            let addr = listener.local_addr().expect("proxy address").to_string();
            let shared = Arc::new(Shared {
                upstream: upstream.to_string(),
                up: AtomicU64::new(0),
                down: AtomicU64::new(0),
                opened: AtomicU64::new(0),
                closed: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
                live: Mutex::new(HashMap::new()),
            });
            let s = shared.clone();
            let accept = std::thread::spawn(move || accept_loop(listener, s));
            Self {
                addr,
                shared,
                accept: Some(accept),
            }
        }

        /// Bytes forwarded so far, all connections: (client → upstream, upstream → client).
        pub fn counts(&self) -> (u64, u64) {
            (
                self.shared.up.load(Ordering::SeqCst),
                self.shared.down.load(Ordering::SeqCst),
            )
        }

        /// Connections accepted so far, and how many of them have ended both ways.
        pub fn connections(&self) -> (u64, u64) {
            (
                self.shared.opened.load(Ordering::SeqCst),
                self.shared.closed.load(Ordering::SeqCst),
            )
        }

        /// Waits until at least `n` connections have ended both ways; false on timeout.
        pub fn wait_closed(&self, n: u64, timeout: Duration) -> bool {
            let until = Instant::now() + timeout;
            while self.shared.closed.load(Ordering::SeqCst) < n {
                if Instant::now() >= until {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            true
        }

        /// Cuts every open connection, both sockets, both ways (a link lost mid-transfer).
        pub fn cut(&self) {
            cut_all(&self.shared);
        }

        /// Stops accepting and cuts every open connection.
        pub fn stop(&mut self) {
            let Some(accept) = self.accept.take() else {
                return;
            };
            self.shared.stopping.store(true, Ordering::SeqCst);
            // Wake the blocking accept; the loop sees the flag and ends.
            let _ = TcpStream::connect(&self.addr);
            let _ = accept.join();
            cut_all(&self.shared);
        }
    }

    impl Drop for CountingProxy {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn cut_all(shared: &Shared) {
        for (client, upstream) in shared.live.lock().expect("proxy table").values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }

    fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
        for client in listener.incoming() {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            let Ok(client) = client else { continue };
            let Ok(upstream) = TcpStream::connect(&shared.upstream) else {
                continue; // the client sees its connection close
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let id = shared.opened.fetch_add(1, Ordering::SeqCst);
            let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
                client.try_clone(),
                upstream.try_clone(),
                client.try_clone(),
                upstream.try_clone(),
            ) else {
                shared.closed.fetch_add(1, Ordering::SeqCst);
                continue;
            };
            shared
                .live
                .lock()
                .expect("proxy table")
                .insert(id, (c3, u3));
            // Counts how many of the connection's two directions have ended.
            let ended = Arc::new(AtomicU64::new(0));
            for (from, to, up) in [(client, u2, true), (upstream, c2, false)] {
                let (shared, ended) = (shared.clone(), ended.clone());
                std::thread::spawn(move || {
                    let counter = if up { &shared.up } else { &shared.down };
                    pump(from, to, counter);
                    if ended.fetch_add(1, Ordering::SeqCst) == 1 {
                        shared.live.lock().expect("proxy table").remove(&id);
                        shared.closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        }
    }

    /// Copies `from` to `to` until `from` ends, counting what was written; passes the end on
    /// as a half close, so each side sees exactly what the other did.
    fn pump(mut from: TcpStream, mut to: TcpStream, counter: &AtomicU64) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
            };
            if to.write_all(&buf[..n]).is_err() {
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
}

pub use throttle::Throttle;

/// A throttling proxy: the link at a fixed rate, for tests that must land a kill or a cut in
/// the middle of a transfer.
mod throttle {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const RATE: f64 = 3_000_000.0;

    /// Forwards to a daemon whose address can change (it restarts on a new port), at `RATE`
    /// bytes per second each way, counting what it delivered.
    pub struct Throttle {
        pub addr: String,
        upstream: Arc<Mutex<String>>,
        pub up: Arc<AtomicU64>,
        pub down: Arc<AtomicU64>,
        /// When the bytes sent up (over all connections) pass this, the connection is cut.
        cut_at: Arc<AtomicU64>,
        /// Likewise for the bytes sent down.
        cut_down_at: Arc<AtomicU64>,
    }

    impl Throttle {
        pub fn start(upstream: &str) -> Self {
            Self::start_at(upstream, RATE)
        }

        /// Like [`Throttle::start`], at `rate` bytes per second each way (a slow link keeps a
        /// transfer going long enough for a test to act in the middle of it).
        pub fn start_at(upstream: &str, rate: f64) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let upstream = Arc::new(Mutex::new(upstream.to_string()));
            let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let cut_at = Arc::new(AtomicU64::new(u64::MAX));
            let cut_down_at = Arc::new(AtomicU64::new(u64::MAX));
            let (u, a, b, cut) = (upstream.clone(), up.clone(), down.clone(), cut_at.clone());
            let cut_down = cut_down_at.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let target = u.lock().unwrap().clone();
                    let Ok(server) = TcpStream::connect(&target) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (a, b, cut, cut_down) =
                        (a.clone(), b.clone(), cut.clone(), cut_down.clone());
                    std::thread::spawn(move || pipe(client, server, a, cut, rate));
                    std::thread::spawn(move || pipe(s2, c2, b, cut_down, rate));
                }
            });
            Self {
                addr,
                upstream,
                up,
                down,
                cut_at,
                cut_down_at,
            }
        }

        /// Cuts the connection carrying the byte at `offset` of everything sent down so far.
        pub fn cut_down_at(&self, offset: u64) {
            self.cut_down_at.store(offset, Ordering::SeqCst);
        }

        /// Cuts the connection carrying the byte at `offset` of everything sent up so far.
        pub fn cut_at(&self, offset: u64) {
            self.cut_at.store(offset, Ordering::SeqCst);
        }

        pub fn retarget(&self, upstream: &str) {
            *self.upstream.lock().unwrap() = upstream.to_string();
        }

        pub fn carried(&self) -> u64 {
            self.up.load(Ordering::SeqCst) + self.down.load(Ordering::SeqCst)
        }
    }

    fn pipe(
        mut from: TcpStream,
        mut to: TcpStream,
        count: Arc<AtomicU64>,
        cut: Arc<AtomicU64>,
        rate: f64,
    ) {
        let mut buf = [0u8; 8 * 1024];
        let start = Instant::now();
        let mut sent = 0u64;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            sent += n as u64;
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            // Up to the cut and no further: the rest is lost with the link.
            let before = count.load(Ordering::SeqCst);
            let limit = cut.load(Ordering::SeqCst);
            let take = if before + n as u64 > limit {
                limit.saturating_sub(before) as usize
            } else {
                n
            };
            if to.write_all(&buf[..take]).is_err() {
                // The other end is gone: take what this side still sends, and close only
                // when it does, so it never gets a reset that would throw away bytes this
                // proxy already delivered to it (a real link loses what is in flight, not
                // what arrived).
                drain(&mut from);
                break;
            }
            count.fetch_add(take as u64, Ordering::SeqCst);
            if take < n {
                cut.store(u64::MAX, Ordering::SeqCst);
                // The receiver reads what was delivered, then the end of the stream; the
                // sender's side is cut.
                let _ = to.shutdown(Shutdown::Write);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Both);
    }

    /// Reads and drops what `from` sends until it closes (or stays silent for 30 s).
    fn drain(from: &mut TcpStream) {
        let _ = from.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = [0u8; 8 * 1024];
        while matches!(from.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// `len` bytes that look like a mostly empty disk image: every MiB starts with 8 KiB of random
/// bytes (seeded by the MiB's index and `seed`), the rest zeros. Quick to write and to
/// compress, and a pack of it still needs the decoder's full window.
pub fn image_like(len: usize, seed: u64) -> Vec<u8> {
    const MIB: usize = 1 << 20;
    let mut out = vec![0u8; len];
    for (i, chunk) in out.chunks_mut(MIB).enumerate() {
        let n = chunk.len().min(8 << 10);
        chunk[..n].copy_from_slice(&sync_core::testing::random_bytes(n, seed ^ (i as u64) << 8));
    }
    out
}
