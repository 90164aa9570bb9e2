//! Receiving a pull pack: the ground drives, asking for the byte ranges its window allows
//! ([`Window`] decides which), writes what arrives, in order, to `pulls/<copy>-<pack>.pack`, and
//! makes it durable (synced, then the offset recorded) every 256 KiB or 3 s, so that a cut
//! link costs at most that much and the next pull resumes from there.

use std::fs::File;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::ground_limits;
use crate::ground::client::{Event, remote};
use crate::ground::{Allowance, Client, Ground, GroundError, Progress, io_at};
use crate::link::{ACK_INTERVAL, sleep_until_opt};
use crate::state::PullIncoming;
use crate::window::Window;
use crate::wire::{ErrorKind, Message};

/// Largest range one `PullRange` asks for.
const PULL_RANGE_BYTES: u64 = 256 * 1024;
/// Durable progress of a pull is recorded at least every this many bytes.
const PULL_SYNC_BYTES: u64 = 256 * 1024;

/// How far to ask into a pack whose length is unknown, with `written` bytes of it here and
/// `sent` asked for: whole ranges only (one request each, about 60 uplink bytes), up to twice
/// what has come plus one range. A small pack costs one request, as when its length is known,
/// and a large one soon has the window's worth in flight.
fn ahead_of(written: u64, sent: u64) -> u64 {
    let ahead = 2 * written + PULL_RANGE_BYTES;
    sent + ahead.saturating_sub(sent) / PULL_RANGE_BYTES * PULL_RANGE_BYTES
}

/// Adjacent ranges joined, none longer than `max` unless a single one is.
fn coalesce(ranges: &[(u64, u64)], max: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(a, b) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == a && b - last.0 <= max => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

/// A pull pack's file as it is received.
struct Receiving<'f> {
    file: &'f mut File,
    /// Bytes written so far, durable or not.
    written: u64,
    /// The pack's length; `None` until the node says (it offered the pack while encoding it).
    total: Option<u64>,
}

impl Receiving<'_> {
    /// Appends a frame of pull data at `written`, the only place it may go.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), GroundError> {
        if offset != self.written {
            return Err(GroundError::BadReply("pull data out of order"));
        }
        let end = self.written + bytes.len() as u64;
        if end > self.total.unwrap_or(ground_limits().max_total_bytes) {
            return Err(GroundError::BadReply("pull data past the pack's end"));
        }
        std::io::Write::write_all(self.file, bytes).map_err(io_at(Path::new("pull staging")))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Makes what was written durable: synced, then the offset recorded in `state`.
    fn persist(&mut self, ground: &Ground, state: &mut PullIncoming) -> Result<(), GroundError> {
        self.file
            .sync_data()
            .map_err(io_at(Path::new("pull staging")))?;
        state.received = self.written;
        ground.db.put_pull_incoming(state)?;
        Ok(())
    }
}

