//! A throttling TCP proxy: a slow link between `sync-ground` and `sync-onboard serve` on one
//! machine, so that the engine's own rate measurement (its acknowledgements) sees a real slow
//! link and the wall time of a push includes its time on that link.
//!
//! ```text
//! throttle --rate RATE --to ADDR [--latency DURATION] [--listen ADDR]
//!   RATE       each direction's rate, as sync-ground writes it: 100Mbit, 9600bit, 1200B
//!   ADDR       where to forward (the daemon's address)
//!   DURATION   fixed one-way delay added to every byte (20ms, 0.5s; default none)
//!   --listen   default 127.0.0.1:0; the first line on stdout is "listening on ADDR"
//! ```
//!
//! Each direction of each connection has its own token bucket at RATE (a full-duplex link),
//! with a burst of 5 ms of the link: the proxy reads at most that much from the sender, takes it
//! from the bucket (waiting for the tokens it lacks), and delivers it LATENCY later. The sender
//! meets the slow link through TCP flow control. A half-close goes through once everything before
//! it is delivered; a reset or error on either side closes both. Each connection prints its
//! bytes per direction and its duration to stderr when it ends, to check the wire counts against.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use sync_core::units::{parse_duration, parse_rate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};

const USAGE: &str = "usage: throttle --rate RATE --to ADDR [--latency DURATION] [--listen ADDR]";

/// The bucket holds this much of the link: enough that the timer's millisecond resolution does
/// not show in the rate, little enough that the link never bursts noticeably above it.
const BURST: Duration = Duration::from_millis(5);
/// At low rates the burst is still one Ethernet-sized packet: a smaller read would only cost
/// wake-ups, and a real link carries whole packets too.
const MIN_BURST_BYTES: f64 = 1500.0;
/// A read is at most one burst and at most this: the copy buffer's size.
const MAX_CHUNK: usize = 64 << 10;
/// Chunks on their way through the latency per direction. A paced reader fills the queue at the
/// link's rate, so it holds rate × latency; the bound only matters past 64 MiB of that.
const IN_FLIGHT_CHUNKS: usize = 1024;

/// The simulated link: the same in both directions.
#[derive(Debug, Clone, Copy)]
struct Link {
    /// Bytes per second, each direction.
    rate: f64,
    /// One-way delay.
    latency: Duration,
}

/// Tokens are bytes. They may go below zero: a read of more than the bucket holds is let through
/// after the wait that pays its debt, so the long-run rate is exact whatever the read sizes.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        let burst = (rate * BURST.as_secs_f64()).max(MIN_BURST_BYTES);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// The largest read worth doing at once.
    fn chunk(&self) -> usize {
        (self.burst as usize).clamp(1, MAX_CHUNK)
    }

    /// Takes `n` bytes' tokens, waiting until the link has carried them.
    async fn take(&mut self, n: usize) {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            sleep(Duration::from_secs_f64(-self.tokens / self.rate)).await;
        }
    }
}

/// One direction: paced reads from `from`, each delivered to `to` a latency after it passed the
/// bucket; `to` is shut down after the last. Returns the bytes carried.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: Link) -> std::io::Result<u64> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let pace = async move {
        let mut bucket = Bucket::new(link.rate);
        let mut buf = vec![0u8; bucket.chunk()];
        let mut carried = 0u64;
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                break; // dropping `tx` ends the delivery after what is queued
            }
            bucket.take(n).await;
            carried += n as u64;
            let at = Instant::now() + link.latency;
            if tx.send((at, buf[..n].to_vec())).await.is_err() {
                break; // the delivery failed: its error is the one reported
            }
        }
        Ok::<u64, std::io::Error>(carried)
    };
    let deliver = async move {
        while let Some((at, bytes)) = rx.recv().await {
            sleep_until(at).await;
            to.write_all(&bytes).await?;
        }
        to.shutdown().await
    };
    let (carried, ()) = tokio::try_join!(pace, deliver)?;
    Ok(carried)
}

/// One connection: both directions until both have ended, or until either fails (then both
/// sockets close). Returns the bytes carried (client to upstream, upstream to client).
async fn relay(client: TcpStream, to: SocketAddr, link: Link) -> std::io::Result<(u64, u64)> {
    let upstream = TcpStream::connect(to).await?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pipe(cr, uw, link);
    let down = pipe(ur, cw, link);
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut up => { let u = r?; Ok((u, down.await?)) }
        r = &mut down => { let d = r?; Ok((up.await?, d)) }
    }
}

struct Args {
    link: Link,
    to: SocketAddr,
    listen: SocketAddr,
}

fn parse_args() -> Result<Args, String> {
    let mut rate = None;
    let mut to = None;
    let mut latency = Duration::ZERO;
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("a valid address");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rate" => rate = Some(parse_rate(&value).map_err(|e| e.to_string())?),
            "--latency" => latency = parse_duration(&value).map_err(|e| e.to_string())?,
            "--to" => to = Some(value.parse().map_err(|e| format!("--to {value}: {e}"))?),
            "--listen" => {
                listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value}: {e}"))?
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        link: Link {
            rate: rate.ok_or("--rate is required")?,
            latency,
        },
        to: to.ok_or("--to is required")?,
        listen,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("throttle: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("throttle: binding {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let local = listener
        .local_addr()
        .expect("a bound listener has an address");
    // The bench script waits for this line; print it before anything else, and at once.
    println!("listening on {local}");
    eprintln!(
        "throttle: {local} -> {}: {:.0} bit/s each way, {} ms one-way latency",
        args.to,
        args.link.rate * 8.0,
        args.link.latency.as_millis()
    );
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("throttle: accept: {e}");
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (to, link) = (args.to, args.link);
        tokio::spawn(async move {
            let start = Instant::now();
            let secs = || start.elapsed().as_secs_f64();
            match relay(client, to, link).await {
                Ok((up, down)) => eprintln!(
                    "throttle: {peer} closed after {:.3} s: up {up} B, down {down} B",
                    secs()
                ),
                Err(e) => eprintln!("throttle: {peer} failed after {:.3} s: {e}", secs()),
            }
        });
    }
}
