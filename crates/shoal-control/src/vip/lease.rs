//! The floating address's lease, as pure functions: the leader's side (who holds each address,
//! when a new holder may be granted, which renewals it acknowledges) and the holder's side (when
//! to add, keep, renew and drop an address). Time comes in as each node's monotonic clock (a
//! [`Duration`] since an origin of the caller's choosing, never compared across nodes); the
//! answers are typed plans the caller carries out. The argument for why no two nodes hold one
//! address is in `docs/vip-lease.md`; `sim.rs` checks it under random partitions and clock rates.
//!
//! The protocol, in short:
//! - A grant `(address, node, epoch)` is a raft write ([`Grant`]), made only by the leader and
//!   sent to the node only once committed; epochs count up per address. Renewals are not raft
//!   writes: they are messages to the leader, acknowledged from its memory.
//! - The holder's lease runs until `send + lease` on its own clock, where `send` is the time it
//!   SENT a renewal that the leader acknowledged: message delay never lengthens it. A granted node
//!   adds the address only after its first renewal (the acceptance) is acknowledged.
//! - The leader grants an address to another node only once every earlier lease has run out even
//!   on the slowest clock: [`LeaseParams::takeover_wait`] after its last acknowledgement, and
//!   [`LeaseParams::new_leader_wait`] after it became leader (an earlier leader may have
//!   acknowledged renewals it knows nothing of). A holder that releases (drain, shutdown) removes
//!   the address first and then tells the leader, which may then grant at once.
//! - The leader acknowledges and grants only while a quorum confirmed its leadership within
//!   [`LeaseParams::quorum_stale`] (the caller tells it when: [`LeaderState::quorum_at`]).

use std::collections::BTreeMap;
use std::time::Duration;

/// The lease's timing. [`Default`] is tuned for a failover well under a second (see
/// `docs/vip-lease.md` for the numbers and why they exclude two holders).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseParams {
    /// `L`: how long a holder keeps the address after sending a renewal that was acknowledged,
    /// on its own clock.
    pub lease: Duration,
    /// `R`: how often a holder renews (`L / 4`: three renewals in a row may be lost).
    pub renew_every: Duration,
    /// `rho`: every node's monotonic clock runs at a rate within `[1 - rho, 1 + rho]` of real time.
    pub rate_bound: f64,
    /// Added to every wait: the time the holder (or the kernel's timer) may take to remove the
    /// address after its deadline.
    pub margin: Duration,
    /// `Q`: the leader acknowledges and grants only while a quorum confirmed its leadership less
    /// than this long ago (on its clock, measured from when it sent the confirmed heartbeat).
    pub quorum_stale: Duration,
}

impl Default for LeaseParams {
    fn default() -> Self {
        LeaseParams {
            lease: Duration::from_millis(300),
            renew_every: Duration::from_millis(75),
            rate_bound: 0.05,
            margin: Duration::from_millis(25),
            quorum_stale: Duration::from_millis(250),
        }
    }
}

impl LeaseParams {
    /// `d * (1 + rho) / (1 - rho)`: a span of `d` on the slowest clock, as measured on the fastest.
    fn stretched(&self, d: Duration) -> Duration {
        let rho = self.rate_bound;
        Duration::from_secs_f64(d.as_secs_f64() * (1.0 + rho) / (1.0 - rho))
    }

    /// How long after its last acknowledgement of a grant's renewal (or the grant itself) the
    /// leader waits, on its clock, before granting the address to another node:
    /// `L (1 + rho) / (1 - rho) + margin`.
    pub fn takeover_wait(&self) -> Duration {
        self.stretched(self.lease) + self.margin
    }

    /// How long after becoming leader it waits before granting an address whose recorded holder
    /// it has not heard from: the earlier leader may have acknowledged renewals up to `Q` after
    /// the quorum last confirmed it, which happened before this leader was elected:
    /// `(L + Q)(1 + rho) / (1 - rho) + margin`.
    pub fn new_leader_wait(&self) -> Duration {
        self.stretched(self.lease + self.quorum_stale) + self.margin
    }

    /// Refuses parameters under which the argument fails.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..0.5).contains(&self.rate_bound) {
            return Err(format!(
                "clock-rate bound {} outside [0, 0.5)",
                self.rate_bound
            ));
        }
        if self.lease.is_zero() || self.renew_every.is_zero() {
            return Err("lease and renewal period must be positive".into());
        }
        if self.renew_every * 2 > self.lease {
            return Err(format!(
                "renewing every {:?} leaves fewer than two renewals per lease of {:?}",
                self.renew_every, self.lease
            ));
        }
        Ok(())
    }
}

