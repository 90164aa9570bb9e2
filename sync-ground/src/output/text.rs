//! The human summaries on stdout, and the notes on stderr that commands give along the way.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use sync_core::ground::pass::{Fit, PlannedPack};
use sync_core::ground::{Allowance, PullReport, PushReport};
use sync_core::id::NodeId;
use sync_core::manifest::{Entry, EntryKind};
use sync_core::path::{PodName, escape};
use sync_core::state::{FollowUp, OutgoingPack, PackState};

use super::{Pushed, Wire, notes, quiet_on_closed_pipe, warn_skipped};
use crate::fmt;

pub fn push(p: &Pushed) {
    let report = p.report;
    notes(&report.notes);
    let (total, seconds) = (p.sent + p.received, p.seconds);
    let place = format!("{}:/{}", report.pod, p.dest.unwrap_or(""));
    if report.up_to_date {
        println!(
            "{place} is up to date ({} files; wire {} in {seconds:.2} s)",
            p.scan.files,
            fmt::bytes(total)
        );
        return;
    }
    let c = &report.changes;
    let verb = if report.complete { "pushed" } else { "pushing" };
    println!("{verb} {} → {place}", p.folder.display());
    println!(
        "  {} added, {} changed, {} removed, {} renamed or copied, {} metadata only; folders +{} -{}",
        c.added, c.changed, c.removed, c.copied, c.metadata, c.dirs_added, c.dirs_removed
    );
    let ratio = if report.content_bytes > 0 && report.complete {
        format!(
            ", {} of the {} of new content",
            percent(total as f64 * 100.0 / report.content_bytes as f64),
            fmt::bytes(report.content_bytes)
        )
    } else {
        String::new()
    };
    println!(
        "  wire {} (up {}, down {}){ratio}, in {seconds:.2} s",
        fmt::bytes(total),
        fmt::bytes(p.sent),
        fmt::bytes(p.received)
    );
}

