//! A pack being encoded while it is sent: the encoder runs on a blocking thread and writes the
//! pack file segment by segment; the sender reads what is written so far and waits for more.
//! So the first bytes of a pack are on the link seconds after the plan, whatever its size, and
//! the pack is still written once: the file the encoder leaves is the queued pack, and a later
//! pass resumes it at any byte.
//!
//! The file is `packs/.encoding-<pid>-<node>-<pack>` until it is whole; a process killed while
//! encoding leaves it behind, and the next connection to that node cancels what the node staged
//! of it ([`Ground::abandoned_encodings`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Ground;
use crate::id::{NodeId, PackId};
use crate::manifest::Manifest;
use crate::pack::{ContentProvider, Effort, Limits, PackError, Plan, PlanStats};

/// How far the encoder is.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Progress {
    /// Bytes of the pack written and readable in its file.
    pub written: u64,
    /// The pack is whole (written and synced): its length and its BLAKE3.
    pub whole: Option<u64>,
    pub hash: Option<[u8; 32]>,
    /// The encoder stopped with an error (the job's result says which).
    pub failed: bool,
}

/// What the encoder leaves when it is done.
pub(super) struct Encoded {
    pub path: PathBuf,
    pub hash: [u8; 32],
    pub len: u64,
    pub stats: PlanStats,
}

/// A pack being encoded into its file.
pub(super) struct Encoding {
    pub path: PathBuf,
    shared: Arc<(Mutex<Progress>, Notify)>,
    job: tokio::task::JoinHandle<Result<Encoded, PackError>>,
}

/// What the encoder thread needs.
pub(super) struct Job {
    pub plan: Plan,
    pub base: Manifest,
    pub provider: Box<dyn ContentProvider + Send>,
    pub signatures: HashMap<u32, Vec<u8>>,
    pub limits: Limits,
    pub effort: Effort,
}

impl Encoding {
    /// Starts encoding `job` into a file created at `path` (there when this returns, for the
    /// sender to open).
    pub fn start(path: PathBuf, job: Job) -> std::io::Result<Encoding> {
        let file = std::fs::File::create(&path)?;
        let shared: Arc<(Mutex<Progress>, Notify)> = Arc::default();
        let (thread_shared, thread_path) = (shared.clone(), path.clone());
        let handle = tokio::task::spawn_blocking(move || {
            let result = encode(file, &thread_path, job, &thread_shared);
            let (lock, notify) = &*thread_shared;
            {
                let mut p = lock.lock().expect("not poisoned");
                match &result {
                    Ok(e) => {
                        p.whole = Some(e.len);
                        p.hash = Some(e.hash);
                    }
                    Err(_) => p.failed = true,
                }
            }
            notify.notify_one();
            result
        });
        Ok(Encoding {
            path,
            shared,
            job: handle,
        })
    }

    pub fn progress(&self) -> Progress {
        *self.shared.0.lock().expect("not poisoned")
    }

    /// Returns once the encoder has written more (or ended) since the last call.
    pub async fn advanced(&self) {
        self.shared.1.notified().await
    }

    /// Waits for the encoder to end.
    pub async fn finish(self) -> Result<Encoded, PackError> {
        match self.job.await {
            Ok(r) => r,
            Err(e) => Err(PackError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}

fn encode(
    file: std::fs::File,
    path: &std::path::Path,
    job: Job,
    shared: &Arc<(Mutex<Progress>, Notify)>,
) -> Result<Encoded, PackError> {
    let mut out = Published {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
        len: 0,
        shared: shared.clone(),
    };
    let stats = job.plan.encode(
        &job.base,
        job.provider.as_ref(),
        &job.signatures,
        &job.limits,
        &job.effort,
        &mut out,
    )?;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Encoded {
        path: path.to_path_buf(),
        hash: *out.hasher.finalize().as_bytes(),
        len: out.len,
        stats,
    })
}

/// The pack file as the encoder writes it: hashed, counted, and at every flush (the encoder
/// flushes after each segment) what is written is published to the sender.
struct Published<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
    shared: Arc<(Mutex<Progress>, Notify)>,
}

impl<W: Write> Write for Published<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()?;
        let (lock, notify) = &*self.shared;
        lock.lock().expect("not poisoned").written = self.len;
        notify.notify_one();
        Ok(())
    }
}

/// Name prefix of a pack being encoded, then `<pid>-<node>-<pack>`.
pub(super) const ENCODING_PREFIX: &str = ".encoding-";

impl Ground {
    /// The file a pack for `node` is encoded into until it is whole.
    pub(super) fn encoding_path(&self, node: &NodeId, pack: &PackId) -> PathBuf {
        self.dir.join("packs").join(format!(
            "{ENCODING_PREFIX}{}-{}-{}",
            std::process::id(),
            node.to_hex(),
            pack.to_hex()
        ))
    }

    /// Packs for `node` whose encoding a process that is gone left unfinished: their files are
    /// removed, and the node should drop what it staged of them.
    pub(super) fn abandoned_encodings(&self, node: &NodeId) -> Vec<PackId> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("packs")) else {
            return Vec::new();
        };
        let node = node.to_hex();
        let mut gone = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(ENCODING_PREFIX)) else {
                continue;
            };
            let mut fields = rest.splitn(3, '-');
            let (Some(pid), Some(for_node), Some(pack)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if for_node != node || std::path::Path::new("/proc").join(pid).exists() {
                continue;
            }
            let _ = std::fs::remove_file(e.path());
            if let Some(p) = PackId::from_hex(pack) {
                gone.push(p);
            }
        }
        gone
    }
}
