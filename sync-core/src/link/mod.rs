//! Transports. The only code here that owns sockets: it moves bytes between a stream and the
//! sans-IO codec of [`crate::wire`], counts every byte both ways (handshake included), and turns
//! silence past the idle timeout into an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod admission;
mod connection;
mod refusals;
mod serve;
pub mod sim;

pub use connection::serve_connection;
pub use serve::{ServeOptions, ServeOptionsError, serve};

/// Sleeps until `at`, or forever: a timer arm of a `select!` that is off when there is nothing
/// to wait for.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// How [`keep_alive_until`] returned.
#[derive(Debug)]
pub enum Waited<T> {
    /// What was waited for came.
    Done(T),
    /// This side had sent nothing for [`KEEPALIVE_INTERVAL`] first: a keep-alive went out. The
    /// caller looks at its state again (time has passed) before it waits anew.
    KeptAlive,
}

/// Waits for `until` while keeping the link alive: when this side has sent nothing for
/// [`KEEPALIVE_INTERVAL`] before `until` is ready, sends a keep-alive and returns
/// [`Waited::KeptAlive`]. `until` is then dropped unfinished, so it must be cancel-safe (a
/// message read, a timer, a pinned task polled through `&mut`). The keep-alive itself is never
/// cut short: a record torn in the middle would end the link.
pub async fn keep_alive_until<W, F>(
    tx: &mut LinkWriter<W>,
    until: F,
) -> Result<Waited<F::Output>, LinkError>
where
    W: AsyncWrite + Unpin,
    F: std::future::Future,
{
    tokio::select! {
        r = until => Ok(Waited::Done(r)),
        _ = tokio::time::sleep_until(tx.last_send() + KEEPALIVE_INTERVAL) => {
            tx.send(&Message::KeepAlive).await?;
            Ok(Waited::KeptAlive)
        }
    }
}

/// A side that has sent nothing for this long sends a keep-alive, so the other side's idle
/// timeout can be a few seconds even while this side is busy (applying, waiting for acks).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// The onboard side acknowledges received bytes at most this long after they arrive (sooner
/// every 256 KiB). Each acknowledgement costs about 25 bytes on the downlink; at 9.6 kbit/s
/// one every 3 s is 0.6% of the link.
pub const ACK_INTERVAL: Duration = Duration::from_secs(3);
/// ... and once the peer has sent nothing for this long (it stopped, or waits for its
/// encoder), without waiting for [`ACK_INTERVAL`].
pub const ACK_WHEN_QUIET: Duration = Duration::from_millis(50);

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::wire::{
    Handshake, HandshakeReader, KEY_REFUSED, LinkKey, Message, MessageDecoder, Opener,
    PREAMBLE_LEN, RecordDecoder, Sealer, SecureChannel, WireError, check_preamble, encode_message,
    preamble,
};

/// The receiving side reads this much at a time once the peer's first record has opened.
const READ_BUF: usize = 64 * 1024;
/// ... and this much before: a peer that has only replayed a recorded first handshake message
/// (which passes, since NNpsk0's responder adds no randomness before it) cannot open a record,
/// and is not worth 64 KiB.
const FIRST_READ_BUF: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// the socket failed
    #[error("link I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    /// the peer closed the connection
    #[error("the other side closed the link")]
    Closed,
    /// the node said the first handshake message did not prove the key
    #[error("the other side refused the handshake: the two sides use different keys")]
    HandshakeRefused,
    /// the link closed during the handshake without a refusal: cut, or a peer that does not
    /// answer this protocol (an older sync-onboard also closes so on a wrong key)
    #[error(
        "the link closed during the handshake (cut, or the other side is not a sync-onboard of \
         this version)"
    )]
    HandshakeCut,
    /// nothing arrived for longer than the idle timeout
    #[error("the link was silent for {0:?}")]
    Timeout(Duration),
    /// the peer did not prove the key within the handshake deadline
    #[error("the other side did not finish the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// the daemon dropped this connection, whose peer had not proven the key, to make room
    #[error("dropped to make room (over the connection caps, or out of descriptors)")]
    Dropped,
}

/// Bytes that crossed the socket, both directions, everything included.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