impl Ground {
    /// Opens the file the pull pack of `state` is received into, cut to what is durable of it
    /// (what the row records, and no more than the file holds) and positioned at its end.
    pub(super) fn open_pull_file(
        &self,
        state: &mut PullIncoming,
    ) -> Result<(PathBuf, File), GroundError> {
        let path = self.pull_path(&state.into, &state.pack);
        std::fs::create_dir_all(path.parent().expect("pulls folder")).map_err(io_at(&path))?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        let on_disk = file.metadata().map_err(io_at(&path))?.len();
        state.received = state.received.min(on_disk);
        file.set_len(state.received).map_err(io_at(&path))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(state.received))
            .map_err(io_at(&path))?;
        Ok((path, file))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Asks for the pack's bytes in a window of ranges and writes them as they come. True when
    /// the whole pack is here and durable; false when the budget or deadline stopped it.
    pub(super) async fn receive_pull(
        &mut self,
        ground: &Ground,
        state: &mut PullIncoming,
        file: &mut File,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<bool, GroundError> {
        let mut staged = Receiving {
            file,
            written: state.received,
            total: state.len,
        };
        let result = self
            .receive_pull_into(ground, state, &mut staged, allow, progress)
            .await;
        if result.is_err() && staged.written > state.received {
            // The link failed: every byte written came out of an authenticated record, so keep
            // them, and the next pull asks only for the rest (it asked again for up to 256 KiB
            // after a cut).
            let _ = staged.persist(ground, state);
        }
        result
    }

    async fn receive_pull_into(
        &mut self,
        ground: &Ground,
        state: &mut PullIncoming,
        staged: &mut Receiving<'_>,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<bool, GroundError> {
        let mut up = match staged.total {
            Some(total) => Window::new(total, state.received, self.rtt, allow.rate),
            // Ranges are asked ahead of what the node has encoded; it answers each as its
            // bytes are written, and the one the pack ends in with the length.
            None => Window::growing(
                ground_limits().max_total_bytes,
                state.received,
                self.rtt,
                allow.rate,
            ),
        };
        let clock = Instant::now();
        let mut last_sync = Instant::now();
        while Some(staged.written) != staged.total {
            let mut limit = allow
                .limit(&up, up.acked(), self.wire_total(), self.rtt)
                .offset;
            if staged.total.is_none() {
                limit = limit.min(ahead_of(staged.written, up.sent()));
            }
            let asked = self.ask_ranges(state, &mut up, limit, staged).await?;
            if !asked && up.in_flight() == 0 {
                // Out of budget or time: what arrived is kept for the next pass.
                staged.persist(ground, state)?;
                return Ok(false);
            }
            let deadline = allow.deadline.filter(|_| up.in_flight() > 0);
            let m = match self.next_or(sleep_until_opt(deadline)).await? {
                Event::Message(m) => m,
                Event::KeptAlive => continue,
                Event::Other(()) => {
                    staged.persist(ground, state)?;
                    return Ok(false);
                }
            };
            match m {
                Message::KeepAlive => {}
                Message::PackData { offset, bytes } => {
                    staged.write(offset, &bytes)?;
                    up.on_ack(staged.written, clock.elapsed())
                        .map_err(|_| GroundError::BadReply("pull data"))?;
                    if staged.written - state.received >= PULL_SYNC_BYTES
                        || last_sync.elapsed() >= ACK_INTERVAL
                        || Some(staged.written) == staged.total
                    {
                        staged.persist(ground, state)?;
                        last_sync = Instant::now();
                    }
                    progress(Progress {
                        pack: state.pack,
                        sent: staged.written,
                        acked: state.received,
                        // While the node encodes it, what has come so far (as a push shows
                        // what is encoded so far).
                        total: staged.total.unwrap_or(staged.written),
                    });
                }
                Message::PackEnd { pack, len } if pack == state.pack => {
                    // The data before it came in order: all of the pack is here.
                    if staged.total.is_some_and(|t| t != len) || staged.written != len {
                        return Err(GroundError::BadReply("pull pack length"));
                    }
                    staged.total = Some(len);
                    state.len = Some(len);
                    up.end_at(len);
                    staged.persist(ground, state)?;
                    last_sync = Instant::now();
                }
                Message::Error {
                    kind: ErrorKind::NotFound,
                    message,
                } => return Err(GroundError::PullDropped(message)),
                Message::Error { kind, message } => return Err(remote(kind, message)),
                _ => {
                    return Err(GroundError::Unexpected {
                        expected: "PackData",
                    });
                }
            }
        }
        Ok(true)
    }

    /// Asks for the frames the window and `limit` allow, in ranges of up to 256 KiB: one
    /// request costs about 60 bytes of the scarce uplink. True when it asked for any.
    async fn ask_ranges(
        &mut self,
        state: &PullIncoming,
        up: &mut Window,
        limit: u64,
        staged: &mut Receiving<'_>,
    ) -> Result<bool, GroundError> {
        let mut frames = Vec::new();
        while let Some(f) = up.next_frame(limit) {
            frames.push(f);
        }
        for (a, b) in coalesce(&frames, PULL_RANGE_BYTES) {
            let ask = Message::PullRange {
                pack: state.pack,
                offset: a,
                len: b - a,
            };
            if let Err(e) = self.tx.send(&ask).await {
                // The link failed on the way up; what the node sent before may still be in
                // this side's buffers: take it, it came in authenticated records.
                self.drain_pull_data(staged).await;
                return Err(e.into());
            }
        }
        Ok(!frames.is_empty())
    }

    /// Takes the pull data already received when the link failed, in order, until the link
    /// ends or stays silent for a moment.
    async fn drain_pull_data(&mut self, staged: &mut Receiving<'_>) {
        let wait = self.rtt + std::time::Duration::from_millis(500);
        while let Ok(Ok(m)) = tokio::time::timeout(wait, self.rx.recv()).await {
            match m {
                Message::KeepAlive => {}
                Message::PackData { offset, bytes } => {
                    if staged.write(offset, &bytes).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a pull pack offered while encoded (length unknown) cost 350 more uplink
    /// bytes than one offered whole (0.502 of rsync's bytes on the results folder of
    /// `benches/compare/pull.sh`, past its 0.5 target): the ground asked for its whole
    /// window up front, mostly past the end, then a range for each frame that arrived.
    #[test]
    fn a_pack_of_unknown_length_is_asked_for_in_whole_ranges_growing_with_what_came() {
        const R: u64 = PULL_RANGE_BYTES;
        // Nothing here yet: one range.
        assert_eq!(ahead_of(0, 0), R);
        // A frame of it arrived: nothing more is asked until a whole range fits.
        assert_eq!(ahead_of(16_384, R), R);
        // A whole range arrived: two more.
        assert_eq!(ahead_of(R, R), 3 * R);
        assert_eq!(ahead_of(R + 1, 3 * R), 3 * R);
        assert_eq!(ahead_of(3 * R, 3 * R), 7 * R);
    }

    #[test]
    fn adjacent_ranges_are_joined_up_to_the_most_one_request_asks_for() {
        // (0,4) and (4,8) join: 8 bytes, at the most. (8,12) would make 12: a new range.
        // (20,24) is not adjacent to (8,12). (24,40) would make 20: a new one, and alone it
        // may pass the most.
        let ranges = [(0, 4), (4, 8), (8, 12), (20, 24), (24, 40)];
        assert_eq!(
            coalesce(&ranges, 8),
            vec![(0, 8), (8, 12), (20, 24), (24, 40)]
        );
        // Frames of 4 KiB joined into 16 KiB requests: 0..16K, 16K..32K, 32K..36K.
        let frames: Vec<(u64, u64)> = (0..9).map(|i| (i * 4096, (i + 1) * 4096)).collect();
        assert_eq!(
            coalesce(&frames, 16_384),
            vec![(0, 16_384), (16_384, 32_768), (32_768, 36_864)]
        );
        assert_eq!(coalesce(&[], 8), Vec::<(u64, u64)>::new());
        assert_eq!(coalesce(&[(0, 100)], 8), vec![(0, 100)]);
    }
}
