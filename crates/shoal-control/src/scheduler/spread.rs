//! The indexed spread: for a service with only constraints, the eligible nodes ordered by
//! (tasks of the service, tasks overall), so each placement costs O(log nodes).

use super::filter::constraints_met;
use crate::state::{node_schedulable, ClusterState};
use shoal_api::objects::StoredService;
use std::collections::BTreeSet;

/// Where one service's tasks may go during a [`schedule`] call.
pub(super) struct Candidates {
    /// Eligible nodes ordered by (tasks of this service, tasks overall, position in the node
    /// list). The overall count of an entry may be stale (another service placed a task on the
    /// node since): counts only grow, so a stale entry sorts too early and is fixed when it
    /// reaches the front.
    order: BTreeSet<(usize, usize, usize)>,
    /// Tasks of this service per node position.
    mine: Vec<usize>,
    /// Nodes not available for new tasks, and nodes failing the constraints (for the message).
    pub(super) unavailable: usize,
    pub(super) constrained: usize,
}

impl Candidates {
    pub(super) fn new(
        svc: &StoredService,
        state: &ClusterState,
        mine: Vec<usize>,
        load: &[usize],
    ) -> Self {
        let mut c = Candidates {
            order: BTreeSet::new(),
            mine,
            unavailable: 0,
            constrained: 0,
        };
        for (pos, n) in state.nodes.iter().enumerate() {
            if !node_schedulable(&n.obj) {
                c.unavailable += 1;
            } else if !constraints_met(svc, &n.obj) {
                c.constrained += 1;
            } else {
                c.order.insert((c.mine[pos], load[pos], pos));
            }
        }
        c
    }

    /// The eligible node with the fewest tasks of this service, then the fewest overall, then
    /// the first in the node list: the node a scan over every node would pick.
    pub(super) fn best(&mut self, load: &[usize]) -> Option<usize> {
        loop {
            let first = *self.order.first()?;
            let (_, seen, pos) = first;
            if seen == load[pos] {
                return Some(pos);
            }
            self.order.remove(&first);
            self.order.insert((self.mine[pos], load[pos], pos));
        }
    }

    /// Records a task of this service placed on `pos` (whose overall count is already raised).
    pub(super) fn placed(&mut self, pos: usize, old_load: usize, load: &[usize]) {
        self.order.remove(&(self.mine[pos], old_load, pos));
        self.mine[pos] += 1;
        self.order.insert((self.mine[pos], load[pos], pos));
    }
}
