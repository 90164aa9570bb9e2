//! One connection to a node, from the ground's side: the welcome, messages in (keeping the link
//! alive while it waits), the pod's manifest, rsync signatures and the goodbye. Each operation
//! (push, send, rm, pull) adds its own `impl Client` block in its own file.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use super::{Ground, GroundError};
use crate::id::{NodeId, PackId};
use crate::link::{Counters, Link, LinkReader, LinkWriter, Waited, keep_alive_until};
use crate::manifest::{Describe, Manifest, SkippedReport, apply_changes};
use crate::pack::{Limits, Plan};
use crate::path::PodName;
use crate::wire::blob::{self, BlobError};
use crate::wire::{ErrorKind, ManifestBody, Message};

/// Largest decompressed manifest or signature set accepted from the onboard side.
const MAX_REPLY_BYTES: usize = 1 << 30;

/// Progress of a pack upload (or of a pull pack's download), for bars and lines.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub pack: PackId,
    pub sent: u64,
    pub acked: u64,
    pub total: u64,
}

/// A connected ground client. The link is kept as its two halves so that a pack upload reads
/// acknowledgements while it writes.
pub struct Client<S> {
    pub(super) rx: LinkReader<ReadHalf<S>>,
    pub(super) tx: LinkWriter<WriteHalf<S>>,
    counters: Arc<Counters>,
    pub(super) rtt: Duration,
    /// A goodbye went out already (an upload that ran out of budget or time sends it early).
    pub(super) said_bye: bool,
    /// Packs given up on, to tell the node at the next chance.
    pub(super) cancels: Vec<PackId>,
    /// Pack bytes the node acknowledged on this connection, and the seconds they took on the
    /// link: what `link_log` records for rate estimates.
    pub(super) on_link: (u64, Duration),
    /// What the node's last answer left out of the pod's volume (`Message::Skipped`).
    pub(super) skipped: SkippedReport,
    pub node: NodeId,
    pub limits: Limits,
    pub software: String,
}

pub(super) fn remote(kind: ErrorKind, message: String) -> GroundError {
    GroundError::Remote { kind, message }
}

/// A blob's refusal in the words this side has always used for it.
fn blob_error(e: BlobError) -> GroundError {
    match e {
        BlobError::Corrupt => GroundError::BadReply("blob"),
        BlobError::TooLarge { .. } => GroundError::BadReply("oversized blob"),
        BlobError::Malformed("changes") => GroundError::BadReply("manifest delta"),
        BlobError::Malformed(_) => GroundError::BadReply("signatures"),
        BlobError::Manifest(e) => GroundError::Manifest(e),
    }
}

/// What came first while a client waited on the link ([`Client::next_or`]).
pub(super) enum Event<T> {
    /// A message from the node (keep-alives included).
    Message(Message),
    /// This side had been silent for a while: a keep-alive went out.
    KeptAlive,
    /// What the client waited for beside the link finished.
    Other(T),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Waits for the onboard side's welcome.
    pub async fn start(link: Link<S>) -> Result<Self, GroundError> {
        let counters = link.counters();
        let rtt = link.rtt();
        let (mut rx, tx) = link.split();
        loop {
            match rx.recv().await? {
                Message::Welcome {
                    node,
                    limits,
                    software,
                } => {
                    return Ok(Self {
                        rx,
                        tx,
                        counters,
                        rtt,
                        said_bye: false,
                        cancels: Vec::new(),
                        on_link: (0, Duration::ZERO),
                        skipped: SkippedReport::default(),
                        node,
                        limits,
                        software,
                    });
                }
                Message::KeepAlive => continue,
                Message::Error { kind, message } => return Err(remote(kind, message)),
                _ => {
                    return Err(GroundError::Unexpected {
                        expected: "Welcome",
                    });
                }
            }
        }
    }

    /// Bytes on the wire so far: (sent, received).
    pub fn wire_bytes(&self) -> (u64, u64) {
        (self.counters.sent(), self.counters.received())
    }

    pub(super) fn wire_total(&self) -> u64 {
        self.counters.sent() + self.counters.received()
    }

    /// What the node's last answer (a manifest, a pull offer) left out of the pod's volume.
    pub fn take_skipped(&mut self) -> SkippedReport {
        std::mem::take(&mut self.skipped)
    }

    /// The round trip measured at connection.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// The next message, or `other` if it finishes first, keeping the link alive meanwhile
    /// ([`keep_alive_until`]: returns after each keep-alive, and `other` must be cancel-safe).
    pub(super) async fn next_or<F: Future>(
        &mut self,
        other: F,
    ) -> Result<Event<F::Output>, GroundError> {
        let rx = &mut self.rx;
        let next = async {
            tokio::select! {
                m = rx.recv() => m.map(Event::Message),
                r = other => Ok(Event::Other(r)),
            }
        };
        Ok(match keep_alive_until(&mut self.tx, next).await? {
            Waited::Done(event) => event?,
            Waited::KeptAlive => Event::KeptAlive,
        })
    }

