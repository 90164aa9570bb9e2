//! `ls`: list the files of a pod's volume (or of one file or folder of it), and what the node
//! cannot carry.

use anyhow::{Context, Result};
use sync_core::ground::GroundError;
use sync_core::manifest::SkippedReport;
use sync_core::path::VolumePath;

use super::volume_folder;
use crate::cli::LsArgs;
use crate::connect::open;
use crate::exit::left_out_status;
use crate::output::{self, json, text};

pub async fn run(a: LsArgs) -> Result<()> {
    let mut s = open(&a.conn).await?;
    let manifest = s.client.manifest(&s.ground, &s.pod).await?;
    let mut skipped = s.client.take_skipped();
    s.client.bye(&s.ground).await?;
    let filter = volume_folder(a.path.as_deref()).context("path")?;
    let entries: Vec<_> = manifest
        .entries()
        .iter()
        .filter(|e| filter.as_ref().is_none_or(|f| e.path.is_within(f)))
        .collect();
    if let Some(f) = &filter {
        keep_within(&mut skipped, f);
        if entries.is_empty() && skipped.entries.is_empty() {
            return Err(GroundError::NotFound(f.to_string()).into());
        }
    }
    if a.conn.link.local.json {
        output::print_json(&json::listing(&entries, &skipped))?;
        // The named ones are in the JSON; only the count of the others goes to stderr.
        output::warn_skipped(&SkippedReport {
            entries: Vec::new(),
            more: skipped.more,
        });
        return left_out_status(&skipped, "listed", true);
    }
    if !text::listing(&entries)? {
        return Ok(());
    }
    output::warn_skipped(&skipped);
    left_out_status(&skipped, "listed", false)
}

/// Keeps the entries left out at `folder` or below it. Their names are raw bytes (a pod's
/// name may be no valid UTF-8), so they are compared as bytes.
fn keep_within(skipped: &mut SkippedReport, folder: &VolumePath) {
    let within = |raw: &[u8]| {
        raw.strip_prefix(folder.as_str().as_bytes())
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
    };
    skipped.entries.retain(|s| within(&s.path));
}
