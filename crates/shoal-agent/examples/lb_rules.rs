//! How long a change to the load-balancing rules takes with many services defined: the network
//! agent on a real bridge and nftables table, `SERVICES` services (default 1,000, each with a VIP
//! and 3 tasks) applied once, then `CHANGES` single-service changes (a task leaves, a task comes
//! back), each timed from `apply_routing` to its return (nftables transaction, VIP addresses, DNS
//! records). kube-proxy's nftables mode is the reference: a change should cost what it touches,
//! not what exists.
//!
//! Run as root on a host with Docker: `cargo run --release -p shoal-agent --example lb_rules`
//! (`SERVICES=5000 CHANGES=50` to vary). It creates one bridge, one Docker network and one
//! nftables table named after a throwaway node ID in 10.250.0.0/16, and removes them at the end.

use shoal_agent::network::{
    NetworkAgent, NetworkConfig, NetworkSpec, RoutingTable, ServiceRoute, TaskEndpoint,
};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, (n / 250) as u8, (n % 250 + 2) as u8)
}

fn table(services: usize, net: &str) -> RoutingTable {
    let mut t = RoutingTable::default();
    for i in 0..services {
        t.services.push(ServiceRoute {
            service_id: format!("svc{i:05}"),
            name: format!("svc{i}"),
            network_id: net.to_string(),
            aliases: vec![],
            vip: Some(addr(i)),
            dnsrr: false,
            tasks: (0..3)
                .map(|k| TaskEndpoint {
                    task_id: format!("t{i}-{k}"),
                    addr: addr(20_000 + i * 3 + k),
                    healthy: true,
                })
                .collect(),
        });
    }
    t
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let services = env("SERVICES", 1000);
    let changes = env("CHANGES", 20);
    if services * 4 > 60_000 {
        return Err("SERVICES too large for 10.250.0.0/16".into());
    }
    let node_id = format!("lbbench{}", std::process::id());
    let agent = NetworkAgent::start(NetworkConfig {
        node_id,
        docker: bollard::Docker::connect_with_local_defaults()?,
        plugin_dir: "/run/docker/plugins".into(),
        upstream_dns: vec![],
        engine_socket: None,
    })
    .await?;
    let net = NetworkSpec {
        id: format!("lbnet{}", std::process::id()),
        name: "lbbench".into(),
        subnet: "10.250.0.0/16".parse()?,
        gateway: "10.250.0.1".parse()?,
        internal: false,
        vni: 0,
        ingress: false,
    };
    let result = run(&agent, &net, services, changes).await;
    agent.cleanup().await?;
    result
}

async fn run(
    agent: &NetworkAgent,
    net: &NetworkSpec,
    services: usize,
    changes: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    agent.ensure_network(net).await?;
    let mut t = table(services, &net.id);
    let t0 = Instant::now();
    agent.apply_routing(&t).await?;
    let initial = t0.elapsed();
    let mut took = Vec::new();
    for c in 0..changes {
        let i = (c * 7919) % services;
        // A task leaves (as when it stops), then comes back: two single-service changes.
        let gone = t.services[i].tasks.pop();
        let t0 = Instant::now();
        agent.apply_routing(&t).await?;
        took.push(t0.elapsed());
        if let Some(task) = gone {
            t.services[i].tasks.push(task);
        }
        let t0 = Instant::now();
        agent.apply_routing(&t).await?;
        took.push(t0.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    let p95 = took[(took.len() * 95 / 100).min(took.len() - 1)];
    println!(
        "{services} services x 3 tasks: initial apply {:.1} ms; one service changed: median {:.1} ms, p95 {:.1} ms, max {:.1} ms over {} changes",
        ms(initial),
        ms(median),
        ms(p95),
        ms(took[took.len() - 1]),
        took.len()
    );
    Ok(())
}
