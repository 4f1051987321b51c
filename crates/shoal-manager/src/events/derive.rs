//! What event a change of a stored object is, as moby's `daemon/events.go` makes cluster events
//! from swarmkit's store changes: the type, action, actor ID and attributes (`name`, and for
//! updates what changed: `image.old/new`, `replicas.old/new`, `updatestate.old/new` of a
//! service; `availability`, `role`, `state`, `leader`, `reachability` of a node). Pure: the
//! journal's recorder runs it on every manager.

use shoal_api::kind;
use shoal_api::models::{
    Config, EventActor, EventMessage, EventMessageTypeEnum, Network, Node, Secret,
};
use shoal_api::objects::{Mode, StoredService, StoredVolume};
use shoal_store::Action;
use std::collections::HashMap;

/// The store kinds that make events: those moby watches (`daemon/cluster/noderunner.go`), and
/// shared volumes (issue 19), reported as the engine reports its volumes.
pub const KINDS: [&str; 6] = [
    kind::SERVICE,
    kind::NODE,
    kind::NETWORK,
    kind::SECRET,
    kind::CONFIG,
    kind::VOLUME,
];

/// The event one change makes, without its time and scope (the journal supplies both). None
/// for kinds that make no events, documents that do not decode, and updates that changed
/// nothing Docker shows (shoal's own bookkeeping: a service's `Shoal*` fields).
///
/// `object` is the object after the change (for a removal: as it was); `previous` is the object
/// an update replaced.
pub fn event_of(
    kind: &str,
    action: Action,
    object: &[u8],
    previous: Option<&[u8]>,
) -> Option<EventMessage> {
    let verb = match action {
        Action::Created => "create",
        Action::Updated => "update",
        Action::Deleted => "remove",
    };
    let update = action == Action::Updated;
    let (typ, id, attributes) = match kind {
        kind::SERVICE => {
            let new: StoredService = serde_json::from_slice(object).ok()?;
            let old = decode_previous::<StoredService>(update, previous)?;
            if let Some(old) = &old {
                if same(&old.service, &new.service, |s| s.version = None) {
                    return None;
                }
            }
            let attrs = service_attributes(&new, old.as_ref());
            (EventMessageTypeEnum::SERVICE, new.id().to_string(), attrs)
        }
        kind::NODE => {
            let new: Node = serde_json::from_slice(object).ok()?;
            let old = decode_previous::<Node>(update, previous)?;
            if let Some(old) = &old {
                if same(old, &new, |n| n.version = None) {
                    return None;
                }
            }
            let attrs = node_attributes(&new, old.as_ref());
            (EventMessageTypeEnum::NODE, new.id.clone()?, attrs)
        }
        kind::SECRET => {
            let new: Secret = serde_json::from_slice(object).ok()?;
            let old = decode_previous::<Secret>(update, previous)?;
            if old.is_some_and(|old| same(&old, &new, |s| s.version = None)) {
                return None;
            }
            let name = new.spec.as_ref().and_then(|s| s.name.clone());
            (EventMessageTypeEnum::SECRET, new.id?, named(name))
        }
        kind::CONFIG => {
            let new: Config = serde_json::from_slice(object).ok()?;
            let old = decode_previous::<Config>(update, previous)?;
            if old.is_some_and(|old| same(&old, &new, |s| s.version = None)) {
                return None;
            }
            let name = new.spec.as_ref().and_then(|s| s.name.clone());
            (EventMessageTypeEnum::CONFIG, new.id?, named(name))
        }
        kind::NETWORK => {
            let new: Network = serde_json::from_slice(object).ok()?;
            let old = decode_previous::<Network>(update, previous)?;
            if old.is_some_and(|old| old == new) {
                return None;
            }
            (EventMessageTypeEnum::NETWORK, new.id?, named(new.name))
        }
        kind::VOLUME => {
            let new: StoredVolume = serde_json::from_slice(object).ok()?;
            let old = decode_previous::<StoredVolume>(update, previous)?;
            if old.is_some_and(|old| old == new) {
                return None;
            }
            // The engine's words for its volumes: `create` and `destroy`; `update` when a
            // deploy changed a shared volume's options.
            let verb = if action == Action::Deleted {
                "destroy"
            } else {
                verb
            };
            let attrs = HashMap::from([("driver".to_string(), new.driver.clone())]);
            return Some(EventMessage {
                typ: Some(EventMessageTypeEnum::VOLUME),
                action: Some(verb.to_string()),
                actor: Some(EventActor {
                    id: Some(new.name),
                    attributes: Some(attrs),
                }),
                scope: None,
                time: None,
                time_nano: None,
            });
        }
        _ => return None,
    };
    Some(EventMessage {
        typ: Some(typ),
        action: Some(verb.to_string()),
        actor: Some(EventActor {
            id: Some(id),
            attributes: Some(attributes),
        }),
        scope: None,
        time: None,
        time_nano: None,
    })
}

