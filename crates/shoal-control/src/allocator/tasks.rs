//! Addresses for tasks: each task gets one address on every network its service joins before
//! it may be scheduled; a network-attachment task gets its one address and is assigned at once.

use super::{attach_task, service_networks, Ipam};
use crate::state::ClusterState;
use shoal_api::models::TaskState;
use shoal_api::objects::StoredTask;
use shoal_api::ApiError;

/// Leaves a task pending with the reason its address could not be allocated (written once,
/// so an unchanged reason does not rewrite the task every pass).
fn pending_allocation(t: &mut StoredTask, e: ApiError, now: &str) {
    let s = t.task.status.get_or_insert_with(Default::default);
    if s.err.as_deref() != Some(e.message.as_str()) {
        s.state = Some(TaskState::PENDING);
        s.message = Some("pending address allocation".into());
        s.err = Some(e.message);
        s.timestamp = Some(now.to_string());
    }
}

/// Gives a network attachment its address and, as its node is known from the start, marks it
/// assigned; false (left pending with the reason) when the network is full.
fn allocate_attachment(t: &mut StoredTask, ipam: &mut Ipam, now: &str) -> bool {
    for a in t
        .networks_attachments
        .iter_mut()
        .filter(|a| a.addresses.is_empty())
    {
        match ipam.allocate(&a.network.id) {
            Ok(addr) => a.addresses.push(addr),
            Err(e) => {
                pending_allocation(t, e, now);
                return false;
            }
        }
    }
    let s = t.task.status.get_or_insert_with(Default::default);
    s.state = Some(TaskState::ASSIGNED);
    s.message = Some("network attachment".into());
    s.err = None;
    s.timestamp = Some(now.to_string());
    false
}

/// Gives a task its network addresses if it lacks them; false (task left pending with the
/// reason) when a network has no free address.
pub fn allocate(t: &mut StoredTask, state: &ClusterState, ipam: &mut Ipam, now: &str) -> bool {
    if t.is_attachment() {
        return allocate_attachment(t, ipam, now);
    }
    let Some(svc) = state.services.get(t.service_id()) else {
        return false;
    };
    let wanted = service_networks(&svc.obj, state).len();
    if t.networks_attachments.len() == wanted {
        return true;
    }
    match attach_task(t, state, ipam) {
        Ok(()) => true,
        Err(e) => {
            pending_allocation(t, e, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{versioned, T0};
    use shoal_api::models::{Network, Node, ServiceSpec};
    use shoal_api::objects::StoredService;

    #[test]
    fn a_task_without_addresses_waits_instead_of_being_scheduled() {
        let net: Network = serde_json::from_str(
            r#"{"Id":"n","Name":"tiny","IPAM":{"Config":[{"Subnet":"10.9.0.0/30"}]}}"#,
        )
        .unwrap();
        let node: Node = serde_json::from_str(r#"{"ID":"node1","Spec":{"Role":"manager","Availability":"active"},"Status":{"State":"ready"}}"#).unwrap();
        let spec: ServiceSpec = serde_json::from_str(r#"{"Name":"s","TaskTemplate":{"ContainerSpec":{"Image":"x"},"Networks":[{"Target":"n"}]}}"#).unwrap();
        let mut svc = StoredService::default();
        svc.service.id = Some("s".into());
        svc.service.spec = Some(spec);
        let mut state = ClusterState {
            networks: vec![versioned(net)],
            nodes: vec![versioned(node)],
            ..Default::default()
        };
        state.services.insert("s".into(), versioned(svc.clone()));
        let mut ipam = Ipam::from_state(&state);
        let mut a = crate::orchestrator::new_task(&svc, 1, None, vec![]);
        let mut b = crate::orchestrator::new_task(&svc, 2, None, vec![]);
        assert!(allocate(&mut a, &state, &mut ipam, T0));
        assert_eq!(a.networks_attachments[0].addresses, vec!["10.9.0.2/30"]);
        assert!(
            !allocate(&mut b, &state, &mut ipam, T0),
            "a task with no address must not be scheduled"
        );
        assert_eq!(b.state(), TaskState::PENDING);
        assert!(b
            .task
            .status
            .as_ref()
            .and_then(|s| s.err.as_deref())
            .unwrap_or("")
            .contains("full"));
        let mut ready = vec![&mut a];
        assert_eq!(crate::scheduler::schedule(&state, &mut ready, T0), 1);
        assert_eq!(a.node_id(), Some("node1"));
    }
}
