//! The windowed sender: a queued pack is offered, then streamed from the offset the node names
//! with a window of bytes in flight, while acknowledgements are read as they come (the window
//! itself is the sans-IO [`Window`]). It stops between frames when the budget or the deadline
//! says so. Also the packs the ground gives up on: dropped from the queue and cancelled at the
//! node.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until};

use super::client::{Event, remote};
use super::encoding::Encoding;
use super::{Allowance, Client, Ground, GroundError, Progress, PushReport, io_at};
use crate::id::{ManifestId, NodeId, PackId};
use crate::link::{ACK_INTERVAL, LinkError, sleep_until_opt};
use crate::pack::{PackError, PlanStats};
use crate::path::VolumePath;
use crate::state::{OutgoingPack, PackState};
use crate::window::Window;
use crate::wire::{ErrorKind, Message};

/// How a pack's upload ended on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Verified and applied onboard; the volume is at this root.
    Applied(ManifestId),
    /// Stopped by the budget or the deadline; durable onboard up to `acked`.
    Incomplete { acked: u64, total: u64 },
}

/// One pack upload on this connection, as it goes.
struct Sending<'p> {
    pack: PackId,
    /// The pack's file: frames are read from it as they go.
    file: &'p std::fs::File,
    /// The encoder still writing the file, if it is.
    encoding: Option<&'p Encoding>,
    /// The pack's end was told to the node (a pack offered while it was encoded).
    end_sent: bool,
    up: Window,
    /// The upload's clock: acknowledgements measure the link's rate against it.
    clock: Instant,
    /// The link's own time, for rate estimates: while bytes are in flight, from a frame sent
    /// with none in flight to each acknowledgement in turn (scanning, encoding, the node's
    /// apply and waits for the encoder are not the link).
    link_since: Option<Instant>,
    /// Out of budget or time: nothing more is sent, and the upload ends once what is in flight
    /// is acknowledged (or the wait for it ends).
    stopped: bool,
}

