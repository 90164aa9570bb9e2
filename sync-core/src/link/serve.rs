//! The onboard daemon's side of connections: the accept loop (listener and shutdown passed in,
//! so tests bind port 0 and stop it cleanly) and [`serve_connection`], which runs one
//! connection over any byte stream (TCP, or the simulated link).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::{ACK_INTERVAL, KEEPALIVE_INTERVAL, Link, LinkError, LinkWriter, sleep_until_opt};
use crate::session::onboard::{OnboardService, OnboardSession, Outcome};
use crate::wire::{LinkKey, Message};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A connection silent this long is dropped (a pass ended, a peer died). The ground sends
    /// keep-alives every [`KEEPALIVE_INTERVAL`], so this can be a few multiples of it.
    pub idle_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Accepts connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    service: Arc<OnboardService>,
    key: LinkKey,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("accept failed: {e}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (svc, key, opts) = (service.clone(), key.clone(), opts.clone());
                tokio::spawn(async move {
                    match serve_connection(stream, svc, &key, &opts).await {
                        Ok(()) | Err(LinkError::Closed) => {}
                        Err(e) => eprintln!("{peer}: {e}"),
                    }
                });
            }
        }
    }
}

/// Runs one connection to its end. Messages are handled off the reactor, one at a time, while
/// this side keeps the link alive; what was received is made durable and acknowledged every
/// [`ACK_INTERVAL`] at most, and made durable when the link goes away, however it goes.
pub async fn serve_connection<S>(
    stream: S,
    svc: Arc<OnboardService>,
    key: &LinkKey,
    opts: &ServeOptions,
) -> Result<(), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let link = Link::accept(stream, key, opts.idle_timeout).await?;
    let (mut rx, mut tx) = link.split();
    tx.send(&svc.welcome()).await?;
    // The reader runs on its own so that a slow apply never stops this side from noticing a
    // dead link, and a fast sender never waits for our disk.
    // Shallow: a frame read but not yet written is lost if the daemon is killed.
    let (inbox_tx, mut inbox) = mpsc::channel(1);
    let reader = tokio::spawn(async move {
        loop {
            let r = rx.recv().await;
            let end = r.is_err();
            if inbox_tx.send(r).await.is_err() || end {
                return;
            }
        }
    });
    let mut conn = Conn {
        session: Some(svc.session()),
        flush_at: None,
    };
    let result = conn.run(&mut inbox, &mut tx).await;
    reader.abort();
    // However the link ended, what arrived is kept: the next connection resumes after it.
    conn.blocking(|s| Outcome {
        replies: s.flush().into_iter().collect(),
        close: true,
        more: false,
    })
    .await
    .ok();
    match result {
        Ok(()) => tx.close().await,
        Err(e) => Err(e),
    }
}

struct Conn {
    /// Taken while a blocking task holds it.
    session: Option<OnboardSession>,
    /// When the next acknowledgement is due, while received bytes wait for one.
    flush_at: Option<Instant>,
}

impl Conn {
    async fn run<W: AsyncWrite + Unpin>(
        &mut self,
        inbox: &mut mpsc::Receiver<Result<Message, LinkError>>,
        tx: &mut LinkWriter<W>,
    ) -> Result<(), LinkError> {
        loop {
            tokio::select! {
                m = inbox.recv() => {
                    let msg = m.unwrap_or(Err(LinkError::Closed))?;
                    if matches!(msg, Message::KeepAlive) {
                        continue;
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
                            return Ok(());
                        }
                        if !outcome.more {
                            break;
                        }
                        // The replies (a whole pack's acknowledgement) are out: now the work.
                        outcome = self.alive_while(tx, |s| s.go_on()).await?;
                    }
                    let waiting = self.session.as_ref().is_some_and(|s| s.unacknowledged() > 0);
                    self.flush_at = match (waiting, self.flush_at) {
                        (false, _) => None,
                        (true, None) => Some(Instant::now() + ACK_INTERVAL),
                        (true, due) => due,
                    };
                }
                _ = sleep_until_opt(self.flush_at) => {
                    self.flush_at = None;
                    // An fsync can take seconds on flash: keep the link alive meanwhile.
                    let out = self.alive_while(tx, |s| Outcome {
                        replies: s.flush().into_iter().collect(),
                        close: false,
                        more: false,
                    }).await?;
                    if !out.replies.is_empty() {
                        tx.send_all(&out.replies).await?;
                    }
                }
                _ = sleep_until(tx.last_send() + KEEPALIVE_INTERVAL) => {
                    tx.send(&Message::KeepAlive).await?;
                }
            }
        }
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
            tokio::select! {
                r = &mut job => return r,
                _ = sleep_until(tx.last_send() + KEEPALIVE_INTERVAL) => {
                    tx.send(&Message::KeepAlive).await?;
                }
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
