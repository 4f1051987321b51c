//! The holder's side of the floating addresses' lease (issue 20): the I/O around the pure
//! `shoal_control::vip` holder functions. Grants, answers and revocations come from the leader
//! over the node's session; renewals and releases go back up. What the lease decides is done
//! here, in order: `Add` holds the address in the gate (the kernel stops answering for it at the
//! lease's end even if this process is dead), adds it with a lifetime, and announces it a few
//! times; `Extend` moves the gate's deadline and the lifetime; `Drop` removes the address and
//! closes the gate; a `Release` is sent only after its `Drop` is done.
//!
//! Addresses this node added are written down in `state_file`, so a daemon killed with `-9`
//! removes them at its next start (the gate, recreated empty, blocks them until then; their
//! lifetime of about a second removes them earlier still).

use super::announce::announce;
use super::gate::Gate;
use super::guard::{monotonic_ns, Guard};
use super::kernel::{Addresses, Link};
use super::FloatingError;
use shoal_api::dispatch::{AgentMessage, FloatingDown, FloatingUp};
use shoal_control::vip::{self, HolderAction, HolderState, LeaseParams, RenewReply};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// When the gratuitous ARPs / unsolicited NAs go out after an add: a few, spaced, against loss.
const ANNOUNCE_AT: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(500),
];

/// How long a hand-over waits for the leader to confirm its releases.
const HAND_OVER_WAIT: Duration = Duration::from_millis(500);

/// What the holder loop needs to know about its node.
#[derive(Debug, Clone)]
pub struct HolderConfig {
    /// This node's ID (the lease's holder name; the leader knows it from the certificate).
    pub node_id: String,
    /// This node's advertise address: its interface is where an address without an explicit
    /// interface goes.
    pub advertise: Option<IpAddr>,
    /// Where the addresses this node added are written down (`<data dir>/floating.json`).
    pub state_file: PathBuf,
    /// The program to run as `PROGRAM floating-guard` (this binary), which removes an address
    /// at its deadline even after this daemon is killed; None: the address's own lifetime
    /// (about a second) removes it.
    pub guard_program: Option<PathBuf>,
}

/// Asks the loop to give every address up now (drain, leave, shutdown) and says when done.
pub type HandOver = mpsc::Sender<oneshot::Sender<()>>;

/// An address on this node: where it went.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Placed {
    address: String,
    link: String,
    ip: IpAddr,
    prefix: u8,
    /// Where the gate's deadline stands (this run's clock).
    #[serde(skip)]
    gate_until: Duration,
}

/// The kernel side, once it is set up: netlink, the gate, and the guard process.
struct Kernel {
    addrs: Addresses,
    gate: Gate,
    guard: Option<Guard>,
}

struct Holder {
    cfg: HolderConfig,
    params: LeaseParams,
    origin: Instant,
    lease: HolderState,
    kernel: Option<Kernel>,
    /// The interface each granted address asked for.
    interfaces: BTreeMap<String, Option<String>>,
    /// Addresses on this node's interfaces now.
    placed: BTreeMap<String, Placed>,
    /// Releases sent that the leader has not confirmed yet.
    unconfirmed: BTreeSet<(String, u64)>,
    up: mpsc::Sender<AgentMessage>,
}

