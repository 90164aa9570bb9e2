//! Pull packs the node is still encoding. The encoder runs on a thread of its own and writes
//! `pulls/<pack>.pack` front to back; a session serving the ground's ranges reads what is
//! written already and waits (on a condition variable, not by polling) for the rest. What is
//! written is in the file (the page cache), so readers need no copy of it in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};

use crate::id::PackId;

/// Pull packs encoded at once, at most: each holds the encoder's memory (within the daemon's
/// `--memory`, see ARCHITECTURE "Memory") and a thread, so grounds asking for more pulls at
/// once than this are told to try again ([`crate::wire::ErrorKind::Busy`]).
pub(in crate::onboard) const MAX_LIVE_PULLS: usize = 2;

/// How far a pull pack's encoding is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::onboard) enum Written {
    /// This many bytes are in the file; more follow.
    Growing(u64),
    /// The pack is whole (and durable) at this many bytes.
    Whole(u64),
    /// The encoding stopped (a pod changed a file under it, the state disk is full, ...): the
    /// pack is dropped, and the ground asks again.
    Failed(String),
}

/// One pull pack being encoded, shared by its encoder and the sessions serving it.
pub(in crate::onboard) struct Live {
    written: Mutex<Written>,
    grew: Condvar,
}

impl Live {
    fn new() -> Self {
        Self {
            written: Mutex::new(Written::Growing(0)),
            grew: Condvar::new(),
        }
    }

    fn set(&self, w: Written) {
        *self.written.lock().expect("pull encoding state") = w;
        self.grew.notify_all();
    }

    /// Waits until `end` bytes are written, or the encoding ended either way.
    pub(in crate::onboard) fn wait_for(&self, end: u64) -> Written {
        let guard = self.written.lock().expect("pull encoding state");
        let guard = self
            .grew
            .wait_while(guard, |w| matches!(w, Written::Growing(n) if *n < end))
            .expect("pull encoding state");
        guard.clone()
    }
}

/// The pull packs being encoded, by id.
#[derive(Default)]
pub(in crate::onboard) struct LivePulls {
    live: Mutex<HashMap<PackId, Arc<Live>>>,
}

impl LivePulls {
    /// A pack whose encoding starts now, unless [`MAX_LIVE_PULLS`] are being encoded; `finish`
    /// it when it ends.
    pub(in crate::onboard) fn start(&self, pack: PackId) -> Option<Arc<Live>> {
        let mut all = self.live.lock().expect("live pulls");
        if all.len() >= MAX_LIVE_PULLS {
            return None;
        }
        let live = Arc::new(Live::new());
        all.insert(pack, live.clone());
        Some(live)
    }

    /// As many packs are being encoded as may be.
    pub(in crate::onboard) fn full(&self) -> bool {
        self.live.lock().expect("live pulls").len() >= MAX_LIVE_PULLS
    }

    pub(in crate::onboard) fn get(&self, pack: &PackId) -> Option<Arc<Live>> {
        self.live.lock().expect("live pulls").get(pack).cloned()
    }

    /// The encoding of `pack` ended: sessions waiting on it wake with `how`, and later ones
    /// find the pack by its row and file (whole) or not at all (failed).
    pub(in crate::onboard) fn finish(&self, pack: &PackId, live: &Live, how: Written) {
        // Out of the table before anyone wakes: a session woken by the end must not find the
        // pack still live (a `PullDone` for a live pack is ignored).
        self.live.lock().expect("live pulls").remove(pack);
        live.set(how);
    }
}

/// The file an encoder writes a pull pack into: each write is published to the sessions
/// waiting for it.
pub(in crate::onboard) struct Publishing {
    file: File,
    live: Arc<Live>,
    written: u64,
}

impl Publishing {
    pub(in crate::onboard) fn new(file: File, live: Arc<Live>) -> Self {
        Self {
            file,
            live,
            written: 0,
        }
    }

    /// The file, synced: the pack is durable at its length.
    pub(in crate::onboard) fn finish(self) -> std::io::Result<u64> {
        self.file.sync_all()?;
        Ok(self.written)
    }
}

impl Write for Publishing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.live.set(Written::Growing(self.written));
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_reader_waits_for_the_bytes_it_asks_for_and_wakes_at_the_end() {
        let t = tempfile::tempdir().unwrap();
        let pulls = LivePulls::default();
        let pack = PackId([1; 32]);
        let live = pulls.start(pack).unwrap();
        let file = File::create(t.path().join("p")).unwrap();
        let mut out = Publishing::new(file, live.clone());
        out.write_all(b"12345").unwrap();
        assert_eq!(live.wait_for(5), Written::Growing(5));
        let reader = {
            let live = pulls.get(&pack).unwrap();
            std::thread::spawn(move || live.wait_for(100))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished(), "it waits for bytes not written yet");
        out.write_all(b"678").unwrap();
        let len = out.finish().unwrap();
        pulls.finish(&pack, &live, Written::Whole(len));
        assert_eq!(reader.join().unwrap(), Written::Whole(8));
        assert!(pulls.get(&pack).is_none());
    }

    /// A hostile or busy ground asking for many pulls at once cannot make the node hold more
    /// than [`MAX_LIVE_PULLS`] encoders.
    #[test]
    fn no_more_than_the_most_pulls_are_encoded_at_once() {
        let pulls = LivePulls::default();
        let started: Vec<_> = (0..MAX_LIVE_PULLS as u8)
            .map(|i| pulls.start(PackId([i; 32])).unwrap())
            .collect();
        assert!(pulls.start(PackId([99; 32])).is_none());
        pulls.finish(&PackId([0; 32]), &started[0], Written::Whole(1));
        assert!(pulls.start(PackId([99; 32])).is_some());
    }
}
