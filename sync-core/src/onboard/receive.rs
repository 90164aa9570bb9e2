//! A pack the ground pushes, from its offer to its last byte: whether it can still apply, where
//! its upload resumes (the synced offset, and within the same boot the bytes written past it),
//! the staged file, acknowledgements once bytes are durable, and which connection owns it (a
//! ground that reconnects takes its pack over from a connection that has not noticed its link
//! died).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};

use crate::id::{ManifestId, PackId};
use crate::path::{PodName, VolumePath};
use crate::state::IncomingPack;
use crate::wire::{ErrorKind, Message};

use super::follow::TailGuard;
use super::session::{OnboardSession, Outcome};
use super::{OnboardService, Refusal};

/// Staged bytes are made durable and acknowledged at least every this many bytes; the
/// connection also flushes on a timer ([`crate::link::ACK_INTERVAL`]) and when the link drops.
const ACK_EVERY_BYTES: u64 = 256 * 1024;

/// A pack being received on this connection.
pub(super) struct Receiving {
    info: IncomingPack,
    file: File,
    /// Bytes written but not yet synced and acknowledged.
    unsynced: u64,
    /// This connection's claim on the pack (see `OnboardService::receivers`).
    claim: u64,
    /// How far the pack's follower may read, when it is decoded as it arrives (dropped
    /// before the end, it stops the follower).
    tail: Option<TailGuard>,
}

impl Receiving {
    /// Makes the bytes written durable and counts them as received; recording that is the
    /// caller's.
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.info.received += self.unsynced;
        self.unsynced = 0;
        Ok(())
    }
}

impl OnboardSession {
    /// A pack is offered: where to resume it, or the answer at once when it applied already.
    pub(super) fn offer(&mut self, offered: IncomingPack) -> Result<Outcome, Refusal> {
        // A pack offered while another is half received on this connection: keep what came.
        self.flush();
        let (pack, len) = (offered.pack, offered.len);
        let cap = self.svc.max_pack_len();
        if let Some(len) = len.filter(|&len| len > cap) {
            return Err(Refusal::new(
                ErrorKind::TooLarge,
                format!("a pack of {len} bytes is over this node's limit of {cap}"),
            ));
        }
        // Claimed before the state is read, so an older connection still holding the pack
        // stops writing before we look at what it left.
        let claim = self.svc.claim(&pack);
        let known = self.svc.db().incoming(&pack)?;
        // The same pack: the same pod, and the same length where both know it (a pack offered
        // while it was encoded has none yet).
        let known = known
            .filter(|k| k.pod == offered.pod && (k.len == len || k.len.is_none() || len.is_none()));
        if let Some(answer) = self.svc.check_offer(&offered, claim, known.is_some())? {
            return Ok(answer);
        }
        let mut info = match known {
            Some(k) => IncomingPack {
                len: k.len.or(len),
                ..k
            },
            None => offered,
        };
        let (file, unsynced) = self.svc.open_staged(&mut info)?;
        self.svc.db().put_incoming(&info)?;
        let offset = info.received + unsynced;
        let tail = match info.len {
            Some(len) if len == offset => None,
            _ => self.svc.follow(&info, offset).map(TailGuard),
        };
        self.incoming = Some(Receiving {
            info,
            file,
            unsynced,
            claim,
            tail,
        });
        let accept = Message::PackAccept { pack, offset };
        if info_len(&self.incoming) != Some(offset) {
            return Ok(Outcome::replies(vec![accept]));
        }
        // Everything is here already (the daemon died between the last byte and the apply).
        let mut out = self.complete()?;
        out.replies.insert(0, accept);
        Ok(out)
    }