impl Sending<'_> {
    fn progress(&self) -> Progress {
        Progress {
            pack: self.pack,
            sent: self.up.sent(),
            acked: self.up.acked(),
            total: self.up.total(),
        }
    }

    fn incomplete(&self) -> Sent {
        Sent::Incomplete {
            acked: self.up.acked(),
            total: self.up.total(),
        }
    }

    /// Takes the limit the allowance sets now (None once stopped) and returns the offset not to
    /// pass. Stops the upload when nothing more can go.
    fn take_limit(&mut self, limit: Option<super::budget::SendLimit>) -> u64 {
        let offset = match limit {
            None => self.up.sent(),
            Some(l) => {
                // The budget or the time is spent: no acknowledgement will make room again.
                // (Otherwise the limit only waits for bytes in flight to land.)
                if l.spent && l.offset <= self.up.sent() && !self.up.all_sent() {
                    self.stopped = true;
                }
                l.offset
            }
        };
        if offset <= self.up.sent()
            && !self.up.all_sent()
            && self.up.in_flight() == 0
            && !(self.up.waiting_for_bytes() && offset >= self.up.total())
        {
            self.stopped = true;
        }
        offset
    }

    /// The frame of the pack's bytes `a..b`; the link's time starts with the first one.
    fn frame(&mut self, a: u64, b: u64) -> std::io::Result<Message> {
        self.link_since.get_or_insert_with(Instant::now);
        let mut bytes = vec![0u8; (b - a) as usize];
        crate::delta::ReadAt::read_exact_at(self.file, &mut bytes, a)?;
        Ok(Message::PackData { offset: a, bytes })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Drops a queued pack for good: its row and its file, and what the node staged of it.
    pub(super) fn discard_queued(
        &mut self,
        ground: &Ground,
        q: &OutgoingPack,
    ) -> Result<(), GroundError> {
        ground.db.delete_outgoing(&q.pack)?;
        let _ = std::fs::remove_file(ground.pack_path(&q.pack));
        // Whatever the node staged of it would otherwise wait there for weeks.
        self.cancels.push(q.pack);
        Ok(())
    }

    /// Tells the node about packs this ground gave up on.
    pub(super) async fn send_cancels(&mut self) -> Result<(), GroundError> {
        if self.cancels.is_empty() {
            return Ok(());
        }
        let msgs: Vec<Message> = self
            .cancels
            .drain(..)
            .map(|pack| Message::PackCancel { pack })
            .collect();
        self.tx.send_all(&msgs).await?;
        Ok(())
    }

    /// Sends a queued pack from where the onboard side stands.
    pub async fn send_queued(
        &mut self,
        ground: &Ground,
        q: &OutgoingPack,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PushReport, GroundError> {
        let (path, file) = self.load_queued(ground, q)?;
        let mut q = q.clone();
        let sent = self
            .send_pack(ground, &mut q, &file, None, allow, progress)
            .await;
        self.report_sent(ground, &q, &path, sent)
    }

    /// Sends a pack while it is encoded (see [`super::encoding`]): its first bytes go as soon
    /// as the encoder writes them. `q` is its queue row, which is written once the pack is
    /// whole; if the upload stops first (budget, deadline, link), this waits for the encoder,
    /// so the pack is queued whole for the next pass.
    pub(super) async fn send_encoding(
        &mut self,
        ground: &Ground,
        mut q: OutgoingPack,
        encoding: Encoding,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(PushReport, PlanStats), GroundError> {
        let file = std::fs::File::open(&encoding.path).map_err(io_at(&encoding.path))?;
        let sent = self
            .send_pack(ground, &mut q, &file, Some(&encoding), allow, progress)
            .await;
        // Whatever happened on the link, the encoder ends first: a pack half written is
        // neither queued nor kept.
        let encoded = match self.wait_for_encoder(encoding, sent.is_ok()).await {
            Ok(e) => e,
            Err(e) => {
                self.drop_encoding(ground, &q);
                return Err(e.into());
            }
        };
        if q.len == 0 {
            let acked = match &sent {
                Ok((Sent::Incomplete { acked, .. }, _)) => *acked,
                _ => 0,
            };
            self.queue_encoded(
                ground,
                &mut q,
                &encoded.path,
                encoded.len,
                encoded.hash,
                acked,
            )?;
        }
        let stats = encoded.stats;
        let path = ground.pack_path(&q.pack);
        Ok((self.report_sent(ground, &q, &path, sent)?, stats))
    }

    /// Waits for the encoder to end, keeping the link alive meanwhile when it still is.
    async fn wait_for_encoder(
        &mut self,
        encoding: Encoding,
        link_up: bool,
    ) -> Result<super::encoding::Encoded, PackError> {
        let finish = encoding.finish();
        tokio::pin!(finish);
        if link_up {
            loop {
                match self.next_or(&mut finish).await {
                    Ok(Event::Other(r)) => return r,
                    // Late acknowledgements: the next offer asks the node where it stands.
                    Ok(Event::Message(_) | Event::KeptAlive) => {}
                    Err(_) => break,
                }
            }
        }
        finish.await
    }

    /// The push report of an upload that ended with `sent`; a pack the node will never take
    /// is dropped from the queue.
    fn report_sent(
        &mut self,
        ground: &Ground,
        q: &OutgoingPack,
        path: &Path,
        sent: Result<(Sent, u64), GroundError>,
    ) -> Result<PushReport, GroundError> {
        let mut report = PushReport {
            content_bytes: q.content_bytes,
            pack_bytes: q.len,
            pack: Some(q.pack.to_hex()),
            acked: q.acked,
            resumed_from: q.acked,
            ..PushReport::new(&q.pod, &self.node, q.summary.clone(), q.base_root)
        };
        let sent = match sent {
            Err(
                e @ GroundError::Remote {
                    kind:
                        ErrorKind::Refused
                        | ErrorKind::TooLarge
                        | ErrorKind::Protocol
                        | ErrorKind::Conflict,
                    ..
                },
            ) => {
                // The onboard side will never take this pack (refused, or the volume moved on
                // under its scope): drop it, or it would block every later push to the pod.
                self.discard_queued(ground, q)?;
                return Err(e);
            }
            other => other?,
        };
        match sent {
            (Sent::Applied(root), from) => {
                record_applied(ground, &self.node, q, path, root)?;
                report.complete = true;
                report.acked = q.len;
                report.resumed_from = from;
                report.root = root.to_hex();
            }
            (Sent::Incomplete { acked, .. }, from) => {
                report.acked = acked;
                report.resumed_from = from;
            }
        }
        Ok(report)
    }

    /// The encoder wrote the whole pack: it moves to its place in `packs/` and its queue row
    /// is written, with what the node has acknowledged so far.
    fn queue_encoded(
        &mut self,
        ground: &Ground,
        q: &mut OutgoingPack,
        written: &Path,
        len: u64,
        hash: [u8; 32],
        acked: u64,
    ) -> Result<(), GroundError> {
        let path = ground.pack_path(&q.pack);
        std::fs::rename(written, &path).map_err(io_at(&path))?;
        q.len = len;
        q.hash = Some(hash);
        q.acked = acked;
        q.state = if acked > 0 {
            PackState::Sending
        } else {
            PackState::Queued
        };
        ground.db.insert_outgoing(q)?;
        Ok(())
    }

    /// A pack whose encoding failed: its file goes, and the node drops what it staged.
    fn drop_encoding(&mut self, ground: &Ground, q: &OutgoingPack) {
        let _ = std::fs::remove_file(ground.encoding_path(&self.node, &q.pack));
        let _ = std::fs::remove_file(ground.pack_path(&q.pack));
        let _ = ground.db.delete_outgoing(&q.pack);
        self.cancels.push(q.pack);
    }

    /// A queued pack's file, checked against its row (read through a fixed buffer). A damaged
    /// one is dropped; the next push plans again.
    fn load_queued(
        &mut self,
        ground: &Ground,
        q: &OutgoingPack,
    ) -> Result<(PathBuf, std::fs::File), GroundError> {
        let path = ground.pack_path(&q.pack);
        let mut file = std::fs::File::open(&path).map_err(io_at(&path))?;
        let mut hasher = blake3::Hasher::new();
        let len = std::io::copy(&mut file, &mut hasher).map_err(io_at(&path))?;
        let hash = *hasher.finalize().as_bytes();
        // Packs queued before push ids named their pod are named by their bytes alone; since
        // packs are sent while they are encoded, the row holds the pack's hash.
        let named = PackId::for_push(&hash, &q.node, q.pod.as_str(), q.dest.as_deref());
        let intact = match q.hash {
            Some(h) => h == hash,
            None => q.pack == named || q.pack == PackId(hash),
        };
        if len != q.len || !intact {
            self.discard_queued(ground, q)?;
            return Err(GroundError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other("queued pack is damaged; push again"),
            });
        }
        Ok((path, file))
    }

    /// Offers a pack and streams it from the offset the onboard side names, with a window of
    /// bytes in flight, reading acknowledgements as they come. Stops at the allowance's budget
    /// or deadline. Returns how it ended and the offset it started from.
    async fn send_pack(
        &mut self,
        ground: &Ground,
        q: &mut OutgoingPack,
        file: &std::fs::File,
        encoding: Option<&Encoding>,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Sent, u64), GroundError> {
        let total = encoding.is_none().then_some(q.len);
        let from = self.offer(ground, q, total).await?;
        let up = match encoding {
            None => Window::new(q.len, from, self.rtt, allow.rate),
            Some(e) => Window::growing(e.progress().written, from, self.rtt, allow.rate),
        };
        let mut s = Sending {
            pack: q.pack,
            file,
            encoding,
            end_sent: false,
            up,
            clock: Instant::now(),
            link_since: None,
            stopped: false,
        };
        progress(s.progress());
        loop {
            self.follow_encoder(ground, q, &mut s).await?;
            let limit =
                (!s.stopped).then(|| allow.limit(&s.up, s.up.sent(), self.wire_total(), self.rtt));
            let limit = s.take_limit(limit);
            if s.stopped && s.up.in_flight() == 0 {
                return Ok((s.incomplete(), from));
            }
            let frame = if s.stopped {
                None
            } else {
                s.up.next_frame(limit)
            };
            let heard = match frame {
                Some((a, b)) => {
                    let frame = s.frame(a, b).map_err(io_at(&ground.pack_path(&q.pack)))?;
                    Some(self.send_reading(&frame).await?)
                }
                // Out of budget or time (`stopped`): ask for a last acknowledgement and stop.
                None if s.stopped => self.last_ack(allow.deadline).await?,
                // Everything encoded so far is on its way: wait for the encoder (or for
                // acknowledgements meanwhile).
                None if s.up.waiting_for_bytes() && limit >= s.up.total() => {
                    let enc = s.encoding.expect("only a growing pack waits for bytes");
                    match self.next_or(enc.advanced()).await? {
                        Event::Message(m) => Some(vec![m]),
                        Event::KeptAlive | Event::Other(()) => Some(Vec::new()),
                    }
                }
                // Otherwise the window is full, or the rest may not land by the deadline at
                // the rate known so far: wait for acknowledgements.
                None => self.await_acks(allow.deadline).await?,
            };
            let Some(incoming) = heard else {
                return Ok((s.incomplete(), from));
            };
            for m in incoming {
                if let Some(root) = self.take_answer(ground, &mut s, m, progress)? {
                    return Ok((Sent::Applied(root), from));
                }
            }
            if !s.stopped {
                progress(s.progress());
            }
        }
    }

    /// Offers the pack; returns the offset the node resumes it from.
    async fn offer(
        &mut self,
        ground: &Ground,
        q: &OutgoingPack,
        total: Option<u64>,
    ) -> Result<u64, GroundError> {
        let pack = q.pack;
        self.send_cancels().await?;
        self.tx
            .send(&Message::PackOffer {
                pod: q.pod.clone(),
                pack,
                len: total,
                base_root: q.base_root,
                target_root: q.target_root,
                scope: q
                    .dest
                    .as_deref()
                    .map(VolumePath::new)
                    .transpose()
                    .map_err(|_| GroundError::BadReply("queued destination"))?,
            })
            .await?;
        let from = match self.recv().await? {
            Message::PackAccept { pack: p, offset }
                if p == pack && total.is_none_or(|t| offset <= t) =>
            {
                offset
            }
            _ => {
                return Err(GroundError::Unexpected {
                    expected: "PackAccept",
                });
            }
        };
        ground
            .db
            .set_outgoing_progress(&pack, from, PackState::Sending)?;
        Ok(from)
    }

    /// Takes what the encoder wrote since the last look into the window; once the pack is
    /// whole, queues it and tells the node its length.
    async fn follow_encoder(
        &mut self,
        ground: &Ground,
        q: &mut OutgoingPack,
        s: &mut Sending<'_>,
    ) -> Result<(), GroundError> {
        let Some(enc) = s.encoding else {
            return Ok(());
        };
        let p = enc.progress();
        if p.failed {
            // The caller hears why from the encoder itself.
            return Err(GroundError::EncodingStopped);
        }
        s.up.grow(p.written, p.whole.is_some());
        if let (Some(len), Some(hash), false) = (p.whole, p.hash, s.end_sent) {
            self.queue_encoded(ground, q, &enc.path, len, hash, s.up.acked())?;
            self.tx
                .send(&Message::PackEnd { pack: s.pack, len })
                .await?;
            s.end_sent = true;
        }
        Ok(())
    }

    /// Writes a frame while reading whatever comes back meanwhile: every message is kept, as
    /// acknowledgements must be taken as they come, or the window closes on bytes long since
    /// durable.
    async fn send_reading(&mut self, frame: &Message) -> Result<Vec<Message>, GroundError> {
        let write = self.tx.send(frame);
        tokio::pin!(write);
        let mut got = Vec::new();
        loop {
            tokio::select! {
                biased;
                r = &mut write => { r?; break; }
                m = self.rx.recv() => got.push(m?),
            }
        }
        Ok(got)
    }

    /// Out of budget or time with bytes in flight: says goodbye now and waits a little for the
    /// last acknowledgement. The onboard side handles what is before the goodbye, makes it
    /// durable, answers with a last acknowledgement and closes; no need to wait for its ack
    /// timer. None: the upload ends here.
    async fn last_ack(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<Message>>, GroundError> {
        if !self.said_bye {
            self.tx.send(&Message::Bye).await?;
            self.said_bye = true;
        }
        let wait = sleep_until(
            deadline
                .unwrap_or_else(|| Instant::now() + ACK_INTERVAL * 3)
                .min(Instant::now() + ACK_INTERVAL * 3),
        );
        tokio::select! {
            m = self.rx.recv() => match m {
                Ok(m) => Ok(Some(vec![m])),
                Err(LinkError::Closed) => Ok(None),
                Err(e) => Err(e.into()),
            },
            _ = wait => Ok(None),
        }
    }

    /// Waits for acknowledgements (window full) or for the apply (all sent), keeping the link
    /// alive. The deadline still holds: a pack wholly sent applies onboard anyway, and the next
    /// pass hears so at once. None: the deadline came first.
    async fn await_acks(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<Message>>, GroundError> {
        Ok(match self.next_or(sleep_until_opt(deadline)).await? {
            Event::Message(m) => Some(vec![m]),
            Event::KeptAlive => Some(Vec::new()),
            Event::Other(()) => None,
        })
    }

    /// Takes one message from the node during an upload: an acknowledgement moves the window
    /// (and is recorded), the apply ends the upload (its root returned).
    fn take_answer(
        &mut self,
        ground: &Ground,
        s: &mut Sending<'_>,
        m: Message,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Option<ManifestId>, GroundError> {
        match m {
            Message::KeepAlive => {}
            Message::PackAck { offset } => {
                let before = s.up.acked();
                s.up.on_ack(offset, s.clock.elapsed())
                    .map_err(|_| GroundError::BadReply("acknowledgement"))?;
                if let Some(mark) = s.link_since.as_mut() {
                    self.on_link.0 += offset - before;
                    self.on_link.1 += mark.elapsed();
                    *mark = Instant::now();
                }
                // Nothing in flight: the link idles until the next frame (a sender waiting for
                // its encoder), and that is not its time.
                if s.up.in_flight() == 0 {
                    s.link_since = None;
                }
                ground
                    .db
                    .set_outgoing_progress(&s.pack, offset, PackState::Sending)?;
                progress(s.progress());
            }
            Message::PackApplied { pack: p, root }
                if p == s.pack && s.up.all_sent() && (s.encoding.is_none() || s.end_sent) =>
            {
                let total = s.up.total();
                progress(Progress {
                    pack: s.pack,
                    sent: total,
                    acked: total,
                    total,
                });
                return Ok(Some(root));
            }
            Message::Error { kind, message } => return Err(remote(kind, message)),
            _ => {
                return Err(GroundError::Unexpected {
                    expected: "PackAck or PackApplied",
                });
            }
        }
        Ok(None)
    }
}

/// A queued pack applied: the pod's new manifest is known, the pack leaves the queue, and the
/// content store lets go of content no pod holds any more and no queued pack needs.
fn record_applied(
    ground: &Ground,
    node: &NodeId,
    q: &OutgoingPack,
    path: &Path,
    root: ManifestId,
) -> Result<(), GroundError> {
    if root == q.target_root {
        // The onboard side now holds the target: record it.
        ground.db.set_known_manifest(node, &q.pod, &q.target)?;
    } else if q.dest.is_none() {
        return Err(GroundError::BadReply("applied root"));
    }
    // Otherwise the pod changed files outside the push's folder meanwhile; the next manifest
    // request learns them (as a delta from what is known).
    ground.db.finish_outgoing(&q.pack)?;
    let _ = std::fs::remove_file(path);
    let keep = ground.db.referenced_content()?;
    ground.store.retain(&keep).map_err(io_at(path))?;
    Ok(())
}
