//! A simulated link for tests and benchmarks: a byte pipe each way with a bit rate, a one-way
//! latency, and faults at chosen byte offsets or times (the connection cut, the link going
//! silent, a byte flipped). It runs on tokio's clock, so under a paused runtime
//! (`start_paused = true`) hours of passes take seconds.
//!
//! Each direction is a pump: it takes what the writer has put in its send buffer, holds it for
//! its serialisation time at the link's rate, then delivers it after the latency. Bytes are
//! counted when they have been serialised onto the link, so a cut loses the bytes in flight,
//! as a real one does, and they still count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::sleep_until_opt;

/// One end of a simulated connection: reads what the other end sent, writes towards it.
/// Dropping it closes the connection, as closing a socket does.
pub type SimStream = DuplexStream;

/// Bytes a pump moves per step. Small enough that a 9.6 kbit/s link delivers smoothly (under a
/// second per step); faults land on exact byte offsets regardless.
const STEP_BYTES: usize = 512;
/// The writer's send buffer and the reader's receive buffer, as a socket's.
const BUFFER_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ground to onboard.
    Up,
    /// Onboard to ground.
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// When the link has carried this many bytes in this direction, counted over all
    /// connections since the [`SimNet`] was made.
    Byte(Direction, u64),
    /// At this much time after the [`SimNet`] was made.
    Time(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The connection ends: both sides see it closed.
    Cut,
    /// The connection goes silent: nothing more is delivered either way, nothing is closed
    /// (a pass ending, the antenna losing the satellite). Only timeouts notice.
    Silence,
    /// One byte, at the trigger's offset, is flipped.
    Corrupt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub at: Trigger,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Bits per second, ground to onboard.
    pub up_bps: u64,
    /// Bits per second, onboard to ground.
    pub down_bps: u64,
    /// One-way latency.
    pub latency: Duration,
}

impl SimConfig {
    /// The same rate both ways; `rtt` is the round trip.
    pub fn symmetric(bps: u64, rtt: Duration) -> Self {
        Self {
            up_bps: bps,
            down_bps: bps,
            latency: rtt / 2,
        }
    }
}

/// The simulated network between one ground and one onboard node.
#[derive(Clone)]
pub struct SimNet {
    inner: Arc<NetInner>,
}

struct NetInner {
    config: SimConfig,
    start: Instant,
    up: AtomicU64,
    down: AtomicU64,
    faults: Mutex<Vec<Fault>>,
    fired: Mutex<Vec<(Fault, Instant)>>,
}