    pub(super) fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<Outcome, Refusal> {
        let Some(rx) = self.incoming.as_mut() else {
            return Err(Refusal::new(
                ErrorKind::Protocol,
                "pack data without an accepted pack offer",
            ));
        };
        if !self.svc.holds_claim(&rx.info.pack, rx.claim) {
            self.incoming = None;
            return Err(Refusal::new(
                ErrorKind::Superseded,
                "a newer connection took this pack over",
            ));
        }
        let at = rx.info.received + rx.unsynced;
        let end = rx.info.len.unwrap_or(self.svc.max_pack_len());
        if offset != at || at + bytes.len() as u64 > end {
            return Err(Refusal::new(
                ErrorKind::Protocol,
                format!("data at offset {offset} does not continue the pack at {at}"),
            ));
        }
        if let Err(e) = rx.file.write_all(bytes) {
            return Err(self.drop_incoming(e));
        }
        rx.unsynced += bytes.len() as u64;
        if let Some(t) = &rx.tail {
            t.wrote(at + bytes.len() as u64);
        }
        if Some(at + bytes.len() as u64) == rx.info.len {
            return self.complete();
        }
        if rx.unsynced >= ACK_EVERY_BYTES {
            return Ok(Outcome::replies(self.flush().into_iter().collect()));
        }
        Ok(Outcome::default())
    }

    /// The pack offered while it was encoded is whole at `len` bytes: received already, or once
    /// the rest comes.
    pub(super) fn end(&mut self, pack: PackId, len: u64) -> Result<Outcome, Refusal> {
        let Some(rx) = self.incoming.as_mut().filter(|r| r.info.pack == pack) else {
            return Err(Refusal::new(
                ErrorKind::Protocol,
                "the end of a pack not accepted on this connection",
            ));
        };
        let at = rx.info.received + rx.unsynced;
        if rx.info.len.is_some_and(|l| l != len) || at > len || len > self.svc.max_pack_len() {
            return Err(Refusal::new(
                ErrorKind::Protocol,
                format!("a pack of {len} bytes, of which {at} were sent"),
            ));
        }
        rx.info.len = Some(len);
        if let Some(t) = &rx.tail {
            t.ended(len);
        }
        if at == len {
            return self.complete();
        }
        self.svc.db().put_incoming(&rx.info)?;
        Ok(Outcome::default())
    }

    /// Makes what was received durable, and says so: the acknowledgement, if there was
    /// anything new. The connection calls this on a timer, and when the link goes away.
    pub fn flush(&mut self) -> Option<Message> {
        let rx = self.incoming.as_mut()?;
        if rx.unsynced == 0 || !self.svc.holds_claim(&rx.info.pack, rx.claim) {
            return None;
        }
        if let Err(e) = rx.sync() {
            eprintln!("staging {}: {e}", rx.info.pack.short());
            return None;
        }
        if let Err(e) = self.svc.db().put_incoming(&rx.info) {
            eprintln!("staging {}: {e}", rx.info.pack.short());
            return None;
        }
        Some(Message::PackAck {
            offset: rx.info.received,
        })
    }

    /// Bytes received and not yet acknowledged.
    pub fn unacknowledged(&self) -> u64 {
        self.incoming.as_ref().map_or(0, |r| r.unsynced)
    }

    /// Storage failed while receiving. When the disk is full, what was received is dropped to
    /// give the space back (the pack could not have fitted anyway); other failures keep it for
    /// a resume.
    fn drop_incoming(&mut self, e: std::io::Error) -> Refusal {
        let Some(rx) = self.incoming.take() else {
            return Refusal::internal(e);
        };
        if e.kind() == std::io::ErrorKind::StorageFull {
            drop(rx.file);
            self.svc.release(&rx.info.pack, rx.claim);
            self.svc.discard(&rx.info.pack);
            let size = rx
                .info
                .len
                .map(|l| format!("a {} pack", crate::units::fmt_bytes(l)))
                .unwrap_or_else(|| "this pack".into());
            Refusal::storage(format!(
                "no space left on this node's state disk for {size}; the partial upload was \
                 dropped"
            ))
        } else {
            Refusal::internal(e)
        }
    }

