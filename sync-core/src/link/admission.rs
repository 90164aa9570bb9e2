//! Which connections the daemon keeps when more arrive than it will hold. Pure bookkeeping (no
//! sockets, no clock): the accept loop asks at every accept, and each connection reports as it
//! gets further.
//!
//! A connection is *unconfirmed* until a record from its peer has opened: only that proves the
//! key beyond doubt (NNpsk0's first message can be replayed, since the responder adds no
//! randomness before it). Unconfirmed connections are capped, and so are all connections; when
//! a newcomer needs room, an unconfirmed one goes, chosen so that peers without the key can
//! never push out the ground:
//! 1. one still in the handshake before one whose peer has shown the key;
//! 2. within that, one from the address holding the most unconfirmed connections, so a flood
//!    from one place (a pod on the satellite's network, a scanner) only replaces its own
//!    connections, while the ground's single connection stays;
//! 3. within that, the oldest: a peer that had time to finish its handshake and did not.
//!
//! Confirmed connections are never dropped for a newcomer; the unconfirmed cap is below the
//! total, so there is always room for them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

/// How far an unconfirmed connection has come. Lower goes first when room is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Stage {
    /// The peer has shown nothing yet.
    Handshake,
    /// The peer's first handshake message proved the key (or replayed one that did); its first
    /// record, which cannot be replayed, has not come yet.
    KeyShown,
}

/// What the accept loop does with a new connection.
#[derive(Debug)]
pub(crate) enum Admit<H> {
    /// Keep it, under `id`; end the connection behind `dropped` to make room for it.
    Admitted { id: u64, dropped: Option<H> },
    /// Every place is held by a confirmed connection: close the newcomer.
    Full,
}

/// The connections held, with a handle for each unconfirmed one (what ends it: in the daemon, a
/// channel its task listens on).
#[derive(Debug)]
pub(crate) struct Admission<H> {
    max_total: usize,
    max_unconfirmed: usize,
    next_id: u64,
    /// By id, which is arrival order.
    unconfirmed: BTreeMap<u64, Pending<H>>,
    /// Unconfirmed connections per stage and address: where the next one to go comes from.
    load: HashMap<(Stage, IpAddr), usize>,
    confirmed: HashSet<u64>,
    /// Dropped, but their task has not yet given its place back (nor closed its socket).
    closing: HashSet<u64>,
}

#[derive(Debug)]
struct Pending<H> {
    addr: IpAddr,
    stage: Stage,
    handle: H,
}

impl<H> Admission<H> {
    /// `max_unconfirmed` must be at least 1 and below `max_total` (checked by the options).
    pub(crate) fn new(max_total: usize, max_unconfirmed: usize) -> Self {
        debug_assert!(max_unconfirmed >= 1 && max_unconfirmed < max_total);
        Self {
            max_total,
            max_unconfirmed,
            next_id: 0,
            unconfirmed: BTreeMap::new(),
            load: HashMap::new(),
            confirmed: HashSet::new(),
            closing: HashSet::new(),
        }
    }

