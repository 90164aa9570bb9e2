//! Everything `sync-ground` writes but its last error line (that is `main`'s): progress bars
//! (`bars`), what `--json` prints (`json`), the human summaries (`text`), and the pieces they
//! share. Commands do the work and hand what came of it here, so the output that scripts and
//! the end-to-end tests read is all in this folder.

pub mod bars;
pub mod json;
pub mod text;

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use sync_core::ground::PushReport;
use sync_core::manifest::{ScanStats, SkippedReport};

pub use bars::Bars;
pub use json::Wire;

/// What a push did, for its summary.
pub struct Pushed<'a> {
    pub folder: &'a Path,
    pub dest: Option<&'a str>,
    pub report: &'a PushReport,
    pub scan: &'a ScanStats,
    /// Wire bytes up and down.
    pub sent: u64,
    pub received: u64,
    pub seconds: f64,
}

/// Prints a `--json` result: one line on stdout.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// What happened to earlier queued pushes, in words (a push report's notes), on stderr.
pub fn notes(notes: &[String]) {
    for n in notes {
        eprintln!("note: {n}");
    }
}

/// Shows on stderr what the node left out: a warning for what stays left out, a note for a
/// file that is only changing (it comes once it settles).
pub fn warn_skipped(report: &SkippedReport) {
    for s in &report.entries {
        let level = if s.reason.lasting() {
            "warning"
        } else {
            "note"
        };
        eprintln!("{level}: left out: {s}");
    }
    if report.more > 0 {
        eprintln!(
            "warning: left out: {} more entries the node did not name",
            report.more
        );
    }
}

/// A reader that went away (`sync-ground ls | head`) ends the listing; it is not an error.
/// Returns true when the pipe is closed.
pub fn quiet_on_closed_pipe(r: std::io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e).context("writing the listing"),
    }
}
