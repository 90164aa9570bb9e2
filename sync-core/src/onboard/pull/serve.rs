//! A kept pull pack's bytes, served by range as the ground asks for them (the ground's window
//! decides what and when), and what the node records once the ground has applied it.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};

use crate::id::PackId;
use crate::wire::{ErrorKind, Message};

use super::super::{OnboardService, Refusal};
use super::live::Written;

/// Largest range one `PullRange` may ask for; the ground asks for more as data arrives.
const MAX_PULL_RANGE: u64 = 4 << 20;
/// Bytes of pull pack per `PackData` frame.
const PULL_FRAME: u64 = 16 * 1024;
/// Pull packs nobody finished for this long are dropped.
const PULL_PACK_DAYS: i64 = 7;

impl OnboardService {
    /// Bytes of a pull pack, as `PackData` frames. Of a pack still being encoded, the bytes
    /// are waited for; the reply to the range the pack ends in ends with `PackEnd`, and a
    /// range past the end gets no reply.
    pub(in crate::onboard) fn pull_range(
        &self,
        pack: &PackId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<Message>, Refusal> {
        let len = len.min(MAX_PULL_RANGE);
        let gone = || Refusal::new(ErrorKind::NotFound, "that pull pack is gone; ask again");
        // Whole: the length the row records (the pack is durable at it), or what the encoder
        // ended at while this waited.
        let whole = match self.live_pulls.get(pack) {
            Some(live) => match live.wait_for(offset.saturating_add(len)) {
                Written::Growing(_) => None,
                Written::Whole(n) => Some(n),
                Written::Failed(why) => {
                    return Err(Refusal::new(
                        ErrorKind::NotFound,
                        format!("it could not be encoded: {why}"),
                    ));
                }
            },
            // The length alone: what the pack delivers is not read for every range.
            None => self.db().pull_pack_len(pack)?.ok_or_else(gone)?,
        };
        let mut f = File::open(self.pull_file(pack)).map_err(|_| gone())?;
        let on_disk = f.metadata().map_err(Refusal::internal)?.len();
        // Growing: the encoder wrote at least `offset + len` bytes (that is what was waited
        // for). Whole: the range is cut at the end.
        let total = whole.unwrap_or(on_disk);
        if offset > total {
            // Asked while the length was unknown, and past the end: nothing to send.
            return Ok(Vec::new());
        }
        let end = (offset + len).min(total);
        if whole.is_none() && end > on_disk {
            return Err(Refusal::internal(format!(
                "pull pack {} is shorter than its encoder wrote",
                pack.short()
            )));
        }
        f.seek(SeekFrom::Start(offset)).map_err(Refusal::internal)?;
        let mut buf = vec![0u8; (end - offset) as usize];
        f.read_exact(&mut buf).map_err(Refusal::internal)?;
        let mut out: Vec<Message> = buf
            .chunks(PULL_FRAME as usize)
            .enumerate()
            .map(|(i, c)| Message::PackData {
                offset: offset + i as u64 * PULL_FRAME,
                bytes: c.to_vec(),
            })
            .collect();
        // The end is in this range (a ground that knew the length never asks across it).
        if let Some(total) = whole
            && total < offset + len
        {
            out.push(Message::PackEnd {
                pack: *pack,
                len: total,
            });
        }
        Ok(out)
    }

    /// The ground applied a pull pack: what it delivered is now what the ground holds.
    pub(in crate::onboard) fn pull_done(&self, pack: &PackId) -> Result<(), Refusal> {
        // A pack still being encoded was not applied, whatever a ground says: it goes on.
        if self.live_pulls.get(pack).is_some() {
            return Ok(());
        }
        let row = self.db().pull_pack_any(pack)?;
        if let Some(p) = row.filter(|p| p.len.is_some()) {
            self.db().remember_sent(&p.pod, pack, &p.sent)?;
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