/// A grant as the raft store records it: the address belongs to `node` under `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub node: String,
    pub epoch: u64,
}

/// A node as the leader sees it for eligibility.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    /// Ready: its session with the managers is alive and it is neither drained nor leaving.
    pub ready: bool,
}

/// What the leader knows of one address's lease, in memory (only `record` is in raft).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddrLease {
    /// The committed grant, from the raft store.
    pub record: Option<Grant>,
    /// When this leader last acknowledged a renewal of `record` (or committed it), on its clock.
    /// `None`: not since it became leader.
    pub last_ack: Option<Duration>,
    /// The holder released `record`: it no longer has the address.
    pub released: bool,
    /// The leader asked the holder to give the address up; it acknowledges no more renewals.
    pub revoking: bool,
    /// The holder accepted `record` (its first renewal was acknowledged).
    pub accepted: bool,
    /// When the grant was last sent (resent every `R` until accepted).
    pub grant_sent: Option<Duration>,
    /// A grant written to raft, not committed yet.
    pub pending: Option<Grant>,
    /// Since when (leader's clock) the holder has renewed without holding the address: it does
    /// not receive the acknowledgements (a one-way cut).
    pub idle_since: Option<Duration>,
}

/// The leader's lease state. Built by [`LeaderState::new`] from the store's grants when the node
/// becomes leader; dropped when it stops being leader.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderState {
    /// This manager's node ID (the address prefers other nodes: a holder that is also the leader
    /// makes its death wait for an election as well).
    pub self_id: String,
    /// When it became leader, on its clock.
    pub became_leader_at: Duration,
    /// How long its voters had heard no leader when they voted (the least of their reports):
    /// shortens the wait for inherited grants (see [`LeaderState::new`]).
    pub silence: Duration,
    /// The latest time (its clock) at which it sent a heartbeat that a quorum acknowledged.
    pub quorum_at: Option<Duration>,
    pub leases: BTreeMap<String, AddrLease>,
}

impl LeaderState {
    /// A new leader at `now` with the committed grants `records` (address -> grant).
    ///
    /// `silence`: the least, over the votes that elected it (its own included), of "how long had
    /// this voter heard no leader when it voted" (each on its own clock; a voter that was itself
    /// leader counts from when it stopped leading, a voter restarted since from its start: the
    /// simulation finds two holders when a deposed leader reports its silence from before it
    /// led). `Duration::ZERO` when unknown. The old leader's last confirmed
    /// heartbeat reached one of these voters, so it was sent at least `silence / (1 + rho)` before
    /// the election, and the wait for inherited grants shrinks by `silence`.
    pub fn new(
        self_id: &str,
        now: Duration,
        records: BTreeMap<String, Grant>,
        silence: Duration,
    ) -> Self {
        let leases = records
            .into_iter()
            .map(|(address, g)| {
                let lease = AddrLease {
                    record: Some(g),
                    ..AddrLease::default()
                };
                (address, lease)
            })
            .collect();
        LeaderState {
            self_id: self_id.to_string(),
            became_leader_at: now,
            silence,
            quorum_at: None,
            leases,
        }
    }

    /// The caller's news: a quorum acknowledged the heartbeat this leader sent at `sent_at`.
    pub fn quorum_confirmed(&mut self, sent_at: Duration) {
        self.quorum_at = Some(self.quorum_at.map_or(sent_at, |q| q.max(sent_at)));
    }

    fn has_quorum(&self, params: &LeaseParams, now: Duration) -> bool {
        self.quorum_at
            .is_some_and(|q| now < q + params.quorum_stale)
    }

    /// The earliest time (its clock) at which no lease of `lease.record` can be alive any more.
    fn safe_at(&self, params: &LeaseParams, lease: &AddrLease) -> Duration {
        let inherited =
            self.became_leader_at + params.new_leader_wait().saturating_sub(self.silence);
        match lease.last_ack {
            Some(t) => inherited.max(t + params.takeover_wait()),
            None => inherited,
        }
    }
}

