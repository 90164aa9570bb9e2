//! The daemon's accept loop, [`sync_core::link::serve`], from outside: a real listener on
//! `127.0.0.1:0`, grounds that connect through [`Link`], and tokio's paused clock, so deadlines
//! of seconds take none. The loop ends when its shutdown signal fires, whether connections are
//! open or not; a peer that never finishes its handshake is cut at the handshake deadline, and
//! the loop goes on serving others meanwhile and after.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sync_core::link::{Link, ServeOptions, serve};
use sync_core::onboard::OnboardService;
use sync_core::pack::Limits;
use sync_core::path::PodName;
use sync_core::wire::{LinkKey, Message, preamble};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// Longer than anything here waits for, on the paused clock (where it costs no real time): a
/// loop that does not end fails the test instead of hanging it.
const BOUND: Duration = Duration::from_secs(3600);

/// A serving daemon: its address and key, and the shutdown signal of its loop.
struct Daemon {
    addr: SocketAddr,
    key: LinkKey,
    shutdown: oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start(opts: ServeOptions) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let service = OnboardService::open(
        &dir.path().join("vols"),
        &dir.path().join("state"),
        Limits::default(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let key = LinkKey::generate().unwrap();
    let (shutdown, fired) = oneshot::channel::<()>();
    let served = tokio::spawn(serve(
        listener,
        Arc::new(service),
        key.clone(),
        opts,
        async move {
            let _ = fired.await;
        },
    ));
    Daemon {
        addr,
        key,
        shutdown,
        served,
        _dir: dir,
    }
}

impl Daemon {
    /// Connects as a ground holding the key, and takes the daemon's welcome.
    async fn ground(&self) -> Link<TcpStream> {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let mut link = Link::connect(stream, &self.key, Duration::from_secs(600))
            .await
            .expect("handshake with the daemon");
        let welcome = link.recv().await.unwrap();
        assert!(matches!(welcome, Message::Welcome { .. }), "{welcome:?}");
        link
    }

    /// Connects and sends the preamble, then nothing: a peer stuck in its handshake.
    async fn stalled_peer(&self) -> TcpStream {
        let mut peer = TcpStream::connect(self.addr).await.unwrap();
        peer.write_all(&preamble()).await.unwrap();
        peer
    }

    /// Fires the shutdown signal; returns how long (on the paused clock) the loop took to end.
    async fn shut_down(self) -> Duration {
        assert!(!self.served.is_finished(), "the loop ended on its own");
        let fired = Instant::now();
        self.shutdown.send(()).unwrap();
        timeout(BOUND, self.served)
            .await
            .expect("the loop ended")
            .unwrap()
            .expect("the loop ended without an error");
        let took = fired.elapsed();
        // The listener went with it: nobody is accepted any more.
        assert!(TcpStream::connect(self.addr).await.is_err());
        took
    }
}

#[tokio::test(start_paused = true)]
async fn the_loop_ends_when_shut_down_with_no_connection_open() {
    let d = start(ServeOptions::default()).await;
    // Idle for a while first: its timers (summaries of refusals) keep ticking meanwhile.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(d.shut_down().await, Duration::ZERO);
}

/// Shutting down never waits for the connections: an open link to a ground, idle, and a peer
/// in its handshake would hold it for their idle timeout and handshake deadline.
#[tokio::test(start_paused = true)]
async fn the_loop_ends_at_once_when_shut_down_with_connections_open() {
    let d = start(ServeOptions::default()).await;
    let _ground = d.ground().await;
    let _peer = d.stalled_peer().await;
    assert_eq!(d.shut_down().await, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_finishes_its_handshake_is_cut_at_the_deadline_while_others_are_served() {
    let deadline = Duration::from_secs(5);
    let d = start(ServeOptions {
        handshake_timeout: deadline,
        // Far off: the cut must come from the deadline.
        idle_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    })
    .await;
    let connected = Instant::now();
    let mut peer = d.stalled_peer().await;
    // A ground arriving while the peer is held is served at once.
    let mut before = d.ground().await;
    assert!(connected.elapsed() < deadline);

    // The daemon's preamble came back, then nothing until the deadline, then the end.
    let mut got = Vec::new();
    timeout(BOUND, peer.read_to_end(&mut got))
        .await
        .expect("the peer was cut")
        .unwrap();
    let cut = connected.elapsed();
    assert_eq!(got, preamble());
    assert!(
        cut >= deadline && cut < deadline + Duration::from_secs(1),
        "cut after {cut:?}, the deadline is {deadline:?}"
    );

    // The loop goes on: the ground connected before is still served, and a new one is served
    // as the first was.
    assert!(matches!(
        ask_for_a_manifest(&mut before).await,
        Message::ManifestReply { .. }
    ));
    let mut after = d.ground().await;
    assert!(matches!(
        ask_for_a_manifest(&mut after).await,
        Message::ManifestReply { .. }
    ));
    d.shut_down().await;
}

/// Asks for a pod's manifest and returns the answer (keep-alives aside).
async fn ask_for_a_manifest(link: &mut Link<TcpStream>) -> Message {
    let pod = PodName::new("p").unwrap();
    link.send(&Message::ManifestRequest { pod, known: None })
        .await
        .unwrap();
    loop {
        match timeout(BOUND, link.recv())
            .await
            .expect("an answer")
            .unwrap()
        {
            Message::KeepAlive => continue,
            m => return m,
        }
    }
}
