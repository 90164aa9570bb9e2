//! Segments compressed on worker threads and written in the order they were cut: what
//! [`Effort::jobs`](super::Effort::jobs) buys a sender with cores to spare at a level whose
//! zstd runs on one thread (level 19's long-distance matching against a prefix). Every
//! segment is its own frame, cut by the encoder's thread before it is handed over, so the
//! bytes are those one thread makes.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::PackError;
use super::format::{Item, PrefixPart, SegmentHead, write_varint};
use crate::delta::zstd_ref;

/// A segment cut and its prefix read: everything its compression needs.
pub(super) struct Job {
    /// The prefix the frame is compressed against (its parts' bytes, in order).
    pub prefix: Vec<u8>,
    pub parts: Vec<PrefixPart>,
    /// Unchanged neighbours of rsync deltas' changes, tried as more prefix.
    pub ranges: Vec<PrefixPart>,
    pub range_bytes: Vec<u8>,
    pub content: Vec<u8>,
    pub items: Vec<Item>,
    pub max_window_log: u32,
    pub tuning: zstd_ref::Tuning,
}

impl Job {
    /// The segment as it goes into the pack: its head's length, its head, its frame.
    pub(super) fn run(self) -> Result<Vec<u8>, PackError> {
        let Job {
            mut prefix,
            mut parts,
            ranges,
            range_bytes,
            content,
            items,
            max_window_log,
            tuning,
        } = self;
        let compress = |prefix: &[u8]| -> Result<(Vec<u8>, u32), PackError> {
            let mut frame = Vec::new();
            let wl = zstd_ref::compress_with(
                prefix,
                &mut &content[..],
                content.len() as u64,
                max_window_log,
                tuning,
                &mut frame,
            )?;
            Ok((frame, wl))
        };
        let (mut frame, mut window_log) = if content.is_empty() {
            (Vec::new(), 0)
        } else {
            compress(&prefix)?
        };
        // Unchanged neighbours of the rsync deltas' literal bytes, nearest the deltas. They make
        // a changed database page cost its change; but level 19's parser also takes short
        // matches from them that cost more than literals (decimal text compresses worse with a
        // prefix of more decimal text), so they stay only where they make the frame smaller.
        if !ranges.is_empty() && !content.is_empty() {
            prefix.extend_from_slice(&range_bytes);
            let (with, wl) = compress(&prefix)?;
            if with.len() < frame.len() {
                (frame, window_log) = (with, wl);
                parts.extend(ranges);
            }
        }
        drop(prefix);
        let head = SegmentHead {
            prefix: parts,
            items,
            frame_len: frame.len() as u64,
            window_log: window_log as u8,
        }
        .encode()?;
        let mut out = Vec::with_capacity(10 + head.len() + frame.len());
        write_varint(head.len() as u64, &mut out);
        out.extend_from_slice(&head);
        out.extend_from_slice(&frame);
        Ok(out)
    }
}

type Done = (u64, Result<Vec<u8>, PackError>);

/// Worker threads compressing segments; results written in order.
pub(super) struct Pool {
    work: Option<SyncSender<(u64, Job)>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// Jobs handed over so far, and written so far.
    sent: u64,
    written: u64,
    /// Compressed segments waiting for those before them.
    ready: BTreeMap<u64, Vec<u8>>,
    /// Jobs in flight at most: each holds a segment, its prefix and zstd's state.
    most: u64,
}

impl Pool {
    pub(super) fn new(jobs: u32) -> Pool {
        let (work, inbox) = sync_channel::<(u64, Job)>(0);
        let (done_tx, done) = sync_channel::<Done>(jobs as usize);
        let inbox = Arc::new(Mutex::new(inbox));
        let workers = (0..jobs)
            .map(|i| {
                let (inbox, done) = (inbox.clone(), done_tx.clone());
                std::thread::Builder::new()
                    .name(format!("segment-{i}"))
                    .spawn(move || {
                        loop {
                            // One worker waits on the inbox at a time; the lock is released
                            // before the work.
                            let next = inbox.lock().expect("segment inbox").recv();
                            let Ok((seq, job)) = next else { return };
                            // A panic is an answer too: the encoder waits for every one.
                            let result =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    job.run()
                                }))
                                .unwrap_or_else(|_| {
                                    Err(PackError::Structure(
                                        "a segment's compression failed".into(),
                                    ))
                                });
                            if done.send((seq, result)).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("a segment worker thread")
            })
            .collect();
        Pool {
            work: Some(work),
            done,
            workers,
            sent: 0,
            written: 0,
            ready: BTreeMap::new(),
            most: jobs.max(1) as u64,
        }
    }

    /// Hands `job` to a worker, first writing (in order) what is done while as many jobs as
    /// there are workers are in flight. Returns the bytes written.
    pub(super) fn submit(&mut self, job: Job, out: &mut dyn Write) -> Result<u64, PackError> {
        let mut wrote = 0;
        while self.sent - self.written >= self.most {
            wrote += self.wait_one(out)?;
        }
        let work = self.work.as_ref().expect("pool open");
        if work.send((self.sent, job)).is_err() {
            return Err(PackError::Structure("a segment worker stopped".into()));
        }
        self.sent += 1;
        Ok(wrote)
    }

    /// Writes every segment still in flight, in order. Returns the bytes written.
    pub(super) fn finish(&mut self, out: &mut dyn Write) -> Result<u64, PackError> {
        let mut wrote = 0;
        while self.written < self.sent {
            wrote += self.wait_one(out)?;
        }
        Ok(wrote)
    }

    /// Waits for one more segment, and writes those now in order.
    fn wait_one(&mut self, out: &mut dyn Write) -> Result<u64, PackError> {
        let (seq, bytes) = self
            .done
            .recv()
            .map_err(|_| PackError::Structure("a segment worker stopped".into()))?;
        self.ready.insert(seq, bytes?);
        let mut wrote = 0;
        while let Some(bytes) = self.ready.remove(&self.written) {
            out.write_all(&bytes)?;
            out.flush()?;
            wrote += bytes.len() as u64;
            self.written += 1;
        }
        Ok(wrote)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the inbox ends the workers once their job is done.
        self.work.take();
        while self.done.try_recv().is_ok() {}
        for w in self.workers.drain(..) {
            // A worker blocked on sending its result is freed by draining.
            while !w.is_finished() {
                let _ = self.done.recv_timeout(std::time::Duration::from_millis(20));
            }
            let _ = w.join();
        }
    }
}