/// Why an address has no holder now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unheld {
    /// No ready node meets its constraints.
    NoEligibleNode,
    /// An earlier lease may still be alive: a grant is possible at `until` (leader's clock).
    Waiting { until: Duration },
    /// This leader has no fresh quorum confirmation: it grants nothing.
    NoQuorum,
    /// A grant is being written to raft.
    Writing,
}

/// One leader pass's plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaderPlan {
    /// Grants to write to raft (compare-and-set on the address's previous epoch); call
    /// [`on_committed`] or [`on_write_failed`] with the result.
    pub write: Vec<(String, Grant)>,
    /// Grants to (re)send to their node: committed, not accepted yet.
    pub send_grant: Vec<(String, Grant)>,
    /// Holders asked to release (no longer eligible or address removed).
    pub revoke: Vec<(String, Grant)>,
    /// Addresses no longer configured whose lease has run out: delete their records.
    pub forget: Vec<String>,
    /// Configured addresses without a holder, and why.
    pub unheld: Vec<(String, Unheld)>,
    /// Call [`leader_step`] again at the latest then (leader's clock).
    pub wake_at: Option<Duration>,
}

fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The leader's pass at `now` (its clock) over the configured `addresses` and `nodes`;
/// `eligible(address, node)` tells whether a node meets the address's constraints. Deterministic:
/// among eligible ready nodes it prefers the current holder, then nodes other than itself, then
/// the fewest addresses held, then the node ID.
pub fn leader_step(
    params: &LeaseParams,
    now: Duration,
    state: &mut LeaderState,
    nodes: &[NodeView],
    addresses: &[String],
    eligible: &dyn Fn(&str, &NodeView) -> bool,
) -> LeaderPlan {
    let mut plan = LeaderPlan::default();
    if !state.has_quorum(params, now) {
        for a in addresses {
            let held = state
                .leases
                .get(a)
                .is_some_and(|l| l.record.is_some() && !l.released);
            if !held {
                plan.unheld.push((a.clone(), Unheld::NoQuorum));
            }
        }
        return plan;
    }
    let mut wake = Some(now + params.renew_every);
    // Addresses no longer configured: revoke, then forget once the lease has surely run out.
    let gone: Vec<String> = state
        .leases
        .keys()
        .filter(|a| !addresses.contains(a))
        .cloned()
        .collect();
    for a in gone {
        let safe_at = state.safe_at(params, &state.leases[&a]);
        let lease = state.leases.get_mut(&a).expect("listed");
        if lease.pending.is_some() {
            continue;
        }
        match lease.record.clone() {
            Some(g) if !lease.released && now < safe_at => {
                if !lease.revoking
                    || lease
                        .grant_sent
                        .is_none_or(|t| now >= t + params.renew_every)
                {
                    lease.revoking = true;
                    lease.grant_sent = Some(now);
                    plan.revoke.push((a.clone(), g));
                }
                wake = earliest(wake, safe_at);
            }
            _ => {
                state.leases.remove(&a);
                plan.forget.push(a);
            }
        }
    }
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for l in state.leases.values() {
        if let Some(g) = l.pending.as_ref().or(l.record.as_ref()) {
            *held.entry(g.node.as_str()).or_default() += 1;
        }
    }
    let mut held: BTreeMap<String, usize> =
        held.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    for a in addresses {
        let safe_at = state.safe_at(params, state.leases.get(a).unwrap_or(&AddrLease::default()));
        let lease = state.leases.entry(a.clone()).or_default();
        if lease.pending.is_some() {
            plan.unheld.push((a.clone(), Unheld::Writing));
            continue;
        }
        let ok = |n: &NodeView| n.ready && eligible(a, n);
        // The leader hands an address it holds itself to another eligible node (a short
        // hand-over now instead of an election plus a takeover when this node dies).
        let self_holds_needlessly = lease.record.as_ref().is_some_and(|g| {
            g.node == state.self_id && nodes.iter().any(|n| n.id != state.self_id && ok(n))
        });
        let holder_fit = !self_holds_needlessly
            && lease
                .record
                .as_ref()
                .is_some_and(|g| nodes.iter().any(|n| n.id == g.node && ok(n)));
        let lapsed = now >= safe_at;
        let free = lease.record.is_none() || lease.released;
        if let Some(g) = lease.record.clone().filter(|_| !free) {
            // A holder that renews but has not had the address for a whole takeover wait does not
            // hear the acknowledgements: stop acknowledging, grant elsewhere once surely expired.
            let deaf = lease
                .idle_since
                .is_some_and(|t| now >= t + params.takeover_wait());
            if deaf && !lease.revoking {
                lease.revoking = true;
                lease.grant_sent = Some(now);
                plan.revoke.push((a.clone(), g.clone()));
            }
            if holder_fit && !lease.revoking && !lapsed {
                if let Some(t) = lease.idle_since {
                    wake = earliest(wake, t + params.takeover_wait());
                }
                // Keep the holder; resend the grant until accepted.
                if !lease.accepted {
                    if lease
                        .grant_sent
                        .is_none_or(|t| now >= t + params.renew_every)
                    {
                        lease.grant_sent = Some(now);
                        plan.send_grant.push((a.clone(), g));
                    }
                    wake = earliest(wake, safe_at);
                }
                continue;
            }
            if !lapsed {
                if !holder_fit
                    && (!lease.revoking
                        || lease
                            .grant_sent
                            .is_none_or(|t| now >= t + params.renew_every))
                {
                    lease.revoking = true;
                    lease.grant_sent = Some(now);
                    plan.revoke.push((a.clone(), g));
                }
                plan.unheld
                    .push((a.clone(), Unheld::Waiting { until: safe_at }));
                wake = earliest(wake, safe_at);
                continue;
            }
        }
        // Free, or the earlier lease has surely run out: pick a node.
        let previous = lease.record.as_ref().map(|g| g.node.clone());
        let mut candidates: Vec<&NodeView> = nodes.iter().filter(|n| ok(n)).collect();
        if candidates.len() > 1 {
            // A holder that let its lease lapse is presumed gone, and one that released it is
            // leaving (shutdown, leave): another node is picked while one is ready.
            candidates.retain(|n| Some(&n.id) != previous.as_ref());
        }
        let Some(pick) = candidates.into_iter().min_by_key(|n| {
            (
                n.id == state.self_id,
                held.get(&n.id).copied().unwrap_or(0),
                n.id.clone(),
            )
        }) else {
            plan.unheld.push((a.clone(), Unheld::NoEligibleNode));
            continue;
        };
        let epoch = lease.record.as_ref().map_or(1, |g| g.epoch + 1);
        let grant = Grant {
            node: pick.id.clone(),
            epoch,
        };
        *held.entry(pick.id.clone()).or_default() += 1;
        lease.pending = Some(grant.clone());
        plan.write.push((a.clone(), grant));
        plan.unheld.push((a.clone(), Unheld::Writing));
    }
    // Never "now": the caller would spin.
    plan.wake_at = wake.map(|w| w.max(now + Duration::from_millis(1)));
    plan
}

