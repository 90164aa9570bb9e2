//! Peers that never finish the handshake: each holds a connection to the daemon and sends it a
//! byte now and then (a "slowloris"), as a scanner or a hostile pod on the satellite's network
//! could without the key. The load of the flood and lock-out tests.
//!
//! They run on a runtime of their own in one thread, so thousands of them cost the test a few
//! megabytes and little CPU; they come from an address of their own (any of 127.0.0.0/8 is this
//! machine on Linux), so the daemon can tell them from the ground, as it would tell a pod on the
//! satellite from the ground station.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sync_core::wire::preamble;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What each peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drip {
    /// The preamble and then a first handshake message, one byte per tick.
    Bytes,
    /// The whole preamble at once, then a first handshake message one byte per tick: a peer
    /// that knows the protocol but not the key.
    AfterPreamble,
    /// The preamble, then a record header declaring 65,535 bytes and 60,000 of them at once,
    /// then a byte per tick: what made the daemon buffer a record per connection.
    DeclaredRecord,
    /// A preamble of another protocol version, then nothing: the daemon refuses it at once.
    BadVersion,
}

#[derive(Debug, Clone)]
pub struct DripPlan {
    pub target: SocketAddr,
    /// The address the connections come from.
    pub source: IpAddr,
    pub count: usize,
    pub drip: Drip,
    /// One byte per tick.
    pub every: Duration,
    /// The connections are opened evenly over this long.
    pub ramp: Duration,
    /// After the daemon ends a connection, its peer connects again after this pause; `None`:
    /// each peer connects once.
    pub reconnect: Option<Duration>,
}

impl DripPlan {
    /// `count` peers from `source` to `target` (`HOST:PORT`), once each, a byte a second,
    /// opened over half a second.
    pub fn new(target: &str, source: &str, count: usize, drip: Drip) -> Self {
        Self {
            target: target.parse().expect("a socket address"),
            source: source.parse().expect("an IP address"),
            count,
            drip,
            every: Duration::from_secs(1),
            ramp: Duration::from_millis(500),
            reconnect: None,
        }
    }
}

/// Counts of what the peers saw.
#[derive(Debug)]
pub struct DripStats {
    /// Connections opened (the TCP connect succeeded).
    pub opened: AtomicU64,
    /// Connections the daemon ended (end of stream or reset).
    pub cut: AtomicU64,
    /// Connects that failed.
    pub failed: AtomicU64,
    /// Shortest and longest time from a connect to its cut, in milliseconds.
    pub min_cut_ms: AtomicU64,
    pub max_cut_ms: AtomicU64,
}

impl Default for DripStats {
    fn default() -> Self {
        Self {
            opened: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            min_cut_ms: AtomicU64::new(u64::MAX),
            max_cut_ms: AtomicU64::new(0),
        }
    }
}

impl DripStats {
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }
    pub fn cut(&self) -> u64 {
        self.cut.load(Ordering::SeqCst)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }
    /// Shortest and longest time a connection lived before the daemon ended it.
    pub fn cut_after(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.min_cut_ms.load(Ordering::SeqCst)),
            Duration::from_millis(self.max_cut_ms.load(Ordering::SeqCst)),
        )
    }
}

