//! The copy a pull goes into: its lock (one process pulls into a copy at a time), its settling
//! before a pull looks at it (an interrupted apply finished, stray temporaries swept), and
//! where its pull packs are received and decoded in the ground's state folder.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::apply::Settled;
use crate::ground::{Ground, GroundError, io_at};
use crate::id::PackId;
use crate::state::PullIncoming;

impl Ground {
    /// Where a pull pack for the copy at `into` is received: one file per copy and pack, so two
    /// copies pulling the same pack never share (or truncate) a file.
    pub(super) fn pull_path(&self, into: &str, pack: &PackId) -> PathBuf {
        self.pull_path_with(into, pack, "pack")
    }

    /// Where a pull pack's objects are decoded to before they go into the copy: per copy too.
    pub(super) fn pull_staging(&self, into: &str, pack: &PackId) -> PathBuf {
        self.pull_path_with(into, pack, "staging")
    }

    fn pull_path_with(&self, into: &str, pack: &PackId, ext: &str) -> PathBuf {
        let copy = blake3::hash(into.as_bytes()).to_hex();
        self.dir
            .join("pulls")
            .join(format!("{}-{}.{ext}", &copy[..16], pack.to_hex()))
    }

    /// Takes the copy at `into` for this process: held for a whole pull, so that two
    /// sync-ground processes never place, rename or sweep in one copy at once. None when
    /// another holds it. The lock goes with the process, however it ends.
    pub(super) fn lock_copy(&self, into: &str) -> Result<Option<std::fs::File>, GroundError> {
        let copy = blake3::hash(into.as_bytes()).to_hex();
        let dir = self.dir.join("locks");
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let path = dir.join(format!("copy-{}.lock", &copy[..16]));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io_at(&path)(e)),
        }
    }

    /// Forgets a pull being received: its row, its pack file and its staging folder. The next
    /// pull into that copy plans from the copy as it is then.
    pub(super) fn drop_pull(&self, r: &PullIncoming) -> Result<(), GroundError> {
        let _ = std::fs::remove_file(self.pull_path(&r.into, &r.pack));
        let _ = std::fs::remove_dir_all(self.pull_staging(&r.into, &r.pack));
        self.db.delete_pull_incoming(r)?;
        Ok(())
    }

    /// Makes the copy at `into` (an absolute path) whole before a pull looks at it: a pull's
    /// apply to it that a crash (or a failed rename) interrupted is finished first (every step
    /// is idempotent), then the engine's temporaries left at the copy's root are removed, those
    /// of a `prepare` that a crash cut short before its plan was journaled included (no journal
    /// names them). While a journaled apply cannot finish, its temporaries are kept and it
    /// stays journaled ([`GroundError::PullUnfinished`]); one that never can (a file it was to
    /// place is gone) is given up, naming the copy ([`GroundError::PullAbandoned`]).
    pub fn settle_copy(&self, into: &Path) -> Result<(), GroundError> {
        let key = into.display().to_string();
        let dir = Dir::open_ambient_dir(into, ambient_authority()).map_err(io_at(into))?;
        let (keep, outcome) = match self.roll_forward_copy(&dir, &key)? {
            Settled::Done => (HashSet::new(), Ok(())),
            Settled::Unfinished { temps, source } => (
                temps,
                Err(GroundError::PullUnfinished { into: key, source }),
            ),
            Settled::Abandoned(source) => (
                HashSet::new(),
                Err(GroundError::PullAbandoned { into: key, source }),
            ),
        };
        crate::volume::sweep_temps(&dir, &keep);
        outcome
    }
}
