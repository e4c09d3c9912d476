//! Per-revision load balancing and throttling over its ready replicas.
//!
//! Capacity is `containerConcurrency × ready replicas` (unlimited when cc = 0). A request
//! takes a [`Lease`] on one replica and gives it back when it finishes; requests that find
//! no free slot wait in a bounded FIFO queue and are handed a lease directly as slots free
//! up or replicas become ready. Policies as Knative's: power of two choices on in-flight
//! counts for cc = 0, the first replica with a free slot for cc 1–3, round robin skipping
//! full replicas above.
//!
//! A replica that refused a connection is ejected for [`EJECTION`]: no request is handed to
//! it (unless every replica is ejected) until the routes drop it or the time is up. Without
//! this a dead replica that is still listed answers every request at once with a refusal, so
//! it always has a free slot and draws the queue, retries included, into the refusal (a
//! replica killed under load lost a dozen requests that way before its exit was noticed).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_core::RevisionRoute;
use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

/// How long a replica that refused a connection gets no requests, unless the routes drop it
/// first (the usual end: its exit is noticed within milliseconds) or every replica is ejected.
pub const EJECTION: Duration = Duration::from_secs(2);

/// Which replica a request goes to, by `containerConcurrency`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// cc = 0: the less busy of two random replicas.
    PowerOfTwoChoices,
    /// 1 ≤ cc ≤ 3: the first replica with a free slot.
    FirstAvailable,
    /// cc > 3: round robin, skipping full replicas.
    RoundRobin,
}

impl Policy {
    /// Knative's policy for a revision's `containerConcurrency`.
    pub fn for_concurrency(cc: u32) -> Self {
        match cc {
            0 => Self::PowerOfTwoChoices,
            1..=3 => Self::FirstAvailable,
            _ => Self::RoundRobin,
        }
    }
}

#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    in_flight: u32,
    /// Refused a connection: no requests until then.
    ejected_until: Option<Instant>,
}

#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    cc: u32,
    next: usize,
    rng: u64,
    waiters: VecDeque<oneshot::Sender<Lease>>,
}

/// One revision's balancer. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Balancer {
    state: Mutex<State>,
}

/// Why no lease could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot is taken and the wait queue is at its bound.
    QueueFull,
}

/// A request's hold on one replica slot; given back on drop.
#[derive(Debug)]
pub struct Lease {
    balancer: Arc<Balancer>,
    addr: SocketAddr,
    armed: bool,
}

impl Lease {
    /// The replica to send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.balancer.release(self.addr);
        }
    }
}

/// A place in the wait queue: resolves to a lease once one is handed over.
pub type Ticket = oneshot::Receiver<Lease>;

/// What [`Balancer::acquire`] got: a lease at once, or a place in the queue.
#[derive(Debug)]
pub enum Acquired {
    /// A free slot.
    Now(Lease),
    /// Wait on this (and call [`Balancer::sync`] when the routes change).
    Queued(Ticket),
}

