//! The onboard daemon's accept loop. It takes its listener and shutdown signal as arguments, so
//! tests bind port 0 and stop it cleanly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::{Link, LinkError};
use crate::session::onboard::OnboardService;
use crate::wire::{LinkKey, Message};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A connection silent this long is dropped (a pass ended, a peer died).
    pub idle_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
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
                    match connection(stream, svc, &key, &opts).await {
                        Ok(()) | Err(LinkError::Closed) => {}
                        Err(e) => eprintln!("{peer}: {e}"),
                    }
                });
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    svc: Arc<OnboardService>,
    key: &LinkKey,
    opts: &ServeOptions,
) -> Result<(), LinkError> {
    let mut link = Link::accept(stream, key, opts.idle_timeout).await?;
    link.send(&svc.welcome()).await?;
    let mut session = Some(svc.session());
    loop {
        let msg = link.recv().await?;
        let mut s = session
            .take()
            .expect("session is returned after each message");
        let (s, outcome) = tokio::task::spawn_blocking(move || {
            let o = s.handle(msg);
            (s, o)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        session = Some(s);
        for r in &outcome.replies {
            if let Message::Error { message, .. } = r {
                eprintln!("refused: {message}");
            }
        }
        if !outcome.replies.is_empty() {
            link.send_all(&outcome.replies).await?;
        }
        if outcome.close {
            return link.close().await;
        }
    }
}
