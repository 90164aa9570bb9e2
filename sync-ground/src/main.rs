//! `sync-ground`: the operator's tool, run before and during a pass.

mod fmt;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use sync_core::link::{Link, LinkError};
use sync_core::manifest::EntryKind;
use sync_core::path::{PodName, VolumePath};
use sync_core::session::ground::{Client, Ground, GroundError, PushReport};
use sync_core::wire::{ErrorKind, LinkKey};
use tokio::net::TcpStream;

const EXIT_HELP: &str = "Exit status:
  0  done
  1  error on this side (local files, state, bad arguments)
  2  usage error
  3  refused by the onboard side (bad path or pod name, over a limit): retrying will not help
  4  link failure (cannot connect, connection lost, silent link): retry at the next pass
  5  authentication failed: the two sides do not hold the same key
  6  the pod's volume changed during the push: run it again";

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
    /// Remove files or folders from a pod's volume.
    Rm(RmArgs),
}

#[derive(Args)]
struct Conn {
    /// The pod (each pod name owns one volume).
    #[arg(long, default_value = "default", value_name = "NAME")]
    pod: String,
    /// Address of sync-onboard.
    #[arg(long, env = "SYNC_TO", value_name = "HOST:PORT")]
    to: String,
    /// File holding the link key (64 hex digits), the same as the onboard side's.
    #[arg(long, env = "SYNC_KEY", value_name = "FILE")]
    key: PathBuf,
    /// Folder for the ground's state [default: $XDG_DATA_HOME/sync-ground].
    #[arg(long, env = "SYNC_STATE", value_name = "DIR")]
    state: Option<PathBuf>,
    /// Print one JSON object (for scripts) instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Give up on a link that has been silent this many seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    timeout: u64,
}

#[derive(Args)]
struct PushArgs {
    /// Local folder to push.
    folder: PathBuf,
    /// Folder of the volume to push into [default: the volume root].
    #[arg(long, value_name = "PATH")]
    dest: Option<String>,
    #[command(flatten)]
    conn: Conn,
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

fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(g) = cause.downcast_ref::<GroundError>() {
            return match g {
                GroundError::Remote { kind, .. } => match kind {
                    ErrorKind::Conflict => 6,
                    ErrorKind::Storage => 4,
                    _ => 3,
                },
                GroundError::Link(l) => link_code(l),
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

fn state_dir(conn: &Conn) -> Result<PathBuf> {
    if let Some(s) = &conn.state {
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
    let started = Instant::now();
    let pod = PodName::new(conn.pod.clone())?;
    let key_text = std::fs::read_to_string(&conn.key)
        .with_context(|| format!("reading the link key from {}", conn.key.display()))?;
    let key = LinkKey::from_hex(&key_text)
        .with_context(|| format!("link key in {}", conn.key.display()))?;
    let state = state_dir(conn)?;
    let ground = Ground::open(&state)
        .with_context(|| format!("opening the ground state in {}", state.display()))?;
    let stream = tokio::time::timeout(Duration::from_secs(15), TcpStream::connect(&conn.to))
        .await
        .map_err(|_| LinkError::Timeout(Duration::from_secs(15)))
        .and_then(|r| r.map_err(LinkError::Io))
        .with_context(|| format!("connecting to {}", conn.to))?;
    let _ = stream.set_nodelay(true);
    let link = Link::connect(stream, &key, Duration::from_secs(conn.timeout))
        .await
        .with_context(|| format!("opening the link to {}", conn.to))?;
    let client = Client::start(link).await?;
    Ok(Session {
        client,
        ground,
        pod,
        started,
    })
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
    let mut s = open(&a.conn).await?;
    let (local, scan) = s
        .ground
        .scan_local(&a.folder)
        .with_context(|| format!("scanning {}", a.folder.display()))?;
    let json = a.conn.json;
    let mut last_line = Instant::now();
    let mut progress = |p: sync_core::session::ground::Progress| {
        if !json && p.total > 256 * 1024 && last_line.elapsed() > Duration::from_secs(2) {
            last_line = Instant::now();
            eprintln!(
                "  sent {} of {} ({}%)",
                fmt::bytes(p.sent),
                fmt::bytes(p.total),
                p.sent * 100 / p.total.max(1)
            );
        }
    };
    let report = s
        .client
        .push(
            &mut s.ground,
            &a.folder,
            &local,
            &s.pod,
            dest.as_ref(),
            &mut progress,
        )
        .await?;
    let (sent, received) = s.client.bye().await?;
    let seconds = s.started.elapsed().as_secs_f64();
    let dest_str = dest.as_ref().map(|d| d.as_str());
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
        return Ok(());
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
    println!("pushed {} → {place}", a.folder.display());
    println!(
        "  {} added, {} changed, {} removed, {} renamed or copied, {} metadata only; folders +{} -{}",
        c.added, c.changed, c.removed, c.copied, c.metadata, c.dirs_added, c.dirs_removed
    );
    let ratio = if report.content_bytes > 0 {
        format!(
            ", {:.1}% of the {} of new content",
            (sent + received) as f64 * 100.0 / report.content_bytes as f64,
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
    Ok(())
}

#[derive(Serialize)]
struct LsEntry<'a> {
    path: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    mode: String,
    size: u64,
    mtime: i64,
    hash: Option<String>,
    target: Option<&'a str>,
}

async fn ls(a: LsArgs) -> Result<()> {
    let mut s = open(&a.conn).await?;
    let manifest = s.client.manifest(&s.ground, &s.pod).await?;
    s.client.bye().await?;
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
    if let Some(f) = &filter
        && entries.is_empty()
    {
        return Err(GroundError::NotFound(f.to_string()).into());
    }
    if a.conn.json {
        let out: Vec<LsEntry> = entries
            .iter()
            .map(|e| LsEntry {
                path: e.path.as_str(),
                kind: e.type_name(),
                mode: format!("{:o}", e.mode),
                size: e.size(),
                mtime: e.mtime,
                hash: e.file_id().map(|i| i.to_hex()),
                target: match &e.kind {
                    EntryKind::Symlink { target } => Some(target),
                    _ => None,
                },
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
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
        let line = writeln!(
            out,
            "{kind:<4} {:>4o} {:>10} {time:>19}  {:<12} {}{}",
            e.mode,
            e.size(),
            if kind == "file" { extra.as_str() } else { "" },
            e.path,
            if kind == "link" {
                format!(" {extra}")
            } else {
                String::new()
            },
        );
        if quiet_on_closed_pipe(line)? {
            return Ok(());
        }
    }
    quiet_on_closed_pipe(out.flush())?;
    Ok(())
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
    let (sent, received) = s.client.bye().await?;
    if a.conn.json {
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