/// The grant `grant` of `address` is committed in raft at `now`: the leader records it and sends
/// it to its node.
pub fn on_committed(
    now: Duration,
    state: &mut LeaderState,
    address: &str,
    grant: Grant,
) -> (String, Grant) {
    let lease = state.leases.entry(address.to_string()).or_default();
    *lease = AddrLease {
        record: Some(grant.clone()),
        last_ack: Some(now),
        grant_sent: Some(now),
        ..AddrLease::default()
    };
    (address.to_string(), grant)
}

/// The grant write failed (lost leadership, or the record changed): the leader forgets it.
pub fn on_write_failed(state: &mut LeaderState, address: &str) {
    if let Some(l) = state.leases.get_mut(address) {
        l.pending = None;
    }
}

/// A holder's renewal: "I, `node`, renew `address` under `epoch`; request `seq`; I have (or
/// have not) the address now".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renew {
    pub address: String,
    pub node: String,
    pub epoch: u64,
    pub seq: u64,
    pub holding: bool,
}

/// The leader's answer to a [`Renew`]: `ok` extends the lease from the renewal's send time;
/// not `ok` tells the holder its grant is superseded (drop the address now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewReply {
    pub address: String,
    pub epoch: u64,
    pub seq: u64,
    pub ok: bool,
}

