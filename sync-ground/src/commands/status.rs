//! `status`: what is queued, in flight and recently done, per pod, from the ground's state
//! alone (no link).

use anyhow::Result;

use crate::cli::StatusArgs;
use crate::connect::open_ground;
use crate::output::{self, json, text};

pub fn run(a: StatusArgs) -> Result<()> {
    let ground = open_ground(&a.local)?;
    let all = ground.db.all_outgoing()?;
    let follow_ups = ground.db.follow_ups(None)?;
    if a.local.json {
        return output::print_json(&json::queue(&all, &follow_ups));
    }
    text::status(&all, &follow_ups);
    Ok(())
}
