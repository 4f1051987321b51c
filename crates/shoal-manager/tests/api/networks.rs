//! `/networks` with swarm scope: overlay networks live in the store. Networks of other scopes
//! belong to the engine (proxied, and not the subject here).

use crate::harness::*;
use serde_json::{json, Value};

fn swarm_names(list: &Value) -> Vec<&str> {
    let mut v: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["Scope"] == "swarm")
        .map(|n| n["Name"].as_str().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn create_answers_201_and_the_network_reads_back() {
    let n = Node::manager().await;
    let a = n
        .post(
            "/networks/create",
            json!({"Name": "backend", "Driver": "overlay", "Attachable": true,
                   "Labels": {"com.docker.stack.namespace": "demo"}}),
        )
        .await;
    let id = a.ok(201)["Id"].as_str().unwrap().to_string();
    assert_eq!(a.json["Warning"], "");
    let net = n.read(&format!("/networks/{id}")).await;
    assert_eq!(net["Id"], id.as_str());
    assert_eq!(net["Name"], "backend");
    assert_eq!(net["Scope"], "swarm");
    assert_eq!(net["Driver"], "overlay");
    assert_eq!(net["Attachable"], true);
    assert_eq!(net["Ingress"], false);
    assert_eq!(net["Labels"]["com.docker.stack.namespace"], "demo");
    let subnet = net["IPAM"]["Config"][0]["Subnet"].as_str().unwrap();
    assert!(
        subnet.starts_with("10.0.") && subnet.ends_with("/24"),
        "{subnet}"
    );
    assert_ne!(subnet, "10.0.0.0/24", "the ingress network holds that one");
    assert!(net["IPAM"]["Config"][0]["Gateway"].is_string());
    assert_eq!(net["Peers"], json!([]), "no task on it yet");
    assert_eq!(n.read("/networks/backend").await, net);

    assert_eq!(
        swarm_names(&n.read("/networks").await),
        ["backend", "ingress"]
    );
    let f = |f: Value| format!("/networks?filters={}", enc(&f.to_string()));
    assert_eq!(
        swarm_names(&n.read(&f(json!({"name": ["back"]}))).await),
        ["backend"]
    );
    assert_eq!(
        swarm_names(&n.read(&f(json!({"scope": ["swarm"]}))).await),
        ["backend", "ingress"]
    );
    assert_eq!(
        swarm_names(
            &n.read(&f(json!({"label": ["com.docker.stack.namespace=demo"]})))
                .await
        ),
        ["backend"]
    );
    assert!(swarm_names(&n.read(&f(json!({"scope": ["local"]}))).await).is_empty());
}

#[tokio::test]
async fn create_takes_the_subnet_and_gateway_given_and_lowercase_keys() {
    let n = Node::manager().await;
    let id = n
        .post(
            "/networks/create",
            json!({"name": "data", "driver": "overlay",
                   "ipam": {"config": [{"subnet": "10.20.0.0/16", "gateway": "10.20.0.254"}]}}),
        )
        .await
        .ok(201)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let net = n.read(&format!("/networks/{id}")).await;
    assert_eq!(net["Name"], "data");
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "10.20.0.0/16");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "10.20.0.254");
}