    /// The whole pack is here: make it durable, then verify and apply it.
    fn complete(&mut self) -> Result<Outcome, Refusal> {
        let rx = self.incoming.as_mut().expect("a pack being received");
        if let Err(e) = rx.sync() {
            return Err(self.drop_incoming(e));
        }
        self.svc.db().put_incoming(&rx.info)?;
        if let Some(t) = &rx.tail {
            t.ended(rx.info.received);
        }
        let info = rx.info.clone();
        let claim = rx.claim;
        self.incoming = None;
        let pack = info.pack;
        self.svc.release(&pack, claim);
        let ack = Message::PackAck {
            offset: info.received,
        };
        self.to_apply = Some(info);
        Ok(Outcome {
            replies: vec![ack],
            close: false,
            more: true,
        })
    }

    /// The ground gave the pack up: stop receiving it here, and drop what was staged.
    pub(super) fn cancel(&mut self, pack: PackId) {
        if let Some(rx) = self.incoming.take_if(|r| r.info.pack == pack) {
            self.svc.release(&pack, rx.claim);
        }
        self.svc.cancel(&pack);
    }
}

/// The length of the pack being received, when known.
fn info_len(incoming: &Option<Receiving>) -> Option<u64> {
    incoming.as_ref().and_then(|r| r.info.len)
}

/// Whether an offered pack can apply to the pod's volume as it is now.
enum Fit {
    Fits,
    Applied(ManifestId),
    Stale,
}

impl OnboardService {
    /// The longest pack this node takes: all the content it accepts and a whole header.
    fn max_pack_len(&self) -> u64 {
        self.limits.max_total_bytes + self.limits.max_header_bytes
    }

    /// Before a byte is sent (or resent): is the offered pack still applicable? Already
    /// applied (the ground missed our answer): that answer, at once. Built on a volume state
    /// that is gone: refused, and what was `staged` of it dropped. Either way the connection's
    /// `claim` on it ends.
    fn check_offer(
        &self,
        offered: &IncomingPack,
        claim: u64,
        staged: bool,
    ) -> Result<Option<Outcome>, Refusal> {
        let pack = offered.pack;
        let fit = self.pack_fits(
            &offered.pod,
            &pack,
            &offered.base_root,
            offered.scope.as_ref(),
        );
        if !matches!(fit, Ok(Fit::Fits)) {
            self.release(&pack, claim);
        }
        match fit? {
            Fit::Fits => Ok(None),
            Fit::Applied(root) => Ok(Some(Outcome::replies(vec![
                Message::PackAccept {
                    pack,
                    offset: offered.len.unwrap_or(offered.received),
                },
                Message::PackApplied { pack, root },
            ]))),
            Fit::Stale => {
                if staged {
                    self.discard(&pack);
                }
                Err(Refusal::conflict(
                    "the pod's volume changed since this pack was planned; plan again",
                ))
            }
        }
    }

    fn pack_fits(
        &self,
        pod: &PodName,
        pack: &PackId,
        base_root: &ManifestId,
        scope: Option<&VolumePath>,
    ) -> Result<Fit, Refusal> {
        let applied = self.db().applied(pack, pod)?;
        let lock = self.pod_lock(pod);
        let _held = lock.lock().expect("pod lock");
        self.settle_pod(pod)?;
        let now = self.scan_pod(pod)?;
        // Applied, and the volume is still where it left it: the ground missed our answer. (The
        // same pack can come again later: the same change from the same state has the same
        // bytes. Then the volume is back at its base and it applies anew.)
        if applied == Some(now.root()) {
            return Ok(Fit::Applied(now.root()));
        }
        if now.root() == *base_root {
            return Ok(Fit::Fits);
        }
        Ok(match self.scoped_base(pod, base_root, scope, &now)? {
            Some(_) => Fit::Fits,
            None => Fit::Stale,
        })
    }

