//! A pushed pack decoded while it arrives. Decoding writes every file of the pack into its
//! staging folder, which on a node's disk takes about as long as a fast link takes to carry the
//! pack; done after the last byte, it doubled the wait. So while a connection receives a pack,
//! a thread (the follower) reads the staged file as it grows and decodes it against the state
//! the pack was planned on; the apply then takes what it decoded, and decodes again only when
//! the follower failed or was not there.
//!
//! The follower is an optimisation and nothing else: what it decoded is used only when it
//! decoded the whole pack, against a manifest with the pack's base root (the same manifest
//! the apply would decode against: manifests are named by their content), every object verified
//! by its hash as always. Any failure (a cut link, a corrupt pack, a pod that changed a base
//! mid-way) leaves the apply to decode as it did before, and report what it finds.
//!
//! Memory: a follower holds one decoder's buffers for as long as the upload lasts, so only one
//! runs in the daemon at a time; a pack received meanwhile is decoded when it is whole.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cap_std::fs::Dir;

use crate::apply;
use crate::id::PackId;
use crate::manifest::Manifest;
use crate::pack::{DecodedPack, Limits, PackError};

/// How far the receiving connection has written the staged file, shared with its follower.
#[derive(Default)]
pub(super) struct Tail {
    state: Mutex<TailState>,
    moved: Condvar,
}

#[derive(Default)]
struct TailState {
    /// Bytes of the pack in the staged file (written; durable or not, the page cache has them).
    written: u64,
    /// The pack's length, once known and received whole.
    end: Option<u64>,
    /// The connection stopped receiving before the end: the follower gives up.
    gone: bool,
}

impl Tail {
    fn new(written: u64) -> Arc<Tail> {
        Arc::new(Tail {
            state: Mutex::new(TailState {
                written,
                ..TailState::default()
            }),
            moved: Condvar::new(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut TailState)) {
        f(&mut self.state.lock().expect("tail"));
        self.moved.notify_all();
    }

    /// The staged file now holds `written` bytes of the pack.
    pub(super) fn wrote(&self, written: u64) {
        self.update(|s| s.written = written);
    }

    /// The pack is whole at `len` bytes.
    pub(super) fn ended(&self, len: u64) {
        self.update(|s| s.end = Some(len));
    }

    /// The connection stopped receiving the pack (unless it was whole).
    pub(super) fn abandon(&self) {
        self.update(|s| s.gone = s.end.is_none_or(|end| s.written < end));
    }
}

/// The receiving connection's hold on a tail: when the connection lets go of the pack before
/// its end, the follower stops.
pub(super) struct TailGuard(pub(super) Arc<Tail>);

impl Drop for TailGuard {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl std::ops::Deref for TailGuard {
    type Target = Tail;
    fn deref(&self) -> &Tail {
        &self.0
    }
}

/// The staged file, read as the connection writes it: a read waits for bytes, ends at the
/// pack's end, and fails once the connection has given the pack up.
struct TailReader {
    file: File,
    at: u64,
    tail: Arc<Tail>,
}

impl Read for TailReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tail = self.tail.clone();
        let mut s = tail.state.lock().expect("tail");
        loop {
            if s.gone {
                return Err(io::Error::other("the upload stopped before the pack's end"));
            }
            let ready = s.written.saturating_sub(self.at);
            if ready > 0 {
                drop(s);
                let want = buf.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
                let n = self.file.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.at += n as u64;
                return Ok(n);
            }
            if s.end == Some(self.at) {
                return Ok(0);
            }
            // Woken by every write; the timeout only bounds a missed wake-up.
            s = tail
                .moved
                .wait_timeout(s, Duration::from_secs(1))
                .expect("tail")
                .0;
        }
    }
}

/// A follower: the pack it decodes and its thread. Dropped, it stops (when its pack is not
/// whole yet) and is waited for: no follower writes into a staging folder another step is
/// about to empty or read.
pub(super) struct Follower {
    pub(super) pack: PackId,
    tail: Arc<Tail>,
    thread: Option<JoinHandle<Result<DecodedPack, PackError>>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.tail.abandon();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a follower needs to decode one pack.
pub(super) struct FollowJob {
    pub(super) pack: PackId,
    /// The staged file and how much of it holds the pack already.
    pub(super) file: PathBuf,
    pub(super) written: u64,
    /// Where the objects go (the pack's staging folder, emptied first).
    pub(super) staging: PathBuf,
    /// The state the pack was planned on, and the folder its bases are read from (the pod's
    /// volume; another folder when the pod has none yet, and so no bases).
    pub(super) base: Manifest,
    pub(super) bases: Dir,
    pub(super) limits: Limits,
}

impl Follower {
    /// Starts decoding `job` on a thread of its own. Returns the follower and the tail its
    /// connection moves.
    pub(super) fn start(job: FollowJob) -> io::Result<(Follower, Arc<Tail>)> {
        let tail = Tail::new(job.written);
        let mut file = File::open(&job.file)?;
        file.seek(SeekFrom::Start(0))?;
        let reader = TailReader {
            file,
            at: 0,
            tail: tail.clone(),
        };
        let _ = std::fs::remove_dir_all(&job.staging);
        std::fs::create_dir_all(&job.staging)?;
        let thread = std::thread::Builder::new()
            .name(format!("follow {}", job.pack.short()))
            .spawn(move || {
                apply::decode_staged(reader, &job.staging, &job.base, &job.bases, &job.limits)
            })?;
        Ok((
            Follower {
                pack: job.pack,
                tail: tail.clone(),
                thread: Some(thread),
            },
            tail,
        ))
    }

