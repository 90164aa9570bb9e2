//! Reaching the node and opening the ground's state: where the state lives (`--state`, else
//! `$XDG_DATA_HOME/sync-ground`), the link key, the connection and its handshake, and what
//! the connection may spend (its allowance).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sync_core::ground::{Allowance, Client, Ground};
use sync_core::id::NodeId;
use sync_core::link::{Link, LinkError};
use sync_core::path::PodName;
use sync_core::wire::LinkKey;
use tokio::net::TcpStream;

use crate::cli::{Conn, Limits, LinkArgs, Local};

/// How long the TCP connection may take before the link counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to the node for one pod, and the ground state it works from.
pub struct Session {
    pub client: Client<TcpStream>,
    pub ground: Ground,
    pub pod: PodName,
    /// When connecting began: deadlines and the seconds reported count from here.
    pub started: Instant,
}

impl Session {
    /// Connects for `pod` with a ground state opened beforehand (a push scans its folder in
    /// between, so the link does not wait for the scan).
    pub async fn connect(ground: Ground, pod: PodName, link: &LinkArgs) -> Result<Self> {
        let (client, started) = connect(link).await?;
        Ok(Self {
            client,
            ground,
            pod,
            started,
        })
    }
}

/// Opens the ground state and connects for the pod `conn` names.
pub async fn open(conn: &Conn) -> Result<Session> {
    let pod = PodName::new(conn.pod.clone())?;
    let ground = open_ground(&conn.link.local)?;
    Session::connect(ground, pod, &conn.link).await
}

pub fn open_ground(local: &Local) -> Result<Ground> {
    let state = state_dir(local)?;
    Ground::open(&state).with_context(|| format!("opening the ground state in {}", state.display()))
}

fn state_dir(local: &Local) -> Result<PathBuf> {
    if let Some(s) = &local.state {
        return Ok(s.clone());
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .context("no --state given and neither XDG_DATA_HOME nor HOME is set")?;
    Ok(base.join("sync-ground"))
}

/// Connects and shakes hands; also returns when connecting began.
pub async fn connect(link: &LinkArgs) -> Result<(Client<TcpStream>, Instant)> {
    let (to, key, timeout) = (link.to.as_str(), link.key.as_path(), link.timeout);
    let started = Instant::now();
    let key_text = std::fs::read_to_string(key)
        .with_context(|| format!("reading the link key from {}", key.display()))?;
    let key =
        LinkKey::from_hex(&key_text).with_context(|| format!("link key in {}", key.display()))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to))
        .await
        .map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))
        .and_then(|r| r.map_err(LinkError::Io))
        .with_context(|| format!("connecting to {to}"))?;
    let _ = stream.set_nodelay(true);
    let link = Link::connect(stream, &key, Duration::from_secs(timeout))
        .await
        .with_context(|| format!("opening the link to {to}"))?;
    let client = Client::start(link).await?;
    Ok((client, started))
}

impl Limits {
    /// The allowance of a connection begun at `started`: the deadline counts from there, so
    /// connecting takes its share of the pass too.
    pub fn allowance(&self, ground: &Ground, node: &NodeId, started: Instant) -> Allowance {
        Allowance {
            budget: self.budget,
            deadline: self
                .deadline
                .map(|d| tokio::time::Instant::from_std(started) + d),
            rate: self
                .rate
                .or_else(|| ground.db.measured_rate(node).ok().flatten()),
            jobs: self.jobs,
        }
    }
}
