//! The onboard daemon's side of connections: the accept loop (listener and shutdown passed in,
//! so tests bind port 0 and stop it cleanly) and [`serve_connection`], which runs one
//! connection over any byte stream (TCP, or the simulated link).
//!
//! Peers that have not proven the key are held on a short lead: a deadline for the handshake,
//! a cap on how many are held (the oldest of the busiest address goes first when a newcomer
//! needs room, see [`super::admission`]), a cap on all connections that always leaves room for
//! authenticated ones, a pause instead of a spin when accepting fails for want of descriptors,
//! and one summary line of log per interval for all of their refusals ([`super::refusals`]).

use std::future::Future;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::admission::{Admission, Admit};
use super::refusals::{Refusal, RefusalLog};
use super::{ACK_INTERVAL, Link, LinkError, LinkWriter, Waited, keep_alive_until, sleep_until_opt};
use crate::onboard::{OnboardService, OnboardSession, Outcome};
use crate::wire::{LinkKey, Message};

/// Refusals are summed up in one log line per this long.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The first pause after an accept fails for want of resources; it doubles on each failure in
/// a row up to [`ACCEPT_PAUSE_MAX`], and starts again after an accept succeeds.
const ACCEPT_PAUSE_FIRST: Duration = Duration::from_millis(100);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A connection silent this long is dropped (a pass ended, a peer died). The ground sends
    /// keep-alives every [`KEEPALIVE_INTERVAL`](super::KEEPALIVE_INTERVAL), so this can be a few
    /// multiples of it.
    pub idle_timeout: Duration,
    /// A peer must have shown the key (its preamble and first handshake message, 56 bytes:
    /// about one round trip for a ground) this long after it connected, or it is dropped. The
    /// idle timeout alone restarts on every byte, so a peer dripping a byte now and then held
    /// a connection for ever.
    pub handshake_timeout: Duration,
    /// Most connections held at once, authenticated or not. Each holds a descriptor (20,000
    /// dripping peers once took every one the daemon had), so keep it well below the
    /// descriptor limit. When it is reached, a connection whose peer has not proven the key
    /// makes room for the newcomer; authenticated ones are never dropped for it.
    pub max_connections: usize,
    /// Most connections held whose peer has not yet sent a record under the key (the proof
    /// of it that cannot be replayed; a peer without the key never does). A newcomer beyond
    /// it takes the place of the oldest from the address holding the most, so peers without
    /// the key only ever replace each other, never the ground. Less than `max_connections`,
    /// so there is always room for authenticated ones.
    pub max_unauthenticated: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 128,
            max_unauthenticated: 64,
        }
    }
}

/// Options [`serve`] cannot work with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServeOptionsError {
    /// the unauthenticated cap leaves no room for authenticated connections
    #[error(
        "at most {unauthenticated} unauthenticated connections of {total} in all leaves no room \
         for an authenticated ground: the unauthenticated cap must be less than the total"
    )]
    NoRoomForAuthenticated {
        unauthenticated: usize,
        total: usize,
    },
    /// no connection could ever be admitted
    #[error("the unauthenticated cap must be at least 1: every connection starts unauthenticated")]
    NoUnauthenticated,
    /// every handshake would time out
    #[error("the handshake timeout must be more than zero")]
    NoHandshakeTime,
}

impl ServeOptions {
    /// Checks that the caps and the deadline can admit anyone, and always a ground.
    ///
    /// # Errors
    /// [`ServeOptionsError`] naming what is wrong.
    pub fn check(&self) -> Result<(), ServeOptionsError> {
        if self.max_unauthenticated == 0 {
            return Err(ServeOptionsError::NoUnauthenticated);
        }
        if self.max_unauthenticated >= self.max_connections {
            return Err(ServeOptionsError::NoRoomForAuthenticated {
                unauthenticated: self.max_unauthenticated,
                total: self.max_connections,
            });
        }
        if self.handshake_timeout.is_zero() {
            return Err(ServeOptionsError::NoHandshakeTime);
        }
        Ok(())
    }
}