/// 97.7%, 0.05%: small ratios keep their first significant digit.
fn percent(p: f64) -> String {
    if p >= 1.0 || p == 0.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

pub fn pull(report: &PullReport, into: &Path, wire: &Wire, seconds: f64) {
    warn_skipped(&report.skipped);
    if report.up_to_date {
        println!(
            "{} is up to date with {} (wire {} in {seconds:.2} s)",
            into.display(),
            report.pod,
            fmt::bytes(wire.total)
        );
        return;
    }
    let c = &report.changes;
    let verb = if report.complete { "pulled" } else { "pulling" };
    println!("{verb} {} → {}", report.pod, into.display());
    if report.complete || report.packs > 0 {
        println!(
            "  {} added, {} modified, {} removed, {} renamed or copied, {} metadata only",
            c.added, c.changed, c.removed, c.copied, c.metadata
        );
    }
    if report.packs > 1 {
        println!("  in {} pull packs, each applied as it came", report.packs);
    }
    println!(
        "  wire {} (down {}, up {}), in {seconds:.2} s",
        fmt::bytes(wire.total),
        fmt::bytes(wire.received),
        fmt::bytes(wire.sent)
    );
}

pub fn rm(report: &PushReport, wire: &Wire) {
    println!(
        "removed {} files and {} folders from {} (wire {})",
        report.changes.removed,
        report.changes.dirs_removed,
        report.pod,
        fmt::bytes(wire.total)
    );
}

/// The queue per pod, from the state alone.
pub fn status(all: &[OutgoingPack], follow_ups: &[FollowUp]) {
    if all.is_empty() && follow_ups.is_empty() {
        println!("nothing queued, nothing done recently");
        return;
    }
    let mut pods: Vec<(&NodeId, &PodName)> = all
        .iter()
        .map(|q| (&q.node, &q.pod))
        .chain(follow_ups.iter().map(|f| (&f.node, &f.pod)))
        .collect();
    pods.sort();
    pods.dedup();
    for (node, pod) in pods {
        println!("pod {pod} (node {})", node.short());
        for q in all.iter().filter(|q| &q.node == node && &q.pod == pod) {
            status_line(q);
        }
        for f in follow_ups
            .iter()
            .filter(|f| &f.node == node && &f.pod == pod)
        {
            println!(
                "  follows   the newer changes of {} → /{}, planned at the next push or pass, \
                 priority {}",
                f.source,
                f.dest.as_deref().unwrap_or(""),
                f.priority
            );
        }
    }
}

fn status_line(q: &OutgoingPack) {
    let place = format!(
        "{} → /{}",
        q.source.as_deref().unwrap_or("(rm)"),
        q.dest.as_deref().unwrap_or("")
    );
    match q.state {
        PackState::Applied => println!(
            "  done      {}  {}  {place}",
            q.pack.short(),
            fmt::bytes(q.len)
        ),
        _ if q.acked > 0 || q.state == PackState::Sending => println!(
            "  in flight {}  {} of {} acknowledged ({}%), priority {}  {place}",
            q.pack.short(),
            fmt::bytes(q.acked),
            fmt::bytes(q.len),
            q.acked * 100 / q.len.max(1),
            q.priority
        ),
        _ => println!(
            "  queued    {}  {}, priority {}  {place}",
            q.pack.short(),
            fmt::bytes(q.len),
            q.priority
        ),
    }
}

/// What a pass is about to send and what it expects to fit (`capacity`, when the budget or a
/// deadline with a rate bounds it).
pub fn pass_plan(
    node: &NodeId,
    planned: &[PlannedPack],
    follow_ups: &[FollowUp],
    allow: &Allowance,
    capacity: Option<u64>,
) {
    if planned.is_empty() && follow_ups.is_empty() {
        println!("nothing queued for node {}", node.short());
        return;
    }
    let total: u64 = planned.iter().map(|p| p.left).sum();
    let how = match (allow.rate, capacity) {
        (Some(r), Some(c)) if allow.deadline.is_some() => format!(
            "; at {} this pass carries about {}",
            fmt::rate(r),
            fmt::bytes(c)
        ),
        (_, Some(c)) => format!("; the budget allows {}", fmt::bytes(c)),
        _ => String::new(),
    };
    println!(
        "pass to node {}: {} queued, {} to send{how}",
        node.short(),
        planned.len(),
        fmt::bytes(total)
    );
    for p in planned {
        let verdict = match p.fit() {
            Fit::Completes => "completes".to_string(),
            Fit::Waits => "waits".to_string(),
            Fit::Partly(fits) => format!("{} of it", fmt::bytes(fits)),
        };
        println!(
            "  {} {:<16} {:>10}  {verdict}",
            p.pack.short(),
            p.pod.as_str(),
            fmt::bytes(p.left)
        );
    }
    for f in follow_ups {
        println!(
            "  then the newer changes of {} → {}:/{} (planned once what is queued for it \
             has applied)",
            f.source,
            f.pod,
            f.dest.as_deref().unwrap_or("")
        );
    }
}

/// The last line of a pass.
pub fn pass_done(results: &[PushReport], wire: &Wire, seconds: f64) {
    let done = results.iter().filter(|r| r.complete).count();
    println!(
        "  {done} applied; wire {} (up {}, down {}) in {seconds:.1} s",
        fmt::bytes(wire.total),
        fmt::bytes(wire.sent),
        fmt::bytes(wire.received)
    );
}

/// A queued pack the node refused because the volume moved on since it was planned.
pub fn no_longer_applies(q: &OutgoingPack, message: &str) {
    eprintln!(
        "note: {} for pod {} no longer applies ({message}); push it again",
        q.pack.short(),
        q.pod
    );
}

/// Changes promised to follow a push whose folder is gone (or whose destination no longer
/// checks).
pub fn follow_up_dropped(f: &FollowUp) {
    eprintln!(
        "note: {} is gone; the changes promised to follow its push to pod {} are dropped",
        f.source, f.pod
    );
}

/// `ls`: a line per entry. False when the reader went away before the last line (then
/// nothing more is said); a reader gone by the final flush still gets the warnings.
pub fn listing(entries: &[&Entry]) -> Result<bool> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for e in entries {
        if quiet_on_closed_pipe(listing_line(&mut out, e))? {
            return Ok(false);
        }
    }
    quiet_on_closed_pipe(out.flush())?;
    Ok(true)
}

fn listing_line(out: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    let (kind, extra) = match &e.kind {
        EntryKind::File { id, .. } => ("file", id.short()),
        EntryKind::Dir => ("dir", String::new()),
        EntryKind::Symlink { target } => ("link", format!("-> {target}")),
    };
    let time = if e.mtime != 0 {
        fmt::utc(e.mtime)
    } else {
        "-".into()
    };
    // Names as the pod chose them, escaped: a newline in a name must not forge a line.
    writeln!(
        out,
        "{kind:<4} {:>4o} {:>10} {time:>19}  {:<12} {}{}",
        e.mode,
        e.size(),
        if kind == "file" { extra.as_str() } else { "" },
        escape(e.path.as_str()),
        if kind == "link" {
            format!(" {}", escape(&extra))
        } else {
            String::new()
        },
    )
}
