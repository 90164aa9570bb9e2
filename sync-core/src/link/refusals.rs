//! What the daemon says about connections that ended before their peer proved the key, and
//! about accepts that failed. A flood of them must not become a flood of log: 42,328 refused
//! connections once wrote 3.3 MB in 10 s, and an accept failing for want of descriptors 170 MB
//! in 25 s. So the first of each kind in a spell is logged in full (an operator with a wrong key
//! sees why at once), and the rest are counted and summed up in one line when the interval
//! ends: "refused 4,213 connections in the last 10 s: 4,100 handshake timeouts, 113 over the
//! caps". At most one line per kind and one summary per interval, however many there are.
//!
//! Pure: the caller gives the time and prints what comes back.

use std::time::Duration;

use tokio::time::Instant;

use super::LinkError;
use crate::wire::WireError;

/// Why a connection was refused (or an accept failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    HandshakeTimeout,
    OverCaps,
    NotOurProtocol,
    OtherVersion,
    WrongKey,
    Closed,
    Failed,
    AcceptFailed,
}

const KINDS: usize = 8;

impl Refusal {
    /// Sorts an error that ended a connection before its peer proved the key.
    pub(crate) fn of(e: &LinkError) -> Self {
        match e {
            LinkError::HandshakeTimeout(_) | LinkError::Timeout(_) => Self::HandshakeTimeout,
            LinkError::Dropped => Self::OverCaps,
            LinkError::Wire(WireError::NotOurProtocol | WireError::HandshakeTooLarge(_)) => {
                Self::NotOurProtocol
            }
            LinkError::Wire(WireError::Version { .. }) => Self::OtherVersion,
            LinkError::Wire(WireError::Auth) => Self::WrongKey,
            LinkError::Closed | LinkError::HandshakeRefused | LinkError::HandshakeCut => {
                Self::Closed
            }
            LinkError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Self::Closed
            }
            LinkError::Io(_) | LinkError::Wire(_) => Self::Failed,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// "N {label}" in a summary.
    fn label(self, n: u64) -> &'static str {
        let one = n == 1;
        match self {
            Self::HandshakeTimeout if one => "handshake timeout",
            Self::HandshakeTimeout => "handshake timeouts",
            Self::OverCaps => "over the caps",
            Self::NotOurProtocol => "not speaking the protocol",
            Self::OtherVersion => "speaking another version",
            Self::WrongKey => "with another key",
            Self::Closed => "closed by the peer",
            Self::Failed if one => "link error",
            Self::Failed => "link errors",
            Self::AcceptFailed => "",
        }
    }
}

/// Counts refusals and says when to log what.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    interval: Duration,
    /// When the current spell began; none while quiet.
    since: Option<Instant>,
    counts: [u64; KINDS],
    /// Kinds whose first refusal of the spell was logged in full.
    logged: [bool; KINDS],
    /// The last reason an accept failed, for the summary.
    accept_error: Option<String>,
}