/// Accepts connections until `shutdown` resolves.
///
/// # Errors
/// Options that fail [`ServeOptions::check`] (as `InvalidInput`). Failed accepts are not
/// errors: the loop waits and goes on.
pub async fn serve(
    listener: TcpListener,
    service: Arc<OnboardService>,
    key: LinkKey,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    opts.check()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let gate = Arc::new(Gate {
        admission: Mutex::new(Admission::new(
            opts.max_connections,
            opts.max_unauthenticated,
        )),
        log: Mutex::new(RefusalLog::new(REFUSAL_LOG_INTERVAL)),
        left: Notify::new(),
    });
    let mut pause = AcceptPause::default();
    // Refusals are recorded by the connections' tasks; this looks for a summary that is due.
    let mut summaries = tokio::time::interval(Duration::from_secs(1));
    summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let closing = gate.admission().closing();
        tokio::select! {
            _ = &mut shutdown => break,
            _ = summaries.tick() => {
                if let Some(line) = gate.log().flush(Instant::now()) {
                    eprintln!("{line}");
                }
            }
            // A connection dropped to make room closes on its own task, a moment later: wait
            // for it before taking the next, or a burst of newcomers would hold their sockets
            // and the dropped ones' at once (the kernel's queue holds the newcomers meanwhile).
            _ = gate.left.notified(), if closing > 0 => {}
            accepted = listener.accept(), if closing == 0 => match accepted {
                Ok((stream, peer)) => {
                    pause.reset();
                    admit(stream, peer, &gate, &service, &key, &opts);
                }
                // The peer left before it was taken: nothing is short, take the next one.
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory. The pending connection
                    // stays queued, so accepting again at once fails again, as fast as the
                    // loop can spin (it once logged 3.4 million lines in 25 s). Drop the
                    // connection that would go first anyway to free a descriptor, and wait.
                    gate.accept_failed(&e);
                    let wait = pause.next();
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
    if let Some(line) = gate.log().flush_now(Instant::now()) {
        eprintln!("{line}");
    }
    Ok(())
}

/// Accept errors that concern one connection only (its peer gave up before it was taken), not
/// this side's resources.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}

/// Admits a new connection (making room for it if need be) and runs it on a task of its own,
/// or closes it when every place is held by an authenticated one.
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    gate: &Arc<Gate>,
    service: &Arc<OnboardService>,
    key: &LinkKey,
    opts: &ServeOptions,
) {
    let (end_tx, end_rx) = oneshot::channel();
    let admitted = gate.admission().admit(peer.ip(), end_tx);
    let id = match admitted {
        Admit::Admitted { id, dropped } => {
            if let Some(end) = dropped {
                // Its task ends and counts the refusal.
                let _ = end.send(());
            }
            id
        }
        Admit::Full => {
            gate.refused(Refusal::OverCaps, || {
                format!(
                    "{peer}: refused: every connection place is held by an authenticated ground"
                )
            });
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut ticket = Ticket {
        gate: gate.clone(),
        id,
        confirmed: false,
    };
    let (svc, key, opts) = (service.clone(), key.clone(), opts.clone());
    tokio::spawn(async move {
        let result = tokio::select! {
            r = run(stream, svc, &key, &opts, Some(&mut ticket)) => r,
            _ = ended(end_rx) => Err(LinkError::Dropped),
        };
        if ticket.confirmed {
            // An authenticated ground: worth a line each time.
            match result {
                Ok(()) | Err(LinkError::Closed) => {}
                Err(e) => eprintln!("{peer}: {e}"),
            }
        } else if let Err(e) = result {
            ticket
                .gate
                .refused(Refusal::of(&e), || format!("{peer}: {e}"));
        }
    });
}

/// Resolves when the connection is to be dropped; never once its handle is gone (the
/// connection was confirmed, and nothing can end it from outside any more).
async fn ended(end: oneshot::Receiver<()>) {
    if end.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What the accept loop and the connections share: who is held, and what was refused.
struct Gate {
    admission: Mutex<Admission<oneshot::Sender<()>>>,
    log: Mutex<RefusalLog>,
    /// Told each time a connection gives its place back.
    left: Notify,
}

impl Gate {
    // A panic while holding either lock leaves plain counts behind, still usable.
    fn admission(&self) -> MutexGuard<'_, Admission<oneshot::Sender<()>>> {
        self.admission.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, RefusalLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused(&self, kind: Refusal, detail: impl FnOnce() -> String) {
        if let Some(line) = self.log().record(kind, Instant::now(), detail) {
            eprintln!("{line}");
        }
    }

    fn accept_failed(&self, e: &std::io::Error) {
        if let Some(end) = self.admission().drop_one() {
            let _ = end.send(());
        }
        if let Some(line) = self
            .log()
            .record(Refusal::AcceptFailed, Instant::now(), || e.to_string())
        {
            eprintln!("{line}");
        }
    }
}

/// A connection's place with the [`Gate`]; given back when dropped, however the connection
/// ends.
struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    /// A record from the peer opened: it holds the key.
    confirmed: bool,
}

impl Ticket {
    fn key_shown(&self) {
        self.gate.admission().key_shown(self.id);
    }

    /// False when the connection was dropped to make room just before.
    fn confirm(&mut self) -> bool {
        if !self.confirmed {
            self.confirmed = self.gate.admission().confirm(self.id);
        }
        self.confirmed
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.admission().leave(self.id);
        self.gate.left.notify_one();
    }
}

/// The pause after a failed accept: 100 ms, doubling to 1 s while accepts keep failing.
#[derive(Debug)]
struct AcceptPause {
    next: Duration,
}

impl Default for AcceptPause {
    fn default() -> Self {
        Self {
            next: ACCEPT_PAUSE_FIRST,
        }
    }
}

impl AcceptPause {
    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (now * 2).min(ACCEPT_PAUSE_MAX);
        now
    }

    fn reset(&mut self) {
        self.next = ACCEPT_PAUSE_FIRST;
    }
}

/// Runs one connection to its end. Messages are handled off the reactor, one at a time, while
/// this side keeps the link alive; what was received is made durable and acknowledged every
/// [`ACK_INTERVAL`] at most, and made durable when the link goes away, however it goes. The
/// peer has [`ServeOptions::handshake_timeout`] to prove the key.
pub async fn serve_connection<S>(
    stream: S,
    svc: Arc<OnboardService>,
    key: &LinkKey,
    opts: &ServeOptions,
) -> Result<(), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run(stream, svc, key, opts, None).await
}

/// [`serve_connection`], telling `ticket` (a place with the accept loop's caps) how far the
/// peer has got.
async fn run<S>(
    stream: S,
    svc: Arc<OnboardService>,
    key: &LinkKey,
    opts: &ServeOptions,
    ticket: Option<&mut Ticket>,
) -> Result<(), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let link = tokio::time::timeout(
        opts.handshake_timeout,
        Link::accept(stream, key, opts.idle_timeout),
    )
    .await
    .map_err(|_| LinkError::HandshakeTimeout(opts.handshake_timeout))??;
    if let Some(t) = ticket.as_deref() {
        t.key_shown();
    }
    let (mut rx, mut tx) = link.split();
    tx.send(&svc.welcome()).await?;
    // The reader runs on its own so that a slow apply never stops this side from noticing a
    // dead link, and a fast sender never waits for our disk. It goes with this future: a
    // connection dropped to make room must give its socket back.
    // Shallow: a frame read but not yet written is lost if the daemon is killed.
    let (inbox_tx, mut inbox) = mpsc::channel(1);
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let r = rx.recv().await;
            let end = r.is_err();
            if inbox_tx.send(r).await.is_err() || end {
                return;
            }
        }
    }));
    let mut conn = Conn {
        session: Some(svc.session()),
        flush_at: None,
        ticket,
    };
    let result = conn.run(&mut inbox, &mut tx).await;
    drop(_reader);
    // However the link ended, what arrived is kept: the next connection resumes after it.
    conn.blocking(flush).await.ok();
    match result {
        Ok(()) => tx.close().await,
        Err(e) => Err(e),
    }
}

