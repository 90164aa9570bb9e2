//! The transfer window, sans-IO, one type for both directions: which pack bytes to ask for or
//! send next, how many may be in flight, how big a frame is, and what an acknowledgement (or,
//! for a pull, an arrived frame) means. The ground's sender ([`crate::ground`]'s `send`) and
//! its pull receiver (`ground::pull::receive`, which asks for the ranges the window allows)
//! move the bytes; this decides.
//!
//! The window keeps the link full: it allows twice the bytes the link carries in a round trip
//! plus the receiver's acknowledgement delay, never less than [`MIN_WINDOW`]. The frame size
//! follows the measured rate: about four seconds of link per frame, between 4 and 32 KiB, so a
//! cut at 9.6 kbit/s loses at most 4 KiB while framing costs under 1%.

use std::time::Duration;

use crate::link::ACK_INTERVAL;

/// Never fewer bytes in flight than this: enough for any link up to a few Mbit/s before the
/// rate is measured.
pub const MIN_WINDOW: u64 = 1 << 20;
/// No more in flight than this, whatever the measurement says.
pub const MAX_WINDOW: u64 = 64 << 20;
pub const MIN_FRAME: usize = 4 * 1024;
pub const MAX_FRAME: usize = 32 * 1024;
/// Bytes a `PackData` frame costs on top of its payload: record length and tag (18), message
/// length, tag, offset and payload length (at most 1 + 1 + 10 + 3).
pub const FRAME_OVERHEAD: u64 = 33;
/// The receiver acknowledges at least every this many bytes (see the onboard session).
const ACK_BYTES: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    /// an acknowledgement that goes backwards or past what was sent
    #[error("acknowledgement of offset {ack} is outside {acked}..={sent}")]
    BadAck { ack: u64, acked: u64, sent: u64 },
}

/// Where a pack transfer stands.
#[derive(Debug, Clone)]
pub struct Window {
    /// The bytes there are to send: the pack's length, or, while it is being encoded, what is
    /// encoded so far.
    total: u64,
    /// `total` is the pack's length.
    whole: bool,
    /// The next byte to send.
    next: u64,
    /// Everything below this is durable on the other side.
    acked: u64,
    rtt: Duration,
    /// Measured or given link rate, bytes per second.
    rate: Option<f64>,
    /// Where and when the last acknowledgement moved, to measure the rate.
    last_ack: Option<(u64, Duration)>,
}

impl Window {
    /// A transfer of `total` bytes that the receiver already holds up to `from`.
    pub fn new(total: u64, from: u64, rtt: Duration, rate: Option<f64>) -> Self {
        Self {
            total,
            whole: true,
            next: from.min(total),
            acked: from.min(total),
            rtt,
            rate,
            last_ack: None,
        }
    }

    /// A transfer of a pack still being encoded: `available` bytes of it so far, of which the
    /// receiver holds `from`.
    pub fn growing(available: u64, from: u64, rtt: Duration, rate: Option<f64>) -> Self {
        Self {
            whole: false,
            total: available,
            next: from,
            acked: from,
            ..Self::new(available, from, rtt, rate)
        }
    }

    /// More of a growing pack is encoded: `available` bytes, the whole pack when `whole`.
    pub fn grow(&mut self, available: u64, whole: bool) {
        self.total = self.total.max(available);
        self.whole |= whole;
    }

    /// The pack being received while it was encoded turned out to be `len` bytes long: what
    /// was asked past it is forgotten.
    pub fn end_at(&mut self, len: u64) {
        self.total = len;
        self.whole = true;
        self.next = self.next.min(len);
        self.acked = self.acked.min(len);
    }

