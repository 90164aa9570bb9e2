//! The pass plan: how far each of a node's queued packs gets in the bytes a pass can carry
//! ([`Allowance::capacity`](crate::ground::Allowance::capacity)). Pure arithmetic
//! over the queue, in the order the pass sends it. The pass sends to its deadline whatever
//! the estimate: the plan is what it promises, never a limit on what it sends.

use super::PACK_TURN;
use crate::id::PackId;
use crate::path::PodName;
use crate::state::OutgoingPack;

/// One queued pack in a pass plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPack {
    pub pack: PackId,
    pub pod: PodName,
    /// Pack bytes not yet durable onboard.
    pub left: u64,
    /// Bytes of `left` expected to go in this pass (all of it if it fits).
    pub fits: u64,
}

/// What a plan expects of one pack in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// All that is left of it goes (also a pack with nothing left).
    Completes,
    /// Only this many of its bytes go; it continues at a later pass.
    Partly(u64),
    /// None of it goes: the packs before it take the whole capacity.
    Waits,
}

impl PlannedPack {
    pub fn fit(&self) -> Fit {
        if self.fits == self.left {
            Fit::Completes
        } else if self.fits == 0 {
            Fit::Waits
        } else {
            Fit::Partly(self.fits)
        }
    }
}

/// Plans `queue` (in the order it is sent) into `capacity` pack bytes; without a capacity
/// (no budget, and no deadline with a known rate) everything fits.
pub fn plan(queue: &[OutgoingPack], capacity: Option<u64>) -> Vec<PlannedPack> {
    let fits = fits(queue.iter().map(left_of), capacity);
    queue
        .iter()
        .zip(fits)
        .map(|(q, fits)| PlannedPack {
            pack: q.pack,
            pod: q.pod.clone(),
            left: left_of(q),
            fits,
        })
        .collect()
}

/// The bytes of each pack (given what is left of each, in sending order) that `capacity`
/// carries: each pack first costs its turn ([`PACK_TURN`]: its offer and acceptance), then
/// takes what remains, up to what is left of it.
pub fn fits(lefts: impl IntoIterator<Item = u64>, capacity: Option<u64>) -> Vec<u64> {
    let mut room = capacity.unwrap_or(u64::MAX);
    lefts
        .into_iter()
        .map(|left| {
            room = room.saturating_sub(PACK_TURN);
            let fits = left.min(room);
            room -= fits;
            fits
        })
        .collect()
}

/// Pack bytes the queue still has to send (what no acknowledgement has made durable yet).
pub fn bytes_left(queue: &[OutgoingPack]) -> u64 {
    queue.iter().map(left_of).sum()
}

fn left_of(q: &OutgoingPack) -> u64 {
    q.len - q.acked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ManifestId, NodeId};
    use crate::manifest::Manifest;
    use crate::state::PackState;

    fn queued(n: u8, pod: &str, len: u64, acked: u64) -> OutgoingPack {
        OutgoingPack {
            pack: PackId([n; 32]),
            node: NodeId([7; 16]),
            pod: PodName::new(pod.to_string()).unwrap(),
            len,
            acked,
            base_root: ManifestId([0; 32]),
            target_root: ManifestId([1; 32]),
            target: Manifest::default(),
            source: Some("/data/in".into()),
            dest: None,
            state: PackState::Queued,
            priority: 0,
            content_bytes: len,
            summary: Default::default(),
            created_at: 0,
            finished_at: None,
            hash: None,
        }
    }

    #[test]
    fn without_a_capacity_every_pack_fits_whole() {
        assert_eq!(fits([1_000, 0, 5_000_000], None), vec![1_000, 0, 5_000_000]);
    }

    #[test]
    fn each_pack_costs_its_turn_before_its_bytes() {
        // 10,000 bytes: the first pack's turn (160) and its 4,000 bytes, the second's turn and
        // the 5,680 that remain of its 8,000, the third's turn finds nothing left.
        assert_eq!(
            fits([4_000, 8_000, 100], Some(10_000)),
            vec![4_000, 5_680, 0]
        );
        // Exactly enough for two whole packs and their turns.
        assert_eq!(fits([1_000, 2_000], Some(3_320)), vec![1_000, 2_000]);
        // One byte short: the second loses it.
        assert_eq!(fits([1_000, 2_000], Some(3_319)), vec![1_000, 1_999]);
    }

    #[test]
    fn a_capacity_below_one_turn_carries_nothing() {
        assert_eq!(fits([500, 500], Some(PACK_TURN)), vec![0, 0]);
        assert_eq!(fits([500], Some(0)), vec![0]);
        assert_eq!(fits([], Some(1_000)), Vec::<u64>::new());
    }

    #[test]
    fn a_plan_counts_what_is_left_of_each_pack_in_queue_order() {
        let queue = [queued(1, "p1", 10_000, 6_000), queued(2, "p2", 3_000, 0)];
        let plan = plan(&queue, Some(5_000));
        assert_eq!(
            plan,
            vec![
                PlannedPack {
                    pack: PackId([1; 32]),
                    pod: PodName::new("p1".to_string()).unwrap(),
                    left: 4_000,
                    fits: 4_000,
                },
                PlannedPack {
                    pack: PackId([2; 32]),
                    pod: PodName::new("p2".to_string()).unwrap(),
                    left: 3_000,
                    fits: 680,
                },
            ]
        );
        assert_eq!(plan[0].fit(), Fit::Completes);
        assert_eq!(plan[1].fit(), Fit::Partly(680));
        assert_eq!(bytes_left(&queue), 7_000);
    }

    #[test]
    fn a_pack_the_capacity_does_not_reach_waits_and_an_empty_one_completes() {
        let queue = [
            queued(1, "p1", 9_000, 0),
            queued(2, "p1", 1_000, 0),
            queued(3, "p2", 2_000, 2_000),
        ];
        let plan = plan(&queue, Some(1_000));
        let fit: Vec<Fit> = plan.iter().map(PlannedPack::fit).collect();
        assert_eq!(fit, vec![Fit::Partly(840), Fit::Waits, Fit::Completes]);
        assert_eq!(bytes_left(&queue), 10_000);
    }
}