    /// Opens the pack's staged file (creating it) and finds where its upload resumes: the
    /// synced offset, and the bytes past it when this boot wrote them; the file is cut there.
    /// Returns the file, positioned at its end, and how many bytes past the synced offset it
    /// keeps.
    fn open_staged(&self, info: &mut IncomingPack) -> Result<(File, u64), Refusal> {
        let path = self.pack_file(&info.pack);
        let fresh = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(Refusal::internal)?;
        if fresh {
            // The staged file's name must survive a power loss like its bytes do.
            let _ = File::open(self.state_dir.join("staging")).and_then(|d| d.sync_all());
        }
        let on_disk = file.metadata().map_err(Refusal::internal)?.len();
        // A staged file shorter than its record (lost to a crash before its folder entry was
        // durable, or removed by hand): resume from what is really there.
        info.received = info.received.min(on_disk);
        // Bytes past the synced offset were written by this daemon before it died or lost the
        // link. Within the same boot they are in the page cache, whole and in order (each one
        // came out of an authenticated record), so keep them; after a reboot they may be torn.
        let unsynced = if !self.boot.is_empty() && info.boot == self.boot && on_disk > info.received
        {
            on_disk.min(info.len.unwrap_or(u64::MAX)) - info.received
        } else {
            0
        };
        file.set_len(info.received + unsynced)
            .map_err(Refusal::internal)?;
        file.seek(SeekFrom::End(0)).map_err(Refusal::internal)?;
        info.boot = self.boot.clone();
        Ok((file, unsynced))
    }

    /// Claims `pack` for a new connection: from now on only that one writes and records it.
    fn claim(&self, pack: &PackId) -> u64 {
        let c = self
            .next_receiver
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.receivers.lock().expect("receivers").insert(*pack, c);
        c
    }

    fn holds_claim(&self, pack: &PackId, claim: u64) -> bool {
        self.receivers.lock().expect("receivers").get(pack) == Some(&claim)
    }

    /// Drops a staged pack its ground gave up on, unless a connection is receiving it.
    fn cancel(&self, pack: &PackId) {
        let busy = self.receivers.lock().expect("receivers").contains_key(pack);
        if !busy {
            self.discard(pack);
        }
    }

