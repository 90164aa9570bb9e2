//! A kept pull pack's bytes, served by range as the ground asks for them (the ground's window
//! decides what and when), and what the node records once the ground has applied it.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};

use crate::id::PackId;
use crate::wire::{ErrorKind, Message};

use super::super::{OnboardService, Refusal};

/// Largest range one `PullRange` may ask for; the ground asks for more as data arrives.
const MAX_PULL_RANGE: u64 = 4 << 20;
/// Bytes of pull pack per `PackData` frame.
const PULL_FRAME: u64 = 16 * 1024;
/// Pull packs nobody finished for this long are dropped.
const PULL_PACK_DAYS: i64 = 7;

impl OnboardService {
    /// Bytes of a kept pull pack, as `PackData` frames.
    pub(in crate::onboard) fn pull_range(
        &self,
        pack: &PackId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Message>, Refusal> {
        let path = self.pull_file(pack);
        let mut f = File::open(&path)
            .map_err(|_| Refusal::new(ErrorKind::NotFound, "that pull pack is gone; ask again"))?;
        let total = f.metadata().map_err(Refusal::internal)?.len();
        if offset > total {
            return Err(Refusal::refused(format!(
                "offset {offset} is past the pack's {total} bytes"
            )));
        }
        let end = (offset + len.min(MAX_PULL_RANGE)).min(total);
        f.seek(SeekFrom::Start(offset)).map_err(Refusal::internal)?;
        let mut buf = vec![0u8; (end - offset) as usize];
        f.read_exact(&mut buf).map_err(Refusal::internal)?;
        Ok(buf
            .chunks(PULL_FRAME as usize)
            .enumerate()
            .map(|(i, c)| Message::PackData {
                offset: offset + i as u64 * PULL_FRAME,
                bytes: c.to_vec(),
            })
            .collect())
    }

    /// The ground applied a pull pack: what it delivered is now what the ground holds.
    pub(in crate::onboard) fn pull_done(&self, pack: &PackId) -> Result<(), Refusal> {
        let row = self.db().pull_pack_any(pack)?;
        if let Some(p) = row {
            self.db().remember_sent(&p.pod, &p.sent)?;
            self.db().delete_pull_pack(pack)?;
        }
        let _ = fs::remove_file(self.pull_file(pack));
        Ok(())
    }

    /// Drops the pull packs nobody finished for [`PULL_PACK_DAYS`].
    pub(in crate::onboard) fn collect_stale_pull_packs(&self) {
        let stale = self
            .db()
            .stale_pull_packs(PULL_PACK_DAYS * 24 * 3600)
            .unwrap_or_default();
        for pack in stale {
            let _ = self.db().delete_pull_pack(&pack);
            let _ = fs::remove_file(self.pull_file(&pack));
        }
    }
}
