//! Exit statuses: what each means (the help's table), the errors that carry the two that are
//! not failures (75, work that resumes; 8, work done except what cannot be synced), and the
//! status of any error a command returns.

use anyhow::Result;
use sync_core::ground::pass;
use sync_core::ground::{Ground, GroundError};
use sync_core::id::NodeId;
use sync_core::link::LinkError;
use sync_core::manifest::SkippedReport;
use sync_core::wire::ErrorKind;

use crate::fmt;

pub const EXIT_HELP: &str = "Exit status:
  0  done
  1  error on this side (local files, state, bad arguments)
  2  usage error
  3  refused by the onboard side (bad path or pod name, over a limit): retrying will not help
  4  link or node failure (cannot connect, connection lost, silent link, the node's disk
     full): retry at the next pass
  5  authentication failed: the two sides do not hold the same key
  6  the pod's volume changed during the push, or the copy (--into) changed during the pull
     where the pull changes it (nothing of that pull pack was applied), or the node dropped
     the pull pack it was encoding (the pod kept writing its files, the node restarted or
     its state disk filled): run it again
  7  the pull would overwrite files changed in the copy (--into) since the last pull, named
     on stderr: nothing was applied; move them aside, or pull again with --force
  8  done, but the pod's volume holds entries that cannot be synced, named on stderr (and
     under skipped with --json): a name that is not UTF-8, a path over the length limit, a
     file the node cannot read. Everything else was pulled (or listed); asking again will
     not bring them until the pod changes them
 75  incomplete: the budget, the deadline or the link ran out; what was sent is kept onboard
     and the push resumes at the next `push` or `pass` (a pull, at the next `pull`); or
     another sync-ground is pulling into the same copy: try again when it is done";

/// The work stopped before the end and resumes at the next pass.
#[derive(Debug)]
pub struct Incomplete(pub String);

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Incomplete {}

const EX_TEMPFAIL: u8 = 75;

/// The work is done, but entries of the pod's volume were left out for good (until the pod
/// or the node's operator acts): exit 8, so that a script notices without parsing warnings.
#[derive(Debug)]
pub struct LeftOut(String);

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LeftOut {}

const EXIT_LEFT_OUT: u8 = 8;
/// A pull that would overwrite what the copy's user changed (`GroundError::LocalChanges`).
const EXIT_LOCAL_CHANGES: u8 = 7;

/// The exit status of work that is otherwise done.
pub fn left_out_status(report: &SkippedReport, what: &str, json: bool) -> Result<()> {
    if !report.lasting() {
        return Ok(());
    }
    let n = report.entries.iter().filter(|s| s.reason.lasting()).count() as u64 + report.more;
    Err(LeftOut(format!(
        "{what}, except {n} entr{} of the pod's volume that cannot be synced ({})",
        if n == 1 { "y" } else { "ies" },
        if json {
            "in the JSON, with their reasons"
        } else {
            "named above"
        }
    ))
    .into())
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<Incomplete>().is_some() {
            return EX_TEMPFAIL;
        }
        if cause.downcast_ref::<LeftOut>().is_some() {
            return EXIT_LEFT_OUT;
        }
        if let Some(g) = cause.downcast_ref::<GroundError>() {
            return ground_code(g);
        }
        if let Some(l) = cause.downcast_ref::<LinkError>() {
            return link_code(l);
        }
    }
    1
}

fn ground_code(g: &GroundError) -> u8 {
    match g {
        GroundError::Remote { kind, .. } => match kind {
            ErrorKind::Conflict => 6,
            ErrorKind::Storage => 4,
            ErrorKind::Superseded | ErrorKind::Busy => EX_TEMPFAIL,
            _ => 3,
        },
        GroundError::Link(l) => link_code(l),
        GroundError::OverLimit(_) => 3,
        // Like a volume that moved on under a push: nothing happened, run it again.
        GroundError::CopyChanged { .. } => 6,
        // The pod kept writing the pull's files while the node encoded them.
        GroundError::PullDropped(_) => 6,
        GroundError::CopyBusy { .. } => EX_TEMPFAIL,
        GroundError::LocalChanges { .. } => EXIT_LOCAL_CHANGES,
        _ => 1,
    }
}

fn link_code(l: &LinkError) -> u8 {
    match l {
        LinkError::HandshakeRefused | LinkError::Wire(sync_core::wire::WireError::Auth) => 5,
        _ => 4,
    }
}

/// A link that fails while pushes are queued is not the end: say what resumes, exit 75.
pub fn queued_hint(ground: &Ground, node: &NodeId, e: GroundError) -> anyhow::Error {
    let queued = ground.db.queued_for_node(node).unwrap_or_default();
    let temporary = match &e {
        GroundError::Link(l) => link_code(l) == 4,
        // A node whose disk filled dropped what it had: that is not a resume (exit 4).
        GroundError::Remote { kind, .. } => *kind == ErrorKind::Superseded,
        _ => false,
    };
    match (temporary, queued.is_empty()) {
        (true, false) => anyhow::Error::new(Incomplete(format!(
            "incomplete: {e}; {} left in {} queued push(es), resumes at the next pass",
            fmt::bytes(pass::bytes_left(&queued)),
            queued.len()
        ))),
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the help's table named the exit status of entries left out 7, which is the
    /// status of a pull stopped by local changes; they exit 8.
    #[test]
    fn the_help_names_each_exit_status_for_what_it_means() {
        let line = |code: u8| {
            EXIT_HELP
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{code} ")))
                .unwrap_or_else(|| panic!("no line for exit {code}"))
        };
        assert!(line(EXIT_LEFT_OUT).contains("cannot be synced"));
        assert!(line(EXIT_LOCAL_CHANGES).contains("overwrite files changed in the copy"));
        assert!(line(EX_TEMPFAIL).contains("incomplete"));
    }
}
