//! What a connection may still spend ([`Allowance`]: a byte budget counted on the socket both
//! ways, a deadline, the link's rate) turned into pack bytes: what a plan may promise
//! ([`Allowance::capacity`]), how far an upload or a pull may go now ([`Allowance::limit`]), and
//! whether another pull pack is worth asking for. Arithmetic only; the clock is read, never
//! waited on.

use std::time::Duration;

use tokio::time::Instant;

use crate::window::{FRAME_OVERHEAD, Window};

/// What this connection may still spend: wire bytes (both ways, counted on the socket, this
/// connection's handshake included) and time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowance {
    pub budget: Option<u64>,
    pub deadline: Option<Instant>,
    /// The link's rate in bytes per second, if known (given or measured before).
    pub rate: Option<f64>,
    /// Segments a push encoded now compresses at once (`--jobs`; 0 or 1: one at a time).
    pub jobs: u32,
}

/// Bytes kept back from a budget for the messages that end a connection cleanly.
const CLOSING_RESERVE: u64 = 256;
/// Time kept back before a deadline, on top of a round trip, for the last acknowledgement (the
/// node syncs its staged bytes before it answers).
const END_SLACK: Duration = Duration::from_secs(1);

/// Wire bytes one pack's offer and acceptance cost, about: a plan counts them per pack.
pub const PACK_TURN: u64 = 160;

/// Wire bytes a budget keeps back: the closing messages, and 2% for the acknowledgements of
/// what is sent now, which arrive later and count too (about 25 bytes per 3 s of link, under 1%
/// of the bytes they acknowledge).
fn budget_reserve(budget: u64) -> u64 {
    CLOSING_RESERVE + budget / 50
}

/// Pack bytes that `wire` bytes carry in frames of `frame` bytes (each costs its framing too).
fn payload_in(wire: u64, frame: usize) -> u64 {
    let cost = Window::wire_cost(frame as u64);
    (wire / cost) * frame as u64 + (wire % cost).saturating_sub(FRAME_OVERHEAD)
}

/// How far a pack upload may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SendLimit {
    pub(super) offset: u64,
    /// The budget or the time is spent: no acknowledgement can make room again.
    pub(super) spent: bool,
}

impl Allowance {
    /// Pack bytes a connection that has already moved `wire` bytes can still carry, if the
    /// budget or the deadline (with a known rate) bounds it: what a plan may promise. Each pack
    /// also costs an offer and an acceptance ([`PACK_TURN`] bytes and a round trip).
    pub fn capacity(&self, wire: u64, rtt: Duration) -> Option<u64> {
        let frame = Window::new(0, 0, rtt, self.rate).frame_size();
        let budget = self
            .budget
            .map(|b| payload_in(b.saturating_sub(wire + budget_reserve(b)), frame));
        let time = match (self.deadline, self.rate) {
            (Some(d), Some(rate)) => {
                let left = d
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(rtt + END_SLACK);
                Some(payload_in((rate * left.as_secs_f64()) as u64, frame))
            }
            _ => None,
        };
        match (budget, time) {
            (Some(b), Some(t)) => Some(b.min(t)),
            (b, t) => b.or(t),
        }
    }

    /// How far the transfer `up` may go now, on a connection that has moved `wire` bytes over a
    /// link with round trip `rtt`. `counted`: the offset up to which the transfer's bytes are
    /// on the wire counters already (what was sent, for an upload; for a pull what arrived,
    /// since what was asked for but has not arrived is not counted yet).
    pub(super) fn limit(&self, up: &Window, counted: u64, wire: u64, rtt: Duration) -> SendLimit {
        let mut limit = SendLimit {
            offset: up.total(),
            spent: false,
        };
        if let Some(budget) = self.budget {
            let payload = payload_in(
                budget.saturating_sub(wire + budget_reserve(budget)),
                up.frame_size(),
            );
            limit.offset = limit.offset.min(counted + payload);
            // Nothing more fits in the budget, and no acknowledgement will change that.
            limit.spent = payload == 0;
        }
        if let Some(deadline) = self.deadline {
            // What is sent must land and be acknowledged before the deadline: stop sending a
            // round trip and a second's slack before it, and meanwhile keep no more in flight
            // than the link drains by then. Bytes the rate says cannot land wait for
            // acknowledgements (which may show a faster link) rather than end the pass.
            let left = deadline
                .saturating_duration_since(Instant::now())
                .saturating_sub(rtt + END_SLACK);
            if left.is_zero() {
                limit.offset = limit.offset.min(up.sent());
                limit.spent = true;
            } else if let Some(rate) = up.rate().or(self.rate) {
                let drains = payload_in((rate * left.as_secs_f64()) as u64, up.frame_size());
                limit.offset = limit.offset.min(up.acked() + drains);
            }
        }
        limit
    }

