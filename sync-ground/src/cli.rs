//! The command line as clap reads it: every subcommand, its flags and its help text, in one
//! file. The help is one document an operator reads whole (flags such as `--to` or `--budget`
//! are shared by several subcommands), so it is kept together rather than spread over the
//! command files, which hold only what each command does.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::exit::EXIT_HELP;

#[derive(Parser)]
#[command(
    name = "sync-ground",
    version,
    about = "Push folders to pod volumes on a satellite, list and remove files",
    long_about = "Sends only what the satellite lacks: files are content-addressed (BLAKE3), \
renamed or copied files cost nothing, and changed files travel as deltas against the exact \
bytes the onboard side holds (zstd patch-from) or against its rsync signatures.\n\n\
Connection settings can come from the environment: SYNC_TO, SYNC_KEY, SYNC_STATE.",
    after_help = EXIT_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make a pod's volume (or a folder of it) hold exactly a local folder.
    #[command(
        after_help = "Files in the destination that are not in the local folder are \
removed, like rsync --delete: push inputs to their own --dest (for example --dest inputs) so \
the pod's outputs elsewhere in the volume are left alone.\n\nExample:\n  sync-ground push ./my-app --pod experiment-1 --dest app --to 10.0.0.2:7700 --key link.key"
    )]
    Push(PushArgs),
    /// List the files of a pod's volume: path, type, size, time, hash.
    Ls(LsArgs),
    /// Fetch what is new or changed in a pod's volume into a local folder, as deltas.
    #[command(
        after_help = "Only new or changed files cross the link, each as the difference from the \
copy the ground already holds; renamed files cost nothing. The copy is updated when the whole \
pull has arrived and checked out, files replaced by rename; a pull cut by the link, the budget or \
the deadline keeps what arrived and resumes at the next pull (exit 75). A file you change in the \
copy while a pull that also changes it runs is kept: nothing is applied and the pull exits 6 (run \
it again); changes elsewhere in the copy are kept and the pull applies around them. Like git, a \
pull never overwrites what you changed in the copy since the last pull: where the pod changed it \
too, nothing is applied, every such file is named and the pull exits 7 (--force takes the pod's \
versions). A file a pod \
is still writing is never delivered torn: it comes with the next pull. What the pod made that \
cannot be synced (a name that is not UTF-8, a path over the limit, a file the node cannot read) is left out and named in a warning (exit 8); the rest \
comes.\n\nPatterns (--path, repeatable): \
a name matches at any depth ('*.csv'), a path matches from the volume's root ('logs/**'); '*' \
stays within a folder, '**' crosses folders.\n\nExample:\n  sync-ground pull --pod p1 --into ./results --path 'logs/**' --path '*.csv' --to 10.0.0.2:7700 --key link.key"
    )]
    Pull(PullArgs),
    /// Show what is queued, in flight and recently done, per pod (no link needed).
    Status(StatusArgs),
    /// Run everything queued for a node, in priority order, within a budget and a deadline.
    #[command(
        after_help = "Each queued push continues at the byte the onboard side has durably \
stored; nothing is encoded again. With --rate (or the rate measured in earlier passes) the \
pass first prints what fits.\n\nExample:\n  sync-ground pass --to 10.0.0.2:7700 --key link.key --deadline 9m --rate 9600bit"
    )]
    Pass(PassArgs),
    /// Remove files or folders from a pod's volume.
    Rm(RmArgs),
}

#[derive(Args)]
pub struct Conn {
    /// The pod (each pod name owns one volume).
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub pod: String,
    #[command(flatten)]
    pub link: LinkArgs,
}

/// Where the node is and how to reach it.
#[derive(Args)]
pub struct LinkArgs {
    /// Address of sync-onboard.
    #[arg(long, env = "SYNC_TO", value_name = "HOST:PORT")]
    pub to: String,
    /// File holding the link key (64 hex digits), the same as the onboard side's.
    #[arg(long, env = "SYNC_KEY", value_name = "FILE")]
    pub key: PathBuf,
    #[command(flatten)]
    pub local: Local,
    /// Give up on a link that has been silent this many seconds (both sides send keep-alives
    /// every 3 s, so a few times that is plenty).
    #[arg(long, default_value_t = 12, value_name = "SECS")]
    pub timeout: u64,
}

#[derive(Args)]
pub struct Local {
    /// Folder for the ground's state [default: $XDG_DATA_HOME/sync-ground].
    #[arg(long, env = "SYNC_STATE", value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Print one JSON object (for scripts) instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// Limits of one run over the link.
#[derive(Args)]
pub struct Limits {
    /// Stop after this many bytes on the wire, both directions (4MB, 576KB, 2MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub budget: Option<u64>,
    /// Stop cleanly this long after starting (90s, 8m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    pub deadline: Option<Duration>,
    /// The link's rate, for planning what fits (9600bit, 2Mbit, 1200B) [default: measured in
    /// earlier passes].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Segments a push compresses at once, each on a core of its own (push, pass): for a
    /// large push at the narrow uplink's level, whose compression runs on one core per
    /// segment. The pack is the same bytes whatever the number; each job holds about a
    /// segment (32 MiB), its prefix (up to 32 MiB) and zstd's state (about 100 MiB at level
    /// 19, measured for an 8 MiB frame).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
}

fn parse_size(s: &str) -> Result<u64, String> {
    sync_core::units::parse_bytes(s).map_err(|e| e.to_string())
}
fn parse_dur(s: &str) -> Result<Duration, String> {
    sync_core::units::parse_duration(s).map_err(|e| e.to_string())
}
fn parse_rate(s: &str) -> Result<f64, String> {
    sync_core::units::parse_rate(s).map_err(|e| e.to_string())
}

#[derive(Args)]
pub struct PushArgs {
    /// Local folder to push.
    pub folder: PathBuf,
    /// Folder of the volume to push into [default: the volume root].
    #[arg(long, value_name = "PATH")]
    pub dest: Option<String>,
    /// Order among queued pushes in a pass: higher goes first.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub priority: i64,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args)]
pub struct PullArgs {
    /// Local folder that holds the copy (created if missing).
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
    /// Only what these patterns select (repeatable) [default: the whole volume].
    #[arg(long = "path", value_name = "PATTERN")]
    pub paths: Vec<String>,
    /// Remove from the copy what the pod removed (otherwise it stays, and is reported).
    #[arg(long)]
    pub delete: bool,
    /// Overwrite what you changed in the copy since the last pull. Without it, a pull that
    /// would overwrite a local change applies nothing, names the files and exits 7.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub local: Local,
}

#[derive(Args)]
pub struct PassArgs {
    #[command(flatten)]
    pub link: LinkArgs,
    #[command(flatten)]
    pub limits: Limits,
}

#[derive(Args)]
pub struct LsArgs {
    /// Only this file or folder of the volume.
    pub path: Option<String>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args)]
pub struct RmArgs {
    /// Paths inside the volume.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// Remove folders and everything in them.
    #[arg(short, long)]
    pub recursive: bool,
    #[command(flatten)]
    pub conn: Conn,
}