impl Balancer {
    /// An empty balancer; `seed` varies the random choices.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                slots: Vec::new(),
                cc: 0,
                next: 0,
                rng: seed | 1,
                waiters: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain counters: a panic elsewhere leaves them usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A lease within capacity, or a place in the queue of at most `max_waiting`.
    pub fn acquire(
        self: &Arc<Self>,
        route: &RevisionRoute,
        max_waiting: usize,
        avoid: Option<SocketAddr>,
    ) -> Result<Acquired, Refused> {
        let mut state = self.lock();
        state.sync(route);
        // Queued requests go first: a newcomer never overtakes them.
        state.waiters.retain(|w| !w.is_closed());
        if state.waiters.is_empty()
            && let Some(i) = state.pick(avoid, true)
        {
            state.slots[i].in_flight += 1;
            return Ok(Acquired::Now(self.lease(state.slots[i].addr)));
        }
        if state.waiters.len() >= max_waiting {
            return Err(Refused::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        state.waiters.push_back(tx);
        Ok(Acquired::Queued(rx))
    }

    /// A lease on some ready replica regardless of capacity (the direct path, where the
    /// replica's own queue layer enforces `containerConcurrency`); `None` without replicas.
    pub fn pick_any(
        self: &Arc<Self>,
        route: &RevisionRoute,
        avoid: Option<SocketAddr>,
    ) -> Option<Lease> {
        let mut state = self.lock();
        state.sync(route);
        let i = state.pick(avoid, false)?;
        state.slots[i].in_flight += 1;
        Some(self.lease(state.slots[i].addr))
    }

    /// Takes in a new set of ready replicas and hands free slots to waiting requests.
    pub fn sync(self: &Arc<Self>, route: &RevisionRoute) {
        let mut state = self.lock();
        state.sync(route);
        self.dispatch(&mut state);
    }

    /// Takes `addr` out of rotation for [`EJECTION`]: it refused a connection.
    pub fn eject(&self, addr: SocketAddr) {
        let mut state = self.lock();
        if let Some(slot) = state.slots.iter_mut().find(|s| s.addr == addr) {
            slot.ejected_until = Some(Instant::now() + EJECTION);
        }
    }

    /// Replicas it balances over (as of the last route it saw).
    pub fn replicas(&self) -> usize {
        self.lock().slots.len()
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        let mut state = self.lock();
        state.waiters.retain(|w| !w.is_closed());
        state.waiters.len()
    }

    fn lease(self: &Arc<Self>, addr: SocketAddr) -> Lease {
        Lease {
            balancer: self.clone(),
            addr,
            armed: true,
        }
    }

    fn release(self: &Arc<Self>, addr: SocketAddr) {
        let mut state = self.lock();
        if let Some(slot) = state.slots.iter_mut().find(|s| s.addr == addr) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
        self.dispatch(&mut state);
    }

    /// Hands free slots to the oldest waiters.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        while !state.waiters.is_empty() {
            let Some(i) = state.pick(None, true) else {
                return;
            };
            let Some(waiter) = state.waiters.pop_front() else {
                return;
            };
            state.slots[i].in_flight += 1;
            if let Err(mut lease) = waiter.send(self.lease(state.slots[i].addr)) {
                // The request gave up meanwhile: take the slot back without re-locking.
                lease.armed = false;
                state.slots[i].in_flight -= 1;
            }
        }
    }
}