impl Counters {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// An authenticated, encrypted message link over any byte stream. [`Link::split`] gives a
/// reader and a writer that work at the same time (a windowed sender reads acknowledgements
/// while it writes).
pub struct Link<S> {
    rx: LinkReader<ReadHalf<S>>,
    tx: LinkWriter<WriteHalf<S>>,
    rtt: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    /// The ground's side: sends the first handshake message.
    pub async fn connect(stream: S, key: &LinkKey, idle: Duration) -> Result<Self, LinkError> {
        let mut s = Start::new(stream, idle);
        let t0 = Instant::now();
        s.write(&preamble()).await?;
        let theirs = s.read_exact::<PREAMBLE_LEN>(true).await?;
        // The preambles cross in one round trip: a first measure of the link's latency.
        let rtt = t0.elapsed();
        check_preamble(&theirs)?;
        let prologue = [preamble(), theirs].concat();
        let mut hs = Handshake::initiator(key, &prologue)?;
        s.write(&hs.write_message()?).await?;
        match s.read_handshake(&mut hs).await {
            // The node's refusal (KEY_REFUSED): an empty handshake message.
            Err(LinkError::Wire(_)) if s.empty_message => return Err(LinkError::HandshakeRefused),
            other => other?,
        }
        s.into_link(hs.into_channel()?, rtt)
    }

    /// The onboard side: answers the handshake; a peer without the key fails here, before any
    /// message is read. Until then the connection holds fixed buffers only (the preamble, one
    /// handshake message of at most [`crate::wire::MAX_HANDSHAKE_MESSAGE`]), whatever the peer
    /// declares. The caller bounds how long this may take (the daemon's handshake deadline):
    /// `idle` restarts on every byte, so a peer dripping bytes would never run it out.
    pub async fn accept(stream: S, key: &LinkKey, idle: Duration) -> Result<Self, LinkError> {
        let mut s = Start::new(stream, idle);
        let theirs = s.read_exact::<PREAMBLE_LEN>(false).await?;
        // Answer with our preamble even on a mismatch, so the other side can name the problem.
        s.write(&preamble()).await?;
        check_preamble(&theirs)?;
        let prologue = [theirs, preamble()].concat();
        let mut hs = Handshake::responder(key, &prologue)?;
        if let Err(e) = s.read_handshake(&mut hs).await {
            if matches!(e, LinkError::Wire(WireError::Auth)) {
                // Say so, in clear, so the ground can tell a wrong key from a cut link. Anyone
                // on the path could forge this, as they could cut the link: it only names the
                // likely cause.
                let _ = s.write(&KEY_REFUSED).await;
            }
            return Err(e);
        }
        let t0 = Instant::now();
        s.write(&hs.write_message()?).await?;
        s.into_link(hs.into_channel()?, t0.elapsed())
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.rx.counters.clone()
    }

    /// The round trip measured during the handshake (the preambles' exchange).
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    pub fn set_idle_timeout(&mut self, idle: Duration) {
        self.rx.idle = idle;
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), LinkError> {
        self.tx.send(msg).await
    }

    pub async fn send_all(&mut self, msgs: &[Message]) -> Result<(), LinkError> {
        self.tx.send_all(msgs).await
    }

    pub async fn recv(&mut self) -> Result<Message, LinkError> {
        self.rx.recv().await
    }

    pub fn split(self) -> (LinkReader<ReadHalf<S>>, LinkWriter<WriteHalf<S>>) {
        (self.rx, self.tx)
    }