    fn release(&self, pack: &PackId, claim: u64) {
        let mut r = self.receivers.lock().expect("receivers");
        if r.get(pack) == Some(&claim) {
            r.remove(pack);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::Arc;

    use super::*;
    use crate::manifest::Manifest;

    /// The boot the service under test runs in.
    const THIS_BOOT: &str = "this-boot";

    /// A partly received pack whose staged file is longer than its synced offset, written in
    /// `boot`, found by a service running in `this_boot`.
    fn half_received(
        boot: &str,
        this_boot: &str,
    ) -> (tempfile::TempDir, Arc<OnboardService>, PackId, u64) {
        let (t, mut svc) = super::super::service_for_test();
        svc.boot = this_boot.to_string();
        let pod = PodName::new("p".to_string()).unwrap();
        let pack = PackId([7; 32]);
        let len = 1_000;
        svc.db()
            .put_incoming(&IncomingPack {
                pack,
                pod,
                len: Some(len),
                received: 200,
                base_root: Manifest::default().root(),
                target_root: ManifestId([1; 32]),
                boot: boot.to_string(),
                scope: None,
            })
            .unwrap();
        fs::write(svc.pack_file(&pack), vec![5u8; 700]).unwrap();
        (t, Arc::new(svc), pack, len)
    }

    fn offer(svc: &Arc<OnboardService>, pack: PackId, len: u64) -> Message {
        let mut s = svc.session();
        let out = s.handle(Message::PackOffer {
            pod: PodName::new("p".to_string()).unwrap(),
            pack,
            len: Some(len),
            base_root: Manifest::default().root(),
            target_root: ManifestId([1; 32]),
            scope: None,
        });
        out.replies.into_iter().next().unwrap()
    }

    /// Regression: this test returned early, and passed, on a machine without a boot id. The
    /// boot is now the service's to be told, so it always runs.
    #[test]
    fn unsynced_bytes_are_kept_within_the_same_boot() {
        let (_t, svc, pack, len) = half_received(THIS_BOOT, THIS_BOOT);
        assert_eq!(
            offer(&svc, pack, len),
            Message::PackAccept { pack, offset: 700 }
        );
    }

    /// Without a boot id, two boots cannot be told apart: only the synced offset counts.
    #[test]
    fn without_a_boot_id_only_the_synced_offset_counts() {
        let (_t, svc, pack, len) = half_received("", "");
        assert_eq!(
            offer(&svc, pack, len),
            Message::PackAccept { pack, offset: 200 }
        );
    }

    #[test]
    fn a_staged_file_shorter_than_its_record_resumes_from_what_is_there() {
        let (_t, svc, pack, len) = half_received(THIS_BOOT, THIS_BOOT);
        fs::write(svc.pack_file(&pack), vec![5u8; 120]).unwrap();
        assert_eq!(
            offer(&svc, pack, len),
            Message::PackAccept { pack, offset: 120 }
        );
    }

    /// A pack offered while it is encoded has no length until its end is told; bytes come
    /// meanwhile, and the end completes it (or waits for the bytes still missing). An end that
    /// contradicts what came, or comes for another pack, is refused.
    #[test]
    fn a_pack_offered_while_encoded_completes_at_its_end() {
        let (_t, svc) = super::super::service_for_test();
        let svc = Arc::new(svc);
        let pack = PackId([9; 32]);
        let mut s = svc.session();
        let out = s.handle(Message::PackOffer {
            pod: PodName::new("p".to_string()).unwrap(),
            pack,
            len: None,
            base_root: Manifest::default().root(),
            target_root: ManifestId([1; 32]),
            scope: None,
        });
        assert_eq!(out.replies, vec![Message::PackAccept { pack, offset: 0 }]);
        assert_eq!(svc.db().incoming(&pack).unwrap().unwrap().len, None);
        let data = |offset: u64, n: usize| Message::PackData {
            offset,
            bytes: vec![1; n],
        };
        assert!(s.handle(data(0, 3000)).replies.is_empty());
        // Another pack's end, and an end before bytes already sent: refused.
        let other = s.handle(Message::PackEnd {
            pack: PackId([8; 32]),
            len: 5000,
        });
        assert!(matches!(
            &other.replies[..],
            [Message::Error {
                kind: ErrorKind::Protocol,
                ..
            }]
        ));
        let short = s.handle(Message::PackEnd { pack, len: 2000 });
        assert!(matches!(
            &short.replies[..],
            [Message::Error {
                kind: ErrorKind::Protocol,
                ..
            }]
        ));
        // The length, known before the last bytes: recorded, and they complete the pack.
        assert!(
            s.handle(Message::PackEnd { pack, len: 5000 })
                .replies
                .is_empty()
        );
        assert_eq!(svc.db().incoming(&pack).unwrap().unwrap().len, Some(5000));
        let done = s.handle(data(3000, 2000));
        assert_eq!(done.replies, vec![Message::PackAck { offset: 5000 }]);
        assert!(done.more, "the apply follows");
    }

    #[test]
    fn a_cancelled_pack_is_dropped_from_staging() {
        let (_t, svc, pack, _) = half_received(THIS_BOOT, THIS_BOOT);
        let out = svc.session().handle(Message::PackCancel { pack });
        assert!(out.replies.is_empty());
        assert!(!svc.pack_file(&pack).exists());
        assert!(svc.db().incoming(&pack).unwrap().is_none());
    }

    #[test]
    fn after_a_reboot_only_the_synced_offset_counts() {
        let (_t, svc, pack, len) = half_received("a-boot-before-the-last-reboot", THIS_BOOT);
        assert_eq!(
            offer(&svc, pack, len),
            Message::PackAccept { pack, offset: 200 }
        );
        assert_eq!(fs::metadata(svc.pack_file(&pack)).unwrap().len(), 200);
    }
}
