//! `sync-ground`: the operator's tool, run before and during a pass.
//!
//! Layout: `cli` is the command line (clap), `commands/` one file per subcommand, `connect`
//! the ground state and the connection to the node, `output/` everything printed (bars,
//! JSON, human summaries), `exit` the exit statuses, `fmt` sizes and times for people.

mod cli;
mod commands;
mod connect;
mod exit;
mod fmt;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sync-ground: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Push(a) => commands::push::run(a).await,
            Command::Ls(a) => commands::ls::run(a).await,
            Command::Rm(a) => commands::rm::run(a).await,
            Command::Status(a) => commands::status::run(a),
            Command::Pull(a) => commands::pull::run(a).await,
            Command::Pass(a) => commands::pass::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync-ground: {e:#}");
            ExitCode::from(exit::exit_code(&e))
        }
    }
}