/// The replaced object of an update (Some(None) when there is none to compare with); None
/// when it is there but does not decode.
fn decode_previous<T: serde::de::DeserializeOwned>(
    update: bool,
    previous: Option<&[u8]>,
) -> Option<Option<T>> {
    match (update, previous) {
        (true, Some(p)) => serde_json::from_slice(p).ok().map(Some),
        _ => Some(None),
    }
}

/// Whether two objects are the same once `forget` cleared what every write changes.
fn same<T: Clone + PartialEq>(a: &T, b: &T, forget: impl Fn(&mut T)) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    forget(&mut a);
    forget(&mut b);
    a == b
}

fn named(name: Option<String>) -> HashMap<String, String> {
    HashMap::from([("name".to_string(), name.unwrap_or_default())])
}

/// `name`, and for an update the image, replica count and update state that changed.
fn service_attributes(new: &StoredService, old: Option<&StoredService>) -> HashMap<String, String> {
    let mut attrs = HashMap::from([("name".to_string(), new.name().to_string())]);
    let Some(old) = old else { return attrs };
    let image = |s: &StoredService| {
        s.service
            .spec
            .as_ref()
            .and_then(|s| s.task_template.as_ref())
            .and_then(|t| t.container_spec.as_ref())
            .map(|c| c.image.clone().unwrap_or_default())
    };
    if let (Some(new_image), Some(old_image)) = (image(new), image(old)) {
        if new_image != old_image {
            attrs.insert("image.old".into(), old_image);
            attrs.insert("image.new".into(), new_image);
        }
    }
    let mode = |s: &StoredService| Mode::of(s.service.spec.as_ref().and_then(|s| s.mode.as_ref()));
    if let (Mode::Replicated(n), Mode::Replicated(o)) = (mode(new), mode(old)) {
        if n != o {
            attrs.insert("replicas.old".into(), o.to_string());
            attrs.insert("replicas.new".into(), n.to_string());
        }
    }
    let state = |s: &StoredService| {
        s.service
            .update_status
            .as_ref()
            .map(|u| u.state.map(|s| s.to_string()).unwrap_or_default())
    };
    match (state(old), state(new)) {
        (None, Some(n)) => {
            attrs.insert("updatestate.new".into(), n);
        }
        (Some(o), Some(n)) if o != n => {
            attrs.insert("updatestate.old".into(), o);
            attrs.insert("updatestate.new".into(), n);
        }
        _ => {}
    }
    attrs
}

