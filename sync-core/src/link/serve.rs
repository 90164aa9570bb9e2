//! The onboard daemon's accept loop, [`serve`] (listener and shutdown passed in, so tests bind
//! port 0 and stop it cleanly), and the caps it holds connections to; each connection it takes
//! runs on a task of its own through [`super::connection`].
//!
//! Peers that have not proven the key are held on a short lead: a deadline for the handshake,
//! a cap on how many are held (the oldest of the busiest address goes first when a newcomer
//! needs room, see [`super::admission`]), a cap on all connections that always leaves room for
//! authenticated ones, a pause instead of a spin when accepting fails for want of descriptors,
//! and one summary line of log per interval for all of their refusals ([`super::refusals`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::LinkError;
use super::admission::{Admission, Admit};
use super::connection::{Place, run};
use super::refusals::{Refusal, RefusalLog};
use crate::onboard::OnboardService;
use crate::wire::LinkKey;

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
        self.refused(Refusal::AcceptFailed, || e.to_string());
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

impl Place for Ticket {
    fn key_shown(&self) {
        self.gate.admission().key_shown(self.id);
    }

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

#[cfg(test)]
mod tests {
    use super::*;

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