impl SimNet {
    pub fn new(config: SimConfig, faults: Vec<Fault>) -> Self {
        Self {
            inner: Arc::new(NetInner {
                config,
                start: Instant::now(),
                up: AtomicU64::new(0),
                down: AtomicU64::new(0),
                faults: Mutex::new(faults),
                fired: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Bytes carried so far: (ground to onboard, onboard to ground).
    pub fn carried(&self) -> (u64, u64) {
        (
            self.inner.up.load(Ordering::Relaxed),
            self.inner.down.load(Ordering::Relaxed),
        )
    }

    /// Faults that have happened, with when.
    pub fn fired(&self) -> Vec<(Fault, Duration)> {
        self.inner
            .fired
            .lock()
            .expect("fired")
            .iter()
            .map(|(f, t)| (*f, t.duration_since(self.inner.start)))
            .collect()
    }

    /// A new connection: (the ground's end, the onboard's end). Must be called inside a tokio
    /// runtime; the pumps are tasks of it.
    pub fn connect(&self) -> (SimStream, SimStream) {
        // Time faults that fell while nothing was connected had nothing to cut.
        let now = Instant::now();
        let start = self.inner.start;
        self.inner
            .faults
            .lock()
            .expect("faults")
            .retain(|f| !matches!(f.at, Trigger::Time(t) if start + t <= now));
        let (ground, ground_link) = tokio::io::duplex(BUFFER_BYTES);
        let (onboard, onboard_link) = tokio::io::duplex(BUFFER_BYTES);
        let (g_read, g_write) = tokio::io::split(ground_link);
        let (o_read, o_write) = tokio::io::split(onboard_link);
        let (status, _) = watch::channel(RUNNING);
        let status = Arc::new(status);
        let net = self.inner.clone();
        tokio::spawn(pump(
            net.clone(),
            status.clone(),
            Direction::Up,
            g_read,
            o_write,
        ));
        tokio::spawn(pump(net, status, Direction::Down, o_read, g_write));
        (ground, onboard)
    }
}

/// A connection's state, shared by its pumps: running, cut or silent.
type Status = Arc<watch::Sender<u8>>;

const RUNNING: u8 = 0;
const CUT: u8 = 1;
const SILENT: u8 = 2;

impl NetInner {
    fn counter(&self, dir: Direction) -> &AtomicU64 {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    fn rate(&self, dir: Direction) -> u64 {
        match dir {
            Direction::Up => self.config.up_bps,
            Direction::Down => self.config.down_bps,
        }
        .max(1)
    }

    /// The next byte-triggered fault in `dir` at or after `from`, if it lies before `to`.
    fn next_byte_fault(&self, dir: Direction, from: u64, to: u64) -> Option<(u64, Action)> {
        self.faults
            .lock()
            .expect("faults")
            .iter()
            .filter_map(|f| match f.at {
                Trigger::Byte(d, at) if d == dir && at >= from && at < to => Some((at, f.action)),
                _ => None,
            })
            .min_by_key(|(at, _)| *at)
    }

    fn next_time_fault(&self) -> Option<Instant> {
        self.faults
            .lock()
            .expect("faults")
            .iter()
            .filter_map(|f| match f.at {
                Trigger::Time(t) => Some(self.start + t),
                _ => None,
            })
            .min()
    }

    /// Removes and records a fault that fires now.
    fn fire(&self, pred: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut faults = self.faults.lock().expect("faults");
        let i = faults.iter().position(pred)?;
        let f = faults.remove(i);
        self.fired.lock().expect("fired").push((f, Instant::now()));
        Some(f)
    }
}

fn serialisation(bytes: usize, bps: u64) -> Duration {
    Duration::from_nanos((bytes as u64 * 8).saturating_mul(1_000_000_000) / bps)
}

/// Moves one direction of one connection until either end goes away or a fault ends it.
async fn pump(
    net: Arc<NetInner>,
    status: Status,
    dir: Direction,
    mut from: ReadHalf<DuplexStream>,
    to: WriteHalf<DuplexStream>,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let deliver = tokio::spawn(deliver(status.subscribe(), rx, to));
    let mut watch = status.subscribe();
    let mut buf = vec![0u8; STEP_BYTES];
    // The link is free from this instant on; a step starts no earlier.
    let mut free_at = Instant::now();
    loop {
        // Bytes already waiting go out back to back: the link stays busy from `free_at`.
        // Timers fire on millisecond ticks, so without this every step of a fast link would
        // lose up to a millisecond, and a 10 Mbit/s link would run at half its rate.
        if let Ok(r) = tokio::time::timeout(Duration::ZERO, from.read(&mut buf)).await {
            match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !step(&net, &status, dir, &tx, &buf[..n], &mut free_at).await {
                        break;
                    }
                    continue;
                }
            }
        }
        // The link went idle: it starts again when bytes come.
        let n = tokio::select! {
            _ = watch.wait_for(|s| *s != RUNNING) => break,
            _ = sleep_until_opt(net.next_time_fault()) => {
                let now = Instant::now();
                if let Some(f) = net.fire(|f| matches!(f.at, Trigger::Time(t) if net.start + t <= now)) {
                    apply(&status, f.action);
                }
                continue;
            }
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        free_at = free_at.max(Instant::now());
        if !step(&net, &status, dir, &tx, &buf[..n], &mut free_at).await {
            break;
        }
    }
    drop(tx);
    if *status.borrow() == SILENT {
        // Swallow whatever the writer still sends, close nothing, until a cut or its end.
        loop {
            tokio::select! {
                _ = watch.wait_for(|s| *s == CUT) => break,
                r = from.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
            }
        }
    }
    let _ = deliver.await;
}

/// Puts one chunk on the link from `free_at` on: faults, serialisation, counting, delivery
/// after the latency. False when the connection is over.
async fn step(
    net: &NetInner,
    status: &Status,
    dir: Direction,
    tx: &mpsc::Sender<(Instant, Vec<u8>)>,
    bytes: &[u8],
    free_at: &mut Instant,
) -> bool {
    if *status.borrow() != RUNNING {
        return false;
    }
    let mut chunk = bytes.to_vec();
    let counter = net.counter(dir);
    let at = counter.load(Ordering::Relaxed);
    let mut fault = None;
    if let Some((off, action)) = net.next_byte_fault(dir, at, at + chunk.len() as u64) {
        let i = (off - at) as usize;
        net.fire(|f| f.at == Trigger::Byte(dir, off) && f.action == action);
        match action {
            Action::Corrupt => chunk[i] ^= 0x5a,
            Action::Cut | Action::Silence => {
                chunk.truncate(i);
                fault = Some(action);
            }
        }
    }
    // Time faults due before this chunk is done cut it short.
    let done = *free_at + serialisation(chunk.len(), net.rate(dir));
    if let Some(t) = net.next_time_fault()
        && t < done
    {
        tokio::time::sleep_until(t).await;
        let now = Instant::now();
        if let Some(f) = net.fire(|f| matches!(f.at, Trigger::Time(x) if net.start + x <= now)) {
            let sent = ((t.saturating_duration_since(*free_at)).as_secs_f64()
                * net.rate(dir) as f64
                / 8.0) as usize;
            let i = sent.min(chunk.len());
            match f.action {
                // The byte on the link at that moment is flipped; nothing is lost.
                Action::Corrupt => {
                    if let Some(b) = chunk.get_mut(i) {
                        *b ^= 0x5a;
                    }
                }
                Action::Cut | Action::Silence => {
                    chunk.truncate(i);
                    fault = Some(f.action);
                }
            }
        }
    }
    *free_at += serialisation(chunk.len(), net.rate(dir));
    tokio::time::sleep_until(*free_at).await;
    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    // The bytes before a fault's offset still go out; nothing after.
    let _ = tx.send((*free_at + net.config.latency, chunk)).await;
    if let Some(action) = fault {
        apply(status, action);
    }
    *status.borrow() == RUNNING
}

fn apply(status: &Status, action: Action) {
    match action {
        Action::Cut => {
            status.send_replace(CUT);
        }
        Action::Silence => {
            status.send_if_modified(|s| {
                let was = *s == RUNNING;
                if was {
                    *s = SILENT;
                }
                was
            });
        }
        Action::Corrupt => {}
    }
}

/// Hands chunks to the reading end once their latency has passed. On a cut, what is still in
/// flight is lost and the reading end sees the connection close.
async fn deliver(
    mut status: watch::Receiver<u8>,
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut to: WriteHalf<DuplexStream>,
) {
    loop {
        let next = tokio::select! {
            _ = status.wait_for(|s| *s == CUT) => break,
            m = rx.recv() => m,
        };
        let Some((at, chunk)) = next else {
            break;
        };
        let delivered = async {
            tokio::time::sleep_until(at).await;
            to.write_all(&chunk).await
        };
        tokio::select! {
            _ = status.wait_for(|s| *s == CUT) => break,
            r = delivered => if r.is_err() { break },
        }
    }
    if *status.borrow() == SILENT {
        // Keep the reading end open and silent until the connection is cut or dropped.
        let _ = status.wait_for(|s| *s == CUT).await;
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn transfer(net: &SimNet, bytes: usize) -> (Vec<u8>, Duration) {
        let (mut a, mut b) = net.connect();
        let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
        let t0 = Instant::now();
        let w = tokio::spawn(async move {
            let _ = a.write_all(&data).await;
            let _ = a.shutdown().await;
            a
        });
        let mut got = Vec::new();
        let _ = b.read_to_end(&mut got).await;
        let _a = w.await.unwrap();
        (got, t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn rate_and_latency_are_honoured() {
        let net = SimNet::new(SimConfig::symmetric(9600, Duration::from_secs(1)), vec![]);
        let (got, took) = transfer(&net, 12_000).await;
        assert_eq!(got.len(), 12_000);
        // 12,000 bytes at 1,200 bytes/s is 10 s, plus 0.5 s one-way latency.
        let secs = took.as_secs_f64();
        assert!((10.4..10.7).contains(&secs), "took {secs} s");
        assert_eq!(net.carried(), (12_000, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_at_a_byte_delivers_only_what_came_before() {
        let net = SimNet::new(
            SimConfig::symmetric(1_000_000, Duration::from_millis(20)),
            vec![Fault {
                at: Trigger::Byte(Direction::Up, 5_000),
                action: Action::Cut,
            }],
        );
        let (got, _) = transfer(&net, 20_000).await;
        assert!(
            got.len() <= 5_000,
            "{} bytes crossed a cut at 5000",
            got.len()
        );
        assert_eq!(net.carried().0, 5_000);
        assert_eq!(net.fired().len(), 1);
        // The next connection is not affected.
        let (got, _) = transfer(&net, 20_000).await;
        assert_eq!(got.len(), 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn corruption_flips_exactly_one_byte() {
        let net = SimNet::new(
            SimConfig::symmetric(1_000_000, Duration::from_millis(20)),
            vec![Fault {
                at: Trigger::Byte(Direction::Up, 777),
                action: Action::Corrupt,
            }],
        );
        let (got, _) = transfer(&net, 2_000).await;
        let want: Vec<u8> = (0..2_000).map(|i| (i * 7 % 251) as u8).collect();
        let diffs: Vec<usize> = (0..2_000).filter(|&i| got[i] != want[i]).collect();
        assert_eq!(diffs, vec![777]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_cut_ends_a_busy_connection() {
        let net = SimNet::new(
            SimConfig::symmetric(9600, Duration::from_millis(100)),
            vec![Fault {
                at: Trigger::Time(Duration::from_secs(3)),
                action: Action::Cut,
            }],
        );
        let (got, took) = transfer(&net, 100_000).await;
        assert!(got.len() < 4_000, "{} bytes in 3 s at 1200 B/s", got.len());
        assert!(took < Duration::from_secs(4), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_link_closes_nothing() {
        let net = SimNet::new(
            SimConfig::symmetric(1_000_000, Duration::from_millis(20)),
            vec![Fault {
                at: Trigger::Byte(Direction::Up, 1_000),
                action: Action::Silence,
            }],
        );
        let (mut a, mut b) = net.connect();
        a.write_all(&[1u8; 4_000]).await.unwrap();
        let mut got = vec![0u8; 4_000];
        let mut n = 0;
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let k = b.read(&mut got[n..]).await.unwrap();
                n += k;
                if k == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(r.is_err(), "the silent link must neither deliver nor close");
        assert_eq!(n, 1_000);
    }
}
