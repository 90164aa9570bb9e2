//! One pull pack, asked for, received (or resumed) and applied: the copy settled and scanned, a
//! pull cut earlier resumed or dropped, the request (with the copy's manifest only when the
//! node does not know it), the node's answer, then the pack's bytes and its apply.

use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite};

use super::apply::AppliedPull;
use super::{PullOptions, PullReport, ground_limits};
use crate::ground::{Allowance, ChangeSummary, Client, Ground, GroundError, Progress};
use crate::id::{ManifestId, PackId};
use crate::manifest::{Manifest, SkippedReport};
use crate::path::PodName;
use crate::state::{PullIncoming, PullRequestKey};
use crate::units::fmt_bytes;
use crate::wire::{ErrorKind, Message};

/// One pull pack being asked for.
struct Asking<'a> {
    pod: &'a PodName,
    opts: &'a PullOptions,
    /// The copy's folder, made and canonical.
    copy: &'a Path,
    /// The copy's key in the ground's state (its canonical path).
    into: String,
    /// The copy as this pull found it. The node plans from the copy as it is, so every base
    /// it names is really there.
    start: Manifest,
    /// What the last pull into the copy delivered, if known (`pulled_copy`).
    pulled: Option<Manifest>,
    /// How the pull is asked: a pull asked differently (other --path, --delete) does not
    /// resume this one.
    request: PullRequestKey,
}

impl Asking<'_> {
    /// What the copy's user changed, and the pull must not overwrite, is what differs from
    /// this: the last pull's state; a state the node built (a copy as a pull or push left it);
    /// or, for a copy nobody knows, nothing (None: everything in it is the user's).
    fn since(&self, known: bool) -> Option<&Manifest> {
        self.pulled.as_ref().or(known.then_some(&self.start))
    }
}

/// The node's answer to a pull request.
enum Answer {
    /// The copy holds the selection already.
    Same,
    Offer {
        pack: PackId,
        /// `None`: the node is still encoding it.
        len: Option<u64>,
        target_root: ManifestId,
        /// The node has more of the selection for a next pack.
        more: bool,
    },
}