    /// The next message other than a keep-alive; an `Error` from the onboard side becomes
    /// [`GroundError::Remote`]. Sends keep-alives while it waits (the onboard side may be busy
    /// for long: scanning a large volume, applying a pack).
    pub(super) async fn recv(&mut self) -> Result<Message, GroundError> {
        loop {
            match self.next_or(std::future::pending::<Infallible>()).await? {
                Event::Message(Message::KeepAlive) | Event::KeptAlive => continue,
                // A note that comes with the answer that follows it.
                Event::Message(Message::Skipped { entries, more }) => {
                    self.skipped = SkippedReport { entries, more };
                    continue;
                }
                Event::Message(Message::Error { kind, message }) => {
                    return Err(remote(kind, message));
                }
                Event::Message(m) => return Ok(m),
                Event::Other(never) => match never {},
            }
        }
    }

    /// The pod's current manifest, learned as cheaply as the ground's knowledge allows, and
    /// recorded as known.
    pub async fn manifest(
        &mut self,
        ground: &Ground,
        pod: &PodName,
    ) -> Result<Manifest, GroundError> {
        let known = ground.db.known_manifest(&self.node, pod)?;
        self.skipped = SkippedReport::default();
        self.tx
            .send(&Message::ManifestRequest {
                pod: pod.clone(),
                known: known.as_ref().map(|k| k.root),
            })
            .await?;
        let (root, body) = match self.recv().await? {
            Message::ManifestReply { root, body, .. } => (root, body),
            _ => {
                return Err(GroundError::Unexpected {
                    expected: "ManifestReply",
                });
            }
        };
        let manifest = match body {
            ManifestBody::Same => known
                .map(|k| k.manifest)
                .ok_or(GroundError::BadReply("'same' manifest"))?,
            ManifestBody::Delta { from, blob } => {
                let base = known
                    .filter(|k| k.root == from)
                    .ok_or(GroundError::BadReply("manifest delta base"))?;
                let changes = blob::decode_changes(&blob, MAX_REPLY_BYTES).map_err(blob_error)?;
                apply_changes(&base.manifest, &changes, &Describe)?
            }
            ManifestBody::Full { blob } => {
                blob::decode_manifest(&blob, MAX_REPLY_BYTES).map_err(blob_error)?
            }
        };
        if manifest.root() != root {
            return Err(GroundError::BadReply("manifest (root mismatch)"));
        }
        ground.db.set_known_manifest(&self.node, pod, &manifest)?;
        Ok(manifest)
    }

    /// The rsync signatures of the bases `plan` reaches through one (only the node holds them).
    pub(super) async fn signatures(
        &mut self,
        pod: &PodName,
        plan: &Plan,
    ) -> Result<HashMap<u32, Vec<u8>>, GroundError> {
        let entries = plan.signature_requests();
        if entries.is_empty() {
            return Ok(HashMap::new());
        }
        self.tx
            .send(&Message::SignatureRequest {
                pod: pod.clone(),
                base_root: plan.base_root,
                entries,
            })
            .await?;
        match self.recv().await? {
            Message::Signatures { blob } => {
                let list = blob::decode_signatures(&blob, MAX_REPLY_BYTES).map_err(blob_error)?;
                Ok(list.into_iter().collect())
            }
            _ => Err(GroundError::Unexpected {
                expected: "Signatures",
            }),
        }
    }

    /// Says goodbye, takes the onboard side's last acknowledgement, and closes the link.
    /// Returns the bytes this connection moved, and records them for rate estimates.
    pub async fn bye(mut self, ground: &Ground) -> Result<(u64, u64), GroundError> {
        if !self.said_bye {
            self.send_cancels().await?;
            self.tx.send(&Message::Bye).await?;
        }
        // The onboard side answers a goodbye with a last acknowledgement, then closes.
        let drain = async {
            while let Ok(m) = self.rx.recv().await {
                if let Message::PackAck { .. } = m {
                    // Progress is recorded through the queue on the next connection.
                }
            }
        };
        let _ = tokio::time::timeout(self.rtt * 2 + Duration::from_secs(2), drain).await;
        let counts = self.wire_bytes();
        if self.on_link.0 > 0 {
            let _ = ground.db.log_link(
                &self.node,
                self.on_link.0,
                counts.1,
                self.on_link.1.as_secs_f64(),
            );
        }
        let _ = self.tx.close().await;
        Ok(counts)
    }
}
