//! `sync-onboard`: the satellite's peer. Listens for the ground, keeps one volume per pod under
//! `--volumes`, and its own state (SQLite, staging) under `--state`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sync_core::link::{ServeOptions, serve};
use sync_core::onboard::OnboardService;
use sync_core::pack::Limits;
use sync_core::wire::LinkKey;

#[derive(Parser)]
#[command(
    name = "sync-onboard",
    version,
    about = "Receive, verify and apply file changes to pod volumes on the satellite",
    long_about = "Receives changesets from sync-ground over an authenticated, encrypted link, \
verifies every byte against its BLAKE3 content id, and applies each changeset to the pod's \
volume in one short journaled step (a crash in the middle rolls forward on restart).\n\n\
Each pod name owns one volume: VOLUMES/<pod>, created on first push. Pods never see each \
other's files, and nothing the engine keeps (state database, staging) lives inside a volume.",
    after_help = "Example:\n  sync-onboard keygen > link.key\n  sync-onboard serve --volumes /srv/pods --state /var/lib/sync-onboard --listen 0.0.0.0:7700 --key link.key"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new random 256-bit link key (hex); give the same file to both sides.
    Keygen,
    /// Listen for the ground and serve pod volumes.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Folder holding one volume per pod (VOLUMES/<pod>).
    #[arg(long, value_name = "DIR")]
    volumes: PathBuf,
    /// Folder for the engine's own state; must not be inside --volumes.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed on the first line of stdout).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    listen: String,
    /// File holding the link key (64 hex digits), as written by `keygen`.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Drop a connection that has been silent this many seconds (the ground sends keep-alives
    /// every 3 s; what was received before is kept and the next connection resumes after it).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    idle_timeout: u64,
    /// Memory the daemon decodes packs within, e.g. 128MiB, 48MiB: a quarter of it for a
    /// segment's reference prefix, a quarter for zstd's window, a quarter for a pack's list of
    /// changes; grounds encode for it (they learn it when they connect). Files of any size
    /// still cross, in pieces; a smaller bound costs some compression on large changed files.
    #[arg(long, value_name = "SIZE", default_value = "128MiB", value_parser = parse_size)]
    memory: u64,
    /// Refuse any single file larger than this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_object_bytes: Option<u64>,
    /// Refuse packs whose content totals more than this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_total_bytes: Option<u64>,
    /// Most content (sum of file sizes) one pull pack carries, e.g. 1GiB. The node encodes a
    /// pull pack in bounded memory, whatever its size, into its state folder, and offers it
    /// while it encodes; this sets how much of the state disk one pack may take: a larger
    /// selection is pulled as several packs in a row, each applied on the ground before the
    /// next is encoded, and a single larger file comes in a pack of its own.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    max_pull_pack: u64,
    /// Threads a pull's compression may take. The pods share the node's CPU: by default one,
    /// and the level is chosen so that one thread keeps the downlink busy at the rate the
    /// ground gives (`pull --rate`); more threads allow a higher level on a fast link.
    #[arg(long, value_name = "N", default_value_t = 1)]
    encode_threads: u32,
    /// Nice value (0-19) of a pull's compression threads: the pods' own work goes first, and
    /// the encoder takes the CPU they leave.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    encode_nice: i32,
    /// Drop a peer that has not shown the key this long after it connected, e.g. 10s, 500ms.
    /// A ground does it in about one round trip (its preamble and first handshake message,
    /// 56 bytes); a peer without the key that sends a byte now and then would otherwise hold
    /// its connection for ever, since the idle timeout restarts on every byte.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Most connections held at once, authenticated or not. Each holds a file descriptor:
    /// keep it well below the descriptor limit (`ulimit -n`). When it is reached, a connection
    /// whose peer has not proven the key makes room for the newcomer; authenticated ones are
    /// never dropped for it.
    #[arg(long, value_name = "N", default_value_t = ServeOptions::default().max_connections)]
    max_connections: usize,
    /// Most connections held whose peer has not yet sent a record under the key (a peer
    /// without the key never does). A newcomer beyond it takes the place of the oldest from the
    /// address holding the most, so peers without the key replace each other and never the
    /// ground. Must be less than --max-connections, which keeps room for authenticated ones.
    #[arg(long, value_name = "N", default_value_t = ServeOptions::default().max_unauthenticated)]
    max_unauthenticated: usize,
}

fn parse_size(s: &str) -> Result<u64, String> {
    sync_core::units::parse_bytes(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sync_core::units::parse_duration(s).map_err(|e| e.to_string())
}

/// The daemon's memory bound (`--memory`) counts what it holds at once. glibc keeps freed
/// memory for reuse: large buffers (a segment's prefix, zstd's window) freed by one thread stay
/// with that thread's arena, and its threshold for giving them back rises as it sees them, so
/// the next pack, decoded on another thread, took them again on top (36 MiB under a 32 MiB
/// bound, measured). Buffers of 256 KiB and more are mapped and unmapped instead, and two
/// arenas serve all threads.
fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called first thing, before any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() {
    return_large_buffers();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen => keygen(),
        Command::Serve(args) => run_serve(args),
    };
    if let Err(e) = result {
        eprintln!("sync-onboard: {e:#}");
        std::process::exit(1);
    }
}

fn keygen() -> Result<()> {
    let key = LinkKey::generate().context("generating a key")?;
    println!("{}", key.to_hex());
    Ok(())
}

fn read_key(path: &PathBuf) -> Result<LinkKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the link key from {}", path.display()))?;
    LinkKey::from_hex(&text).with_context(|| format!("link key in {}", path.display()))
}

fn run_serve(args: ServeArgs) -> Result<()> {
    let opts = ServeOptions {
        idle_timeout: Duration::from_secs(args.idle_timeout),
        handshake_timeout: args.handshake_timeout,
        max_connections: args.max_connections,
        max_unauthenticated: args.max_unauthenticated,
    };
    opts.check()
        .context("checking --max-connections, --max-unauthenticated and --handshake-timeout")?;
    let key = read_key(&args.key)?;
    if args.memory < 16 << 20 {
        anyhow::bail!("--memory {} is too small: at least 16MiB", args.memory);
    }
    let mut limits = Limits::for_memory(args.memory);
    if let Some(v) = args.max_object_bytes {
        limits.max_object_bytes = v;
    }
    if let Some(v) = args.max_total_bytes {
        limits.max_total_bytes = v;
    }
    let mut service =
        OnboardService::open(&args.volumes, &args.state, limits).with_context(|| {
            format!(
                "opening volumes {} and state {}",
                args.volumes.display(),
                args.state.display()
            )
        })?;
    service.set_pull_pack_cap(args.max_pull_pack);
    service.set_pull_cpu(args.encode_threads, args.encode_nice);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        println!("listening on {addr}");
        use std::io::Write;
        std::io::stdout().flush()?;
        eprintln!(
            "sync-onboard {}: node {}, volumes {}",
            env!("CARGO_PKG_VERSION"),
            service.node().to_hex(),
            args.volumes.display()
        );
        serve(listener, Arc::new(service), key, opts, shutdown_signal()).await?;
        eprintln!("sync-onboard: shutting down");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
