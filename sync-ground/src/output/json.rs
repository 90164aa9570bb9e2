//! What `--json` prints: one JSON value per run, whose field names and order scripts rely on.

use std::borrow::Cow;

use serde::Serialize;
use sync_core::ground::pass::PlannedPack;
use sync_core::ground::{PullReport, PushReport};
use sync_core::manifest::{Entry, EntryKind, SkipReason, Skipped, SkippedReport};
use sync_core::state::{FollowUp, OutgoingPack};

use super::Pushed;

/// Bytes on the wire, both ways, counted on the socket.
#[derive(Serialize)]
pub struct Wire {
    pub sent: u64,
    pub received: u64,
    pub total: u64,
}

impl Wire {
    pub fn new(sent: u64, received: u64) -> Self {
        Self {
            sent,
            received,
            total: sent + received,
        }
    }
}

/// One entry left out, for `--json`.
#[derive(Serialize)]
pub struct SkippedJson {
    /// Escaped (see `sync_core::path::escape_bytes`): a name may be no valid UTF-8.
    path: String,
    reason: &'static str,
    message: String,
    /// The file's size, when its size is why.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

impl From<&Skipped> for SkippedJson {
    fn from(s: &Skipped) -> Self {
        Self {
            path: s.shown(),
            reason: s.reason.code(),
            message: s.reason.to_string(),
            size: match s.reason {
                SkipReason::TooLarge { size, .. } => Some(size),
                _ => None,
            },
        }
    }
}

#[derive(Serialize)]
pub struct PushJson<'a> {
    #[serde(flatten)]
    report: &'a PushReport,
    dest: Option<&'a str>,
    wire: Wire,
    /// Wire bytes over the bytes of new content (0 when nothing was sent).
    ratio: f64,
    seconds: f64,
    scan: ScanJson,
}

#[derive(Serialize)]
struct ScanJson {
    files: u64,
    hashed_files: u64,
    hashed_bytes: u64,
}

impl<'a> From<&Pushed<'a>> for PushJson<'a> {
    fn from(p: &Pushed<'a>) -> Self {
        let total = p.sent + p.received;
        Self {
            report: p.report,
            dest: p.dest,
            wire: Wire::new(p.sent, p.received),
            ratio: if p.report.content_bytes > 0 {
                total as f64 / p.report.content_bytes as f64
            } else {
                0.0
            },
            seconds: p.seconds,
            scan: ScanJson {
                files: p.scan.files,
                hashed_files: p.scan.hashed_files,
                hashed_bytes: p.scan.hashed_bytes,
            },
        }
    }
}

#[derive(Serialize)]
pub struct PullJson<'a> {
    #[serde(flatten)]
    report: &'a PullReport,
    /// What the node left out of the pull, and why.
    skipped: Vec<SkippedJson>,
    /// Entries left out beyond those named.
    skipped_more: u64,
    wire: Wire,
    seconds: f64,
}

impl<'a> PullJson<'a> {
    pub fn new(report: &'a PullReport, wire: Wire, seconds: f64) -> Self {
        Self {
            report,
            skipped: report
                .skipped
                .entries
                .iter()
                .map(SkippedJson::from)
                .collect(),
            skipped_more: report.skipped.more,
            wire,
            seconds,
        }
    }
}

#[derive(Serialize)]
pub struct RmJson<'a> {
    #[serde(flatten)]
    pub report: &'a PushReport,
    pub wire: Wire,
}

#[derive(Serialize)]
pub struct PassJson {
    pub node: String,
    pub planned: Vec<PlanLine>,
    pub results: Vec<PushReport>,
    pub complete: bool,
    pub left: u64,
    pub wire: Wire,
    pub seconds: f64,
}

#[derive(Serialize)]
pub struct PlanLine {
    pack: String,
    pod: String,
    left: u64,
    /// Bytes of it expected to go in this pass at the rate (all of `left` if it fits).
    fits: u64,
}

impl From<&PlannedPack> for PlanLine {
    fn from(p: &PlannedPack) -> Self {
        Self {
            pack: p.pack.to_hex(),
            pod: p.pod.to_string(),
            left: p.left,
            fits: p.fits,
        }
    }
}

/// One line of `status`: a queued, sending or applied pack, or changes that follow one.
#[derive(Serialize)]
pub struct QueueJson {
    /// None for newer changes promised to follow a queued push: not planned into a pack yet.
    pack: Option<String>,
    node: String,
    pod: String,
    dest: Option<String>,
    source: String,
    state: String,
    priority: i64,
    total: u64,
    acked: u64,
    content_bytes: u64,
    created_at: i64,
    finished_at: Option<i64>,
}

impl From<&OutgoingPack> for QueueJson {
    fn from(q: &OutgoingPack) -> Self {
        Self {
            pack: Some(q.pack.to_hex()),
            node: q.node.to_hex(),
            pod: q.pod.to_string(),
            dest: q.dest.clone(),
            // A removal has no folder: `status --json` says "".
            source: q.source.clone().unwrap_or_default(),
            state: q.state.as_str().into(),
            priority: q.priority,
            total: q.len,
            acked: q.acked,
            content_bytes: q.content_bytes,
            created_at: q.created_at,
            finished_at: q.finished_at,
        }
    }
}

impl From<&FollowUp> for QueueJson {
    fn from(f: &FollowUp) -> Self {
        Self {
            pack: None,
            node: f.node.to_hex(),
            pod: f.pod.to_string(),
            dest: f.dest.clone(),
            source: f.source.clone(),
            state: "follows".into(),
            priority: f.priority,
            total: 0,
            acked: 0,
            content_bytes: 0,
            created_at: f.created_at,
            finished_at: None,
        }
    }
}

/// `status --json`: the queue, then the changes promised to follow it.
pub fn queue(all: &[OutgoingPack], follow_ups: &[FollowUp]) -> Vec<QueueJson> {
    all.iter()
        .map(QueueJson::from)
        .chain(follow_ups.iter().map(QueueJson::from))
        .collect()
}

/// One entry of `ls --json`.
#[derive(Serialize)]
pub struct LsEntry<'a> {
    path: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'a str,
    mode: String,
    size: u64,
    mtime: i64,
    hash: Option<String>,
    target: Option<&'a str>,
    /// Type "skipped": an entry of the volume the node cannot carry (its `path` escaped), why.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl<'a> From<&'a Entry> for LsEntry<'a> {
    fn from(e: &'a Entry) -> Self {
        Self {
            path: e.path.as_str().into(),
            kind: e.type_name(),
            mode: format!("{:o}", e.mode),
            size: e.size(),
            mtime: e.mtime,
            hash: e.file_id().map(|i| i.to_hex()),
            target: match &e.kind {
                EntryKind::Symlink { target } => Some(target),
                _ => None,
            },
            reason: None,
            message: None,
        }
    }
}

impl From<&Skipped> for LsEntry<'_> {
    fn from(s: &Skipped) -> Self {
        let j = SkippedJson::from(s);
        Self {
            path: j.path.into(),
            kind: "skipped",
            mode: String::new(),
            size: j.size.unwrap_or(0),
            mtime: 0,
            hash: None,
            target: None,
            reason: Some(j.reason),
            message: Some(j.message),
        }
    }
}

/// `ls --json`: the entries, then what the node left out of the listing (named ones).
pub fn listing<'a>(entries: &[&'a Entry], skipped: &SkippedReport) -> Vec<LsEntry<'a>> {
    entries
        .iter()
        .map(|e| LsEntry::from(*e))
        .chain(skipped.entries.iter().map(LsEntry::from))
        .collect()
}
