//! Network-attachment tasks (`docker run --network <swarm net>`): which are done with.

use shoal_api::objects::{is_terminal, StoredTask};

/// Whether an attachment task is done with: reported terminal by its node, or its node is
/// gone from the swarm (`known` says which nodes are members).
pub fn finished(t: &StoredTask, known: impl Fn(&str) -> bool) -> bool {
    t.is_attachment() && (is_terminal(t.state()) || !t.node_id().is_some_and(known))
}