    pub(super) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the follower to decode to the pack's end; `None` when it failed (the apply
    /// decodes again and reports what it finds).
    pub(super) fn finish(mut self) -> Option<DecodedPack> {
        self.thread.take()?.join().ok()?.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;
    use crate::id::PackId;
    use crate::manifest::{Entry, EntryKind};
    use crate::onboard::OnboardService;
    use crate::pack::{Effort, Plan};
    use crate::path::{PodName, VolumePath};
    use crate::testing::{Blobs, noise};
    use crate::wire::{ErrorKind, Message};

    const FILES: usize = 8;

    /// A pack from an empty volume to eight files of 256 KiB in segments of 256 KiB: the
    /// pack, its target, and the files.
    fn pack_of_eight_files() -> (Vec<u8>, Manifest, Vec<Vec<u8>>) {
        let mut blobs = Blobs::default();
        let bodies: Vec<Vec<u8>> = (0..FILES).map(|i| noise(256 << 10, i as u64)).collect();
        let entries = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| Entry {
                path: VolumePath::new(format!("f{i}")).unwrap(),
                kind: EntryKind::File {
                    id: blobs.add(body),
                    size: body.len() as u64,
                },
                mode: 0o644,
                mtime: 1,
            })
            .collect();
        let target = Manifest::new(entries).unwrap();
        let base = Manifest::default();
        let plan = Plan::new(&base, &target, &|id| blobs.0.contains_key(id));
        let effort = Effort {
            level: 3,
            segment_bytes: 256 << 10,
            ..Effort::max()
        };
        let mut pack = Vec::new();
        plan.encode(
            &base,
            &blobs,
            &HashMap::new(),
            &Limits::default(),
            &effort,
            &mut pack,
        )
        .unwrap();
        (pack, target, bodies)
    }

    const PACK: PackId = PackId([3; 32]);

    fn pod() -> PodName {
        PodName::new("p".to_string()).unwrap()
    }

    fn offer(s: &mut crate::onboard::OnboardSession, len: u64, target: &Manifest) -> Vec<Message> {
        s.handle(Message::PackOffer {
            pod: pod(),
            pack: PACK,
            len: Some(len),
            base_root: Manifest::default().root(),
            target_root: target.root(),
            scope: None,
        })
        .replies
    }

    fn send(
        s: &mut crate::onboard::OnboardSession,
        pack: &[u8],
        from: usize,
        to: usize,
    ) -> Vec<Message> {
        let mut replies = Vec::new();
        for at in (from..to).step_by(64 << 10) {
            let end = (at + (64 << 10)).min(to);
            replies.extend(
                s.handle(Message::PackData {
                    offset: at as u64,
                    bytes: pack[at..end].to_vec(),
                })
                .replies,
            );
        }
        replies
    }

    /// Files of the pack already staged: the follower's work.
    fn staged(svc: &OnboardService) -> usize {
        std::fs::read_dir(svc.staging_dir(&PACK)).map_or(0, |d| d.count())
    }

    fn volume_holds(t: &tempfile::TempDir, bodies: &[Vec<u8>]) {
        for (i, body) in bodies.iter().enumerate() {
            let got = std::fs::read(t.path().join("v/p").join(format!("f{i}"))).unwrap();
            assert!(got == *body, "f{i} differs");
        }
    }