/// Runs the holder until `stop`, then gives up every address. `hand_over` asks it to give them
/// up without stopping (the daemon does so before it closes its session).
pub async fn run(
    cfg: HolderConfig,
    mut down: mpsc::Receiver<FloatingDown>,
    up: mpsc::Sender<AgentMessage>,
    mut hand_over: mpsc::Receiver<oneshot::Sender<()>>,
    stop: CancellationToken,
) {
    let mut h = Holder {
        lease: HolderState::new(&cfg.node_id),
        cfg,
        params: LeaseParams::default(),
        origin: Instant::now(),
        kernel: None,
        interfaces: BTreeMap::new(),
        placed: BTreeMap::new(),
        unconfirmed: BTreeSet::new(),
        up,
    };
    match h.setup().await {
        Ok(k) => {
            h.kernel = Some(k);
            h.save();
        }
        // Without the gate this node could not drop an address when it dies: it holds none.
        Err(e) => tracing::error!(error = %e, "floating addresses: this node will hold none"),
    }
    let mut wake: Option<Duration> = None;
    let mut handing: Option<(oneshot::Sender<()>, Duration)> = None;
    loop {
        let sleep = wake.map_or(Duration::from_secs(3600), |w| w.saturating_sub(h.now()));
        tokio::select! {
            _ = stop.cancelled() => break,
            m = down.recv() => match m {
                Some(m) => h.on_message(m).await,
                None => break,
            },
            r = hand_over.recv() => {
                if let Some(done) = r {
                    h.release_all().await;
                    // Done once the leader took every release (or gave no sign for a while).
                    handing = Some((done, h.now() + HAND_OVER_WAIT));
                }
            }
            _ = tokio::time::sleep(handing.as_ref().map_or(Duration::from_secs(3600), |(_, until)| until.saturating_sub(h.now()))) => {}
            _ = tokio::time::sleep(sleep) => {}
        }
        if handing
            .as_ref()
            .is_some_and(|(_, until)| h.unconfirmed.is_empty() || h.now() >= *until)
        {
            if let Some((done, _)) = handing.take() {
                let _ = done.send(());
            }
        }
        let plan = vip::holder_step(&h.params, h.now(), &mut h.lease);
        h.carry_out(plan.actions).await;
        wake = plan.wake_at.or_else(|| h.lease.next_wake(&h.params));
    }
    h.release_all().await;
    if let Some(k) = &h.kernel {
        if let Err(e) = k.gate.remove().await {
            tracing::warn!(error = %e, "removing the floating addresses' gate");
        }
    }
}