impl State {
    fn sync(&mut self, route: &RevisionRoute) {
        self.cc = route.container_concurrency;
        let same = self.slots.len() == route.endpoints.len()
            && self
                .slots
                .iter()
                .zip(&route.endpoints)
                .all(|(s, e)| s.addr == e.addr);
        if same {
            return;
        }
        let old = std::mem::take(&mut self.slots);
        self.slots = route
            .endpoints
            .iter()
            .map(|e| {
                let kept = old.iter().find(|s| s.addr == e.addr);
                Slot {
                    addr: e.addr,
                    in_flight: kept.map_or(0, |s| s.in_flight),
                    ejected_until: kept.and_then(|s| s.ejected_until),
                }
            })
            .collect();
        if self.next >= self.slots.len() {
            self.next = 0;
        }
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn free(&self, i: usize, capped: bool) -> bool {
        !capped || self.cc == 0 || self.slots[i].in_flight < self.cc
    }

    /// The index of the replica to use, if one has a free slot (`capped`) or exists at all.
    fn pick(&mut self, avoid: Option<SocketAddr>, capped: bool) -> Option<usize> {
        let n = self.slots.len();
        if n == 0 {
            return None;
        }
        // Ejected replicas are skipped, unless every replica is ejected (then none is).
        let now = Instant::now();
        let ejected = |s: &Slot| s.ejected_until.is_some_and(|t| t > now);
        let skip_ejected = !self.slots.iter().all(ejected);
        let usable = |s: &Self, i: usize| {
            s.free(i, capped)
                && Some(s.slots[i].addr) != avoid
                && !(skip_ejected && ejected(&s.slots[i]))
        };
        // When the only candidate is the one to avoid, use it anyway.
        let avoid_ok = n == 1;
        let usable = |s: &Self, i: usize| usable(s, i) || (avoid_ok && s.free(i, capped));
        match Policy::for_concurrency(self.cc) {
            Policy::PowerOfTwoChoices => {
                if n == 1 {
                    return usable(self, 0).then_some(0);
                }
                let a = (self.random() % n as u64) as usize;
                let mut b = (self.random() % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                let (a_ok, b_ok) = (usable(self, a), usable(self, b));
                match (a_ok, b_ok) {
                    (true, true) if self.slots[b].in_flight < self.slots[a].in_flight => Some(b),
                    (true, _) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => (0..n).find(|&i| usable(self, i)),
                }
            }
            Policy::FirstAvailable => (0..n).find(|&i| usable(self, i)),
            Policy::RoundRobin => {
                let start = self.next;
                let i = (0..n).map(|k| (start + k) % n).find(|&i| usable(self, i))?;
                self.next = (i + 1) % n;
                Some(i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_core::{Endpoint, NamespacedName};

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn route(cc: u32, ports: &[u16]) -> RevisionRoute {
        RevisionRoute {
            key: NamespacedName::new("default", "r"),
            endpoints: ports.iter().map(|p| Endpoint { addr: addr(*p) }).collect(),
            container_concurrency: cc,
            timeout: Duration::from_secs(1),
            activator_in_path: true,
            unavailable: None,
        }
    }

    fn now(a: Result<Acquired, Refused>) -> Lease {
        match a {
            Ok(Acquired::Now(lease)) => lease,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    fn queued(a: Result<Acquired, Refused>) -> Ticket {
        match a {
            Ok(Acquired::Queued(t)) => t,
            other => panic!("expected a queue place, got {other:?}"),
        }
    }

    #[test]
    fn policies_by_concurrency() {
        assert_eq!(Policy::for_concurrency(0), Policy::PowerOfTwoChoices);
        assert_eq!(Policy::for_concurrency(1), Policy::FirstAvailable);
        assert_eq!(Policy::for_concurrency(3), Policy::FirstAvailable);
        assert_eq!(Policy::for_concurrency(4), Policy::RoundRobin);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_refused_gets_nothing_until_its_ejection_ends() {
        let b = Balancer::new(7);
        for cc in [0, 1, 4] {
            let r = route(cc, &[1, 2, 3]);
            b.sync(&r);
            b.eject(addr(1));
            // Neither new requests, the direct path nor waiters handed a slot get it.
            for _ in 0..6 {
                assert_ne!(now(b.acquire(&r, 10, None)).addr().port(), 1, "cc {cc}");
                assert_ne!(b.pick_any(&r, None).unwrap().addr().port(), 1, "cc {cc}");
            }
            tokio::time::advance(EJECTION).await;
            let back = (0..12).any(|_| b.pick_any(&r, None).unwrap().addr().port() == 1);
            assert!(back, "cc {cc}: the ejection ended");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_never_handed_an_ejected_replica() {
        let b = Balancer::new(7);
        let r = route(1, &[1, 2]);
        let one = now(b.acquire(&r, 10, None));
        let two = now(b.acquire(&r, 10, None));
        let ticket = queued(b.acquire(&r, 10, None));
        b.eject(addr(1));
        drop(one);
        // Replica 1's slot is free, but it refused: the waiter waits for replica 2.
        drop(two);
        assert_eq!(ticket.await.unwrap().addr().port(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_replica_ejected_none_is() {
        let b = Balancer::new(7);
        let r = route(4, &[1, 2]);
        b.sync(&r);
        b.eject(addr(1));
        b.eject(addr(2));
        let ports: std::collections::BTreeSet<_> = (0..4)
            .map(|_| now(b.acquire(&r, 10, None)).addr().port())
            .collect();
        assert_eq!(ports, [1, 2].into());
        // An ejection survives a route change that keeps the replica, and ends with it.
        b.eject(addr(1));
        b.sync(&route(4, &[1, 2, 3]));
        assert!((0..6).all(|_| {
            b.pick_any(&route(4, &[1, 2, 3]), None)
                .unwrap()
                .addr()
                .port()
                != 1
        }));
    }

    #[test]
    fn first_available_fills_replicas_in_order() {
        let b = Balancer::new(7);
        let r = route(2, &[1, 2]);
        let leases: Vec<_> = (0..4).map(|_| now(b.acquire(&r, 10, None))).collect();
        let ports: Vec<_> = leases.iter().map(|l| l.addr().port()).collect();
        assert_eq!(ports, [1, 1, 2, 2]);
    }

    #[test]
    fn round_robin_skips_full_replicas() {
        let b = Balancer::new(7);
        let r = route(4, &[1, 2, 3]);
        let first: Vec<_> = (0..3).map(|_| now(b.acquire(&r, 10, None))).collect();
        let ports: Vec<_> = first.iter().map(|l| l.addr().port()).collect();
        assert_eq!(ports, [1, 2, 3]);
        // Fill replica 1 up, then round robin goes around it.
        let _more: Vec<_> = (0..3).map(|_| now(b.acquire(&r, 10, None))).collect();
        let _fill: Vec<_> = (0..6).map(|_| now(b.acquire(&r, 10, None))).collect();
        // 12 leases = 3 replicas × cc 4: capacity reached.
        let _t = queued(b.acquire(&r, 10, None));
    }

    #[test]
    fn p2c_prefers_the_less_busy_replica() {
        let b = Balancer::new(12345);
        let r = route(0, &[1, 2]);
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(now(b.acquire(&r, 10, None)));
        }
        let on_1 = held.iter().filter(|l| l.addr().port() == 1).count();
        // With two replicas P2C always compares both: counts never drift more than one apart.
        assert!((49..=51).contains(&on_1), "{on_1}");
    }

    #[tokio::test]
    async fn capacity_is_cc_times_replicas_and_queue_is_bounded_fifo() {
        let b = Balancer::new(1);
        let r = route(1, &[1]);
        let first = now(b.acquire(&r, 2, None));
        let mut t1 = queued(b.acquire(&r, 2, None));
        let mut t2 = queued(b.acquire(&r, 2, None));
        assert_eq!(b.acquire(&r, 2, None).unwrap_err(), Refused::QueueFull);
        assert_eq!(b.waiting(), 2);
        drop(first);
        let second = t1.try_recv().expect("oldest waiter gets the freed slot");
        assert!(t2.try_recv().is_err());
        // A second replica becomes ready: the next waiter goes there at once.
        b.sync(&route(1, &[1, 2]));
        let third = t2.try_recv().unwrap();
        assert_eq!((second.addr().port(), third.addr().port()), (1, 2));
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_does_not_keep_its_slot() {
        let b = Balancer::new(1);
        let r = route(1, &[1]);
        let first = now(b.acquire(&r, 5, None));
        let gone = queued(b.acquire(&r, 5, None));
        let mut kept = queued(b.acquire(&r, 5, None));
        drop(gone);
        drop(first);
        assert_eq!(kept.try_recv().unwrap().addr().port(), 1);
        assert_eq!(b.waiting(), 0);
    }

    #[test]
    fn retries_avoid_the_failed_replica_when_they_can() {
        let b = Balancer::new(3);
        let r = route(0, &[1, 2]);
        for _ in 0..20 {
            let lease = b.pick_any(&r, Some(addr(1))).unwrap();
            assert_eq!(lease.addr().port(), 2);
        }
        let only = route(0, &[1]);
        assert_eq!(b.pick_any(&only, Some(addr(1))).unwrap().addr().port(), 1);
        assert!(b.pick_any(&route(0, &[]), None).is_none());
    }
}
