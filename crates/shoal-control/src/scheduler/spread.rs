//! The indexed spread: for a service with only constraints, the eligible nodes ordered by
//! (tasks of the service, tasks overall, lacks the task's image), so each placement costs
//! O(log nodes).

use super::filter::constraints_met;
use crate::state::{node_schedulable, ClusterState};
use shoal_api::objects::StoredService;
use std::collections::BTreeSet;

/// Where one service's tasks of one image may go during a [`super::schedule`] call.
pub(super) struct Candidates {
    /// Eligible nodes ordered by (tasks of this service, tasks overall, the node lacks the
    /// image, position in the node list). The counts of an entry may be stale (a task of
    /// another service, or of this service with another image, went to the node since):
    /// counts only grow, so a stale entry sorts too early and is fixed when it reaches the
    /// front.
    order: BTreeSet<(usize, usize, bool, usize)>,
    /// Per node position: true if the node's engine does not hold the tasks' image.
    lacks: Vec<bool>,
    /// Nodes not available for new tasks, and nodes failing the constraints (for the message).
    pub(super) unavailable: usize,
    pub(super) constrained: usize,
}

impl Candidates {
    /// The eligible nodes, from the per-position counts of the service's tasks (`mine`), of
    /// all tasks (`load`), and which nodes hold the image (`holds`).
    pub(super) fn new(
        svc: &StoredService,
        state: &ClusterState,
        mine: &[usize],
        load: &[usize],
        holds: &[bool],
    ) -> Self {
        let mut c = Candidates {
            order: BTreeSet::new(),
            lacks: holds.iter().map(|h| !h).collect(),
            unavailable: 0,
            constrained: 0,
        };
        for (pos, n) in state.nodes.iter().enumerate() {
            if !node_schedulable(&n.obj) {
                c.unavailable += 1;
            } else if !constraints_met(svc, &n.obj) {
                c.constrained += 1;
            } else {
                c.order.insert((mine[pos], load[pos], c.lacks[pos], pos));
            }
        }
        c
    }

    /// The eligible node with the fewest tasks of this service, then the fewest overall, then
    /// one that holds the image, then the first in the node list: the node a scan over every
    /// node would pick.
    pub(super) fn best(&mut self, mine: &[usize], load: &[usize]) -> Option<usize> {
        loop {
            let first = *self.order.first()?;
            let (seen_mine, seen_load, lacks, pos) = first;
            if seen_mine == mine[pos] && seen_load == load[pos] {
                return Some(pos);
            }
            self.order.remove(&first);
            self.order.insert((mine[pos], load[pos], lacks, pos));
        }
    }

    /// Places a task of this service on `pos` (as returned by [`Candidates::best`]): counts it
    /// in `mine` and `load` and moves the node's entry.
    pub(super) fn take(&mut self, pos: usize, mine: &mut [usize], load: &mut [usize]) {
        let lacks = self.lacks[pos];
        self.order.remove(&(mine[pos], load[pos], lacks, pos));
        mine[pos] += 1;
        load[pos] += 1;
        self.order.insert((mine[pos], load[pos], lacks, pos));
    }
}
