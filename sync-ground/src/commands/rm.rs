//! `rm`: remove files or folders from a pod's volume.

use anyhow::{Context, Result};
use sync_core::path::VolumePath;

use crate::cli::RmArgs;
use crate::connect::open;
use crate::output::{self, Wire, json::RmJson, text};

pub async fn run(a: RmArgs) -> Result<()> {
    let paths = a
        .paths
        .iter()
        .map(|p| VolumePath::new(p.trim_end_matches('/')))
        .collect::<Result<Vec<_>, _>>()
        .context("path to remove")?;
    let mut s = open(&a.conn).await?;
    let report = s
        .client
        .remove(&mut s.ground, &s.pod, &paths, a.recursive)
        .await?;
    let (sent, received) = s.client.bye(&s.ground).await?;
    let wire = Wire::new(sent, received);
    if a.conn.link.local.json {
        output::print_json(&RmJson {
            report: &report,
            wire,
        })?;
    } else {
        text::rm(&report, &wire);
    }
    Ok(())
}
