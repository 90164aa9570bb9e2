//! One connection of the onboard daemon, over any byte stream (TCP, or the simulated link):
//! [`serve_connection`] gives the peer [`ServeOptions::handshake_timeout`] to prove the key,
//! hands each message to an [`OnboardSession`] off the reactor while it keeps the link alive,
//! acknowledges what arrived every [`ACK_INTERVAL`] at most, and makes it durable when the link
//! goes away, however it goes. Where the connection stands with the accept loop's caps it tells
//! a [`Place`]; the caps themselves are [`super::serve`](mod@super::serve)'s.

use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    ACK_INTERVAL, ACK_WHEN_QUIET, Link, LinkError, LinkWriter, ServeOptions, Waited,
    keep_alive_until, sleep_until_opt,
};
use crate::onboard::{OnboardService, OnboardSession, Outcome};
use crate::wire::{LinkKey, Message};

/// A connection's place with the accept loop's caps, told how far its peer has got.
pub(super) trait Place: Send {
    /// The peer's handshake proved the key (a replay of a recorded one does too).
    fn key_shown(&self);
    /// A record from the peer opened: it holds the key, and its place is never taken to make
    /// room. False when the connection was dropped to make room just before.
    fn confirm(&mut self) -> bool;
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

/// [`serve_connection`], telling `place` (with the accept loop's caps) how far the peer has got.
pub(super) async fn run<S>(
    stream: S,
    svc: Arc<OnboardService>,
    key: &LinkKey,
    opts: &ServeOptions,
    place: Option<&mut dyn Place>,
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
    if let Some(p) = place.as_deref() {
        p.key_shown();
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
        ack_cap: None,
        place,
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

struct Conn<'p> {
    /// Taken while a blocking task holds it.
    session: Option<OnboardSession>,
    /// When the next acknowledgement is due, while received bytes wait for one.
    flush_at: Option<Instant>,
    /// When it is due at the latest: [`ACK_INTERVAL`] after the first byte it covers.
    ack_cap: Option<Instant>,
    /// The connection's place with the accept loop, until the peer's first record confirms it.
    place: Option<&'p mut dyn Place>,
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
                    self.ack_cap = None;
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
        if let Some(p) = self.place.take()
            && !p.confirm()
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
        // Due ACK_INTERVAL after the first unacknowledged byte at most, and sooner once the peer
        // has paused: a sender waiting for its encoder hears at once what arrived, so what it
        // measures is the link, not the wait for the ack timer.
        let now = Instant::now();
        self.ack_cap = match (waiting, self.ack_cap) {
            (false, _) => None,
            (true, None) => Some(now + ACK_INTERVAL),
            (true, cap) => cap,
        };
        self.flush_at = self.ack_cap.map(|cap| cap.min(now + ACK_WHEN_QUIET));
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
    use std::time::Duration;

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
}