/// A running set of dripping peers; dropping it (or [`Drippers::stop`]) closes them all.
pub struct Drippers {
    stats: Arc<DripStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drippers {
    pub fn start(plan: DripPlan) -> Self {
        // Each peer is a descriptor of this process, and tests run side by side.
        crate::raise_descriptor_limit(16_384);
        let stats = Arc::new(DripStats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = stats.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the drippers' runtime");
            runtime.block_on(async move {
                let plan = Arc::new(plan);
                for i in 0..plan.count {
                    tokio::spawn(peer(i, plan.clone(), s.clone()));
                }
                let _ = stopped.await;
            });
            // Dropping the runtime drops every peer, and with it its socket.
        });
        Self {
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn stats(&self) -> &DripStats {
        &self.stats
    }

    /// Waits until `f` holds of the counts; false on timeout.
    pub fn wait(&self, timeout: Duration, f: impl Fn(&DripStats) -> bool) -> bool {
        let until = Instant::now() + timeout;
        while !f(&self.stats) {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Closes every connection and stops connecting.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Drippers {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn peer(i: usize, plan: Arc<DripPlan>, stats: Arc<DripStats>) {
    let start = plan.ramp.mul_f64(i as f64 / plan.count.max(1) as f64);
    tokio::time::sleep(start).await;
    loop {
        match connect(&plan).await {
            Ok(stream) => {
                stats.opened.fetch_add(1, Ordering::SeqCst);
                let t0 = Instant::now();
                hold(stream, &plan).await;
                let ms = t0.elapsed().as_millis() as u64;
                stats.cut.fetch_add(1, Ordering::SeqCst);
                stats.min_cut_ms.fetch_min(ms, Ordering::SeqCst);
                stats.max_cut_ms.fetch_max(ms, Ordering::SeqCst);
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        match plan.reconnect {
            Some(pause) => tokio::time::sleep(pause).await,
            None => return,
        }
    }
}

async fn connect(plan: &DripPlan) -> std::io::Result<TcpStream> {
    let socket = match plan.source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    leave_the_port_to_connect(&socket);
    socket.bind(SocketAddr::new(plan.source, 0))?;
    socket.connect(plan.target).await
}

/// Lets `connect` pick the local port rather than `bind` (IP_BIND_ADDRESS_NO_PORT). A port
/// picked at `bind` ignores where the connection goes, so with thousands of connections a
/// second it often lands on a pair the daemon still holds in TIME_WAIT, and the connect stalls
/// for a SYN retry.
fn leave_the_port_to_connect(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a live local for the duration of the call; the
    // descriptor belongs to `socket`. Failing leaves the default, which works, more slowly.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Sends what the plan says until the daemon ends the connection.
async fn hold(mut stream: TcpStream, plan: &DripPlan) {
    let ours = preamble();
    let mut first_message = vec![0u8, 48];
    first_message.extend((0..48u8).map(|b| b.wrapping_mul(37)));
    let (burst, trickle): (Vec<u8>, Vec<u8>) = match plan.drip {
        Drip::Bytes => (Vec::new(), [&ours[..], &first_message].concat()),
        Drip::AfterPreamble => (ours.to_vec(), first_message),
        Drip::DeclaredRecord => {
            let mut b = ours.to_vec();
            b.extend_from_slice(&[0xff, 0xff]);
            b.extend(std::iter::repeat_n(7u8, 60_000));
            (b, Vec::new())
        }
        Drip::BadVersion => {
            let mut b = ours;
            b[5] = b[5].wrapping_add(1);
            (b.to_vec(), Vec::new())
        }
    };
    let (mut rd, mut wr) = stream.split();
    let mut buf = [0u8; 256];
    if !burst.is_empty() {
        // The daemon may end the connection while this is still being written.
        tokio::select! {
            r = wr.write_all(&burst) => if r.is_err() { return },
            _ = until_closed(&mut rd, &mut buf) => return,
        }
    }
    let mut next = 0;
    loop {
        tokio::select! {
            _ = until_closed(&mut rd, &mut buf) => return,
            _ = tokio::time::sleep(plan.every) => {
                if plan.drip == Drip::BadVersion {
                    continue;
                }
                // Past the end of the script, zeros: whatever keeps the link from going silent.
                let byte = trickle.get(next).copied().unwrap_or(0);
                next += 1;
                if wr.write_all(&[byte]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads (and drops) what the daemon sends until it ends the connection.
async fn until_closed(rd: &mut tokio::net::tcp::ReadHalf<'_>, buf: &mut [u8]) {
    loop {
        match rd.read(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
