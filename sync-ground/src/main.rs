//! `sync-ground`: the operator's tool, run before and during a pass.

mod fmt;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sync_core::ground::{
    Allowance, Client, Ground, GroundError, PACK_TURN, Progress, PullOptions, PushOptions,
    PushReport,
};
use sync_core::id::{NodeId, PackId};
use sync_core::link::{Link, LinkError};
use sync_core::manifest::{EntryKind, SkipReason, Skipped, SkippedReport};
use sync_core::path::{PodName, VolumePath, escape};
use sync_core::state::{FollowUp, OutgoingPack};
use sync_core::wire::{ErrorKind, LinkKey};
use tokio::net::TcpStream;

const EXIT_HELP: &str = "Exit status:
  0  done
  1  error on this side (local files, state, bad arguments)
  2  usage error
  3  refused by the onboard side (bad path or pod name, over a limit): retrying will not help
  4  link or node failure (cannot connect, connection lost, silent link, the node's disk
     full): retry at the next pass
  5  authentication failed: the two sides do not hold the same key
  6  the pod's volume changed during the push, or the copy (--into) changed during the pull
     where the pull changes it (nothing of that pull pack was applied): run it again
  7  done, but the pod's volume holds entries that cannot be synced, named on stderr (and
     under skipped with --json): a file larger than the node may hold in memory for a pull,
     a name that is not UTF-8, a path over the length limit, a file the node cannot read.
     Everything else was pulled (or listed); asking again will not bring them until the pod
     changes them (or the node's --max-pull-pack allows the size)
 75  incomplete: the budget, the deadline or the link ran out; what was sent is kept onboard
     and the push resumes at the next `push` or `pass` (a pull, at the next `pull`); or
     another sync-ground is pulling into the same copy: try again when it is done";

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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
cannot be synced (a file larger than the node's --max-pull-pack, a name that is not UTF-8, a path \
over the limit, a file the node cannot read) is left out and named in a warning (exit 8); the rest \
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
struct Conn {
    /// The pod (each pod name owns one volume).
    #[arg(long, default_value = "default", value_name = "NAME")]
    pod: String,
    #[command(flatten)]
    link: LinkArgs,
}

/// Where the node is and how to reach it.
#[derive(Args)]
struct LinkArgs {
    /// Address of sync-onboard.
    #[arg(long, env = "SYNC_TO", value_name = "HOST:PORT")]
    to: String,
    /// File holding the link key (64 hex digits), the same as the onboard side's.
    #[arg(long, env = "SYNC_KEY", value_name = "FILE")]
    key: PathBuf,
    #[command(flatten)]
    local: Local,
    /// Give up on a link that has been silent this many seconds (both sides send keep-alives
    /// every 3 s, so a few times that is plenty).
    #[arg(long, default_value_t = 12, value_name = "SECS")]
    timeout: u64,
}

#[derive(Args)]
struct Local {
    /// Folder for the ground's state [default: $XDG_DATA_HOME/sync-ground].
    #[arg(long, env = "SYNC_STATE", value_name = "DIR")]
    state: Option<PathBuf>,
    /// Print one JSON object (for scripts) instead of the human summary.
    #[arg(long)]
    json: bool,
}

/// Limits of one run over the link.
#[derive(Args)]
struct Limits {
    /// Stop after this many bytes on the wire, both directions (4MB, 576KB, 2MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    budget: Option<u64>,
    /// Stop cleanly this long after starting (90s, 8m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    deadline: Option<Duration>,
    /// The link's rate, for planning what fits (9600bit, 2Mbit, 1200B) [default: measured in
    /// earlier passes].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    rate: Option<f64>,
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
struct PushArgs {
    /// Local folder to push.
    folder: PathBuf,
    /// Folder of the volume to push into [default: the volume root].
    #[arg(long, value_name = "PATH")]
    dest: Option<String>,
    /// Order among queued pushes in a pass: higher goes first.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        allow_negative_numbers = true
    )]
    priority: i64,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
struct PullArgs {
    /// Local folder that holds the copy (created if missing).
    #[arg(long, value_name = "DIR")]
    into: PathBuf,
    /// Only what these patterns select (repeatable) [default: the whole volume].
    #[arg(long = "path", value_name = "PATTERN")]
    paths: Vec<String>,
    /// Remove from the copy what the pod removed (otherwise it stays, and is reported).
    #[arg(long)]
    delete: bool,
    /// Overwrite what you changed in the copy since the last pull. Without it, a pull that
    /// would overwrite a local change applies nothing, names the files and exits 7.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    limits: Limits,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
struct StatusArgs {
    #[command(flatten)]
    local: Local,
}

#[derive(Args)]
struct PassArgs {
    #[command(flatten)]
    link: LinkArgs,
    #[command(flatten)]
    limits: Limits,
}

#[derive(Args)]
struct LsArgs {
    /// Only this file or folder of the volume.
    path: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
struct RmArgs {
    /// Paths inside the volume.
    #[arg(required = true)]
    paths: Vec<String>,
    /// Remove folders and everything in them.
    #[arg(short, long)]
    recursive: bool,
    #[command(flatten)]
    conn: Conn,
}

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
            Command::Push(a) => push(a).await,
            Command::Ls(a) => ls(a).await,
            Command::Rm(a) => rm(a).await,
            Command::Status(a) => status(a),
            Command::Pull(a) => pull(a).await,
            Command::Pass(a) => pass(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync-ground: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The work stopped before the end and resumes at the next pass.
#[derive(Debug)]
struct Incomplete(String);

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
struct LeftOut(String);

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LeftOut {}

const EXIT_LEFT_OUT: u8 = 8;

/// Shows on stderr what the node left out: a warning for what stays left out, a note for a
/// file that is only changing (it comes once it settles).
fn warn_skipped(report: &SkippedReport) {
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

/// The exit status of work that is otherwise done.
fn left_out_status(report: &SkippedReport, what: &str, json: bool) -> Result<()> {
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

/// One entry left out, for `--json`.
#[derive(Serialize)]
struct SkippedJson {
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

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<Incomplete>().is_some() {
            return EX_TEMPFAIL;
        }
        if cause.downcast_ref::<LeftOut>().is_some() {
            return EXIT_LEFT_OUT;
        }
        if let Some(g) = cause.downcast_ref::<GroundError>() {
            return match g {
                GroundError::Remote { kind, .. } => match kind {
                    ErrorKind::Conflict => 6,
                    ErrorKind::Storage => 4,
                    ErrorKind::Superseded => EX_TEMPFAIL,
                    _ => 3,
                },
                GroundError::Link(l) => link_code(l),
                GroundError::OverLimit(_) => 3,
                // Like a volume that moved on under a push: nothing happened, run it again.
                GroundError::CopyChanged { .. } => 6,
                GroundError::CopyBusy { .. } => EX_TEMPFAIL,
                GroundError::LocalChanges { .. } => 7,
                _ => 1,
            };
        }
        if let Some(l) = cause.downcast_ref::<LinkError>() {
            return link_code(l);
        }
    }
    1
}

fn link_code(l: &LinkError) -> u8 {
    match l {
        LinkError::HandshakeRefused | LinkError::Wire(sync_core::wire::WireError::Auth) => 5,
        _ => 4,
    }
}

fn state_dir(local: &Local) -> Result<PathBuf> {
    if let Some(s) = &local.state {
        return Ok(s.clone());
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .context("no --state given and neither XDG_DATA_HOME nor HOME is set")?;
    Ok(base.join("sync-ground"))
}

struct Session {
    client: Client<TcpStream>,
    ground: Ground,
    pod: PodName,
    started: Instant,
}

async fn open(conn: &Conn) -> Result<Session> {
    let pod = PodName::new(conn.pod.clone())?;
    let ground = open_ground(&conn.link.local)?;
    let (client, started) = connect(&conn.link).await?;
    Ok(Session {
        client,
        ground,
        pod,
        started,
    })
}

fn open_ground(local: &Local) -> Result<Ground> {
    let state = state_dir(local)?;
    Ground::open(&state).with_context(|| format!("opening the ground state in {}", state.display()))
}

async fn connect(link: &LinkArgs) -> Result<(Client<TcpStream>, Instant)> {
    let (to, key, timeout) = (link.to.as_str(), link.key.as_path(), link.timeout);
    let started = Instant::now();
    let key_text = std::fs::read_to_string(key)
        .with_context(|| format!("reading the link key from {}", key.display()))?;
    let key =
        LinkKey::from_hex(&key_text).with_context(|| format!("link key in {}", key.display()))?;
    let stream = tokio::time::timeout(Duration::from_secs(15), TcpStream::connect(to))
        .await
        .map_err(|_| LinkError::Timeout(Duration::from_secs(15)))
        .and_then(|r| r.map_err(LinkError::Io))
        .with_context(|| format!("connecting to {to}"))?;
    let _ = stream.set_nodelay(true);
    let link = Link::connect(stream, &key, Duration::from_secs(timeout))
        .await
        .with_context(|| format!("opening the link to {to}"))?;
    let client = Client::start(link).await?;
    Ok((client, started))
}

impl Limits {
    /// The allowance of a connection begun at `started`: the deadline counts from there, so
    /// connecting takes its share of the pass too.
    fn allowance(&self, ground: &Ground, node: &NodeId, started: Instant) -> Allowance {
        Allowance {
            budget: self.budget,
            deadline: self
                .deadline
                .map(|d| tokio::time::Instant::from_std(started) + d),
            rate: self
                .rate
                .or_else(|| ground.db.measured_rate(node).ok().flatten()),
        }
    }
}

/// Progress on stderr: a bar with rate and ETA on a terminal, a line every few seconds
/// otherwise. Nothing in --json mode.
struct Bars {
    json: bool,
    tty: bool,
    bar: Option<(PackId, ProgressBar)>,
    last_line: Instant,
}

impl Bars {
    fn new(json: bool) -> Self {
        Self {
            json,
            tty: std::io::stderr().is_terminal(),
            bar: None,
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, p: Progress) {
        if self.json || p.total < 64 * 1024 {
            return;
        }
        if !self.tty {
            // A line every few seconds, and one at the end of a pack that printed any.
            let end = p.acked == p.total;
            let due = self.last_line.elapsed() > Duration::from_secs(5);
            let printed = self.bar.as_ref().is_some_and(|(id, _)| *id == p.pack);
            if (due && !end) || (end && printed) {
                self.last_line = Instant::now();
                if end {
                    self.bar = None;
                } else if !printed {
                    self.bar = Some((p.pack, ProgressBar::hidden()));
                }
                eprintln!(
                    "  pack {}: sent {} of {}, {} durable onboard",
                    p.pack.short(),
                    fmt::bytes(p.sent),
                    fmt::bytes(p.total),
                    fmt::bytes(p.acked)
                );
            }
            return;
        }
        if self.bar.as_ref().is_none_or(|(id, _)| *id != p.pack) {
            if let Some((_, b)) = self.bar.take() {
                b.finish_and_clear();
            }
            let bar = ProgressBar::new(p.total);
            bar.set_style(
                ProgressStyle::with_template(
                    "  {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("progress template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("pack {}", p.pack.short()));
            self.bar = Some((p.pack, bar));
        }
        if let Some((_, b)) = &self.bar {
            b.set_position(p.sent);
        }
    }

    fn finish(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

#[derive(Serialize)]
struct Wire {
    sent: u64,
    received: u64,
    total: u64,
}

#[derive(Serialize)]
struct PushJson<'a> {
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

async fn push(a: PushArgs) -> Result<()> {
    let dest = a
        .dest
        .as_deref()
        .map(|d| d.trim_matches('/'))
        .filter(|d| !d.is_empty())
        .map(VolumePath::new)
        .transpose()
        .context("--dest")?;
    if !a.folder.is_dir() {
        bail!("{} is not a folder", a.folder.display());
    }
    // Scan before connecting: a first scan of a large tree reads every file, and the link
    // need not wait for it.
    let pod = PodName::new(a.conn.pod.clone())?;
    let mut ground = open_ground(&a.conn.link.local)?;
    let (local, scan) = ground
        .scan_local(&a.folder)
        .with_context(|| format!("scanning {}", a.folder.display()))?;
    let (client, started) = connect(&a.conn.link).await?;
    let mut s = Session {
        client,
        ground,
        pod,
        started,
    };
    let json = a.conn.link.local.json;
    let allow = a.limits.allowance(&s.ground, &s.client.node, s.started);
    let mut bars = Bars::new(json);
    let result = s
        .client
        .push(
            &mut s.ground,
            &s.pod,
            &PushOptions {
                folder: &a.folder,
                local: &local,
                dest: dest.as_ref(),
                priority: a.priority,
            },
            &allow,
            &mut |p| bars.update(p),
        )
        .await;
    bars.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => return Err(queued_hint(&s.ground, &s.client.node, e)),
    };
    let (sent, received) = s.client.bye(&s.ground).await?;
    let seconds = s.started.elapsed().as_secs_f64();
    let dest_str = dest.as_ref().map(|d| d.as_str());
    let left = report.pack_bytes.saturating_sub(report.acked);
    if json {
        let out = PushJson {
            report: &report,
            dest: dest_str,
            wire: Wire {
                sent,
                received,
                total: sent + received,
            },
            ratio: if report.content_bytes > 0 {
                (sent + received) as f64 / report.content_bytes as f64
            } else {
                0.0
            },
            seconds,
            scan: ScanJson {
                files: scan.files,
                hashed_files: scan.hashed_files,
                hashed_bytes: scan.hashed_bytes,
            },
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        for n in &report.notes {
            eprintln!("note: {n}");
        }
        let place = format!("{}:/{}", report.pod, dest_str.unwrap_or(""));
        if report.up_to_date {
            println!(
                "{place} is up to date ({} files; wire {} in {seconds:.2} s)",
                scan.files,
                fmt::bytes(sent + received)
            );
            return Ok(());
        }
        let c = &report.changes;
        let verb = if report.complete { "pushed" } else { "pushing" };
        println!("{verb} {} → {place}", a.folder.display());
        println!(
            "  {} added, {} changed, {} removed, {} renamed or copied, {} metadata only; folders +{} -{}",
            c.added, c.changed, c.removed, c.copied, c.metadata, c.dirs_added, c.dirs_removed
        );
        let ratio = if report.content_bytes > 0 && report.complete {
            format!(
                ", {} of the {} of new content",
                percent((sent + received) as f64 * 100.0 / report.content_bytes as f64),
                fmt::bytes(report.content_bytes)
            )
        } else {
            String::new()
        };
        println!(
            "  wire {} (up {}, down {}){ratio}, in {seconds:.2} s",
            fmt::bytes(sent + received),
            fmt::bytes(sent),
            fmt::bytes(received)
        );
    }
    if !report.complete {
        return Err(Incomplete(format!(
            "incomplete: {} left of a {} pack, resumes at the next pass",
            fmt::bytes(left),
            fmt::bytes(report.pack_bytes)
        ))
        .into());
    }
    Ok(())
}

/// 97.7%, 0.05%: small ratios keep their first significant digit.
fn percent(p: f64) -> String {
    if p >= 1.0 || p == 0.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

/// A link that fails while pushes are queued is not the end: say what resumes, exit 75.
fn queued_hint(ground: &Ground, node: &NodeId, e: GroundError) -> anyhow::Error {
    let queued = ground.db.queued_for_node(node).unwrap_or_default();
    let temporary = match &e {
        GroundError::Link(l) => link_code(l) == 4,
        // A node whose disk filled dropped what it had: that is not a resume (exit 4).
        GroundError::Remote { kind, .. } => *kind == ErrorKind::Superseded,
        _ => false,
    };
    match (temporary, queued.is_empty()) {
        (true, false) => {
            let left: u64 = queued.iter().map(|q| q.len - q.acked).sum();
            anyhow::Error::new(Incomplete(format!(
                "incomplete: {e}; {} left in {} queued push(es), resumes at the next pass",
                fmt::bytes(left),
                queued.len()
            )))
        }
        _ => e.into(),
    }
}

#[derive(Serialize)]
struct QueueJson {
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
            source: q.source.clone(),
            state: q.state.clone(),
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

fn status(a: StatusArgs) -> Result<()> {
    let ground = open_ground(&a.local)?;
    let all = ground.db.all_outgoing()?;
    let follow_ups = ground.db.follow_ups(None)?;
    if a.local.json {
        let out: Vec<QueueJson> = all
            .iter()
            .map(QueueJson::from)
            .chain(follow_ups.iter().map(QueueJson::from))
            .collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    if all.is_empty() && follow_ups.is_empty() {
        println!("nothing queued, nothing done recently");
        return Ok(());
    }
    let mut pods: Vec<(&NodeId, &PodName)> = all
        .iter()
        .map(|q| (&q.node, &q.pod))
        .chain(follow_ups.iter().map(|f| (&f.node, &f.pod)))
        .collect();
    pods.sort();
    pods.dedup();
    for (node, pod) in pods {
        println!("pod {pod} (node {})", node.short());
        for q in all.iter().filter(|q| &q.node == node && &q.pod == pod) {
            let place = format!(
                "{} → /{}",
                if q.source.is_empty() {
                    "(rm)"
                } else {
                    &q.source
                },
                q.dest.as_deref().unwrap_or("")
            );
            match q.state.as_str() {
                "applied" => println!(
                    "  done      {}  {}  {place}",
                    q.pack.short(),
                    fmt::bytes(q.len)
                ),
                _ if q.acked > 0 || q.state == "sending" => println!(
                    "  in flight {}  {} of {} acknowledged ({}%), priority {}  {place}",
                    q.pack.short(),
                    fmt::bytes(q.acked),
                    fmt::bytes(q.len),
                    q.acked * 100 / q.len.max(1),
                    q.priority
                ),
                _ => println!(
                    "  queued    {}  {}, priority {}  {place}",
                    q.pack.short(),
                    fmt::bytes(q.len),
                    q.priority
                ),
            }
        }
        for f in follow_ups
            .iter()
            .filter(|f| &f.node == node && &f.pod == pod)
        {
            println!(
                "  follows   the newer changes of {} → /{}, planned at the next push or pass, \
                 priority {}",
                f.source,
                f.dest.as_deref().unwrap_or(""),
                f.priority
            );
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct PassJson {
    node: String,
    planned: Vec<PlanLine>,
    results: Vec<PushReport>,
    complete: bool,
    left: u64,
    wire: Wire,
    seconds: f64,
}

#[derive(Serialize)]
struct PlanLine {
    pack: String,
    pod: String,
    left: u64,
    /// Bytes of it expected to go in this pass at the rate (all of `left` if it fits).
    fits: u64,
}

async fn pass(a: PassArgs) -> Result<()> {
    let mut ground = open_ground(&a.link.local)?;
    let (mut client, started) = connect(&a.link).await?;
    let node = client.node;
    let allow = a.limits.allowance(&ground, &node, started);
    let queue = ground.db.queued_for_node(&node)?;
    // What fits: the budget left after connecting, or what the rate carries in the time left
    // (less a round trip and the closing slack), whichever is smaller; each pack costs an offer
    // too. The pass sends to its deadline whatever the estimate: this is what it promises.
    let (wire_sent, wire_received) = client.wire_bytes();
    let capacity = allow.capacity(wire_sent + wire_received, client.rtt());
    let mut room = capacity.unwrap_or(u64::MAX);
    let planned: Vec<PlanLine> = queue
        .iter()
        .map(|q| {
            let left = q.len - q.acked;
            room = room.saturating_sub(PACK_TURN);
            let fits = left.min(room);
            room -= fits;
            PlanLine {
                pack: q.pack.to_hex(),
                pod: q.pod.to_string(),
                left,
                fits,
            }
        })
        .collect();
    let follow_ups = ground.db.follow_ups(Some(&node))?;
    let json = a.link.local.json;
    if !json {
        if queue.is_empty() && follow_ups.is_empty() {
            println!("nothing queued for node {}", node.short());
        } else {
            let total: u64 = planned.iter().map(|p| p.left).sum();
            let how = match (allow.rate, capacity) {
                (Some(r), Some(c)) if allow.deadline.is_some() => format!(
                    "; at {} this pass carries about {}",
                    fmt::rate(r),
                    fmt::bytes(c)
                ),
                (_, Some(c)) => format!("; the budget allows {}", fmt::bytes(c)),
                _ => String::new(),
            };
            println!(
                "pass to node {}: {} queued, {} to send{how}",
                node.short(),
                queue.len(),
                fmt::bytes(total)
            );
            for p in &planned {
                let verdict = if p.fits == p.left {
                    "completes".to_string()
                } else if p.fits == 0 {
                    "waits".to_string()
                } else {
                    format!("{} of it", fmt::bytes(p.fits))
                };
                println!(
                    "  {} {:<16} {:>10}  {verdict}",
                    &p.pack[..12],
                    p.pod,
                    fmt::bytes(p.left)
                );
            }
            for f in &follow_ups {
                println!(
                    "  then the newer changes of {} → {}:/{} (planned once what is queued for it \
                     has applied)",
                    f.source,
                    f.pod,
                    f.dest.as_deref().unwrap_or("")
                );
            }
        }
    }
    let mut bars = Bars::new(json);
    let mut results = Vec::new();
    let mut failure = None;
    let mut stopped = false;
    for q in &queue {
        // Each pack gets what the pass has left.
        match client
            .send_queued(&ground, q, &allow, &mut |p| bars.update(p))
            .await
        {
            Ok(r) => {
                stopped = !r.complete;
                results.push(r);
                if stopped {
                    break;
                }
            }
            Err(GroundError::Remote {
                kind: ErrorKind::Conflict,
                message,
            }) => {
                // The volume moved on: plan again from the same folder on the next push.
                if !json {
                    eprintln!(
                        "note: {} for pod {} no longer applies ({message}); push it again",
                        q.pack.short(),
                        q.pod
                    );
                }
                ground.db.delete_outgoing(&q.pack)?;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none() && !stopped {
        // Changes a note promised would follow a queued push: planned now, on top of it.
        for f in &follow_ups {
            match follow_up(&mut client, &mut ground, f, &allow, &mut bars, json).await {
                Ok(Some(r)) => {
                    let stop = !r.complete;
                    results.push(r);
                    if stop {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    bars.finish();
    if let Some(e) = failure {
        return Err(queued_hint(&ground, &node, e));
    }
    let (sent, received) = client.bye(&ground).await?;
    let promised = ground.db.follow_ups(Some(&node))?.len();
    let left_now: u64 = ground
        .db
        .queued_for_node(&node)?
        .iter()
        .map(|q| q.len - q.acked)
        .sum();
    let seconds = started.elapsed().as_secs_f64();
    let complete = left_now == 0 && promised == 0;
    if json {
        println!(
            "{}",
            serde_json::to_string(&PassJson {
                node: node.to_hex(),
                planned,
                results,
                complete,
                left: left_now,
                wire: Wire {
                    sent,
                    received,
                    total: sent + received
                },
                seconds,
            })?
        );
    } else {
        let done = results.iter().filter(|r| r.complete).count();
        println!(
            "  {done} applied; wire {} (up {}, down {}) in {seconds:.1} s",
            fmt::bytes(sent + received),
            fmt::bytes(sent),
            fmt::bytes(received)
        );
    }
    if !complete {
        let more = if promised > 0 {
            format!(" and the newer changes of {promised} folder(s) still to plan")
        } else {
            String::new()
        };
        return Err(Incomplete(format!(
            "incomplete: {} left{more}, resumes at the next pass",
            fmt::bytes(left_now)
        ))
        .into());
    }
    Ok(())
}

/// Plans and sends the newer changes a note promised would follow a queued push. None when
/// there is nothing left to send: the folder is gone (said on stderr), or the volume already
/// holds it.
async fn follow_up(
    client: &mut Client<TcpStream>,
    ground: &mut Ground,
    f: &FollowUp,
    allow: &Allowance,
    bars: &mut Bars,
    json: bool,
) -> Result<Option<PushReport>, GroundError> {
    let folder = PathBuf::from(&f.source);
    // A destination stored by this ground is a checked path; one that no longer checks (a
    // damaged state) is dropped like a folder that is gone.
    let dest = f.dest.as_deref().map(VolumePath::new).transpose();
    let (true, Ok(dest)) = (folder.is_dir(), dest) else {
        if !json {
            eprintln!(
                "note: {} is gone; the changes promised to follow its push to pod {} are dropped",
                f.source, f.pod
            );
        }
        ground
            .db
            .end_follow_up(&client.node, &f.pod, f.dest.as_deref())?;
        return Ok(None);
    };
    let (local, _) = ground.scan_local(&folder)?;
    let r = client
        .push(
            ground,
            &f.pod,
            &PushOptions {
                folder: &folder,
                local: &local,
                dest: dest.as_ref(),
                priority: f.priority,
            },
            allow,
            &mut |p| bars.update(p),
        )
        .await?;
    if !json {
        for n in &r.notes {
            eprintln!("note: {n}");
        }
    }
    Ok(Some(r))
}

async fn pull(a: PullArgs) -> Result<()> {
    sync_core::manifest::PathFilter::new(&a.paths)?;
    let mut s = open(&a.conn).await?;
    let json = a.conn.link.local.json;
    let allow = a.limits.allowance(&s.ground, &s.client.node, s.started);
    let mut bars = Bars::new(json);
    let result = s
        .client
        .pull(
            &mut s.ground,
            &s.pod,
            &a.into,
            &PullOptions {
                filter: a.paths.clone(),
                delete: a.delete,
                force: a.force,
            },
            &allow,
            &mut |p| bars.update(p),
        )
        .await;
    bars.finish();
    let report = result?;
    let (sent, received) = s.client.bye(&s.ground).await?;
    let seconds = s.started.elapsed().as_secs_f64();
    if json {
        #[derive(Serialize)]
        struct PullJson<'a> {
            #[serde(flatten)]
            report: &'a sync_core::ground::PullReport,
            /// What the node left out of the pull, and why.
            skipped: Vec<SkippedJson>,
            /// Entries left out beyond those named.
            skipped_more: u64,
            wire: Wire,
            seconds: f64,
        }
        println!(
            "{}",
            serde_json::to_string(&PullJson {
                report: &report,
                skipped: report
                    .skipped
                    .entries
                    .iter()
                    .map(SkippedJson::from)
                    .collect(),
                skipped_more: report.skipped.more,
                wire: Wire {
                    sent,
                    received,
                    total: sent + received
                },
                seconds
            })?
        );
    } else {
        warn_skipped(&report.skipped);
        if report.up_to_date {
            println!(
                "{} is up to date with {} (wire {} in {seconds:.2} s)",
                a.into.display(),
                report.pod,
                fmt::bytes(sent + received)
            );
        } else {
            let c = &report.changes;
            let verb = if report.complete { "pulled" } else { "pulling" };
            println!("{verb} {} → {}", report.pod, a.into.display());
            if report.complete || report.packs > 0 {
                println!(
                    "  {} added, {} modified, {} removed, {} renamed or copied, {} metadata only",
                    c.added, c.changed, c.removed, c.copied, c.metadata
                );
            }
            if report.packs > 1 {
                println!("  in {} pull packs, each applied as it came", report.packs);
            }
            println!(
                "  wire {} (down {}, up {}), in {seconds:.2} s",
                fmt::bytes(sent + received),
                fmt::bytes(received),
                fmt::bytes(sent)
            );
        }
    }
    if !report.complete {
        let applied = match report.packs {
            0 => String::new(),
            n => format!("{n} pull pack(s) applied, "),
        };
        let left = report.pack_bytes - report.received;
        return Err(Incomplete(if left == 0 {
            format!("incomplete: {applied}the rest comes with the next pull")
        } else {
            format!(
                "incomplete: {applied}{} of the current pull pack left, resumes at the next pull",
                fmt::bytes(left)
            )
        })
        .into());
    }
    left_out_status(&report.skipped, "pulled", json)
}

#[derive(Serialize)]
struct LsEntry<'a> {
    path: std::borrow::Cow<'a, str>,
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

async fn ls(a: LsArgs) -> Result<()> {
    let mut s = open(&a.conn).await?;
    let manifest = s.client.manifest(&s.ground, &s.pod).await?;
    let mut skipped = s.client.take_skipped();
    s.client.bye(&s.ground).await?;
    let filter = a
        .path
        .as_deref()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
        .map(VolumePath::new)
        .transpose()
        .context("path")?;
    let entries: Vec<_> = manifest
        .entries()
        .iter()
        .filter(|e| filter.as_ref().is_none_or(|f| e.path.is_within(f)))
        .collect();
    if let Some(f) = &filter {
        let within = |raw: &[u8]| {
            raw.strip_prefix(f.as_str().as_bytes())
                .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
        };
        skipped.entries.retain(|s| within(&s.path));
        if entries.is_empty() && skipped.entries.is_empty() {
            return Err(GroundError::NotFound(f.to_string()).into());
        }
    }
    if a.conn.link.local.json {
        let mut out: Vec<LsEntry> = entries
            .iter()
            .map(|e| LsEntry {
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
            })
            .collect();
        out.extend(skipped.entries.iter().map(|s| {
            let j = SkippedJson::from(s);
            LsEntry {
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
        }));
        println!("{}", serde_json::to_string(&out)?);
        warn_skipped(&SkippedReport {
            entries: Vec::new(),
            more: skipped.more,
        });
        return left_out_status(&skipped, "listed", true);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for e in entries {
        let (kind, extra) = match &e.kind {
            EntryKind::File { id, .. } => ("file", id.short()),
            EntryKind::Dir => ("dir", String::new()),
            EntryKind::Symlink { target } => ("link", format!("-> {target}")),
        };
        let time = if e.mtime != 0 {
            fmt::utc(e.mtime)
        } else {
            "-".into()
        };
        // Names as the pod chose them, escaped: a newline in a name must not forge a line.
        let line = writeln!(
            out,
            "{kind:<4} {:>4o} {:>10} {time:>19}  {:<12} {}{}",
            e.mode,
            e.size(),
            if kind == "file" { extra.as_str() } else { "" },
            escape(e.path.as_str()),
            if kind == "link" {
                format!(" {}", escape(&extra))
            } else {
                String::new()
            },
        );
        if quiet_on_closed_pipe(line)? {
            return Ok(());
        }
    }
    quiet_on_closed_pipe(out.flush())?;
    drop(out);
    warn_skipped(&skipped);
    left_out_status(&skipped, "listed", false)
}

/// A reader that went away (`sync-ground ls | head`) ends the listing; it is not an error.
/// Returns true when the pipe is closed.
fn quiet_on_closed_pipe(r: std::io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e).context("writing the listing"),
    }
}

async fn rm(a: RmArgs) -> Result<()> {
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
    if a.conn.link.local.json {
        #[derive(Serialize)]
        struct RmJson<'a> {
            #[serde(flatten)]
            report: &'a PushReport,
            wire: Wire,
        }
        println!(
            "{}",
            serde_json::to_string(&RmJson {
                report: &report,
                wire: Wire {
                    sent,
                    received,
                    total: sent + received
                }
            })?
        );
    } else {
        println!(
            "removed {} files and {} folders from {} (wire {})",
            report.changes.removed,
            report.changes.dirs_removed,
            report.pod,
            fmt::bytes(sent + received)
        );
    }
    Ok(())
}