/// Reads the node's answer to a request from a copy at `base_root`.
fn answer(reply: Message, base_root: ManifestId) -> Result<Answer, GroundError> {
    let max = ground_limits().max_total_bytes;
    match reply {
        Message::PullSame { .. } => Ok(Answer::Same),
        Message::PullOffer {
            pack,
            len,
            base_root: from,
            target_root,
            more,
        } if from == base_root && len.is_none_or(|l| l <= max) => Ok(Answer::Offer {
            pack,
            len,
            target_root,
            more,
        }),
        Message::PullOffer { len: Some(len), .. } if len > max => {
            Err(GroundError::OverLimit(format!(
                "the node offers a {} pull pack, over this ground's limit",
                fmt_bytes(len)
            )))
        }
        _ => Err(GroundError::Unexpected {
            expected: "PullOffer or PullSame",
        }),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// One pull pack: asked for, received (or resumed) and applied. True with it when the node
    /// has more of the selection for a next pack. `copy`: the copy's folder, made and
    /// canonical.
    pub(super) async fn pull_pack(
        &mut self,
        ground: &mut Ground,
        pod: &PodName,
        copy: &Path,
        opts: &PullOptions,
        allow: &Allowance,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(PullReport, bool), GroundError> {
        let ask = self.asking(ground, pod, copy, opts)?;
        let mut report = PullReport::new(pod, &self.node, &ask.into, ask.start.root());
        let resume = self.resumable(ground, &ask).await?;
        let (reply, known) = self.request(&ask, resume.as_ref().map(|r| r.pack)).await?;
        report.skipped = self.take_skipped();
        let (pack, len, target_root, more) = match answer(reply, ask.start.root())? {
            Answer::Same => {
                self.already_pulled(ground, &ask, resume.as_ref(), known)?;
                report.up_to_date = true;
                report.complete = true;
                return Ok((report, false));
            }
            Answer::Offer {
                pack,
                len,
                target_root,
                more,
            } => (pack, len, target_root, more),
        };
        report.pack = Some(pack.to_hex());
        let mut state = match resume {
            // The same pack (an id names one encoding), its length known on either side or both.
            Some(r) if r.pack == pack && (r.len.is_none() || len.is_none() || r.len == len) => {
                PullIncoming {
                    len: len.or(r.len),
                    ..r
                }
            }
            other => {
                // The node no longer has the pack this pull was receiving: it offers another.
                if let Some(r) = other {
                    ground.drop_pull(&r)?;
                }
                PullIncoming {
                    pack,
                    node: self.node,
                    pod: pod.clone(),
                    into: ask.into.clone(),
                    request: ask.request.clone(),
                    len,
                    received: 0,
                    base_root: ask.start.root(),
                    target_root,
                }
            }
        };
        ground.db.put_pull_incoming(&state)?;
        let (path, mut file) = ground.open_pull_file(&mut state)?;
        report.resumed_from = state.received;
        if !self
            .receive_pull(ground, &mut state, &mut file, allow, progress)
            .await?
        {
            report.received = state.received;
            // 0 while the node has not said (it was still encoding the pack).
            report.pack_bytes = state.len.unwrap_or(0);
            return Ok((report, more));
        }
        let len = state.len.expect("a whole pull pack has its length");
        report.pack_bytes = len;
        report.received = len;
        drop(file);
        let applied = self.apply_whole(ground, &ask, known, &state, &path).await?;
        report.changes = ChangeSummary::of(&applied.on, &applied.changes);
        report.complete = true;
        report.root = applied.target.root().to_hex();
        report.packs = 1;
        Ok((report, more))
    }

    /// The whole pack is here (at `path`): every byte verified against the copy and applied,
    /// files replaced by rename; applied, and (with the journal's end) recorded as what the
    /// copy holds. The node hears the pack is done with.
    async fn apply_whole(
        &mut self,
        ground: &mut Ground,
        ask: &Asking<'_>,
        known: bool,
        state: &PullIncoming,
        path: &Path,
    ) -> Result<AppliedPull, GroundError> {
        let empty = Manifest::default();
        let since = ask.since(known).unwrap_or(&empty);
        let applied = ground.apply_pull(ask.copy, &ask.start, since, ask.opts.force, state)?;
        ground.db.delete_pull_incoming(state)?;
        let _ = std::fs::remove_file(path);
        self.tx
            .send(&Message::PullDone { pack: state.pack })
            .await?;
        // The copy's stat cache learns the new files now, so the next scan reads nothing.
        let _ = ground.scan_copy(ask.copy);
        Ok(applied)
    }

    /// The copy made whole and looked at, and what is known of it.
    fn asking<'a>(
        &self,
        ground: &mut Ground,
        pod: &'a PodName,
        copy: &'a Path,
        opts: &'a PullOptions,
    ) -> Result<Asking<'a>, GroundError> {
        let into = copy.display().to_string();
        // An earlier pull into this copy may have stopped inside its apply (a crash): it is
        // finished before the copy is looked at, so this one plans from a whole copy.
        ground.settle_copy(copy)?;
        let (start, _) = ground.scan_copy(copy)?;
        // What the copy's user changed since the last pull (`pulled`: what that pull
        // delivered) is theirs: where the node would only put back what it delivered before,
        // the change is left out and the user's version stays; where the pod changed it too,
        // the pull is refused (like git), unless --force.
        let pulled = ground.db.pulled_copy(&into, &self.node, pod)?;
        let request = PullRequestKey::new(&opts.filter, opts.delete);
        Ok(Asking {
            pod,
            opts,
            copy,
            into,
            start,
            pulled,
            request,
        })
    }

    /// A pull cut earlier continues, unless the copy changed since (then it could not apply)
    /// or it was asked differently: then it is dropped.
    async fn resumable(
        &mut self,
        ground: &Ground,
        ask: &Asking<'_>,
    ) -> Result<Option<PullIncoming>, GroundError> {
        let Some(r) = ground.db.pull_incoming(&self.node, ask.pod, &ask.into)? else {
            return Ok(None);
        };
        if r.base_root == ask.start.root() && r.request == ask.request {
            return Ok(Some(r));
        }
        if r.target_root == ask.start.root() {
            // The copy holds what that pull delivers: it was applied (the ground stopped
            // before it said so; the journal finished it). The node now records what it
            // delivered, as bases for the next pull.
            self.tx.send(&Message::PullDone { pack: r.pack }).await?;
        }
        ground.drop_pull(&r)?;
        Ok(None)
    }

    /// Asks for the pull pack (`resume`: the one a cut pull was receiving). Returns the node's
    /// answer, and whether the node knew the copy's manifest.
    async fn request(
        &mut self,
        ask: &Asking<'_>,
        resume: Option<PackId>,
    ) -> Result<(Message, bool), GroundError> {
        let message = |with_base: bool| Message::PullRequest {
            pod: ask.pod.clone(),
            filter: ask.opts.filter.clone(),
            delete: ask.opts.delete,
            base_root: ask.start.root(),
            base: if with_base {
                crate::wire::blob::encode_manifest(&ask.start)
            } else {
                Vec::new()
            },
            resume,
            rate: ask.opts.rate.map(|r| r as u64),
        };
        self.skipped = SkippedReport::default();
        self.tx.send(&message(false)).await?;
        match self.recv().await {
            Err(GroundError::Remote {
                kind: ErrorKind::NotFound,
                ..
            }) => {
                // The node does not know the copy's manifest (a fresh ground, a copy changed by
                // hand): send it once.
                self.tx.send(&message(true)).await?;
                Ok((self.recv().await?, false))
            }
            reply => Ok((reply?, true)),
        }
    }

    /// The node says the copy holds the selection already.
    fn already_pulled(
        &self,
        ground: &Ground,
        ask: &Asking<'_>,
        resume: Option<&PullIncoming>,
        known: bool,
    ) -> Result<(), GroundError> {
        // A cut pull the node no longer needs (the copy holds the selection by now).
        if let Some(r) = resume {
            ground.drop_pull(r)?;
        }
        if ask.pulled.is_none() && known {
            // The copy is a state the node built: later pulls start from it. (A copy nobody
            // knows may hold files of its user's own, which the node would keep: they must
            // never be taken for the pod's.)
            ground
                .db
                .set_pulled_copy(&ask.into, &self.node, ask.pod, &ask.start)?;
        }
        Ok(())
    }
}