impl RefusalLog {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            since: None,
            counts: [0; KINDS],
            logged: [false; KINDS],
            accept_error: None,
        }
    }

    /// Counts one refusal at `now`; the line to log at once if it is the first of its kind in
    /// the spell. `detail` says what happened: the peer and the error, or for a failed accept
    /// the error (called only when it is needed).
    pub(crate) fn record(
        &mut self,
        kind: Refusal,
        now: Instant,
        detail: impl FnOnce() -> String,
    ) -> Option<String> {
        let k = kind.index();
        self.counts[k] += 1;
        self.since.get_or_insert(now);
        let first = !self.logged[k];
        self.logged[k] = true;
        let text = if kind == Refusal::AcceptFailed {
            // Kept for the summary: the last reason is the one that matters.
            let why = detail();
            self.accept_error = Some(why.clone());
            format!("accepting a connection failed: {why}; waiting before the next try")
        } else if first {
            detail()
        } else {
            return None;
        };
        let secs = self.interval.as_secs();
        first.then(|| format!("{text} (more like it are counted and summed up every {secs} s)"))
    }

    /// The summary of the spell once its interval has passed (none if the line logged in full
    /// was all of it); the next refusal then begins a new spell.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<String> {
        let since = self.since?;
        if now < since + self.interval {
            return None;
        }
        self.take_summary(now - since)
    }

    /// The summary of what was counted so far, whatever the time (at shutdown).
    pub(crate) fn flush_now(&mut self, now: Instant) -> Option<String> {
        let since = self.since?;
        self.take_summary(now.saturating_duration_since(since))
    }

    fn take_summary(&mut self, took: Duration) -> Option<String> {
        let line = self.summary(took);
        self.since = None;
        self.counts = [0; KINDS];
        self.logged = [false; KINDS];
        self.accept_error = None;
        line
    }

    /// None when every refusal counted was logged in full already.
    fn summary(&self, took: Duration) -> Option<String> {
        let total: u64 = self.counts.iter().sum();
        let logged = self.logged.iter().filter(|l| **l).count() as u64;
        if total <= logged {
            return None;
        }
        let secs = took.as_secs().max(1);
        let accepts = self.counts[Refusal::AcceptFailed.index()];
        let refused = total - accepts;
        let mut parts = Vec::new();
        if refused > 0 {
            let kinds: Vec<String> = [
                Refusal::HandshakeTimeout,
                Refusal::OverCaps,
                Refusal::NotOurProtocol,
                Refusal::OtherVersion,
                Refusal::WrongKey,
                Refusal::Closed,
                Refusal::Failed,
            ]
            .into_iter()
            .filter(|k| self.counts[k.index()] > 0)
            .map(|k| {
                let n = self.counts[k.index()];
                format!("{} {}", thousands(n), k.label(n))
            })
            .collect();
            let noun = if refused == 1 {
                "connection"
            } else {
                "connections"
            };
            parts.push(format!(
                "refused {} {noun} in the last {secs} s: {}",
                thousands(refused),
                kinds.join(", ")
            ));
        }
        if accepts > 0 {
            let why = self.accept_error.as_deref().unwrap_or("unknown");
            let times = if accepts == 1 { "once" } else { "times" };
            let n = if accepts == 1 {
                String::new()
            } else {
                format!("{} ", thousands(accepts))
            };
            parts.push(format!(
                "accepting failed {n}{times} in the last {secs} s (last: {why})"
            ));
        }
        Some(parts.join("; "))
    }
}

/// `4213` → `4,213`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    #[test]
    fn a_flood_costs_one_line_in_full_and_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(TEN);
        let mut lines = Vec::new();
        for i in 0..4213u64 {
            let kind = if i % 37 == 5 {
                Refusal::OverCaps
            } else {
                Refusal::HandshakeTimeout
            };
            let now = t0 + Duration::from_millis(i);
            lines.extend(log.record(kind, now, || format!("127.0.0.2:{i}: {kind:?}")));
            lines.extend(log.flush(now));
        }
        lines.extend(log.flush(t0 + TEN));
        assert_eq!(
            lines,
            [
                "127.0.0.2:0: HandshakeTimeout (more like it are counted and summed up every 10 s)",
                "127.0.0.2:5: OverCaps (more like it are counted and summed up every 10 s)",
                "refused 4,213 connections in the last 10 s: 4,099 handshake timeouts, 114 over \
                 the caps"
            ]
        );
        // Quiet since: nothing more, and the next refusal is logged in full again.
        assert_eq!(log.flush(t0 + 3 * TEN), None);
        assert!(
            log.record(Refusal::WrongKey, t0 + 3 * TEN, || "x: wrong key".into())
                .is_some()
        );
    }

    #[test]
    fn a_lone_refusal_is_logged_once() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(TEN);
        assert!(
            log.record(Refusal::OtherVersion, t0, || "v".into())
                .is_some()
        );
        assert_eq!(log.flush(t0 + TEN), None);
        assert_eq!(log.flush_now(t0 + 2 * TEN), None);
    }

    #[test]
    fn failed_accepts_are_summed_up_with_their_reason() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(TEN);
        let emfile = || "Too many open files (os error 24)".to_string();
        assert_eq!(
            log.record(Refusal::AcceptFailed, t0, emfile).as_deref(),
            Some(
                "accepting a connection failed: Too many open files (os error 24); waiting \
                 before the next try (more like it are counted and summed up every 10 s)"
            )
        );
        for _ in 0..36 {
            assert_eq!(log.record(Refusal::AcceptFailed, t0, emfile), None);
        }
        assert!(
            log.record(Refusal::Closed, t0, || "p: closed".into())
                .is_some(),
            "the first of another kind is logged too"
        );
        assert_eq!(log.record(Refusal::Closed, t0, || unreachable!()), None);
        assert_eq!(
            log.flush_now(t0 + Duration::from_secs(3)).as_deref(),
            Some(
                "refused 2 connections in the last 3 s: 2 closed by the peer; accepting failed \
                 37 times in the last 3 s (last: Too many open files (os error 24))"
            )
        );
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(3_400_000), "3,400,000");
    }
}
