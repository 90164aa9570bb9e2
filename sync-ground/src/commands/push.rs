//! `push`: make a pod's volume (or a folder of it) hold exactly a local folder.

use anyhow::{Context, Result, bail};
use sync_core::ground::{PushOptions, PushReport};
use sync_core::manifest::{Manifest, ScanStats};
use sync_core::path::{PodName, VolumePath};

use super::volume_folder;
use crate::cli::PushArgs;
use crate::connect::{Session, open_ground};
use crate::exit::{Incomplete, queued_hint};
use crate::fmt;
use crate::output::{self, Bars, Pushed, json::PushJson, text};

pub async fn run(a: PushArgs) -> Result<()> {
    let dest = volume_folder(a.dest.as_deref()).context("--dest")?;
    if !a.folder.is_dir() {
        bail!("{} is not a folder", a.folder.display());
    }
    let (mut s, local, scan) = scan_then_connect(&a).await?;
    let json = a.conn.link.local.json;
    let report = send(&mut s, &a, &local, dest.as_ref()).await?;
    let (sent, received) = s.client.bye(&s.ground).await?;
    let pushed = Pushed {
        folder: &a.folder,
        dest: dest.as_ref().map(|d| d.as_str()),
        report: &report,
        scan: &scan,
        sent,
        received,
        seconds: s.started.elapsed().as_secs_f64(),
    };
    if json {
        output::print_json(&PushJson::from(&pushed))?;
    } else {
        text::push(&pushed);
    }
    if !report.complete {
        return Err(Incomplete(format!(
            "incomplete: {} left of a {} pack, resumes at the next pass",
            fmt::bytes(report.pack_bytes.saturating_sub(report.acked)),
            fmt::bytes(report.pack_bytes)
        ))
        .into());
    }
    Ok(())
}

/// Scans before connecting: a first scan of a large tree reads every file, and the link need
/// not wait for it.
async fn scan_then_connect(a: &PushArgs) -> Result<(Session, Manifest, ScanStats)> {
    let pod = PodName::new(a.conn.pod.clone())?;
    let mut ground = open_ground(&a.conn.link.local)?;
    let (local, scan) = ground
        .scan_local(&a.folder)
        .with_context(|| format!("scanning {}", a.folder.display()))?;
    let s = Session::connect(ground, pod, &a.conn.link).await?;
    Ok((s, local, scan))
}

/// Plans the push and sends it (or resumes the one queued) within the limits.
async fn send(
    s: &mut Session,
    a: &PushArgs,
    local: &Manifest,
    dest: Option<&VolumePath>,
) -> Result<PushReport> {
    let allow = a.limits.allowance(&s.ground, &s.client.node, s.started);
    let mut bars = Bars::new(a.conn.link.local.json);
    let result = s
        .client
        .push(
            &mut s.ground,
            &s.pod,
            &PushOptions {
                folder: &a.folder,
                local,
                dest,
                priority: a.priority,
            },
            &allow,
            &mut |p| bars.update(p),
        )
        .await;
    bars.finish();
    result.map_err(|e| queued_hint(&s.ground, &s.client.node, e))
}