    /// Regression (the rate sweep at 100 Mbit/s): the node decoded a pushed pack only after its
    /// last byte, and on its disk writing the 6,772 files of the source tree into staging took
    /// 0.7 to 1.9 s more than the link. Now the files are staged while the pack arrives, and
    /// the apply takes them.
    #[test]
    fn a_pack_is_staged_while_it_arrives_and_applies_from_what_was_staged() {
        let (t, svc) = super::super::service_for_test();
        let svc = Arc::new(svc);
        let (pack, target, bodies) = pack_of_eight_files();
        let mut s = svc.session();
        assert_eq!(
            offer(&mut s, pack.len() as u64, &target),
            vec![Message::PackAccept {
                pack: PACK,
                offset: 0
            }]
        );
        let last = pack.len() - 100;
        send(&mut s, &pack, 0, last);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // The pack is two segments of four files (the first segments of a large pack are
        // 1 MiB): the first is whole.
        while staged(&svc) < FILES / 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            staged(&svc) >= FILES / 2,
            "{} of {FILES} files staged before the last bytes",
            staged(&svc)
        );
        let done = send(&mut s, &pack, last, pack.len());
        assert_eq!(
            done,
            vec![Message::PackAck {
                offset: pack.len() as u64
            }]
        );
        assert_eq!(
            s.go_on().replies,
            vec![Message::PackApplied {
                pack: PACK,
                root: target.root()
            }]
        );
        volume_holds(&t, &bodies);
    }

    /// A connection that drops mid-pack stops its follower; the ground's next connection
    /// resumes the upload, and a new follower decodes it from the start.
    #[test]
    fn a_resumed_upload_is_followed_again() {
        let (t, svc) = super::super::service_for_test();
        let svc = Arc::new(svc);
        let (pack, target, bodies) = pack_of_eight_files();
        let mut first = svc.session();
        offer(&mut first, pack.len() as u64, &target);
        let half = pack.len() / 2;
        send(&mut first, &pack, 0, half);
        drop(first);
        let mut second = svc.session();
        let accepted = offer(&mut second, pack.len() as u64, &target);
        let [Message::PackAccept { offset, .. }] = accepted[..] else {
            panic!("{accepted:?}");
        };
        assert!(offset <= half as u64);
        send(&mut second, &pack, offset as usize, pack.len());
        assert_eq!(
            second.go_on().replies,
            vec![Message::PackApplied {
                pack: PACK,
                root: target.root()
            }]
        );
        volume_holds(&t, &bodies);
    }

    /// A pack corrupt past its first segments fails its follower; the apply decodes it again,
    /// refuses it as before, and the volume stays as it was.
    #[test]
    fn a_corrupt_pack_is_refused_though_it_was_followed() {
        let (t, svc) = super::super::service_for_test();
        let svc = Arc::new(svc);
        let (mut pack, target, _) = pack_of_eight_files();
        let n = pack.len();
        pack[n - 2000] ^= 0x40;
        let mut s = svc.session();
        offer(&mut s, n as u64, &target);
        send(&mut s, &pack, 0, n);
        let out = s.go_on();
        assert!(
            matches!(
                &out.replies[..],
                [Message::Error {
                    kind: ErrorKind::Refused,
                    ..
                }]
            ),
            "{:?}",
            out.replies
        );
        assert!(!t.path().join("v/p/f0").exists());
    }

    fn reader_on(dir: &std::path::Path, bytes: &[u8], written: u64) -> (TailReader, File) {
        let path = dir.join("p.pack");
        let mut w = File::create(&path).unwrap();
        w.write_all(bytes).unwrap();
        let tail = Tail::new(written);
        let r = TailReader {
            file: File::open(&path).unwrap(),
            at: 0,
            tail,
        };
        (r, w)
    }

    #[test]
    fn a_tail_reader_waits_for_bytes_and_ends_at_the_pack_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, mut w) = reader_on(dir.path(), b"abc", 3);
        let tail = r.tail.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.write_all(b"def").unwrap();
            tail.wrote(6);
            std::thread::sleep(Duration::from_millis(50));
            tail.ended(6);
        });
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        writer.join().unwrap();
        assert_eq!(all, b"abcdef");
    }

    #[test]
    fn a_tail_reader_never_reads_past_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        // The file holds more than the connection wrote of this upload (a resumed upload's
        // file is cut, but the reader must not trust that).
        let (mut r, _w) = reader_on(dir.path(), b"abcdef", 2);
        let mut buf = [0u8; 16];
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        r.tail.abandon();
        assert!(r.read(&mut buf).is_err());
    }

    #[test]
    fn a_whole_pack_is_not_abandoned_when_its_connection_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _w) = reader_on(dir.path(), b"abc", 3);
        r.tail.ended(3);
        r.tail.abandon();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abc");
    }
}
