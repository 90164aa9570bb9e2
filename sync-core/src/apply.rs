//! One journaled apply for both ends: a pack applied to a pod's volume onboard, and a pull pack
//! applied to the ground's copy of one.
//!
//! Both ends go the same way. The pack is decoded into a staging folder ([`decode_staged`]:
//! every object hashed, every base read from the directory through [`VolumeReader`] and
//! verified), every file is placed in the directory under a temporary name
//! (`volume::prepare`, where a full disk shows), and only then does the changeset touch what a
//! user sees: its plan is recorded in a [`Journal`], its renames and removals run, and the
//! journal entry ends ([`apply_journaled`]). Each step is idempotent, so a crash or a refused
//! rename is finished by running the plan again ([`roll_forward`]), which ends in one of three
//! ways ([`Settled`]). What differs between the ends is where the journal lives (the onboard
//! state's `journal` table per pack, the ground's `pull_journal` per copy), what ending an
//! entry also ends (a staged pack, a record of what a pull delivered), and what each says to
//! its user: those are the two [`Journal`] implementations and their callers.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use cap_std::fs::Dir;

use crate::delta::ReadAt;
use crate::id::ContentId;
use crate::manifest::{Entry, Manifest};
use crate::pack::{self, BaseReader, DecodedPack, Limits, ObjectSink, PackError};
use crate::volume::{self, ApplyPlan, VolumeError};

/// Where a changeset's plan is kept while its renames run, so that an interrupted one can be
/// run to its end.
pub trait Journal {
    type Error;
    /// Records the plan durably. Nothing the user sees has changed yet.
    fn begin(&self, plan: &ApplyPlan) -> Result<(), Self::Error>;
    /// Ends the entry: every step of the plan has run.
    fn end(&self) -> Result<(), Self::Error>;
}

/// Why a journaled apply stopped.
#[derive(Debug)]
pub enum ApplyError<E> {
    /// The journal failed: recording the plan (its temporaries were then removed and nothing
    /// changed), or ending the entry once every step had run.
    Journal(E),
    /// A step failed after the plan was recorded: it stays journaled for the roll-forward.
    Unfinished(VolumeError),
}

/// How running a journaled plan again ended.
#[derive(Debug)]
pub enum Settled {
    /// Every step ran and the entry ended.
    Done,
    /// It cannot finish now (a full disk, a copy not mounted): it stays journaled, and the
    /// temporaries it still needs must survive any sweep.
    Unfinished {
        temps: HashSet<String>,
        source: VolumeError,
    },
    /// It never can (a file it was to place is gone and something else is there). The entry is
    /// left for the caller to give up, since what to tell the user differs between the ends.
    Abandoned(VolumeError),
}

/// Decodes a pack read from `pack` against `base` into the `staging` folder, reading bases
/// from `dir` (a pod's volume or the ground's copy) and holding to `limits`.
pub fn decode_staged(
    pack: impl Read,
    staging: &Path,
    base: &Manifest,
    dir: &Dir,
    limits: &Limits,
) -> Result<DecodedPack, PackError> {
    pack::decode_pack(
        &mut BufReader::new(pack),
        base,
        &VolumeReader(dir),
        &mut StagingSink::new(staging),
        limits,
    )
}

/// The journaled step: `plan` recorded in `journal`, run (renames and removals only), and the
/// entry ended. Should the plan not be recorded, the temporaries it placed go and the
/// directory is as it was.
pub fn apply_journaled<J: Journal>(
    dir: &Dir,
    plan: &ApplyPlan,
    tag: &str,
    journal: &J,
) -> Result<(), ApplyError<J::Error>> {
    if let Err(e) = journal.begin(plan) {
        unplace(dir, plan);
        return Err(ApplyError::Journal(e));
    }
    volume::apply(dir, plan, tag).map_err(ApplyError::Unfinished)?;
    // The renames are done: the entry ends first, whatever the caller does next.
    journal.end().map_err(ApplyError::Journal)
}

/// Runs a journaled `plan` again, from its first step (each is idempotent), and ends its entry
/// when it finishes.
pub fn roll_forward<J: Journal>(
    dir: &Dir,
    plan: &ApplyPlan,
    tag: &str,
    journal: &J,
) -> Result<Settled, J::Error> {
    match volume::apply(dir, plan, tag) {
        Ok(()) => {
            journal.end()?;
            Ok(Settled::Done)
        }
        Err(source @ VolumeError::Unrecoverable { .. }) => Ok(Settled::Abandoned(source)),
        Err(source) => Ok(Settled::Unfinished {
            temps: plan.temps().map(String::from).collect(),
            source,
        }),
    }
}

/// Removes the temporaries `plan` placed, before any of its steps ran.
pub fn unplace(dir: &Dir, plan: &ApplyPlan) {
    for t in plan.temps() {
        let _ = dir.remove_file(t);
    }
}

/// Reads base content from a pod's volume (or the ground's copy), in stretches.
pub struct VolumeReader<'a>(pub &'a Dir);

impl BaseReader for VolumeReader<'_> {
    fn open_base(&self, entry: &Entry) -> Result<Box<dyn ReadAt + '_>, PackError> {
        // Reads never go past the entry's size (the decoder checks them against it): the pod
        // may have grown the file since.
        let file =
            volume::open_nofollow(self.0, &entry.path).map_err(|_| PackError::BaseChanged {
                path: entry.path.to_string(),
                expected: entry.file_id().unwrap_or_else(ContentId::empty),
            })?;
        Ok(Box::new(file.into_std()))
    }
}

/// Writes decoded objects to `o<index>` in the pack's staging folder, synced; zeros become
/// holes.
pub struct StagingSink<'a> {
    dir: &'a Path,
    open: Option<(BufWriter<File>, u64)>,
}

impl<'a> StagingSink<'a> {
    pub fn new(dir: &'a Path) -> Self {
        Self { dir, open: None }
    }

    fn file(&mut self) -> &mut BufWriter<File> {
        &mut self
            .open
            .as_mut()
            .expect("the decoder begins an object first")
            .0
    }
}

impl ObjectSink for StagingSink<'_> {
    fn begin(&mut self, index: u32, size: u64) -> Result<(), PackError> {
        let f = File::create(self.dir.join(format!("o{index}")))?;
        self.open = Some((BufWriter::with_capacity(256 * 1024, f), size));
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.file().write_all(bytes)?;
        Ok(())
    }

    fn zeros(&mut self, len: u64) -> Result<(), PackError> {
        let skip =
            i64::try_from(len).map_err(|_| PackError::Structure("a hole too long".into()))?;
        self.file().seek(SeekFrom::Current(skip))?;
        Ok(())
    }

    fn end(&mut self) -> Result<(), PackError> {
        let (w, size) = self.open.take().expect("begun");
        let f = w.into_inner().map_err(|e| e.into_error())?;
        // A file that ends in a hole has its length only once it is set.
        f.set_len(size)?;
        // Not synced: a staged object is made again from the (durable) pack if the daemon
        // stops before the apply, and `volume::prepare` makes what it places durable, all
        // files at once.
        Ok(())
    }
}