/// `name` (the spec's, else the host name), and for an update the availability, role, state,
/// leadership and reachability that changed.
fn node_attributes(new: &Node, old: Option<&Node>) -> HashMap<String, String> {
    let name = new
        .spec
        .as_ref()
        .and_then(|s| s.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| new.description.as_ref().and_then(|d| d.hostname.clone()))
        .unwrap_or_default();
    let mut attrs = HashMap::from([("name".to_string(), name)]);
    let Some(old) = old else { return attrs };
    let mut changed = |what: &str, o: String, n: String| {
        if o != n {
            attrs.insert(format!("{what}.old"), o);
            attrs.insert(format!("{what}.new"), n);
        }
    };
    let availability = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.availability)
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    changed("availability", availability(old), availability(new));
    let role = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.role)
            .map(|r| r.to_string())
            .unwrap_or_default()
    };
    changed("role", role(old), role(new));
    let state = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.state)
            .map(|s| s.to_string())
            .unwrap_or_default()
    };
    changed("state", state(old), state(new));
    if let (Some(o), Some(n)) = (&old.manager_status, &new.manager_status) {
        let leader = |b: Option<bool>| b.unwrap_or(false).to_string();
        changed("leader", leader(o.leader), leader(n.leader));
        let reach = |r: Option<shoal_api::models::Reachability>| {
            r.map(|r| r.to_string()).unwrap_or_default()
        };
        changed("reachability", reach(o.reachability), reach(n.reachability));
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    /// (type, action, actor ID, attributes as sorted `k=v`) of the event, or None.
    fn summary(
        kind: &str,
        action: Action,
        object: &Value,
        previous: Option<&Value>,
    ) -> Option<(String, String, String, Vec<String>)> {
        let prev = previous.map(bytes);
        let e = event_of(kind, action, &bytes(object), prev.as_deref())?;
        let actor = e.actor.unwrap();
        let mut attrs: Vec<String> = actor
            .attributes
            .unwrap()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        attrs.sort();
        Some((
            e.typ.unwrap().to_string(),
            e.action.unwrap(),
            actor.id.unwrap(),
            attrs,
        ))
    }

    fn service(version: u64, image: &str, replicas: u64, state: Option<&str>) -> Value {
        let mut s = json!({
            "ID": "svc1", "Version": {"Index": version},
            "Spec": {"Name": "web",
                     "TaskTemplate": {"ContainerSpec": {"Image": image}},
                     "Mode": {"Replicated": {"Replicas": replicas}}},
            "ShoalSpecVersion": version,
        });
        if let Some(st) = state {
            s["UpdateStatus"] = json!({"State": st});
        }
        s
    }

    fn node(version: u64, availability: &str, role: &str, state: &str) -> Value {
        json!({
            "ID": "node1", "Version": {"Index": version},
            "Spec": {"Role": role, "Availability": availability},
            "Description": {"Hostname": "host-1"},
            "Status": {"State": state},
        })
    }

    fn row(
        t: &str,
        a: &str,
        id: &str,
        attrs: &[&str],
    ) -> Option<(String, String, String, Vec<String>)> {
        Some((
            t.into(),
            a.into(),
            id.into(),
            attrs.iter().map(|s| s.to_string()).collect(),
        ))
    }

    #[test]
    fn services_as_moby_reports_them() {
        let v1 = service(1, "busybox:1", 1, None);
        let cases: Vec<(&str, Action, Value, Option<Value>, _)> = vec![
            (
                "create",
                Action::Created,
                v1.clone(),
                None,
                row("service", "create", "svc1", &["name=web"]),
            ),
            (
                "image and replicas change",
                Action::Updated,
                service(2, "busybox:2", 3, None),
                Some(v1.clone()),
                row(
                    "service",
                    "update",
                    "svc1",
                    &[
                        "image.new=busybox:2",
                        "image.old=busybox:1",
                        "name=web",
                        "replicas.new=3",
                        "replicas.old=1",
                    ],
                ),
            ),
            (
                "an update starts",
                Action::Updated,
                service(2, "busybox:1", 1, Some("updating")),
                Some(v1.clone()),
                row(
                    "service",
                    "update",
                    "svc1",
                    &["name=web", "updatestate.new=updating"],
                ),
            ),
            (
                "an update completes",
                Action::Updated,
                service(3, "busybox:1", 1, Some("completed")),
                Some(service(2, "busybox:1", 1, Some("updating"))),
                row(
                    "service",
                    "update",
                    "svc1",
                    &[
                        "name=web",
                        "updatestate.new=completed",
                        "updatestate.old=updating",
                    ],
                ),
            ),
            (
                "a label: an update with nothing but the name",
                Action::Updated,
                {
                    let mut s = service(2, "busybox:1", 1, None);
                    s["Spec"]["Labels"] = json!({"k": "v"});
                    s
                },
                Some(v1.clone()),
                row("service", "update", "svc1", &["name=web"]),
            ),
            (
                "only shoal's bookkeeping changed",
                Action::Updated,
                {
                    let mut s = service(2, "busybox:1", 1, None);
                    s["ShoalCronNext"] = json!("2030-01-01T00:00:00Z");
                    s
                },
                Some(v1.clone()),
                None,
            ),
            (
                "remove",
                Action::Deleted,
                v1.clone(),
                None,
                row("service", "remove", "svc1", &["name=web"]),
            ),
        ];
        for (what, action, obj, prev, want) in cases {
            assert_eq!(
                summary(kind::SERVICE, action, &obj, prev.as_ref()),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn nodes_as_moby_reports_them() {
        let ready = node(1, "active", "worker", "ready");
        let cases: Vec<(&str, Action, Value, Option<Value>, _)> = vec![
            (
                "join",
                Action::Created,
                ready.clone(),
                None,
                row("node", "create", "node1", &["name=host-1"]),
            ),
            (
                "down",
                Action::Updated,
                node(2, "active", "worker", "down"),
                Some(ready.clone()),
                row(
                    "node",
                    "update",
                    "node1",
                    &["name=host-1", "state.new=down", "state.old=ready"],
                ),
            ),
            (
                "drained and promoted",
                Action::Updated,
                node(2, "drain", "manager", "ready"),
                Some(ready.clone()),
                row(
                    "node",
                    "update",
                    "node1",
                    &[
                        "availability.new=drain",
                        "availability.old=active",
                        "name=host-1",
                        "role.new=manager",
                        "role.old=worker",
                    ],
                ),
            ),
            (
                "the spec's name wins over the host name",
                Action::Deleted,
                {
                    let mut n = ready.clone();
                    n["Spec"]["Name"] = json!("named");
                    n
                },
                None,
                row("node", "remove", "node1", &["name=named"]),
            ),
            (
                "leadership moves",
                Action::Updated,
                {
                    let mut n = node(2, "active", "manager", "ready");
                    n["ManagerStatus"] = json!({"Leader": true, "Reachability": "reachable"});
                    n
                },
                Some({
                    let mut n = node(1, "active", "manager", "ready");
                    n["ManagerStatus"] = json!({"Reachability": "unreachable"});
                    n
                }),
                row(
                    "node",
                    "update",
                    "node1",
                    &[
                        "leader.new=true",
                        "leader.old=false",
                        "name=host-1",
                        "reachability.new=reachable",
                        "reachability.old=unreachable",
                    ],
                ),
            ),
            (
                "a write that changed nothing but the version",
                Action::Updated,
                node(2, "active", "worker", "ready"),
                Some(ready.clone()),
                None,
            ),
        ];
        for (what, action, obj, prev, want) in cases {
            assert_eq!(
                summary(kind::NODE, action, &obj, prev.as_ref()),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn secrets_configs_and_networks_carry_their_name() {
        let secret = json!({"ID": "sec1", "Version": {"Index": 1}, "Spec": {"Name": "db_pw", "Data": "aHVudGVyMg=="}});
        let config = json!({"ID": "cfg1", "Spec": {"Name": "nginx.conf", "Data": "eA=="}});
        let network =
            json!({"Id": "net1", "Name": "backend", "Driver": "overlay", "Scope": "swarm"});
        let mut labelled = secret.clone();
        labelled["Spec"]["Labels"] = json!({"a": "b"});
        labelled["Version"] = json!({"Index": 2});
        let volume = json!({"Id": "v1", "Name": "shared", "Driver": "shoal",
            "Options": {"type": "glusterfs", "device": "a,b:/gv0"},
            "CreatedAt": "2026-01-01T00:00:00Z", "UpdatedAt": "2026-01-01T00:00:00Z"});
        let mut volume_new = volume.clone();
        volume_new["Options"]["device"] = json!("a,c:/gv0");
        let cases: Vec<(&str, Action, Value, Option<Value>, _)> = vec![
            (
                kind::SECRET,
                Action::Created,
                secret.clone(),
                None,
                row("secret", "create", "sec1", &["name=db_pw"]),
            ),
            (
                kind::SECRET,
                Action::Updated,
                labelled,
                Some(secret.clone()),
                row("secret", "update", "sec1", &["name=db_pw"]),
            ),
            (
                kind::SECRET,
                Action::Deleted,
                secret.clone(),
                None,
                row("secret", "remove", "sec1", &["name=db_pw"]),
            ),
            (
                kind::CONFIG,
                Action::Created,
                config.clone(),
                None,
                row("config", "create", "cfg1", &["name=nginx.conf"]),
            ),
            (
                kind::CONFIG,
                Action::Deleted,
                config,
                None,
                row("config", "remove", "cfg1", &["name=nginx.conf"]),
            ),
            (
                kind::NETWORK,
                Action::Created,
                network.clone(),
                None,
                row("network", "create", "net1", &["name=backend"]),
            ),
            (
                kind::NETWORK,
                Action::Deleted,
                network,
                None,
                row("network", "remove", "net1", &["name=backend"]),
            ),
            (
                kind::VOLUME,
                Action::Created,
                volume.clone(),
                None,
                row("volume", "create", "shared", &["driver=shoal"]),
            ),
            (
                kind::VOLUME,
                Action::Updated,
                volume_new.clone(),
                Some(volume.clone()),
                row("volume", "update", "shared", &["driver=shoal"]),
            ),
            (
                kind::VOLUME,
                Action::Updated,
                volume.clone(),
                Some(volume.clone()),
                None,
            ),
            (
                kind::VOLUME,
                Action::Deleted,
                volume,
                None,
                row("volume", "destroy", "shared", &["driver=shoal"]),
            ),
            (kind::TASK, Action::Created, json!({"ID": "t1"}), None, None),
            (kind::SECRET, Action::Created, json!({"ID": 5}), None, None),
        ];
        for (kind, action, obj, prev, want) in cases {
            assert_eq!(
                summary(kind, action, &obj, prev.as_ref()),
                want,
                "{kind} {action:?} {obj}"
            );
        }
    }

    #[test]
    fn a_secret_never_reaches_its_event() {
        let secret = json!({"ID": "sec1", "Spec": {"Name": "db_pw", "Data": "aHVudGVyMg=="}});
        let e = event_of(kind::SECRET, Action::Created, &bytes(&secret), None).unwrap();
        let out = serde_json::to_string(&e).unwrap();
        assert!(!out.contains("aHVudGVyMg"), "{out}");
    }
}
