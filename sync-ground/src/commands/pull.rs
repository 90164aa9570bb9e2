//! `pull`: fetch what is new or changed in a pod's volume into a local copy, as deltas.

use anyhow::Result;
use sync_core::ground::{PullOptions, PullReport};
use sync_core::manifest::PathFilter;

use crate::cli::PullArgs;
use crate::connect::{Session, open};
use crate::exit::{Incomplete, left_out_status};
use crate::fmt;
use crate::output::{self, Bars, Wire, json::PullJson, text};

pub async fn run(a: PullArgs) -> Result<()> {
    // Bad patterns are refused before connecting.
    PathFilter::new(&a.paths)?;
    let mut s = open(&a.conn).await?;
    let json = a.conn.link.local.json;
    let report = fetch(&mut s, &a).await?;
    let (sent, received) = s.client.bye(&s.ground).await?;
    let seconds = s.started.elapsed().as_secs_f64();
    let wire = Wire::new(sent, received);
    if json {
        output::print_json(&PullJson::new(&report, wire, seconds))?;
    } else {
        text::pull(&report, &a.into, &wire, seconds);
    }
    if !report.complete {
        return Err(incomplete(&report).into());
    }
    left_out_status(&report.skipped, "pulled", json)
}

/// Pulls within the limits, pack after pack while the node has more.
async fn fetch(s: &mut Session, a: &PullArgs) -> Result<PullReport> {
    let allow = a.limits.allowance(&s.ground, &s.client.node, s.started);
    let mut bars = Bars::new(a.conn.link.local.json);
    let result = s
        .client
        .pull(
            &mut s.ground,
            &s.pod,
            &a.into,
            &PullOptions {
                filter: a.paths.clone(),
                delete: a.delete,
                force: a.force,
                rate: a.limits.rate,
            },
            &allow,
            &mut |p| bars.update(p),
        )
        .await;
    bars.finish();
    Ok(result?)
}

/// What resumes at the next pull.
fn incomplete(report: &PullReport) -> Incomplete {
    let applied = match report.packs {
        0 => String::new(),
        n => format!("{n} pull pack(s) applied, "),
    };
    if report.pack_bytes == 0 && report.received > 0 {
        return Incomplete(format!(
            "incomplete: {applied}{} of the current pull pack received (the node was still \
             encoding it), resumes at the next pull",
            fmt::bytes(report.received)
        ));
    }
    let left = report.pack_bytes.saturating_sub(report.received);
    Incomplete(if left == 0 {
        format!("incomplete: {applied}the rest comes with the next pull")
    } else {
        format!(
            "incomplete: {applied}{} of the current pull pack left, resumes at the next pull",
            fmt::bytes(left)
        )
    })
}
