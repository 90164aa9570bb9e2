//! `pass`: send everything queued for a node, in priority order, within a budget and a
//! deadline; then plan and send the newer changes promised to follow what was queued.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use sync_core::ground::pass::{self, PlannedPack};
use sync_core::ground::{Allowance, Client, Ground, GroundError, PushOptions, PushReport};
use sync_core::id::NodeId;
use sync_core::path::VolumePath;
use sync_core::state::{FollowUp, OutgoingPack};
use sync_core::wire::ErrorKind;
use tokio::net::TcpStream;

use crate::cli::PassArgs;
use crate::connect::{connect, open_ground};
use crate::exit::{Incomplete, queued_hint};
use crate::fmt;
use crate::output::{
    self, Bars, Wire,
    json::{PassJson, PlanLine},
    text,
};

/// One connection's pass: the link, the state, and what it may spend.
struct Pass {
    client: Client<TcpStream>,
    ground: Ground,
    node: NodeId,
    allow: Allowance,
    started: Instant,
    json: bool,
}

pub async fn run(a: PassArgs) -> Result<()> {
    let ground = open_ground(&a.link.local)?;
    let (client, started) = connect(&a.link).await?;
    let node = client.node;
    let allow = a.limits.allowance(&ground, &node, started);
    let mut p = Pass {
        client,
        ground,
        node,
        allow,
        started,
        json: a.link.local.json,
    };
    let queue = p.ground.db.queued_for_node(&node)?;
    let capacity = p.capacity();
    let planned = pass::plan(&queue, capacity);
    // Read before sending: the pass sends the follow-ups its plan names (pushing one ends the
    // promises it covers).
    let follow_ups = p.ground.db.follow_ups(Some(&node))?;
    if !p.json {
        text::pass_plan(&node, &planned, &follow_ups, &p.allow, capacity);
    }
    let mut bars = Bars::new(p.json);
    // A failure to drop a refused pack from the state ends the pass at once (outer `?`);
    // one of the link or the node says first what stays queued.
    let sent = p.send_all(&queue, &follow_ups, &mut bars).await?;
    bars.finish();
    let results = sent.map_err(|e| queued_hint(&p.ground, &node, e))?;
    p.finish(planned, results).await
}

impl Pass {
    /// What fits: the budget left after connecting, or what the rate carries in the time left
    /// (less a round trip and the closing slack), whichever is smaller; each pack costs an
    /// offer too. The pass sends to its deadline whatever the estimate: this is what it
    /// promises.
    fn capacity(&self) -> Option<u64> {
        let (wire_sent, wire_received) = self.client.wire_bytes();
        self.allow
            .capacity(wire_sent + wire_received, self.client.rtt())
    }

    /// Sends the queue, then the changes promised to follow it, until one stops short
    /// (budget, deadline) or fails. Each pack gets what the pass has left.
    async fn send_all(
        &mut self,
        queue: &[OutgoingPack],
        follow_ups: &[FollowUp],
        bars: &mut Bars,
    ) -> Result<Result<Vec<PushReport>, GroundError>> {
        let mut results = Vec::new();
        for q in queue {
            match self.send_queued(q, bars).await? {
                Ok(Some(r)) => {
                    let stop = !r.complete;
                    results.push(r);
                    if stop {
                        return Ok(Ok(results));
                    }
                }
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        // Changes a note promised would follow a queued push: planned now, on top of it.
        for f in follow_ups {
            match self.follow_up(f, bars).await {
                Ok(Some(r)) => {
                    let stop = !r.complete;
                    results.push(r);
                    if stop {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(results))
    }

    /// Sends one queued pack. None when the node refused it because the volume moved on:
    /// it is dropped, and the next push of its folder plans again.
    async fn send_queued(
        &mut self,
        q: &OutgoingPack,
        bars: &mut Bars,
    ) -> Result<Result<Option<PushReport>, GroundError>> {
        let sent = self
            .client
            .send_queued(&self.ground, q, &self.allow, &mut |p| bars.update(p))
            .await;
        match sent {
            Ok(r) => Ok(Ok(Some(r))),
            Err(GroundError::Remote {
                kind: ErrorKind::Conflict,
                message,
            }) => {
                if !self.json {
                    text::no_longer_applies(q, &message);
                }
                self.ground.db.delete_outgoing(&q.pack)?;
                Ok(Ok(None))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// Plans and sends the newer changes a note promised would follow a queued push. None
    /// when there is nothing left to send: the folder is gone (said on stderr), or the volume
    /// already holds it.
    async fn follow_up(
        &mut self,
        f: &FollowUp,
        bars: &mut Bars,
    ) -> Result<Option<PushReport>, GroundError> {
        let folder = PathBuf::from(&f.source);
        // A destination stored by this ground is a checked path; one that no longer checks (a
        // damaged state) is dropped like a folder that is gone.
        let dest = f.dest.as_deref().map(VolumePath::new).transpose();
        let (true, Ok(dest)) = (folder.is_dir(), dest) else {
            if !self.json {
                text::follow_up_dropped(f);
            }
            self.ground
                .db
                .end_follow_up(&self.node, &f.pod, f.dest.as_deref())?;
            return Ok(None);
        };
        let (local, _) = self.ground.scan_local(&folder)?;
        let r = self
            .client
            .push(
                &mut self.ground,
                &f.pod,
                &PushOptions {
                    folder: &folder,
                    local: &local,
                    dest: dest.as_ref(),
                    priority: f.priority,
                },
                &self.allow,
                &mut |p| bars.update(p),
            )
            .await?;
        if !self.json {
            output::notes(&r.notes);
        }
        Ok(Some(r))
    }

    /// Says goodbye, reports the pass, and exits 75 while anything is left to send.
    async fn finish(self, planned: Vec<PlannedPack>, results: Vec<PushReport>) -> Result<()> {
        let Pass {
            client,
            ground,
            node,
            started,
            json,
            ..
        } = self;
        let (sent, received) = client.bye(&ground).await?;
        let promised = ground.db.follow_ups(Some(&node))?.len();
        let left = pass::bytes_left(&ground.db.queued_for_node(&node)?);
        let seconds = started.elapsed().as_secs_f64();
        let complete = left == 0 && promised == 0;
        let wire = Wire::new(sent, received);
        if json {
            output::print_json(&PassJson {
                node: node.to_hex(),
                planned: planned.iter().map(PlanLine::from).collect(),
                results,
                complete,
                left,
                wire,
                seconds,
            })?;
        } else {
            text::pass_done(&results, &wire, seconds);
        }
        if !complete {
            let more = if promised > 0 {
                format!(" and the newer changes of {promised} folder(s) still to plan")
            } else {
                String::new()
            };
            return Err(Incomplete(format!(
                "incomplete: {} left{more}, resumes at the next pass",
                fmt::bytes(left)
            ))
            .into());
        }
        Ok(())
    }
}