    /// The bytes there are to send (see [`Window::growing`]).
    pub fn total(&self) -> u64 {
        self.total
    }
    /// The pack's length is known.
    pub fn whole(&self) -> bool {
        self.whole
    }
    /// Everything encoded so far is sent, and more is to come.
    pub fn waiting_for_bytes(&self) -> bool {
        !self.whole && self.next >= self.total
    }
    pub fn sent(&self) -> u64 {
        self.next
    }
    pub fn acked(&self) -> u64 {
        self.acked
    }
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }
    pub fn all_sent(&self) -> bool {
        self.whole && self.next == self.total
    }
    pub fn in_flight(&self) -> u64 {
        self.next - self.acked
    }

    /// Bytes allowed in flight now.
    pub fn window(&self) -> u64 {
        let Some(rate) = self.rate else {
            return MIN_WINDOW;
        };
        // Time from sending a byte to hearing it is durable: a round trip plus the receiver's
        // acknowledgement delay (bounded by its byte threshold at this rate).
        let ack_delay = (ACK_BYTES as f64 / rate).min(ACK_INTERVAL.as_secs_f64());
        let w = 2.0 * rate * (self.rtt.as_secs_f64() + ack_delay);
        (w as u64).clamp(MIN_WINDOW, MAX_WINDOW)
    }

    /// Payload bytes per frame.
    pub fn frame_size(&self) -> usize {
        match self.rate {
            Some(r) => ((r * 4.0) as usize).clamp(MIN_FRAME, MAX_FRAME),
            None => MIN_FRAME,
        }
    }

    /// The next frame to send, if the window and `limit` (an offset not to pass, for budgets)
    /// allow one. Marks it sent.
    pub fn next_frame(&mut self, limit: u64) -> Option<(u64, u64)> {
        let end_cap = self.total.min(limit).min(self.acked + self.window());
        if self.next >= end_cap {
            return None;
        }
        let start = self.next;
        let end = (start + self.frame_size() as u64).min(end_cap);
        self.next = end;
        Some((start, end))
    }

    /// An acknowledgement arrived at `now` (any clock, used only for differences).
    pub fn on_ack(&mut self, offset: u64, now: Duration) -> Result<(), WindowError> {
        if offset < self.acked || offset > self.next {
            return Err(WindowError::BadAck {
                ack: offset,
                acked: self.acked,
                sent: self.next,
            });
        }
        if let Some((at, when)) = self.last_ack {
            let dt = now.saturating_sub(when).as_secs_f64();
            // Only a span long enough to mean something; the first ack after a window of
            // queued bytes would otherwise look infinitely fast.
            if offset > at && dt >= 0.5 {
                let r = (offset - at) as f64 / dt;
                self.rate = Some(match self.rate {
                    Some(old) => 0.5 * old + 0.5 * r,
                    None => r,
                });
                self.last_ack = Some((offset, now));
            }
        } else {
            self.last_ack = Some((offset, now));
        }
        self.acked = offset;
        Ok(())
    }

    /// Bytes a frame of `payload` bytes costs on the wire.
    pub fn wire_cost(payload: u64) -> u64 {
        payload + FRAME_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn sends_in_frames_up_to_the_window_then_waits_for_acks() {
        let mut u = Window::new(5 << 20, 0, secs(0.05), None);
        let mut sent = 0;
        while let Some((a, b)) = u.next_frame(u64::MAX) {
            assert_eq!(a, sent);
            assert!(b - a <= MIN_FRAME as u64);
            sent = b;
        }
        assert_eq!(sent, MIN_WINDOW);
        u.on_ack(100_000, secs(1.0)).unwrap();
        let (a, _) = u.next_frame(u64::MAX).unwrap();
        assert_eq!(a, MIN_WINDOW);
    }

    #[test]
    fn resumes_where_the_receiver_is() {
        let mut u = Window::new(10_000, 6_000, secs(1.0), None);
        assert_eq!(u.next_frame(u64::MAX), Some((6_000, 10_000)));
        assert!(u.all_sent());
        assert_eq!(u.next_frame(u64::MAX), None);
    }

    #[test]
    fn a_limit_stops_sending_mid_pack() {
        let mut u = Window::new(100_000, 0, secs(1.0), None);
        let mut last = 0;
        while let Some((_, b)) = u.next_frame(10_000) {
            last = b;
        }
        assert_eq!(last, 10_000);
    }

    #[test]
    fn a_growing_pack_is_sent_as_it_grows() {
        let mut u = Window::growing(0, 0, secs(1.0), None);
        assert_eq!(u.next_frame(u64::MAX), None);
        assert!(u.waiting_for_bytes() && !u.all_sent());
        u.grow(10_000, false);
        assert_eq!(u.next_frame(u64::MAX), Some((0, 4096)));
        while u.next_frame(u64::MAX).is_some() {}
        assert_eq!(u.sent(), 10_000);
        assert!(u.waiting_for_bytes() && !u.all_sent());
        u.grow(12_000, true);
        assert!(!u.waiting_for_bytes());
        assert_eq!(u.next_frame(u64::MAX), Some((10_000, 12_000)));
        assert!(u.all_sent());
        // A resumed pack still being encoded starts where the receiver is.
        let u = Window::growing(5_000, 3_000, secs(1.0), None);
        assert_eq!((u.sent(), u.acked()), (3_000, 3_000));
    }

    #[test]
    fn acks_that_go_backwards_or_ahead_are_refused() {
        let mut u = Window::new(100_000, 0, secs(1.0), None);
        u.next_frame(u64::MAX);
        assert!(u.on_ack(5_000, secs(0.0)).is_err());
        u.on_ack(4_096, secs(0.0)).unwrap();
        assert!(u.on_ack(1_000, secs(1.0)).is_err());
    }

    #[test]
    fn the_window_covers_the_link_once_the_rate_is_known() {
        // 10 Mbit/s, 50 ms: acknowledgements every 256 KiB (0.21 s).
        let mut u = Window::new(u64::MAX / 2, 0, secs(0.05), None);
        for _ in 0..400 {
            u.next_frame(u64::MAX);
        }
        u.on_ack(0, secs(0.0)).unwrap();
        u.on_ack(625_000, secs(0.5)).unwrap();
        let rate = u.rate().unwrap();
        assert!((rate - 1_250_000.0).abs() < 1.0);
        let bdp = rate * (0.05 + 262_144.0 / rate);
        assert!(u.window() as f64 >= bdp, "{} < {bdp}", u.window());
        assert_eq!(u.frame_size(), MAX_FRAME);
        // 9.6 kbit/s: four seconds of link per frame.
        let slow = Window::new(1, 0, secs(1.0), Some(1_200.0));
        assert_eq!(slow.frame_size(), 4_800);
        assert_eq!(slow.window(), MIN_WINDOW);
    }
}