/// The leader receives `renew` at `now`. `None`: no answer (no fresh quorum, or a grant being
/// written). A renewal of the recorded grant is acknowledged even after its lease ran out (the
/// holder takes the address back): only this grant can hold the address until the leader writes
/// another.
pub fn on_renew(
    params: &LeaseParams,
    now: Duration,
    state: &mut LeaderState,
    renew: &Renew,
) -> Option<RenewReply> {
    if !state.has_quorum(params, now) {
        return None;
    }
    let reply = |ok| RenewReply {
        address: renew.address.clone(),
        epoch: renew.epoch,
        seq: renew.seq,
        ok,
    };
    let Some(lease) = state.leases.get_mut(&renew.address) else {
        return Some(reply(false));
    };
    if lease.pending.is_some() {
        return None;
    }
    let current = lease
        .record
        .as_ref()
        .is_some_and(|g| g.node == renew.node && g.epoch == renew.epoch);
    if !current || lease.released || lease.revoking {
        return Some(reply(false));
    }
    lease.last_ack = Some(now);
    lease.accepted = true;
    if renew.holding {
        lease.idle_since = None;
    } else {
        lease.idle_since.get_or_insert(now);
    }
    Some(reply(true))
}

/// The holder released `address` under `epoch` (it removed the address before saying so): the
/// leader may grant it at once.
pub fn on_release(state: &mut LeaderState, node: &str, address: &str, epoch: u64) {
    if let Some(l) = state.leases.get_mut(address) {
        if l.record
            .as_ref()
            .is_some_and(|g| g.node == node && g.epoch == epoch)
        {
            l.released = true;
        }
    }
}

/// One address on the holder's side.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Held {
    pub epoch: u64,
    /// The lease's end on this node's clock (`send + L` of the latest acknowledged renewal).
    pub deadline: Option<Duration>,
    /// The address is on the interface.
    pub present: bool,
    pub last_sent: Option<Duration>,
    /// Renewals in flight: seq -> send time.
    pub inflight: BTreeMap<u64, Duration>,
}

/// The holder's side: the grants this node has.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HolderState {
    pub node: String,
    pub held: BTreeMap<String, Held>,
    pub next_seq: u64,
}

/// What the holder does.
#[derive(Debug, Clone, PartialEq)]
pub enum HolderAction {
    /// Add the address (and announce it); the kernel's watchdog removes it at `until` (this
    /// node's clock) unless extended.
    Add { address: String, until: Duration },
    /// Move the watchdog's deadline to `until`.
    Extend { address: String, until: Duration },
    /// Remove the address now.
    Drop { address: String },
    /// Send this renewal to the leader.
    Renew(Renew),
    /// Tell the leader the address was released (after removing it).
    Release { address: String, epoch: u64 },
}

/// The holder's pass's plan.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HolderPlan {
    pub actions: Vec<HolderAction>,
    /// Call [`holder_step`] again at the latest then (this node's clock).
    pub wake_at: Option<Duration>,
}

impl HolderState {
    pub fn new(node: &str) -> Self {
        HolderState {
            node: node.to_string(),
            ..HolderState::default()
        }
    }

    /// When [`holder_step`] has something to do next (this node's clock): a renewal due or a
    /// deadline.
    pub fn next_wake(&self, params: &LeaseParams) -> Option<Duration> {
        let mut wake = None;
        for h in self.held.values() {
            if h.present {
                if let Some(d) = h.deadline {
                    wake = earliest(wake, d);
                }
            }
            wake = earliest(
                wake,
                h.last_sent
                    .map_or(Duration::ZERO, |t| t + params.renew_every),
            );
        }
        wake
    }

    fn renew(&mut self, now: Duration, address: &str) -> Option<HolderAction> {
        let seq = self.next_seq;
        let h = self.held.get_mut(address)?;
        self.next_seq += 1;
        h.last_sent = Some(now);
        h.inflight.insert(seq, now);
        Some(HolderAction::Renew(Renew {
            address: address.to_string(),
            node: self.node.clone(),
            epoch: h.epoch,
            seq,
            holding: h.present,
        }))
    }
}

/// A grant of `address` under `epoch` arrives: the node accepts it with an immediate renewal; it
/// adds the address only when that renewal is acknowledged.
pub fn on_grant(
    now: Duration,
    state: &mut HolderState,
    address: &str,
    epoch: u64,
) -> Vec<HolderAction> {
    let mut actions = Vec::new();
    match state.held.get(address) {
        Some(h) if h.epoch > epoch => return actions,
        Some(h) if h.epoch == epoch => {
            if h.deadline.is_some_and(|d| now < d) {
                return actions;
            }
        }
        Some(h) => {
            if h.present {
                actions.push(HolderAction::Drop {
                    address: address.to_string(),
                });
            }
            state.held.insert(
                address.to_string(),
                Held {
                    epoch,
                    ..Held::default()
                },
            );
        }
        None => {
            state.held.insert(
                address.to_string(),
                Held {
                    epoch,
                    ..Held::default()
                },
            );
        }
    }
    actions.extend(state.renew(now, address));
    actions
}

