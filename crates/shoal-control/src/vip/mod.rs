//! Floating addresses (issue 20): which node holds each address, under a lease the raft leader
//! grants and the holder renews, so that no two nodes ever hold one address, also during a
//! partition. `lease` is the pure logic; `sim` (tests only) runs it in a seeded discrete-event
//! simulation with drifting clocks, message delay and loss, partitions, crashes and leader
//! changes, checking the invariant at every event. The argument is in `docs/vip-lease.md`.

pub mod lease;
#[cfg(test)]
mod sim;

pub use lease::{
    holder_step, leader_step, on_committed, on_grant, on_release, on_renew, on_reply,
    on_write_failed, release, AddrLease, Grant, Held, HolderAction, HolderPlan, HolderState,
    LeaderPlan, LeaderState, LeaseParams, NodeView, Renew, RenewReply, Unheld,
};
