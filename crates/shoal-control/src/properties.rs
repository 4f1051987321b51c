//! Property tests of the whole decision (orchestrators, allocator, scheduler) over random
//! clusters: random nodes (ready or down; active, paused or drained; a zone label; holding the
//! services' image or not), random services (replicated or global, some constrained to a zone)
//! and random events (nodes going down and coming back, drains, task failures, scaling). Agents
//! are simulated as doing at once what they are asked. After every event the passes must settle within a few rounds, and the
//! settled plan must hold Swarm's invariants. proptest prints the failing case, shrunk, and
//! `PROPTEST_CASES` runs more of them.

use crate::decide::decide;
use crate::inputs::Inputs;
use crate::scheduler::constraints_met;
use crate::state::{node_schedulable, ClusterState};
use crate::testkit::{self, versioned};
use proptest::prelude::*;
use shoal_api::models::{NodeSpecAvailabilityEnum, NodeState, TaskState, TaskStatus};
use shoal_api::objects::{is_terminal, Mode, StoredTask};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
struct NodeGen {
    ready: bool,
    /// 0 active, 1 pause, 2 drain.
    availability: u8,
    zone: u8,
    /// The engine holds the services' image (`x`), so the scheduler prefers the node on a tie.
    has_image: bool,
}

#[derive(Debug, Clone)]
struct ServiceGen {
    global: bool,
    replicas: u8,
    /// `node.labels.zone==z<n>` (true) or `!=` (false).
    constraint: Option<(bool, u8)>,
}

#[derive(Debug, Clone)]
enum Event {
    NodeDown(usize),
    NodeUp(usize),
    Drain(usize),
    Activate(usize),
    /// The running task at this index (modulo) fails.
    TaskFails(usize),
    Scale(usize, u8),
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        prop::bool::weighted(0.85),
        prop::sample::select(vec![0u8, 0, 0, 1, 2]),
        0u8..3,
        prop::bool::weighted(0.4),
    )
        .prop_map(|(ready, availability, zone, has_image)| NodeGen {
            ready,
            availability,
            zone,
            has_image,
        })
}

fn service_gen() -> impl Strategy<Value = ServiceGen> {
    (
        prop::bool::weighted(0.3),
        0u8..7,
        prop::option::weighted(0.4, (any::<bool>(), 0u8..4)),
    )
        .prop_map(|(global, replicas, constraint)| ServiceGen {
            global,
            replicas,
            constraint,
        })
}

fn event_gen() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0usize..8).prop_map(Event::NodeDown),
        (0usize..8).prop_map(Event::NodeUp),
        (0usize..8).prop_map(Event::Drain),
        (0usize..8).prop_map(Event::Activate),
        (0usize..64).prop_map(Event::TaskFails),
        (0usize..5, 0u8..7).prop_map(|(s, n)| Event::Scale(s, n)),
    ]
}

fn node_json(i: usize, g: &NodeGen) -> String {
    let availability = ["active", "pause", "drain"][g.availability as usize % 3];
    let state = if g.ready { "ready" } else { "down" };
    format!(
        r#"{{"ID":"n{i}","Spec":{{"Role":"worker","Availability":"{availability}","Labels":{{"zone":"z{}"}}}},"Status":{{"State":"{state}"}}}}"#,
        g.zone
    )
}

