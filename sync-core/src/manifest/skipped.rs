//! Entries of a pod's volume that a scan or a pull leaves out, and why.
//!
//! A pod writes what it likes in its volume: names that are not UTF-8, paths past the length
//! limit, files the daemon may not read, files that never stop changing, files larger than the
//! node may hold in memory. None of these may stop the sync of everything else, nor pass
//! unnoticed: each is left out and named to the ground, which shows it to the operator.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::path::{MAX_PATH_BYTES, escape_bytes};

/// One entry left out. `path` is the pod's own bytes (it may be no valid [`VolumePath`] at
/// all); show it with [`Skipped::shown`], never raw.
///
/// [`VolumePath`]: crate::path::VolumePath
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    /// the entry's name is not UTF-8
    NotUtf8,
    /// the path is longer than [`MAX_PATH_BYTES`] (the entry and everything below it)
    PathTooLong { len: u64 },
    /// a name the engine refuses for another reason
    BadName { error: String },
    /// a symlink whose target is not UTF-8
    TargetNotUtf8,
    /// the daemon may not read it (a folder: nothing below it either)
    Unreadable { error: String },
    /// it kept changing while it was read; `listed`: the manifest shows its last version read
    /// whole, otherwise it is not in the manifest
    Changing { listed: bool },
    /// a pull leaves it out: the node would hold more than `cap` bytes in memory for it
    TooLarge { size: u64, cap: u64 },
}

impl Skipped {
    pub fn new(path: impl Into<Vec<u8>>, reason: SkipReason) -> Self {
        Self {
            path: path.into(),
            reason,
        }
    }

    /// The path as it may be printed: escaped (see [`escape_bytes`]).
    pub fn shown(&self) -> String {
        escape_bytes(&self.path)
    }
}

impl SkipReason {
    /// A short, stable name for scripts (`--json`).
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::NotUtf8 => "not_utf8",
            SkipReason::PathTooLong { .. } => "path_too_long",
            SkipReason::BadName { .. } => "bad_name",
            SkipReason::TargetNotUtf8 => "target_not_utf8",
            SkipReason::Unreadable { .. } => "unreadable",
            SkipReason::Changing { .. } => "changing",
            SkipReason::TooLarge { .. } => "too_large",
        }
    }

    /// True when asking again will not bring the entry: the pod (or the node's operator) has
    /// to act. A file that is changing comes by itself once it settles.
    pub fn lasting(&self) -> bool {
        !matches!(self, SkipReason::Changing { .. })
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotUtf8 => f.write_str("its name is not UTF-8 (the pod has to rename it)"),
            SkipReason::PathTooLong { len } => write!(
                f,
                "its path is {len} bytes, over the limit of {MAX_PATH_BYTES} (nothing below it \
                 is synced either)"
            ),
            SkipReason::BadName { error } => write!(f, "{error}"),
            SkipReason::TargetNotUtf8 => f.write_str("a symlink whose target is not UTF-8"),
            SkipReason::Unreadable { error } => write!(f, "the node cannot read it: {error}"),
            SkipReason::Changing { listed: true } => f.write_str(
                "it kept changing while the node read it; shown at the last version read whole, \
                 it comes once it settles",
            ),
            SkipReason::Changing { listed: false } => f.write_str(
                "it kept changing while the node read it; it comes with a later pull, once it \
                 settles",
            ),
            SkipReason::TooLarge { size, cap } => write!(
                f,
                "{} is more than the {} a pull may hold in memory on the node (sync-onboard \
                 --max-pull-pack); it is left out of pulls",
                crate::units::fmt_bytes(*size),
                crate::units::fmt_bytes(*cap)
            ),
        }
    }
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.shown(), self.reason)
    }
}

/// What one answer of the node left out: the entries it names, and how many more there were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkippedReport {
    pub entries: Vec<Skipped>,
    pub more: u64,
}

impl SkippedReport {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.more == 0
    }

    /// Whether any of it stays left out until someone acts (see [`SkipReason::lasting`]); the
    /// entries not named count as lasting, not knowing better.
    pub fn lasting(&self) -> bool {
        self.more > 0 || self.entries.iter().any(|s| s.reason.lasting())
    }
}

/// At most this many left-out entries are named in one answer (a pod may make millions); the
/// rest are counted.
pub const MAX_SKIPPED_NAMED: usize = 64;

/// The entries to name in one answer, and how many more there were.
pub fn named(mut all: Vec<Skipped>) -> (Vec<Skipped>, u64) {
    let more = all.len().saturating_sub(MAX_SKIPPED_NAMED) as u64;
    all.truncate(MAX_SKIPPED_NAMED);
    (all, more)
}