/// The leader's answer to a renewal arrives at `now`.
pub fn on_reply(
    params: &LeaseParams,
    now: Duration,
    state: &mut HolderState,
    reply: &RenewReply,
) -> Vec<HolderAction> {
    let address = reply.address.clone();
    let Some(h) = state.held.get_mut(&address) else {
        return Vec::new();
    };
    if h.epoch != reply.epoch {
        return Vec::new();
    }
    if !reply.ok {
        let present = h.present;
        state.held.remove(&address);
        return if present {
            vec![HolderAction::Drop { address }]
        } else {
            Vec::new()
        };
    }
    let Some(sent) = h.inflight.remove(&reply.seq) else {
        return Vec::new();
    };
    h.inflight.retain(|_, s| *s > sent);
    let until = sent + params.lease;
    if h.deadline.is_some_and(|d| d >= until) || now >= until {
        return Vec::new();
    }
    h.deadline = Some(until);
    if h.present {
        vec![HolderAction::Extend { address, until }]
    } else {
        h.present = true;
        vec![HolderAction::Add { address, until }]
    }
}

/// The holder's pass at `now` (its clock): drop what expired, renew what is due. A holder whose
/// lease ran out keeps renewing: the leader may acknowledge it again (after a leader change).
pub fn holder_step(params: &LeaseParams, now: Duration, state: &mut HolderState) -> HolderPlan {
    let mut plan = HolderPlan::default();
    let addresses: Vec<String> = state.held.keys().cloned().collect();
    for a in addresses {
        let h = state.held.get_mut(&a).expect("listed");
        h.inflight.retain(|_, s| now < *s + params.lease);
        if h.present && h.deadline.is_some_and(|d| now >= d) {
            h.present = false;
            plan.actions.push(HolderAction::Drop { address: a.clone() });
        }
        if h.present {
            if let Some(d) = h.deadline {
                plan.wake_at = earliest(plan.wake_at, d);
            }
        }
        let due = h.last_sent.map_or(now, |t| t + params.renew_every);
        if now >= due {
            plan.actions.extend(state.renew(now, &a));
            plan.wake_at = earliest(plan.wake_at, now + params.renew_every);
        } else {
            plan.wake_at = earliest(plan.wake_at, due);
        }
    }
    plan
}

