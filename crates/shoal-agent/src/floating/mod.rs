//! Floating addresses on this node (issue 20): the holder's side of the lease the raft leader
//! grants. `holder` runs the lease (`shoal_control::vip` decides) and carries out its plan:
//! `kernel` adds and removes the address by netlink with a lifetime, `gate` is the nftables
//! watchdog that stops this node answering for an address the moment its lease runs out (even
//! when shoal is dead), `announce` sends gratuitous ARP / unsolicited neighbour advertisements; `guard` is a child
//! process that removes an address at its deadline, also after the daemon was killed.
pub mod announce;
pub mod error;
pub mod gate;
pub mod guard;
pub mod holder;
pub mod kernel;
pub use error::FloatingError;
