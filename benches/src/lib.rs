//! Shared set-up for the benches in `benches/`: everything in one process, but real.
//!
//! - [`Rig`]: a real [`OnboardService`] behind [`sync_core::link::serve`] on a `127.0.0.1:0`
//!   listener, its own temporary volumes, onboard state and ground state; [`Rig::push`] drives a
//!   push through the ground's [`Client`] exactly as `sync-ground push` does (open the ground
//!   state, connect, handshake, scan through the stat cache, push, say goodbye).
//! - [`generate_tree`], [`write_file`]: deterministic trees from a seeded generator, with file
//!   times set in the past so that the stat cache can vouch for them on the next scan.
//! - [`scattered_edit`]: a copy of some bytes with small patches spread through it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sync_core::ground::{Allowance, Client, Ground, PushOptions, PushReport};
use sync_core::link::{Link, ServeOptions, serve};
use sync_core::manifest::ScanStats;
use sync_core::onboard::OnboardService;
use sync_core::pack::Limits;
use sync_core::path::PodName;
use sync_core::wire::LinkKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// File times of generated trees: far enough in the past that no scan takes them for files
/// still being written (the stat cache does not trust a time within two seconds of the scan).
pub const EPOCH: u64 = 1_700_000_000;

/// What one push did, as `sync-ground push --json` would report it.
#[derive(Debug)]
pub struct Pushed {
    pub report: PushReport,
    pub scan: ScanStats,
    /// Bytes the ground wrote to the socket, everything included (preamble, handshake).
    pub sent: u64,
    /// Bytes the ground read from the socket.
    pub received: u64,
}

impl Pushed {
    pub fn wire_total(&self) -> u64 {
        self.sent + self.received
    }
}

/// A daemon and a ground state, in one process.
pub struct Rig {
    /// Runs the daemon; each push blocks on it from the calling thread, as a separate client.
    runtime: Runtime,
    addr: SocketAddr,
    key: LinkKey,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    /// Holds `vols/`, `onboard/` and `ground/`; removed on drop.
    dir: tempfile::TempDir,
}

impl Rig {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let service = OnboardService::open(
            &dir.path().join("vols"),
            &dir.path().join("onboard"),
            Limits::default(),
        )
        .expect("opening the onboard service");
        let key = LinkKey::generate().expect("link key");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = runtime.spawn(serve(
            listener,
            Arc::new(service),
            key.clone(),
            ServeOptions::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            runtime,
            addr,
            key,
            stop: Some(stop),
            server: Some(server),
            dir,
        }
    }

    /// The ground's state folder.
    pub fn ground_state(&self) -> PathBuf {
        self.dir.path().join("ground")
    }

    /// The pod's volume as the daemon holds it.
    pub fn volume(&self, pod: &str) -> PathBuf {
        self.dir.path().join("vols").join(pod)
    }

    /// Makes the volume of `pod` hold exactly `folder`, the way `sync-ground push` does.
    pub fn push(&self, folder: &Path, pod: &str) -> Pushed {
        let pod = PodName::new(pod).expect("pod name");
        self.runtime.block_on(async {
            let mut ground = Ground::open(&self.ground_state()).expect("ground state");
            let stream = TcpStream::connect(self.addr).await.expect("connecting");
            let _ = stream.set_nodelay(true);
            let link = Link::connect(stream, &self.key, Duration::from_secs(120))
                .await
                .expect("handshake");
            let mut client = Client::start(link).await.expect("welcome");
            let (local, scan) = ground.scan_local(folder).expect("scanning the local tree");
            // No budget or deadline; the rate measured on earlier connections, if any.
            let allow = Allowance {
                rate: ground.db.measured_rate(&client.node).ok().flatten(),
                ..Allowance::default()
            };
            let report = client
                .push(
                    &mut ground,
                    &pod,
                    &PushOptions {
                        folder,
                        local: &local,
                        dest: None,
                        priority: 0,
                    },
                    &allow,
                    &mut |_| {},
                )
                .await
                .expect("push");
            let (sent, received) = client.bye(&ground).await.expect("bye");
            Pushed {
                report,
                scan,
                sent,
                received,
            }
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server);
        }
    }
}

/// Writes `bytes` to `root/rel` (creating folders) with its time set to `mtime` seconds.
pub fn write_file(root: &Path, rel: &str, bytes: &[u8], mtime: u64) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating folders");
    }
    std::fs::write(&path, bytes).expect("writing a file");
    let file = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("reopening a file");
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
        .expect("setting a file time");
}

/// Words for text-like files: source and configuration compress and match like text.
const WORDS: &[&str] = &[
    "fn", "let", "mut", "pod", "volume", "pass", "manifest", "pack", "=", "{", "}", "(", ")", ";",
    "return", "if", "else", "match", "self", "0", "1", "42", "true", "false", "// note",
];

/// Deterministic file content of `len` bytes: text-like or random, as `rng` decides.
pub fn content(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    if rng.random_bool(0.5) {
        while out.len() < len {
            out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
            out.push(if rng.random_bool(0.1) { b'\n' } else { b' ' });
        }
        out.truncate(len);
    } else {
        out.resize(len, 0);
        rng.fill_bytes(&mut out);
    }
    out
}

/// Writes a tree of `files` files below `root`: nested folders up to three deep, sizes spread
/// log-uniformly from 32 B to 8 KiB, content from a generator seeded with `seed`.
/// Returns the total bytes written.
pub fn generate_tree(root: &Path, files: usize, seed: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total = 0;
    for i in 0..files {
        let depth = rng.random_range(0..=3);
        let mut rel = String::new();
        for level in 0..depth {
            rel.push_str(&format!("d{level}-{}/", rng.random_range(0..8)));
        }
        let ext = ["rs", "toml", "json", "bin", "txt"][rng.random_range(0..5)];
        rel.push_str(&format!("f{i:05}.{ext}"));
        let len = 2f64.powf(rng.random_range(5.0..13.0)) as usize;
        let bytes = content(&mut rng, len);
        total += bytes.len() as u64;
        write_file(root, &rel, &bytes, EPOCH + i as u64);
    }
    total
}

/// A copy of `base` with `fraction` of its bytes overwritten, as patches of `patch` bytes at
/// offsets spread through it.
pub fn scattered_edit(base: &[u8], fraction: f64, patch: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = base.to_vec();
    let patches = ((base.len() as f64 * fraction) as usize).div_ceil(patch);
    for _ in 0..patches {
        let at = rng.random_range(0..base.len() - patch);
        rng.fill_bytes(&mut out[at..at + patch]);
    }
    out
}