/// Hand the address over without waiting (drain, demote, leave, shutdown): remove it, then tell
/// the leader.
pub fn release(state: &mut HolderState, address: &str) -> Vec<HolderAction> {
    let Some(h) = state.held.remove(address) else {
        return Vec::new();
    };
    let mut actions = Vec::new();
    if h.present {
        actions.push(HolderAction::Drop {
            address: address.to_string(),
        });
    }
    actions.push(HolderAction::Release {
        address: address.to_string(),
        epoch: h.epoch,
    });
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Round numbers the tests' times are written for (L = 500 ms, R = 125 ms, margin 50 ms:
    /// takeover wait 602.6 ms), whatever the defaults are.
    fn params() -> LeaseParams {
        LeaseParams {
            lease: ms(500),
            renew_every: ms(125),
            rate_bound: 0.05,
            margin: ms(50),
            quorum_stale: ms(250),
        }
    }

    #[test]
    fn the_lease_counts_from_the_renewals_send_time() {
        let p = params();
        let mut h = HolderState::new("a");
        let acts = on_grant(ms(1000), &mut h, "10.0.0.9/24", 1);
        let [HolderAction::Renew(r)] = acts.as_slice() else {
            panic!("{acts:?}")
        };
        let ok = |seq| RenewReply {
            address: r.address.clone(),
            epoch: 1,
            seq,
            ok: true,
        };
        // Acknowledged 100 ms later: the lease ends at send + L, not receipt + L.
        let acts = on_reply(&p, ms(1100), &mut h, &ok(r.seq));
        assert_eq!(
            acts,
            vec![HolderAction::Add {
                address: r.address.clone(),
                until: ms(1500)
            }]
        );
        // A renewal whose acknowledgement arrives after its own lease ended adds nothing.
        let plan = holder_step(&p, ms(1125), &mut h);
        let Some(HolderAction::Renew(r2)) = plan.actions.first().cloned() else {
            panic!()
        };
        assert!(holder_step(&p, ms(1500), &mut h)
            .actions
            .contains(&HolderAction::Drop {
                address: r.address.clone()
            }));
        assert_eq!(on_reply(&p, ms(1700), &mut h, &ok(r2.seq)), vec![]);
    }

    #[test]
    fn the_leader_grants_elsewhere_only_after_the_stretched_lease() {
        let p = params();
        let addrs = vec!["10.0.0.9/24".to_string()];
        let nodes: Vec<NodeView> = ["a", "b", "m"]
            .iter()
            .map(|id| NodeView {
                id: id.to_string(),
                ready: true,
            })
            .collect();
        // Its voters had heard no leader for a second: no wait for inherited grants.
        let mut l = LeaderState::new("m", ms(0), BTreeMap::new(), ms(1000));
        l.quorum_confirmed(ms(0));
        let plan = leader_step(&p, ms(10), &mut l, &nodes, &addrs, &|_, _| true);
        // Not the leader itself; then by node ID.
        assert_eq!(
            plan.write,
            vec![(
                addrs[0].clone(),
                Grant {
                    node: "a".into(),
                    epoch: 1
                }
            )]
        );
        on_committed(
            ms(20),
            &mut l,
            &addrs[0],
            Grant {
                node: "a".into(),
                epoch: 1,
            },
        );
        let renew = Renew {
            address: addrs[0].clone(),
            node: "a".into(),
            epoch: 1,
            seq: 0,
            holding: false,
        };
        assert!(on_renew(&p, ms(30), &mut l, &renew).is_some_and(|r| r.ok));
        // "a" goes silent: no new grant before 30 ms + 602.6 ms, and one for "b" after.
        l.quorum_confirmed(ms(600));
        let plan = leader_step(&p, ms(632), &mut l, &nodes, &addrs, &|_, _| true);
        assert!(plan.write.is_empty(), "{plan:?}");
        let plan = leader_step(&p, ms(633), &mut l, &nodes, &addrs, &|_, _| true);
        assert_eq!(
            plan.write,
            vec![(
                addrs[0].clone(),
                Grant {
                    node: "b".into(),
                    epoch: 2
                }
            )]
        );
        // "a"'s late renewal is not acknowledged while the new grant is written, refused after.
        assert_eq!(on_renew(&p, ms(640), &mut l, &renew), None);
        on_committed(
            ms(650),
            &mut l,
            &addrs[0],
            Grant {
                node: "b".into(),
                epoch: 2,
            },
        );
        assert!(on_renew(&p, ms(660), &mut l, &renew).is_some_and(|r| !r.ok));
        // Without a fresh quorum the leader answers nothing.
        assert_eq!(on_renew(&p, ms(900), &mut l, &renew), None);
    }

    #[test]
    fn a_release_lets_the_leader_grant_at_once() {
        let p = params();
        let addrs = vec!["10.0.0.9/24".to_string()];
        let mut nodes: Vec<NodeView> = ["a", "b"]
            .iter()
            .map(|id| NodeView {
                id: id.to_string(),
                ready: true,
            })
            .collect();
        let mut l = LeaderState::new("m", ms(0), BTreeMap::new(), Duration::ZERO);
        l.quorum_confirmed(ms(0));
        leader_step(&p, ms(10), &mut l, &nodes, &addrs, &|_, _| true);
        on_committed(
            ms(20),
            &mut l,
            &addrs[0],
            Grant {
                node: "a".into(),
                epoch: 1,
            },
        );
        let mut h = HolderState::new("a");
        on_grant(ms(0), &mut h, &addrs[0], 1);
        let acts = release(&mut h, &addrs[0]);
        assert_eq!(
            acts,
            vec![HolderAction::Release {
                address: addrs[0].clone(),
                epoch: 1
            }]
        );
        on_release(&mut l, "a", &addrs[0], 1);
        nodes[0].ready = false; // draining
        let plan = leader_step(&p, ms(30), &mut l, &nodes, &addrs, &|_, _| true);
        assert_eq!(
            plan.write,
            vec![(
                addrs[0].clone(),
                Grant {
                    node: "b".into(),
                    epoch: 2
                }
            )]
        );
    }
}