    /// Whether the budget and the deadline leave room to ask for another pull pack (a request
    /// and an offer, and some of the pack) rather than make the node build one for nothing.
    pub(super) fn room_for_another_pull(&self, wire: u64, rtt: Duration) -> bool {
        const ROUND: u64 = 4096;
        let bytes = self
            .budget
            .is_none_or(|b| wire + CLOSING_RESERVE + ROUND <= b);
        let time = self
            .deadline
            .is_none_or(|d| Instant::now() + 2 * rtt + Duration::from_secs(1) < d);
        bytes && time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_carries_whole_frames_and_their_framing() {
        let cost = Window::wire_cost(4096);
        assert_eq!(payload_in(0, 4096), 0);
        assert_eq!(payload_in(FRAME_OVERHEAD, 4096), 0);
        assert_eq!(payload_in(cost, 4096), 4096);
        assert_eq!(payload_in(3 * cost + 100, 4096), 3 * 4096 + 100 - 33);
        assert_eq!(budget_reserve(1_000_000), CLOSING_RESERVE + 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_plan_counts_what_the_time_left_carries_not_the_whole_deadline() {
        let rtt = Duration::from_millis(500);
        let allow = Allowance {
            budget: None,
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            rate: Some(100_000.0),
            jobs: 1,
        };
        // 10 s less a round trip and the closing slack, at 100 kB/s, less framing.
        let c = allow.capacity(0, rtt).unwrap();
        assert!(c < 850_000 && c > 800_000, "{c}");
        // The budget, less what the connection moved and the reserve, bounds it further.
        let tight = Allowance {
            budget: Some(300_000),
            ..allow
        };
        let b = tight.capacity(10_000, rtt).unwrap();
        assert!(b < 300_000 - 10_000 - 6_000 && b > 270_000, "{b}");
        assert_eq!(Allowance::default().capacity(0, rtt), None);
    }

    #[test]
    fn payload_in_a_partial_frame_loses_only_its_framing() {
        // 10,000 wire bytes in 4,096-byte frames (4,129 on the wire each): two whole frames
        // (8,258), then 1,742 left, of which 33 are framing: 8,192 + 1,709.
        assert_eq!(payload_in(10_000, 4096), 9_901);
        // A remainder no larger than the framing carries nothing: 4,129 + 33.
        assert_eq!(payload_in(4_162, 4096), 4_096);
        // Large frames: 100,000 in 32,768-byte frames (32,801 each): three (98,403), then
        // 1,597 - 33.
        assert_eq!(payload_in(100_000, 32_768), 3 * 32_768 + 1_564);
    }

    #[test]
    fn a_budget_keeps_back_the_closing_messages_and_two_percent() {
        // 256 + 0 (under 50 bytes, 2% rounds down to nothing).
        assert_eq!(budget_reserve(49), 256);
        // 256 + 100,000 / 50.
        assert_eq!(budget_reserve(100_000), 2_256);
    }

    #[test]
    fn capacity_with_a_budget_counts_what_is_left_after_the_connection_and_the_reserve() {
        let rtt = Duration::from_millis(200);
        let allow = Allowance {
            budget: Some(100_000),
            ..Allowance::default()
        };
        // No rate: 4,096-byte frames. 100,000 - 10,000 moved - 2,256 reserve = 87,744 wire
        // bytes: 21 frames of 4,129 (86,709), then 1,035 - 33 = 1,002: 86,016 + 1,002.
        assert_eq!(allow.capacity(10_000, rtt), Some(87_018));
        // Spent: what was moved and the reserve exceed the budget.
        assert_eq!(allow.capacity(98_000, rtt), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_with_a_deadline_counts_the_time_left_at_the_rate() {
        let rtt = Duration::from_millis(500);
        let allow = Allowance {
            budget: None,
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            rate: Some(100_000.0),
            jobs: 1,
        };
        // 10 s - 0.5 s round trip - 1 s slack = 8.5 s at 100,000 B/s = 850,000 wire bytes.
        // 100 kB/s gives 400,000-byte frames, capped at 32,768 (32,801 on the wire): 25 of
        // them (820,025), then 29,975 - 33 = 29,942: 819,200 + 29,942.
        assert_eq!(allow.capacity(0, rtt), Some(849_142));
        // A deadline without a rate promises nothing; nor does a rate without a deadline.
        let no_rate = Allowance {
            rate: None,
            ..allow
        };
        assert_eq!(no_rate.capacity(0, rtt), None);
        let no_deadline = Allowance {
            deadline: None,
            ..allow
        };
        assert_eq!(no_deadline.capacity(0, rtt), None);
        // Both: the smaller. A budget of 100,000 with nothing moved: 100,000 - 2,256 =
        // 97,744 wire bytes; 2 frames (65,602), then 32,142 - 33: 65,536 + 32,109.
        let both = Allowance {
            budget: Some(100_000),
            ..allow
        };
        assert_eq!(both.capacity(0, rtt), Some(97_645));
        // Past the deadline less the round trip and slack: nothing.
        let late = Allowance {
            deadline: Some(Instant::now() + Duration::from_millis(1_400)),
            ..allow
        };
        assert_eq!(late.capacity(0, rtt), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_send_limit_stops_at_the_budget_and_drains_by_the_deadline() {
        let rtt = Duration::from_millis(500);
        // 1 MB to send, no rate known: 4,096-byte frames.
        let mut up = Window::new(1_000_000, 0, rtt, None);
        let unbounded = Allowance::default();
        assert_eq!(
            unbounded.limit(&up, 0, 50_000, rtt),
            SendLimit {
                offset: 1_000_000,
                spent: false
            }
        );
        // A budget of 100,000 with 10,000 moved: 87,018 pack bytes (see the capacity test),
        // from the offset already counted.
        let budget = Allowance {
            budget: Some(100_000),
            ..Allowance::default()
        };
        assert_eq!(
            budget.limit(&up, 5_000, 10_000, rtt),
            SendLimit {
                offset: 92_018,
                spent: false
            }
        );
        // Spent: nothing fits, and no acknowledgement will make room.
        assert_eq!(
            budget.limit(&up, 5_000, 98_000, rtt),
            SendLimit {
                offset: 5_000,
                spent: true
            }
        );
        // A deadline 10 s away at 1,000 B/s: 8.5 s drain 8,500 wire bytes, two frames
        // (8,258) and 242 - 33: 8,192 + 209 = 8,401 past what is acknowledged.
        up.next_frame(u64::MAX);
        up.on_ack(4_096, Duration::ZERO).unwrap();
        let deadline = Allowance {
            deadline: Some(Instant::now() + Duration::from_secs(10)),
            rate: Some(1_000.0),
            ..Allowance::default()
        };
        assert_eq!(
            deadline.limit(&up, up.sent(), 0, rtt),
            SendLimit {
                offset: 4_096 + 8_401,
                spent: false
            }
        );
        // Within a round trip and the slack of the deadline: nothing more is sent.
        let late = Allowance {
            deadline: Some(Instant::now() + Duration::from_millis(1_500)),
            ..deadline
        };
        assert_eq!(
            late.limit(&up, up.sent(), 0, rtt),
            SendLimit {
                offset: 4_096,
                spent: true
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn another_pull_needs_a_round_of_budget_and_two_round_trips_of_time() {
        let rtt = Duration::from_millis(500);
        let budget = Allowance {
            budget: Some(10_000),
            ..Allowance::default()
        };
        // 256 closing + 4,096 for the round: 5,648 moved is the most that leaves room.
        assert!(budget.room_for_another_pull(5_648, rtt));
        assert!(!budget.room_for_another_pull(5_649, rtt));
        // Two round trips and a second: 2 s. Strictly before the deadline.
        let deadline = Allowance {
            deadline: Some(Instant::now() + Duration::from_millis(2_001)),
            ..Allowance::default()
        };
        assert!(deadline.room_for_another_pull(0, rtt));
        let tight = Allowance {
            deadline: Some(Instant::now() + Duration::from_secs(2)),
            ..Allowance::default()
        };
        assert!(!tight.room_for_another_pull(0, rtt));
    }
}