    /// Flushes and shuts the write side down.
    pub async fn close(self) -> Result<(), LinkError> {
        self.tx.close().await
    }
}

/// The receiving half of a [`Link`].
pub struct LinkReader<R> {
    stream: R,
    opener: Opener,
    records: RecordDecoder,
    messages: MessageDecoder,
    counters: Arc<Counters>,
    idle: Duration,
    last_recv: Instant,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> LinkReader<R> {
    /// The next message; fails with [`LinkError::Timeout`] when no byte at all arrives for the
    /// idle timeout (the other side sends keep-alives, so silence means the link is gone).
    pub async fn recv(&mut self) -> Result<Message, LinkError> {
        loop {
            if let Some(m) = self.messages.next_message()? {
                return Ok(m);
            }
            if let Some(rec) = self.records.next_record() {
                let plain = self.opener.open(&rec)?;
                if self.buf.len() < READ_BUF {
                    // The peer has proven the key beyond replay: read at full size from now on.
                    self.buf.resize(READ_BUF, 0);
                }
                self.messages.push(&plain);
                continue;
            }
            // Silence is measured from the last byte received, not from this call: a caller
            // that stops waiting now and then (to send a keep-alive) must not reset it.
            let n = tokio::time::timeout_at(
                self.last_recv + self.idle,
                self.stream.read(&mut self.buf),
            )
            .await
            .map_err(|_| LinkError::Timeout(self.idle))??;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.last_recv = Instant::now();
            self.counters
                .received
                .fetch_add(n as u64, Ordering::Relaxed);
            self.records.push(&self.buf[..n]);
        }
    }
}

/// The sending half of a [`Link`].
pub struct LinkWriter<W> {
    stream: W,
    sealer: Sealer,
    counters: Arc<Counters>,
    last_send: Instant,
}

impl<W: AsyncWrite + Unpin> LinkWriter<W> {
    pub async fn send(&mut self, msg: &Message) -> Result<(), LinkError> {
        self.send_all(std::slice::from_ref(msg)).await
    }

    /// Sends several messages sealed together: fewer records, fewer bytes.
    pub async fn send_all(&mut self, msgs: &[Message]) -> Result<(), LinkError> {
        let plain: Vec<u8> = msgs.iter().flat_map(encode_message).collect();
        let mut out = Vec::with_capacity(plain.len() + 64);
        self.sealer.seal(&plain, &mut out)?;
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        self.counters
            .sent
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        self.last_send = Instant::now();
        Ok(())
    }

    /// When this side last sent anything (for keep-alives).
    pub fn last_send(&self) -> Instant {
        self.last_send
    }

    pub async fn close(mut self) -> Result<(), LinkError> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// The stream before the handshake completes.
struct Start<S> {
    stream: S,
    counters: Arc<Counters>,
    idle: Duration,
    /// The last handshake message read was empty: the node's refusal of the key.
    empty_message: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Start<S> {
    fn new(stream: S, idle: Duration) -> Self {
        Self {
            stream,
            counters: Arc::default(),
            idle,
            empty_message: false,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        self.counters
            .sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn read_some(&mut self, buf: &mut [u8], handshake: bool) -> Result<usize, LinkError> {
        let n = tokio::time::timeout(self.idle, self.stream.read(buf))
            .await
            .map_err(|_| LinkError::Timeout(self.idle))?;
        let n = match n {
            Ok(n) => n,
            Err(e) if handshake && e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(if handshake {
                LinkError::HandshakeCut
            } else {
                LinkError::Closed
            });
        }
        self.counters
            .received
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    async fn read_exact<const N: usize>(&mut self, handshake: bool) -> Result<[u8; N], LinkError> {
        let mut out = [0u8; N];
        let mut got = 0;
        while got < N {
            got += self.read_some(&mut out[got..], handshake).await?;
        }
        Ok(out)
    }

    /// Reads the peer's next handshake message into `hs`: exactly its bytes (two reads at
    /// most, for a peer that sends it whole), into a fixed buffer.
    async fn read_handshake(&mut self, hs: &mut Handshake) -> Result<(), LinkError> {
        let mut reader = HandshakeReader::default();
        loop {
            let n = self.read_some(reader.space(), true).await?;
            if let Some(message) = reader.filled(n)? {
                self.empty_message = message.is_empty();
                hs.read_message(message)?;
                return Ok(());
            }
        }
    }

    fn into_link(self, channel: SecureChannel, rtt: Duration) -> Result<Link<S>, LinkError> {
        let (sealer, opener) = channel.split();
        let (r, w) = tokio::io::split(self.stream);
        // Nothing past the handshake has been read: the transport phase starts afresh.
        Ok(Link {
            rx: LinkReader {
                stream: r,
                opener,
                records: RecordDecoder::default(),
                messages: MessageDecoder::default(),
                counters: self.counters.clone(),
                idle: self.idle,
                last_recv: Instant::now(),
                buf: vec![0u8; FIRST_READ_BUF],
            },
            tx: LinkWriter {
                stream: w,
                sealer,
                counters: self.counters,
                last_send: Instant::now(),
            },
            rtt,
        })
    }
}
