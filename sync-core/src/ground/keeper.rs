//! The content store written beside the encoder. Every target a push reads for encoding is
//! kept in the ground's content store, where it becomes the base of the next push; nothing is
//! read twice. Writing thousands of new files costs a disk more than compressing them at a fast
//! level: on this machine's disk, storing the rate sweep's 6,772 files took 1.3 to 1.8 s of
//! system time, on the encoder's thread, while the 100 Mbit/s link waited for it (the pack
//! took 2.6 to 3.0 s to send where the link needed 0.7 s). So the encoder hands copies of what
//! it reads to a writer thread and goes on; the writer stores each object once the encoder
//! has found it hashes to its id. With the node on a disk of its own, that push took 2.47 to
//! 3.07 s instead of 3.39 to 3.78 s (three runs each, by hand).
//!
//! Memory: what is handed over and not yet written is held to [`QUEUED`] bytes; past that the
//! encoder waits for the disk (the link then waits too, as it did before).
//!
//! The store is a cache: an object the writer cannot store costs the next push a base, not
//! this push. Its writes are not synced (each object is verified before it is used), and they
//! end before the store is pruned ([`ObjectStore::settle`]).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};

use crate::delta::ReadAt;
use crate::id::ContentId;
use crate::object::{ObjectStore, PendingObject};
use crate::pack::{ContentProvider, PackError, TargetReader};
use crate::path::VolumePath;

/// Bytes handed to the writer and not yet written, at most.
pub const QUEUED: u64 = 64 << 20;

/// A copy is handed over in pieces of at most this many bytes.
const PIECE: usize = 256 << 10;

/// What the encoder tells the writer. `seq` names one read of one object (the encoder may read
/// the same content twice at once: its main read and a look at whether it only grew).
enum Note {
    Begin { seq: u64, id: ContentId },
    Bytes { seq: u64, bytes: Vec<u8> },
    Hole { seq: u64, len: u64 },
    End { seq: u64, size: u64, whole: bool },
    Verified(ContentId),
}

/// The bytes in flight between the encoder and the writer, and whether the writer is gone.
#[derive(Default)]
struct InFlight {
    state: Mutex<(u64, bool)>,
    drained: Condvar,
}

impl InFlight {
    /// Counts `n` more bytes handed over, first waiting while that would pass [`QUEUED`]
    /// (one piece alone always goes), unless the writer is gone.
    fn add(&self, n: u64) {
        let mut s = self.state.lock().expect("in flight");
        while !s.1 && s.0 > 0 && s.0 + n > QUEUED {
            s = self.drained.wait(s).expect("in flight");
        }
        s.0 += n;
    }

    fn sub(&self, n: u64) {
        let mut s = self.state.lock().expect("in flight");
        s.0 = s.0.saturating_sub(n);
        self.drained.notify_all();
    }

    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.state.lock().expect("in flight").0
    }
}

/// Marks the writer gone however it ends (a panic included), so the encoder never waits on it.
struct Gone<'a>(&'a InFlight);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.state.lock().map(|mut s| s.1 = true).ok();
        self.0.drained.notify_all();
    }
}

/// The encoder's side: a provider that keeps what it reads.
pub(super) struct Keeping<P> {
    inner: P,
    store: ObjectStore,
    notes: Sender<Note>,
    in_flight: Arc<InFlight>,
    seq: std::sync::atomic::AtomicU64,
}

impl<P: ContentProvider> Keeping<P> {
    /// Keeps in `store` what is read of `inner`'s targets. The writer thread runs until this
    /// is dropped and everything handed over is written; `store.settle()` waits for it.
    pub(super) fn new(inner: P, store: ObjectStore) -> std::io::Result<Self> {
        let (notes, rx) = channel();
        let in_flight = Arc::new(InFlight::default());
        let writer = {
            let (store, in_flight) = (store.clone(), in_flight.clone());
            std::thread::Builder::new()
                .name("store writer".into())
                .spawn(move || write_objects(&store, &rx, &in_flight))?
        };
        store.writing(writer);
        Ok(Self {
            inner,
            store,
            notes,
            in_flight,
            seq: Default::default(),
        })
    }
}

impl<P: ContentProvider> ContentProvider for Keeping<P> {
    fn open_target(
        &self,
        path: &VolumePath,
        id: &ContentId,
        size: u64,
    ) -> Result<Box<dyn TargetReader + '_>, PackError> {
        let inner = self.inner.open_target(path, id, size)?;
        if self.store.contains(id) {
            return Ok(inner);
        }
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.notes.send(Note::Begin { seq, id: *id }).is_err() {
            return Ok(inner);
        }
        Ok(Box::new(Tee {
            inner,
            keeping: KeepingRef {
                notes: &self.notes,
                in_flight: &self.in_flight,
            },
            seq,
            size,
            left: size,
        }))
    }

    fn open_base(
        &self,
        id: &ContentId,
        size: u64,
    ) -> Result<Option<Box<dyn ReadAt + '_>>, PackError> {
        self.inner.open_base(id, size)
    }

    fn verified(&self, id: &ContentId) -> Result<(), PackError> {
        let _ = self.notes.send(Note::Verified(*id));
        self.inner.verified(id)
    }
}