impl Holder {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Netlink, the gate (fresh: holds nothing), and the removal of what an earlier run left.
    async fn setup(&mut self) -> Result<Kernel, FloatingError> {
        let addrs = Addresses::connect()?;
        let gate = Gate::install().await?;
        let left: Vec<Placed> = std::fs::read(&self.cfg.state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if !left.is_empty() {
            let ips: Vec<IpAddr> = left.iter().map(|p| p.ip).collect();
            gate.set_known(&ips).await?;
            for p in &left {
                if let Some(link) = addrs.link_by_name(&p.link).await? {
                    addrs.remove(&link, p.ip, p.prefix).await?;
                    tracing::info!(address = %p.address, link = %p.link, "removed a floating address an earlier run left");
                }
            }
        }
        let guard = match &self.cfg.guard_program {
            Some(p) => match Guard::spawn(p) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(program = %p.display(), error = %e, "no floating address guard: a killed daemon's address stays until its lifetime ends (about 1 s)");
                    None
                }
            },
            None => None,
        };
        Ok(Kernel { addrs, gate, guard })
    }

    fn send(&self, m: FloatingUp) {
        // The session may be down or behind: the lease repeats renewals, and a lost release
        // costs only the lease's wait.
        if self.up.try_send(AgentMessage::Floating(m)).is_err() {
            tracing::debug!("floating address message not sent (no session)");
        }
    }

    async fn on_message(&mut self, m: FloatingDown) {
        let now = self.now();
        let actions = match m {
            FloatingDown::Grant {
                address,
                epoch,
                interface,
            } => {
                if self.kernel.is_none() {
                    // Cannot hold it safely: give it back at once.
                    self.send(FloatingUp::Release { address, epoch });
                    return;
                }
                self.interfaces.insert(address.clone(), interface);
                self.update_known().await;
                vip::on_grant(now, &mut self.lease, &address, epoch)
            }
            FloatingDown::Renewed {
                address,
                epoch,
                seq,
                ok,
            } => {
                let reply = RenewReply {
                    address,
                    epoch,
                    seq,
                    ok,
                };
                vip::on_reply(&self.params, now, &mut self.lease, &reply)
            }
            FloatingDown::Released { address, epoch } => {
                self.unconfirmed.remove(&(address, epoch));
                Vec::new()
            }
            FloatingDown::Revoke { address, epoch } => {
                let ours = self
                    .lease
                    .held
                    .get(&address)
                    .is_some_and(|h| h.epoch == epoch);
                if ours {
                    tracing::info!(address = %address, epoch, "floating address revoked: releasing it");
                    vip::release(&mut self.lease, &address)
                } else if !self.placed.contains_key(&address) {
                    // Not here (a restart forgot the grant): say so, the leader need not wait.
                    vec![HolderAction::Release { address, epoch }]
                } else {
                    Vec::new()
                }
            }
        };
        self.carry_out(actions).await;
    }

    /// Gives every address up: removed first, then released.
    async fn release_all(&mut self) {
        let addresses: Vec<String> = self.lease.held.keys().cloned().collect();
        for a in addresses {
            let actions = vip::release(&mut self.lease, &a);
            self.carry_out(actions).await;
        }
    }

    async fn carry_out(&mut self, actions: Vec<HolderAction>) {
        self.carry_out_all(actions).await;
        let held = i64::try_from(self.placed.len()).unwrap_or(i64::MAX);
        crate::metrics::METRICS.floating_held.set(held);
    }

    async fn carry_out_all(&mut self, actions: Vec<HolderAction>) {
        for a in actions {
            match a {
                HolderAction::Add { address, until } => {
                    if let Err(e) = self.add(&address, until).await {
                        tracing::warn!(address = %address, error = %e, "could not add the floating address: releasing it");
                        self.drop_address(&address).await;
                        let rel = vip::release(&mut self.lease, &address);
                        for r in rel {
                            if let HolderAction::Release { address, epoch } = r {
                                self.send(FloatingUp::Release { address, epoch });
                            }
                        }
                    }
                }
                HolderAction::Extend { address, until } => {
                    if let Err(e) = self.extend(&address, until).await {
                        tracing::warn!(address = %address, error = %e, "could not extend the floating address's gate");
                    }
                }
                HolderAction::Drop { address } => self.drop_address(&address).await,
                HolderAction::Renew(r) => self.send(FloatingUp::Renew {
                    address: r.address,
                    epoch: r.epoch,
                    seq: r.seq,
                    holding: r.holding,
                }),
                HolderAction::Release { address, epoch } => {
                    self.unconfirmed.insert((address.clone(), epoch));
                    self.send(FloatingUp::Release { address, epoch })
                }
            }
        }
    }

    /// Every address this node was granted or carries: the gate guards them.
    async fn update_known(&self) {
        let Some(k) = &self.kernel else { return };
        let mut ips: Vec<IpAddr> = self.placed.values().map(|p| p.ip).collect();
        for a in self.interfaces.keys() {
            if let Ok(c) = shoal_api::floating::parse_address(a) {
                if !ips.contains(&c.addr) {
                    ips.push(c.addr);
                }
            }
        }
        if let Err(e) = k.gate.set_known(&ips).await {
            tracing::warn!(error = %e, "updating the floating addresses' gate");
        }
    }

    async fn link_for(&self, k: &Kernel, address: &str) -> Result<Link, FloatingError> {
        let wanted = self.interfaces.get(address).cloned().flatten();
        let link = match (&wanted, self.cfg.advertise) {
            (Some(name), _) => k.addrs.link_by_name(name).await?,
            (None, Some(adv)) => k.addrs.link_with_address(adv).await?,
            (None, None) => None,
        };
        link.ok_or_else(|| {
            let what = match (&wanted, self.cfg.advertise) {
                (Some(name), _) => format!("interface {name} does not exist on this node"),
                (None, Some(adv)) => format!("no interface carries the advertise address {adv}"),
                (None, None) => "no interface given and no advertise address known".to_string(),
            };
            FloatingError::invalid(address, what)
        })
    }

    async fn add(&mut self, address: &str, until: Duration) -> Result<(), FloatingError> {
        let Some(k) = &self.kernel else {
            return Err(FloatingError::invalid(address, "no gate on this node"));
        };
        let c = shoal_api::floating::parse_address(address)
            .map_err(|e| FloatingError::invalid(address, e.message))?;
        let link = self.link_for(k, address).await?;
        let left = until.saturating_sub(self.now());
        k.gate.hold(c.addr, left).await?;
        let left = until.saturating_sub(self.now());
        k.addrs.add(&link, c.addr, c.prefix, left).await?;
        let deadline = monotonic_ns().saturating_add(left.as_nanos() as u64);
        if let Some(Err(e)) = self
            .kernel
            .as_mut()
            .and_then(|k| k.guard.as_mut())
            .map(|g| g.hold(address, &link.name, deadline))
        {
            tracing::warn!(error = %e, "telling the floating address guard");
        }
        self.placed.insert(
            address.to_string(),
            Placed {
                address: address.to_string(),
                link: link.name.clone(),
                ip: c.addr,
                prefix: c.prefix,
                gate_until: until,
            },
        );
        self.save();
        tracing::info!(address = %address, link = %link.name, "floating address added here");
        let ip = c.addr;
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for at in ANNOUNCE_AT {
                tokio::time::sleep_until(start + at).await;
                let l = link.clone();
                let r = tokio::task::spawn_blocking(move || announce(&l, ip)).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(address = %ip, error = %e, "announcing the floating address");
                }
            }
        });
        Ok(())
    }

    /// Moves the gate (and the address's lifetime) to the new deadline once the gate has less
    /// than half a lease left: every other renewal, not each (a refresh runs `nft`). The gate
    /// never runs past the lease: it only closes a little early if renewals stop.
    async fn extend(&mut self, address: &str, until: Duration) -> Result<(), FloatingError> {
        let now = self.now();
        let half = self.params.lease / 2;
        let (Some(k), Some(p)) = (self.kernel.as_mut(), self.placed.get_mut(address)) else {
            return Ok(());
        };
        if p.gate_until.saturating_sub(now) >= half {
            return Ok(());
        }
        let left = until.saturating_sub(now);
        k.gate.hold(p.ip, left).await?;
        p.gate_until = until;
        if let Some(g) = k.guard.as_mut() {
            let deadline = monotonic_ns().saturating_add(left.as_nanos() as u64);
            if let Err(e) = g.hold(address, &p.link, deadline) {
                tracing::warn!(error = %e, "telling the floating address guard");
            }
        }
        if let Some(link) = k.addrs.link_by_name(&p.link).await? {
            k.addrs.add(&link, p.ip, p.prefix, left).await?;
        }
        Ok(())
    }

    async fn drop_address(&mut self, address: &str) {
        let Some(p) = self.placed.remove(address) else {
            return;
        };
        if let Some(k) = self.kernel.as_mut() {
            if let Some(g) = k.guard.as_mut() {
                let _ = g.drop_address(address, &p.link);
            }
            match k.addrs.link_by_name(&p.link).await {
                Ok(Some(link)) => {
                    if let Err(e) = k.addrs.remove(&link, p.ip, p.prefix).await {
                        tracing::warn!(address = %address, error = %e, "removing the floating address");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(address = %address, error = %e, "finding the floating address's link")
                }
            }
            if let Err(e) = k.gate.unhold(p.ip).await {
                tracing::warn!(address = %address, error = %e, "closing the floating address's gate");
            }
        }
        self.save();
        tracing::info!(address = %address, "floating address removed here");
    }

    fn save(&self) {
        let list: Vec<&Placed> = self.placed.values().collect();
        let write = serde_json::to_vec(&list)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&self.cfg.state_file, b));
        if let Err(e) = write {
            tracing::warn!(file = %self.cfg.state_file.display(), error = %e, "writing the floating addresses this node holds");
        }
    }
}