#[tokio::test]
async fn create_refusals_change_nothing() {
    let n = Node::manager().await;
    n.post(
        "/networks/create",
        json!({"Name": "taken", "Driver": "overlay",
               "IPAM": {"Config": [{"Subnet": "10.50.0.0/24"}]}}),
    )
    .await
    .ok(201);
    let before = n.read("/networks").await;
    let overlay = |extra: Value| {
        let mut v = json!({"Name": "fresh", "Driver": "overlay"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    };
    let cases: Vec<(String, u16, &[&str])> = vec![
        ("{".into(), 400, &["invalid JSON"]),
        ("".into(), 400, &["empty"]),
        (
            overlay(json!({"Name": 3})),
            400,
            &["Name", "invalid type: integer"],
        ),
        (
            overlay(json!({"Attachable": "yes"})),
            400,
            &["Attachable", "boolean"],
        ),
        (
            overlay(json!({"IPAM": {"Config": {"Subnet": "x"}}})),
            400,
            &["IPAM.Config", "sequence"],
        ),
        (
            overlay(json!({"Name": "bad name"})),
            400,
            &["Name", "DNS name"],
        ),
        (overlay(json!({"Ingress": true})), 400, &["Ingress"]),
        (
            overlay(json!({"Driver": "macvlan", "Scope": "swarm"})),
            400,
            &["Driver", "macvlan", "overlay"],
        ),
        (
            overlay(json!({"IPAM": {"Config": [{"Subnet": "10.60.0.0"}]}})),
            400,
            &["IPAM.Config[0].Subnet"],
        ),
        (
            overlay(json!({"IPAM": {"Config": [{"Subnet": "10.60.0.0/30"}]}})),
            400,
            &["IPAM.Config[0].Subnet", "too small"],
        ),
        (
            overlay(
                json!({"IPAM": {"Config": [{"Subnet": "10.60.0.0/24", "Gateway": "10.61.0.1"}]}}),
            ),
            400,
            &["IPAM.Config[0].Gateway", "not in subnet"],
        ),
        (
            overlay(json!({"IPAM": {"Config": [{"Subnet": "10.50.0.128/25"}]}})),
            403,
            &["Pool overlaps", "taken"],
        ),
        (
            overlay(json!({"Name": "taken"})),
            409,
            &["network with name taken already exists"],
        ),
        (
            overlay(json!({"Name": "TAKEN"})),
            409,
            &["network with name TAKEN already exists"],
        ),
    ];
    for (body, status, parts) in &cases {
        let a = n.post_raw("/networks/create", body.clone()).await;
        assert_eq!(a.status.as_u16(), *status, "{body}: {}", a.text);
        a.refused(*status, parts);
        assert_eq!(
            n.read("/networks").await,
            before,
            "{body} changed the networks"
        );
    }
}

#[tokio::test]
async fn remove_refuses_networks_in_use_and_the_ingress() {
    let n = Node::manager().await;
    for name in ["used", "free"] {
        n.post(
            "/networks/create",
            json!({"Name": name, "Driver": "overlay"}),
        )
        .await
        .ok(201);
    }
    let mut svc = spec("web");
    svc["TaskTemplate"]["Networks"] = json!([{"Target": "used"}]);
    let web = n.service(svc).await;
    let used = n.read("/networks/used").await["Id"]
        .as_str()
        .unwrap()
        .to_string();

    let a = n.delete("/networks/free").await;
    assert_eq!(a.status.as_u16(), 204, "{}", a.text);
    assert_eq!(swarm_names(&n.read("/networks").await), ["ingress", "used"]);

    let before = n.read("/networks").await;
    n.delete("/networks/used").await.refused(
        400,
        &[&format!(
            "rpc error: code = FailedPrecondition desc = network {used} is in use by service {web}"
        )],
    );
    n.delete("/networks/ingress")
        .await
        .refused(403, &["ingress"]);
    assert_eq!(n.read("/networks").await, before);
}

#[tokio::test]
async fn a_service_on_a_network_gets_a_vip_in_its_subnet() {
    let n = Node::manager().await;
    let net = n
        .post(
            "/networks/create",
            json!({"Name": "appnet", "Driver": "overlay",
                   "IPAM": {"Config": [{"Subnet": "10.70.0.0/24"}]}}),
        )
        .await
        .ok(201)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut svc = spec("web");
    svc["TaskTemplate"]["Networks"] = json!([{"Target": "appnet", "Aliases": ["w"]}]);
    let id = n.service(svc).await;
    let s = n.read(&format!("/services/{id}")).await;
    assert_eq!(
        s["Spec"]["TaskTemplate"]["Networks"][0]["Target"],
        net.as_str(),
        "a network name is stored as its ID"
    );
    let vip = &s["Endpoint"]["VirtualIPs"][0];
    assert_eq!(vip["NetworkID"], net.as_str());
    assert!(
        vip["Addr"].as_str().unwrap().starts_with("10.70.0."),
        "{vip}"
    );
}

#[tokio::test]
async fn bad_filters_are_refused() {
    let n = Node::manager().await;
    for (raw, parts) in [
        ("{", &["invalid filter", "not JSON"][..]),
        ("true", &["invalid filter", "object"][..]),
        ("{\"colour\":[\"red\"]}", &["invalid filter 'colour'"][..]),
    ] {
        n.get(&format!("/networks?filters={}", enc(raw)))
            .await
            .refused(400, parts);
    }
}

/// Issue 17: an overlay on loopback, link-local or a network the manager's host routes to
/// would shadow it (or be shadowed): refused with the range or route named, nothing written.
/// The host's routes are this machine's own, read from /proc/net/route as the manager reads them.
#[tokio::test]
async fn subnets_on_reserved_ranges_or_host_routes_are_refused() {
    let n = Node::manager().await;
    let before = n.read("/networks").await;
    let create = |subnet: &str| json!({"Name": "shadow", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": subnet}]}});
    n.post("/networks/create", create("127.0.0.0/24"))
        .await
        .refused(
            400,
            &["IPAM.Config[0].Subnet", "127.0.0.0/8, the loopback range"],
        );
    n.post("/networks/create", create("169.254.10.0/24"))
        .await
        .refused(
            400,
            &[
                "IPAM.Config[0].Subnet",
                "169.254.0.0/16, the link-local range",
            ],
        );
    let routes = shoal_control::allocator::parse_proc_net_route(
        &std::fs::read_to_string("/proc/net/route").unwrap_or_default(),
    );
    match routes.first() {
        Some(r) => {
            let want = format!("the manager host's route to {} (dev {})", r.dest, r.device);
            n.post("/networks/create", create(&r.dest.to_string()))
                .await
                .refused(400, &["IPAM.Config[0].Subnet", &want]);
        }
        None => eprintln!(
            "this host has no route but the default one: the host-route case is not exercised"
        ),
    }
    assert_eq!(n.read("/networks").await, before);
    // An automatic subnet avoids them all.
    let id = n
        .post(
            "/networks/create",
            json!({"Name": "auto", "Driver": "overlay"}),
        )
        .await
        .ok(201)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let net = n.read(&format!("/networks/{id}")).await;
    let subnet: shoal_api::dispatch::ipnet_str::Ipv4Cidr = net["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(routes.iter().all(|r| !r.dest.overlaps(&subnet)), "{subnet}");

    // `docker swarm init --default-addr-pool 127.0.0.0/8` is refused by name too.
    let fresh = Node::new().await;
    fresh
        .post(
            "/swarm/init",
            json!({"AdvertiseAddr": "127.0.0.1:0", "DefaultAddrPool": ["127.0.0.0/8"]}),
        )
        .await
        .refused(400, &["DefaultAddrPool[0]", "the loopback range"]);
}