struct KeepingRef<'a> {
    notes: &'a Sender<Note>,
    in_flight: &'a InFlight,
}

/// A target's reader that hands a copy of what it reads to the writer, holes as holes.
struct Tee<'a> {
    inner: Box<dyn TargetReader + 'a>,
    keeping: KeepingRef<'a>,
    seq: u64,
    size: u64,
    left: u64,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for piece in buf[..n].chunks(PIECE) {
            self.keeping.in_flight.add(piece.len() as u64);
            let note = Note::Bytes {
                seq: self.seq,
                bytes: piece.to_vec(),
            };
            if self.keeping.notes.send(note).is_err() {
                self.keeping.in_flight.sub(piece.len() as u64);
            }
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

impl TargetReader for Tee<'_> {
    fn next_hole(&mut self, from: u64) -> std::io::Result<Option<std::ops::Range<u64>>> {
        self.inner.next_hole(from)
    }

    fn skip_hole(&mut self, n: u64) -> std::io::Result<()> {
        self.inner.skip_hole(n)?;
        // The stored copy gets the hole too: a sparse file costs the store its data only.
        let _ = self.keeping.notes.send(Note::Hole {
            seq: self.seq,
            len: n,
        });
        self.left = self.left.saturating_sub(n);
        Ok(())
    }
}

impl Drop for Tee<'_> {
    fn drop(&mut self) {
        let _ = self.keeping.notes.send(Note::End {
            seq: self.seq,
            size: self.size,
            whole: self.left == 0,
        });
    }
}

/// The writer: objects being written (by read), objects written whole and waiting for the
/// encoder's word that they hash to their id, then put in place. What is not vouched for when
/// the encoder lets go is dropped.
fn write_objects(store: &ObjectStore, notes: &Receiver<Note>, in_flight: &InFlight) {
    let _gone = Gone(in_flight);
    let mut open: HashMap<u64, (ContentId, PendingObject)> = HashMap::new();
    let mut whole: HashMap<ContentId, PendingObject> = HashMap::new();
    for note in notes {
        match note {
            Note::Begin { seq, id } => {
                if let Ok(Some(p)) = store.pending(&id) {
                    open.insert(seq, (id, p));
                }
            }
            Note::Bytes { seq, bytes } => {
                if let Some((_, p)) = open.get_mut(&seq)
                    && p.file.write_all(&bytes).is_err()
                {
                    open.remove(&seq).expect("just found").1.discard();
                }
                in_flight.sub(bytes.len() as u64);
            }
            Note::Hole { seq, len } => {
                let skip = i64::try_from(len).map_err(std::io::Error::other);
                if let Some((_, p)) = open.get_mut(&seq)
                    && skip
                        .and_then(|n| p.file.seek(SeekFrom::Current(n)))
                        .is_err()
                {
                    open.remove(&seq).expect("just found").1.discard();
                }
            }
            Note::End {
                seq,
                size,
                whole: all,
            } => {
                let Some((id, p)) = open.remove(&seq) else {
                    continue;
                };
                // A file that ends in a hole has its length only once it is set.
                if all && !whole.contains_key(&id) && p.file.set_len(size).is_ok() {
                    whole.insert(id, p);
                } else {
                    p.discard();
                }
            }
            Note::Verified(id) => {
                if let Some(p) = whole.remove(&id) {
                    let _ = p.commit();
                }
            }
        }
    }
    for (_, (_, p)) in open {
        p.discard();
    }
    for (_, p) in whole {
        p.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Blobs;

    fn read_all(k: &Keeping<Blobs>, id: &ContentId, size: u64) {
        let path = VolumePath::new("f").unwrap();
        let mut r = k.open_target(&path, id, size).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
    }

    /// What the encoder read and vouched for is stored once the writer is done; what it read
    /// and did not vouch for is not.
    #[test]
    fn vouched_objects_are_stored_and_others_are_not() {
        let t = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(t.path()).unwrap();
        let body_a = crate::testing::noise(3 * PIECE + 5, 1);
        let body_b = crate::testing::noise(1000, 2);
        let blobs = Blobs::of(&[&body_a, &body_b]);
        let (a, b) = (ContentId::of(&body_a), ContentId::of(&body_b));
        let k = Keeping::new(blobs, store.clone()).unwrap();
        read_all(&k, &a, body_a.len() as u64);
        read_all(&k, &b, body_b.len() as u64);
        k.verified(&a).unwrap();
        drop(k);
        store.settle();
        assert_eq!(store.read(&a).unwrap().unwrap(), body_a);
        assert!(!store.contains(&b));
    }

    /// More than [`QUEUED`] bytes handed over wait for the writer instead of growing the queue.
    #[test]
    fn the_queue_is_held_to_its_bytes() {
        let f = Arc::new(InFlight::default());
        f.add(QUEUED - 10);
        let g = f.clone();
        let waiter = std::thread::spawn(move || g.add(PIECE as u64));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "over the bound, the sender waits");
        f.sub(QUEUED - 10);
        waiter.join().unwrap();
        assert_eq!(f.bytes(), PIECE as u64);
        // One piece larger than the bound still goes, alone.
        let h = InFlight::default();
        h.add(QUEUED + 1);
        // A writer that is gone (a panic) holds nobody up.
        drop(Gone(&h));
        h.add(QUEUED);
    }
}