fn service_json(i: usize, g: &ServiceGen) -> String {
    let mode = if g.global {
        r#"{"Global":{}}"#.to_string()
    } else {
        format!(r#"{{"Replicated":{{"Replicas":{}}}}}"#, g.replicas)
    };
    let constraints = match g.constraint {
        Some((true, z)) => format!(r#"["node.labels.zone==z{z}"]"#),
        Some((false, z)) => format!(r#"["node.labels.zone!=z{z}"]"#),
        None => "[]".into(),
    };
    format!(
        r#"{{"Name":"s{i}","Mode":{mode},"TaskTemplate":{{"ContainerSpec":{{"Image":"x"}},"RestartPolicy":{{"Delay":0}},"Placement":{{"Constraints":{constraints}}}}}}}"#
    )
}

/// The cluster: the state, the time and the version counter the simulated store hands out.
struct World {
    state: ClusterState,
    now: chrono::DateTime<chrono::Utc>,
    version: u64,
    seed: u64,
}

impl World {
    fn new(nodes: &[NodeGen], services: &[ServiceGen]) -> World {
        let mut state = ClusterState::default();
        for (i, g) in nodes.iter().enumerate() {
            state.nodes.push(versioned(testkit::node(&node_json(i, g))));
            if g.has_image {
                let images = shoal_api::images::StoredNodeImages {
                    node: format!("n{i}"),
                    images: vec![shoal_api::images::NodeImage {
                        id: format!("sha256:{}", "e".repeat(64)),
                        repo_tags: vec!["x:latest".into()],
                        ..Default::default()
                    }],
                };
                state.node_images.insert(format!("n{i}"), versioned(images));
            }
        }
        for (i, g) in services.iter().enumerate() {
            let id = format!("s{i}");
            let svc = testkit::service(&id, &service_json(i, g));
            state.services.insert(id, versioned(svc));
        }
        World {
            state,
            now: testkit::t0(),
            version: 1,
            seed: 1,
        }
    }

    /// Passes until one writes nothing, each followed by the agents' work; how many wrote.
    fn settle(&mut self) -> Option<usize> {
        for round in 0..12 {
            self.seed += 1;
            let d = decide(&self.state, &Inputs::new(self.now, self.seed));
            let wrote = !d.is_empty();
            testkit::apply(&mut self.state, d, &mut self.version);
            let acted = self.agents();
            if !wrote && !acted {
                return Some(round);
            }
            self.now += chrono::Duration::seconds(1);
        }
        None
    }

    /// Agents on ready nodes start what is assigned to them and stop what they are told to.
    fn agents(&mut self) -> bool {
        let ready: BTreeSet<String> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.obj.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY))
            .filter_map(|n| n.obj.id.clone())
            .collect();
        let mut acted = false;
        for t in &mut self.state.tasks {
            let on_ready = t.obj.node_id().is_some_and(|n| ready.contains(n));
            let state = t.obj.state();
            let next = if !on_ready || is_terminal(state) {
                None
            } else if !t.obj.meant_to_run() {
                Some(TaskState::SHUTDOWN)
            } else if state == TaskState::ASSIGNED {
                Some(TaskState::RUNNING)
            } else {
                None
            };
            if let Some(next) = next {
                set_state(t, next, &mut self.version);
                acted = true;
            }
        }
        acted
    }

    fn set_node(&mut self, i: usize, f: impl Fn(&mut shoal_api::models::Node)) {
        let len = self.state.nodes.len();
        if len > 0 {
            f(&mut self.state.nodes[i % len].obj);
        }
    }

    fn apply_event(&mut self, e: &Event) {
        match *e {
            Event::NodeDown(i) => self.set_node(i, |n| set_node_state(n, NodeState::DOWN)),
            Event::NodeUp(i) => self.set_node(i, |n| set_node_state(n, NodeState::READY)),
            Event::Drain(i) => self.set_node(i, |n| set_availability(n, "drain")),
            Event::Activate(i) => self.set_node(i, |n| set_availability(n, "active")),
            Event::TaskFails(i) => {
                let running: Vec<usize> = (0..self.state.tasks.len())
                    .filter(|&k| self.state.tasks[k].obj.state() == TaskState::RUNNING)
                    .collect();
                if !running.is_empty() {
                    let k = running[i % running.len()];
                    set_state(
                        &mut self.state.tasks[k],
                        TaskState::FAILED,
                        &mut self.version,
                    );
                }
            }
            Event::Scale(s, n) => {
                if let Some(svc) = self.state.services.get_mut(&format!("s{s}")) {
                    if let Some(Mode::Replicated(_)) = Some(svc.obj.mode()) {
                        let spec = svc.obj.service.spec.get_or_insert_with(Default::default);
                        if let Some(r) = spec.mode.as_mut().and_then(|m| m.replicated.as_mut()) {
                            r.replicas = Some(n as i64);
                        }
                    }
                }
            }
        }
        self.now += chrono::Duration::seconds(10);
    }
}

fn set_state(t: &mut crate::state::Versioned<StoredTask>, s: TaskState, version: &mut u64) {
    *version += 1;
    t.version = *version;
    t.obj.task.status = Some(TaskStatus {
        state: Some(s),
        ..t.obj.task.status.clone().unwrap_or_default()
    });
}

fn set_node_state(n: &mut shoal_api::models::Node, s: NodeState) {
    n.status.get_or_insert_with(Default::default).state = Some(s);
}

fn set_availability(n: &mut shoal_api::models::Node, a: &str) {
    n.spec.get_or_insert_with(Default::default).availability =
        serde_json::from_value(serde_json::json!(a)).ok();
}

/// Swarm's invariants over a settled state; an error says which one broke.
fn check(state: &ClusterState) -> Result<(), String> {
    let nodes: BTreeMap<&str, &shoal_api::models::Node> = state
        .nodes
        .iter()
        .filter_map(|n| Some((n.obj.id.as_deref()?, &n.obj)))
        .collect();
    let live = |t: &StoredTask| t.meant_to_run() && !is_terminal(t.state());
    for svc in state.services.values() {
        let s = &svc.obj;
        let tasks: Vec<&StoredTask> = state
            .tasks
            .iter()
            .map(|t| &t.obj)
            .filter(|t| t.service_id() == s.id() && live(t))
            .collect();
        let eligible: Vec<&str> = nodes
            .iter()
            .filter(|(_, n)| node_schedulable(n) && constraints_met(s, n))
            .map(|(id, _)| *id)
            .collect();
        match s.mode() {
            Mode::Replicated(n) => {
                let mut per_slot: BTreeMap<u64, usize> = BTreeMap::new();
                for t in &tasks {
                    *per_slot.entry(t.slot()).or_default() += 1;
                }
                let expected: BTreeMap<u64, usize> = (1..=n).map(|slot| (slot, 1)).collect();
                if per_slot != expected {
                    return Err(format!(
                        "{}: {n} replicas, live tasks per slot {per_slot:?}",
                        s.name()
                    ));
                }
            }
            Mode::Global => {
                let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
                for t in &tasks {
                    *per_node.entry(t.node_id().unwrap_or("-")).or_default() += 1;
                }
                if let Some((n, c)) = per_node.iter().find(|(_, c)| **c > 1) {
                    return Err(format!("{}: {c} live tasks on node {n}", s.name()));
                }
                for n in &eligible {
                    if !per_node.contains_key(n) {
                        return Err(format!("{}: eligible node {n} has no task", s.name()));
                    }
                }
            }
            _ => {}
        }
        for t in &tasks {
            match t.node_id() {
                Some(n) => {
                    let node = nodes.get(n).ok_or(format!("task on unknown node {n}"))?;
                    if !constraints_met(s, node) {
                        return Err(format!(
                            "{}: task {} on {n} breaks a constraint",
                            s.name(),
                            t.id()
                        ));
                    }
                    let down = node.status.as_ref().and_then(|x| x.state) == Some(NodeState::DOWN);
                    let drained = node.spec.as_ref().and_then(|x| x.availability)
                        == Some(NodeSpecAvailabilityEnum::DRAIN);
                    if matches!(s.mode(), Mode::Replicated(_)) && (down || drained) {
                        return Err(format!(
                            "{}: task {} left on down or drained {n}",
                            s.name(),
                            t.id()
                        ));
                    }
                }
                None => {
                    // Left pending: only when no node fits, every node counted under a filter.
                    if !eligible.is_empty() && !matches!(s.mode(), Mode::Global) {
                        return Err(format!(
                            "{}: task {} pending with {eligible:?} eligible",
                            s.name(),
                            t.id()
                        ));
                    }
                    let err = t
                        .task
                        .status
                        .as_ref()
                        .and_then(|x| x.err.clone())
                        .unwrap_or_default();
                    let counted: usize = err
                        .split(|c: char| !c.is_ascii_digit())
                        .filter_map(|w| w.parse::<usize>().ok())
                        .sum();
                    if !err.starts_with("no suitable node") || counted != nodes.len() {
                        return Err(format!(
                            "{}: pending reason {err:?} for {} nodes",
                            s.name(),
                            nodes.len()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn settled_plans_keep_swarms_invariants(
        nodes in prop::collection::vec(node_gen(), 0..8),
        services in prop::collection::vec(service_gen(), 1..5),
        events in prop::collection::vec(event_gen(), 0..12),
    ) {
        let mut world = World::new(&nodes, &services);
        let rounds = world.settle();
        prop_assert!(rounds.is_some(), "never settled from empty");
        check(&world.state).map_err(TestCaseError::fail)?;
        for (i, e) in events.iter().enumerate() {
            world.apply_event(e);
            let rounds = world.settle();
            prop_assert!(rounds.is_some(), "never settled after event {i} {e:?}");
            check(&world.state).map_err(|m| TestCaseError::fail(format!("after event {i} {e:?}: {m}")))?;
        }
    }

    #[test]
    fn the_same_state_and_inputs_give_the_same_plan(
        nodes in prop::collection::vec(node_gen(), 1..6),
        services in prop::collection::vec(service_gen(), 2..5),
        seed in any::<u64>(),
    ) {
        // Two states built apart (a clone would share a hash map's seed, and so its order).
        let world = World::new(&nodes, &services);
        let again = World::new(&nodes, &services);
        let inputs = Inputs::new(world.now, seed);
        let a = format!("{:?}", decide(&world.state, &inputs));
        let b = format!("{:?}", decide(&again.state, &inputs));
        prop_assert_eq!(a, b);
    }
}

#[test]
fn draining_a_node_moves_its_replicas_to_the_node_left() {
    let nodes = [
        NodeGen {
            ready: true,
            availability: 0,
            zone: 0,
            has_image: false,
        },
        NodeGen {
            ready: true,
            availability: 0,
            zone: 1,
            has_image: true,
        },
    ];
    let services = [ServiceGen {
        global: false,
        replicas: 2,
        constraint: None,
    }];
    let mut world = World::new(&nodes, &services);
    assert!(world.settle().is_some());
    check(&world.state).unwrap();
    world.apply_event(&Event::Drain(0));
    assert!(world.settle().is_some());
    check(&world.state).unwrap();
    let on_n1 = world
        .state
        .tasks
        .iter()
        .filter(|t| t.obj.meant_to_run() && t.obj.node_id() == Some("n1"))
        .count();
    assert_eq!(on_n1, 2, "both replicas move to the node left");
}