    /// A connection from `addr` was accepted; `handle` ends it if it must make room later.
    pub(crate) fn admit(&mut self, addr: IpAddr, handle: H) -> Admit<H> {
        let mut dropped = None;
        if self.unconfirmed.len() >= self.max_unconfirmed || self.held() >= self.max_total {
            match self.drop_one() {
                Some(h) => dropped = Some(h),
                None => return Admit::Full,
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let stage = Stage::Handshake;
        *self.load.entry((stage, addr)).or_default() += 1;
        self.unconfirmed.insert(
            id,
            Pending {
                addr,
                stage,
                handle,
            },
        );
        Admit::Admitted { id, dropped }
    }

    /// The peer of `id` proved the key in its first handshake message.
    pub(crate) fn key_shown(&mut self, id: u64) {
        if let Some(p) = self.unconfirmed.get_mut(&id) {
            let (from, addr) = (p.stage, p.addr);
            p.stage = Stage::KeyShown;
            self.unload(from, addr);
            *self.load.entry((Stage::KeyShown, addr)).or_default() += 1;
        }
    }

    /// A record from the peer of `id` opened: it holds the key, and is never dropped for a
    /// newcomer. False when it was dropped already (to make room) and is ending.
    pub(crate) fn confirm(&mut self, id: u64) -> bool {
        if self.confirmed.contains(&id) {
            return true;
        }
        // Its handle goes with it: a confirmed connection cannot be ended from here.
        let Some(p) = self.remove(id) else {
            return false;
        };
        drop(p.handle);
        self.confirmed.insert(id);
        true
    }

    /// The connection `id` ended, however it ended.
    pub(crate) fn leave(&mut self, id: u64) {
        if !self.confirmed.remove(&id) && !self.closing.remove(&id) {
            self.remove(id);
        }
    }

    /// Takes out the unconfirmed connection that would go first, and gives its handle so the
    /// caller can end it: to make room for a newcomer, or to free a descriptor when accepting
    /// failed for want of them. It counts as [`Admission::closing`] until it leaves.
    pub(crate) fn drop_one(&mut self) -> Option<H> {
        let id = self.next_to_go()?;
        let p = self.remove(id)?;
        self.closing.insert(id);
        Some(p.handle)
    }

    /// Connections dropped whose task has not yet closed them: the accept loop waits for them
    /// before it takes another, so open sockets never exceed the caps by more than one.
    pub(crate) fn closing(&self) -> usize {
        self.closing.len()
    }

    /// Connections held: (unconfirmed, confirmed).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        (self.unconfirmed.len(), self.confirmed.len())
    }

    fn held(&self) -> usize {
        self.unconfirmed.len() + self.confirmed.len()
    }

    /// The lowest stage present; within it, the address holding the most; within that, the
    /// oldest. Linear in the connections held (at most `max_unconfirmed`), once per newcomer
    /// over the cap.
    fn next_to_go(&self) -> Option<u64> {
        let stage = self.load.keys().map(|(s, _)| *s).min()?;
        let most = self
            .load
            .iter()
            .filter(|((s, _), _)| *s == stage)
            .map(|(_, n)| *n)
            .max()?;
        // Among equally loaded addresses, the oldest connection of any of them.
        self.unconfirmed
            .iter()
            .find(|(_, p)| p.stage == stage && self.load.get(&(stage, p.addr)) == Some(&most))
            .map(|(id, _)| *id)
    }

    fn remove(&mut self, id: u64) -> Option<Pending<H>> {
        let p = self.unconfirmed.remove(&id)?;
        self.unload(p.stage, p.addr);
        Some(p)
    }

    fn unload(&mut self, stage: Stage, addr: IpAddr) {
        if let Some(n) = self.load.get_mut(&(stage, addr)) {
            *n -= 1;
            if *n == 0 {
                self.load.remove(&(stage, addr));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    /// Admits a connection whose handle is its own label; returns (id, label of the dropped).
    fn admit(
        a: &mut Admission<&'static str>,
        addr: IpAddr,
        label: &'static str,
    ) -> (u64, Option<&'static str>) {
        match a.admit(addr, label) {
            Admit::Admitted { id, dropped } => (id, dropped),
            Admit::Full => panic!("{label} was refused"),
        }
    }

    #[test]
    fn a_flood_from_one_address_replaces_its_own_connections_not_the_grounds() {
        let mut a = Admission::new(8, 4);
        let (ground, _) = admit(&mut a, ip(1), "ground");
        let mut dropped = Vec::new();
        for _ in 0..100 {
            let (_, d) = admit(&mut a, ip(2), "flood");
            dropped.extend(d);
        }
        assert_eq!(
            dropped.len(),
            97,
            "the flood filled 3 places, then replaced itself"
        );
        assert!(dropped.iter().all(|d| *d == "flood"));
        assert!(a.confirm(ground), "the ground was dropped");
        assert_eq!(a.counts(), (3, 1));
    }

    #[test]
    fn the_oldest_of_the_busiest_address_goes_first() {
        let mut a = Admission::new(8, 4);
        admit(&mut a, ip(1), "a1");
        admit(&mut a, ip(2), "b1");
        admit(&mut a, ip(2), "b2");
        admit(&mut a, ip(3), "c1");
        assert_eq!(admit(&mut a, ip(4), "d1").1, Some("b1"));
        // Now every address holds one: the oldest of all goes.
        assert_eq!(admit(&mut a, ip(5), "e1").1, Some("a1"));
    }

    #[test]
    fn a_peer_that_showed_the_key_goes_after_every_peer_that_did_not() {
        let mut a = Admission::new(8, 3);
        let (old, _) = admit(&mut a, ip(1), "showed the key");
        a.key_shown(old);
        admit(&mut a, ip(2), "x");
        admit(&mut a, ip(3), "y");
        assert_eq!(admit(&mut a, ip(4), "z").1, Some("x"));
        assert_eq!(admit(&mut a, ip(5), "w").1, Some("y"));
        let (v, dropped) = admit(&mut a, ip(6), "v");
        assert_eq!(dropped, Some("z"));
        a.key_shown(v - 1);
        a.key_shown(v);
        // All have shown the key now: the busiest address, then the oldest.
        assert_eq!(admit(&mut a, ip(7), "u").1, Some("showed the key"));
    }

    #[test]
    fn confirmed_connections_are_never_dropped_and_keep_their_room() {
        let mut a = Admission::new(4, 2);
        for label in ["g1", "g2"] {
            let (id, d) = admit(&mut a, ip(1), label);
            assert_eq!(d, None);
            assert!(a.confirm(id));
        }
        // Two confirmed, two places left for the unconfirmed; a third newcomer takes one.
        admit(&mut a, ip(2), "x");
        admit(&mut a, ip(2), "y");
        assert_eq!(admit(&mut a, ip(2), "z").1, Some("x"));
        assert_eq!(a.counts(), (2, 2));
        // A newcomer when every place is confirmed is refused.
        let mut full = Admission::new(2, 1);
        for label in ["g1", "g2"] {
            let (id, _) = admit(&mut full, ip(1), label);
            assert!(full.confirm(id));
        }
        assert!(matches!(full.admit(ip(2), "late"), Admit::Full));
        assert_eq!(full.drop_one(), None);
    }

    #[test]
    fn a_dropped_connection_cannot_confirm_and_leaving_frees_its_place() {
        let mut a = Admission::new(3, 1);
        let (x, _) = admit(&mut a, ip(2), "x");
        let (y, d) = admit(&mut a, ip(2), "y");
        assert_eq!(d, Some("x"));
        assert!(!a.confirm(x), "a dropped connection confirmed");
        assert_eq!(a.closing(), 1, "its socket is still open");
        a.leave(x);
        assert_eq!(a.closing(), 0);
        assert!(a.confirm(y));
        a.leave(y);
        assert_eq!(a.counts(), (0, 0));
        assert!(a.load.is_empty());
    }
}