/// Makes what arrived durable; its acknowledgement is the reply, if anything was waiting for one.
fn flush(s: &mut OnboardSession) -> Outcome {
    Outcome {
        replies: s.flush().into_iter().collect(),
        close: false,
        more: false,
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What woke the connection up, other than a keep-alive falling due.
enum Next {
    /// From the reader: a message, or how the link ended.
    Received(Result<Message, LinkError>),
    /// Received bytes have waited [`ACK_INTERVAL`] for their acknowledgement.
    AckDue,
}

struct Conn<'t> {
    /// Taken while a blocking task holds it.
    session: Option<OnboardSession>,
    /// When the next acknowledgement is due, while received bytes wait for one.
    flush_at: Option<Instant>,
    /// The connection's place with the accept loop, until the peer's first record confirms it.
    ticket: Option<&'t mut Ticket>,
}

impl Conn<'_> {
    async fn run<W: AsyncWrite + Unpin>(
        &mut self,
        inbox: &mut mpsc::Receiver<Result<Message, LinkError>>,
        tx: &mut LinkWriter<W>,
    ) -> Result<(), LinkError> {
        loop {
            let flush_at = self.flush_at;
            // Both are cancel-safe: a keep-alive going out first loses neither.
            let next = async {
                tokio::select! {
                    m = inbox.recv() => Next::Received(m.unwrap_or(Err(LinkError::Closed))),
                    _ = sleep_until_opt(flush_at) => Next::AckDue,
                }
            };
            match keep_alive_until(tx, next).await? {
                Waited::KeptAlive => {}
                Waited::Done(Next::Received(msg)) => {
                    if self.received(msg?, tx).await?.is_break() {
                        return Ok(());
                    }
                }
                Waited::Done(Next::AckDue) => {
                    self.flush_at = None;
                    // An fsync can take seconds on flash: keep the link alive meanwhile.
                    let out = self.alive_while(tx, flush).await?;
                    if !out.replies.is_empty() {
                        tx.send_all(&out.replies).await?;
                    }
                }
            }
        }
    }

    /// Handles a message from the peer to the end (its replies sent, the work they announce
    /// done) and sets when the acknowledgement of what it brought is due. Breaks when the
    /// connection is to close.
    async fn received<W: AsyncWrite + Unpin>(
        &mut self,
        msg: Message,
        tx: &mut LinkWriter<W>,
    ) -> Result<ControlFlow<()>, LinkError> {
        // A record opened: the peer holds the key (a replayed handshake cannot get this far).
        // From now on it is never dropped to make room.
        if let Some(t) = self.ticket.take()
            && !t.confirm()
        {
            return Err(LinkError::Dropped);
        }
        if matches!(msg, Message::KeepAlive) {
            return Ok(ControlFlow::Continue(()));
        }
        let mut outcome = self.handle(msg, tx).await?;
        loop {
            for r in &outcome.replies {
                if let Message::Error { message, .. } = r {
                    // Escaped: it may name a path a pod chose.
                    eprintln!("refused: {}", crate::path::escape(message));
                }
            }
            if !outcome.replies.is_empty() {
                tx.send_all(&outcome.replies).await?;
            }
            if outcome.close {
                return Ok(ControlFlow::Break(()));
            }
            if !outcome.more {
                break;
            }
            // The replies (a whole pack's acknowledgement) are out: now the work.
            outcome = self.alive_while(tx, |s| s.go_on()).await?;
        }
        let waiting = self
            .session
            .as_ref()
            .is_some_and(|s| s.unacknowledged() > 0);
        self.flush_at = match (waiting, self.flush_at) {
            (false, _) => None,
            (true, None) => Some(Instant::now() + ACK_INTERVAL),
            (true, due) => due,
        };
        Ok(ControlFlow::Continue(()))
    }

    /// Handles one message off the reactor, sending keep-alives while it takes long (a large
    /// apply), so the ground does not take a busy node for a dead link.
    async fn handle<W: AsyncWrite + Unpin>(
        &mut self,
        msg: Message,
        tx: &mut LinkWriter<W>,
    ) -> Result<Outcome, LinkError> {
        self.alive_while(tx, move |s| s.handle(msg)).await
    }

    /// Runs `f` on the session off the reactor, sending keep-alives while it takes long.
    async fn alive_while<W, F>(
        &mut self,
        tx: &mut LinkWriter<W>,
        f: F,
    ) -> Result<Outcome, LinkError>
    where
        W: AsyncWrite + Unpin,
        F: FnOnce(&mut OnboardSession) -> Outcome + Send + 'static,
    {
        let job = self.blocking(f);
        tokio::pin!(job);
        loop {
            // Polled through `&mut`: a keep-alive going out leaves the job running.
            if let Waited::Done(r) = keep_alive_until(tx, &mut job).await? {
                return r;
            }
        }
    }

    /// Runs `f` on the session in a blocking task. If the caller stops waiting (the link
    /// died), the task still runs to its end: an apply is never cut short.
    async fn blocking<F>(&mut self, f: F) -> Result<Outcome, LinkError>
    where
        F: FnOnce(&mut OnboardSession) -> Outcome + Send + 'static,
    {
        let Some(mut s) = self.session.take() else {
            return Err(LinkError::Io(std::io::Error::other(
                "the session is still busy with an earlier message",
            )));
        };
        let (s, o) = tokio::task::spawn_blocking(move || {
            let o = f(&mut s);
            (s, o)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.session = Some(s);
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::pack::Limits;
    use crate::wire::preamble;

    fn service() -> (tempfile::TempDir, Arc<OnboardService>) {
        let t = tempfile::tempdir().unwrap();
        let svc = OnboardService::open(&t.path().join("v"), &t.path().join("s"), Limits::default())
            .unwrap();
        (t, Arc::new(svc))
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_dripping_its_handshake_is_cut_at_the_deadline_not_by_the_idle_timeout() {
        let (_t, svc) = service();
        let key = LinkKey::generate().unwrap();
        let opts = ServeOptions {
            handshake_timeout: Duration::from_secs(5),
            ..ServeOptions::default()
        };
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let t0 = Instant::now();
        let server = tokio::spawn(async move {
            let r = serve_connection(ours, svc, &key, &opts).await;
            (r, t0.elapsed())
        });
        // The preamble, then a first handshake message, a byte a second: never 30 s of silence.
        let script = [&preamble()[..], &[0, 48], &[9; 48]].concat();
        for b in script {
            if server.is_finished() || theirs.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (r, took) = server.await.unwrap();
        assert!(
            matches!(r, Err(LinkError::HandshakeTimeout(d)) if d == Duration::from_secs(5)),
            "{r:?}"
        );
        assert_eq!(took, Duration::from_secs(5));
        // The daemon's preamble came back, and then the end of the stream.
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, preamble());
    }

    #[test]
    fn caps_that_leave_no_room_for_the_ground_are_refused() {
        let ok = ServeOptions::default();
        assert_eq!(ok.check(), Ok(()));
        assert!(ok.max_unauthenticated < ok.max_connections);
        let same = ServeOptions {
            max_unauthenticated: 128,
            ..ok.clone()
        };
        assert_eq!(
            same.check(),
            Err(ServeOptionsError::NoRoomForAuthenticated {
                unauthenticated: 128,
                total: 128
            })
        );
        let none = ServeOptions {
            max_unauthenticated: 0,
            ..ok.clone()
        };
        assert_eq!(none.check(), Err(ServeOptionsError::NoUnauthenticated));
        let instant = ServeOptions {
            handshake_timeout: Duration::ZERO,
            ..ok
        };
        assert_eq!(instant.check(), Err(ServeOptionsError::NoHandshakeTime));
    }

    #[test]
    fn failed_accepts_wait_100_ms_doubling_to_1_s_and_start_again_after_one_succeeds() {
        let mut p = AcceptPause::default();
        let waits: Vec<u64> = (0..6).map(|_| p.next().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        p.reset();
        assert_eq!(p.next(), Duration::from_millis(100));
    }
}
