//! Real-system tests of the node networking: a NetworkAgent on this host's Docker Engine,
//! containers on its networks, traffic only to addresses the test creates (its own subnets,
//! 127.0.0.1). Needs root, Docker Engine and nft; builds the test images on first use.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use rand::{Rng, SeedableRng};
use shoal_agent::network::{
    MeshPort, NetworkAgent, NetworkConfig, NetworkSpec, Protocol, RoutingTable, ServiceRoute,
    TaskEndpoint,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const UPSTREAM_NAME: &str = "upstream-only.test.";
const UPSTREAM_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

async fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).to_string();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn must(cmd: &str, args: &[&str]) -> String {
    let (ok, out) = run(cmd, args).await;
    assert!(ok, "{cmd} {args:?} failed: {out}");
    out
}

async fn build_images() {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-images.sh");
    must("bash", &[script.to_str().unwrap()]).await;
}

/// A fake upstream resolver on 127.0.0.1: knows one name, NXDOMAIN for the rest.
async fn fake_upstream() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new();
            resp.set_id(req.id())
                .set_message_type(MessageType::Response)
                .set_recursion_available(true);
            resp.add_queries(req.queries().iter().cloned());
            match req.queries().first() {
                Some(q) if q.name().to_ascii().eq_ignore_ascii_case(UPSTREAM_NAME) => {
                    if q.query_type() == RecordType::A {
                        resp.add_answer(Record::from_rdata(
                            q.name().clone(),
                            30,
                            RData::A(A(UPSTREAM_ADDR)),
                        ));
                    }
                }
                _ => {
                    resp.set_response_code(ResponseCode::NXDomain);
                }
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

/// One test's world: an agent with a random node id, containers named after it.
struct World {
    agent: NetworkAgent,
    tag: String,
    containers: Vec<String>,
    plugin_dir: PathBuf,
    /// Set once `run` has cleaned up; otherwise `Drop` does it the blunt way.
    cleaned: bool,
}

/// Safety net for a test that fails before `World::run` cleans up: removes everything named
/// after this test's node with the command-line tools.
impl Drop for World {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let sh = |script: String| {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .status();
        };
        let tag = &self.tag;
        sh(format!(
            "docker ps -aq --filter name=shoaltest-{tag}- | xargs -r docker rm -f"
        ));
        sh(format!(
            "docker network ls -q --filter driver=shoal-{tag} | xargs -r docker network rm"
        ));
        sh(format!("nft delete table ip shoal_{tag}"));
        sh(format!(
            "ip -o -d link show | grep 'alias shoal:{tag}' | awk -F': ' '{{print $2}}' | cut -d@ -f1 | xargs -r -n1 ip link del"
        ));
        sh(format!(
            "iptables -S DOCKER-USER | grep 'shoal:{tag}' | sed 's/^-A/-D/' | while read -r r; do eval iptables -w $r; done"
        ));
        let _ = std::fs::remove_file(self.plugin_dir.join(format!("shoal-{tag}.sock")));
    }
}

/// The seed of this process's random choices (node tags, subnets, ports): `SHOAL_TEST_SEED`
/// if set, else a fresh one (not a fixed default: the tests run in the host's namespace, and a
/// run killed midway leaves names and subnets that the next run must not pick again). Every
/// test prints it, so a failing test's output says how to replay its choices.
fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("SHOAL_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                nanos ^ u64::from(std::process::id()).rotate_left(32)
            })
    })
}

/// A generator for the calling test: the process's seed mixed with the test's name, what it is
/// for and how many it asked for before (FNV-1a), so a test draws the same values on a replay
/// whatever runs beside it, and two draws in one test (two nodes' tags) differ.
fn test_rng(what: &str) -> rand::rngs::StdRng {
    static CALLS: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());
    let test = std::thread::current().name().unwrap_or("").to_string();
    let key = format!("{test}/{what}");
    let n = {
        let mut calls = CALLS.lock().unwrap_or_else(|e| e.into_inner());
        match calls.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                calls.push((key.clone(), 0));
                0
            }
        }
    };
    let mixed = format!("{key}/{n}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64 ^ seed(), |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    eprintln!("{test}: random {what} from SHOAL_TEST_SEED={}", seed());
    rand::rngs::StdRng::seed_from_u64(mixed)
}

fn random_tag() -> String {
    let n: u64 = test_rng("tag").random();
    format!("t{:011x}", n & 0xfff_ffff_ffff)
}

/// A random 10.231.x.0/24 subnet per network of the test (tests run in parallel).
/// Subnets no other test of this process uses (the tests run in parallel in one namespace,
/// and two picking one subnet collide on its DNS address), from a random start so that
/// leftovers of an earlier run are unlikely to be hit either.
fn random_subnets(n: usize) -> Vec<ipnet::Ipv4Net> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start =
        *START.get_or_init(|| rand::rngs::StdRng::seed_from_u64(seed()).random_range(0..190));
    let first = NEXT.fetch_add(n as u32, Ordering::Relaxed);
    (0..n as u32)
        .map(|i| {
            format!("10.231.{}.0/24", 10 + (start + first + i) % 190)
                .parse()
                .unwrap()
        })
        .collect()
}

fn host(subnet: ipnet::Ipv4Net, last: u8) -> Ipv4Addr {
    let o = subnet.network().octets();
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

fn spec(tag: &str, name: &str, subnet: ipnet::Ipv4Net, internal: bool) -> NetworkSpec {
    NetworkSpec {
        id: format!("{name}{tag}0000000000000"),
        name: format!("{name}-{tag}"),
        subnet,
        gateway: host(subnet, 1),
        internal,
        vni: 0,
        ingress: false,
    }
}

impl World {
    async fn start() -> World {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        build_images().await;
        let tag = random_tag();
        let upstream = fake_upstream().await;
        let docker = bollard::Docker::connect_with_local_defaults().expect("docker socket");
        let plugin_dir = PathBuf::from("/run/docker/plugins");
        let agent = NetworkAgent::start(NetworkConfig {
            node_id: format!("{tag}nodenodenodenode"),
            docker,
            plugin_dir: plugin_dir.clone(),
            upstream_dns: vec![upstream],
            engine_socket: None,
        })
        .await
        .expect("agent starts");
        World {
            agent,
            tag,
            containers: vec![],
            plugin_dir,
            cleaned: false,
        }
    }

    /// Starts a container on `net` with a fixed address and our DNS, like the executor does.
    async fn container(
        &mut self,
        name: &str,
        image: &str,
        net: &str,
        ip: Ipv4Addr,
        dns: Ipv4Addr,
        cmd: &[&str],
    ) -> String {
        self.container_with(name, image, net, ip, dns, &[], cmd)
            .await
    }

    /// Like `container`, with extra `docker run` options.
    #[allow(clippy::too_many_arguments)]
    async fn container_with(
        &mut self,
        name: &str,
        image: &str,
        net: &str,
        ip: Ipv4Addr,
        dns: Ipv4Addr,
        opts: &[&str],
        cmd: &[&str],
    ) -> String {
        let full = format!("shoaltest-{}-{name}", self.tag);
        self.containers.push(full.clone());
        let (ip, dns) = (ip.to_string(), dns.to_string());
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &full,
            "--hostname",
            name,
            "--label",
            "shoal.test=network",
            "--network",
            net,
            "--ip",
            &ip,
            "--dns",
            &dns,
        ];
        args.extend_from_slice(opts);
        args.push(image);
        args.extend_from_slice(cmd);
        must("docker", &args).await;
        full
    }

    async fn remove_containers(&mut self) {
        for c in self.containers.drain(..) {
            let _ = run("docker", &["rm", "-f", &c]).await;
        }
    }

    /// Runs the test body, then always removes containers and cleans the agent up, and asserts
    /// that nothing of this node is left behind.
    async fn run<F, Fut>(mut self, body: F)
    where
        F: FnOnce(NetworkAgent, String) -> Fut,
        Fut: std::future::Future<Output = Vec<String>> + Send + 'static,
    {
        let fut = body(self.agent.clone(), self.tag.clone());
        let result = tokio::spawn(fut).await;
        if let Ok(containers) = &result {
            self.containers.extend(containers.iter().cloned());
        }
        let cleaned = self.teardown().await;
        if let Err(e) = result {
            std::panic::resume_unwind(e.into_panic());
        }
        cleaned.expect("cleanup succeeds");
        assert_nothing_left(&self.tag, &self.plugin_dir).await;
    }

    /// Cleans the agent up and removes this test's containers (also those of a panicking body,
    /// found by name); afterwards `Drop` has nothing to do.
    async fn teardown(&mut self) -> Result<(), shoal_agent::network::NetworkError> {
        // Clean the agent up while containers are still attached (forces the disconnects).
        let cleaned = self.agent.cleanup().await;
        self.remove_containers().await;
        // Containers of a panicking body are found by name.
        let (_, left) = run(
            "docker",
            &[
                "ps",
                "-aq",
                "--filter",
                &format!("name=shoaltest-{}-", self.tag),
            ],
        )
        .await;
        for id in left.split_whitespace() {
            let _ = run("docker", &["rm", "-f", id]).await;
        }
        self.cleaned = true;
        cleaned
    }
}

async fn assert_nothing_left(tag: &str, plugin_dir: &std::path::Path) {
    let links = must("ip", &["-d", "link", "show"]).await;
    assert!(
        !links.contains(&format!("alias shoal:{tag}")),
        "links left behind:\n{links}"
    );
    let tables = must("nft", &["list", "tables"]).await;
    assert!(
        !tables.contains(&format!("shoal_{tag}")),
        "nft table left behind:\n{tables}"
    );
    let nets = must(
        "docker",
        &["network", "ls", "--format", "{{.Name}} {{.Driver}}"],
    )
    .await;
    assert!(
        !nets.contains(&format!("shoal-{tag}")),
        "docker networks left behind:\n{nets}"
    );
    let (_, rules) = run("iptables", &["-S", "DOCKER-USER"]).await;
    assert!(
        !rules.contains(&format!("shoal:{tag}")),
        "iptables rules left behind:\n{rules}"
    );
    let sock = plugin_dir.join(format!("shoal-{tag}.sock"));
    assert!(
        !sock.exists(),
        "plugin socket left behind: {}",
        sock.display()
    );
}

async fn exec(container: &str, script: &str) -> (bool, String) {
    run("docker", &["exec", container, "sh", "-c", script]).await
}

/// `n` HTTP GETs of `url` from inside `container`; the bodies (hostnames), one per line.
async fn wget_n(container: &str, url: &str, n: usize) -> Vec<String> {
    let script =
        format!("for i in $(seq {n}); do timeout 3 wget -qO- {url} 2>/dev/null || echo FAIL; done");
    let out = Command::new("docker")
        .args(["exec", container, "sh", "-c", &script])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run docker exec: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `n` HTTP GETs of `addr` from this process (the host); the bodies.
async fn host_get_n(addr: SocketAddrV4, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
            let mut buf = String::new();
            s.read_to_string(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let body = match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(resp)) => resp
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string(),
            _ => "FAIL".to_string(),
        };
        out.push(body);
    }
    out
}

fn route(
    name: &str,
    net: &NetworkSpec,
    vip: Option<Ipv4Addr>,
    dnsrr: bool,
    tasks: &[(Ipv4Addr, bool)],
) -> ServiceRoute {
    ServiceRoute {
        service_id: format!("svc{name}"),
        name: name.to_string(),
        network_id: net.id.clone(),
        aliases: vec![format!("{name}-alias")],
        vip,
        dnsrr,
        tasks: tasks
            .iter()
            .enumerate()
            .map(|(i, (addr, healthy))| TaskEndpoint {
                task_id: format!("task{i}"),
                addr: *addr,
                healthy: *healthy,
            })
            .collect(),
    }
}

fn count(lines: &[String], what: &str) -> usize {
    lines.iter().filter(|l| *l == what).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_dns_published_ports_isolation_and_cleanup() {
    let mut world = World::start().await;
    let subnets = random_subnets(2);
    let (a, b) = (
        spec(&world.tag, "front", subnets[0], false),
        spec(&world.tag, "back", subnets[1], false),
    );
    let agent = world.agent.clone();
    let dnet_a = agent.ensure_network(&a).await.expect("network a");
    assert_eq!(agent.ensure_network(&a).await.expect("idempotent"), dnet_a);
    let dnet_b = agent.ensure_network(&b).await.expect("network b");

    let (web1, web2, vip) = (host(a.subnet, 2), host(a.subnet, 3), host(a.subnet, 100));
    let c_web1 = world
        .container("web1", "shoal-test/web", &dnet_a, web1, a.gateway, &[])
        .await;
    world
        .container("web2", "shoal-test/web", &dnet_a, web2, a.gateway, &[])
        .await;
    let client = world
        .container(
            "client",
            "shoal-test/busybox",
            &dnet_a,
            host(a.subnet, 10),
            a.gateway,
            &["sleep", "3600"],
        )
        .await;
    let client_b = world
        .container(
            "clientb",
            "shoal-test/busybox",
            &dnet_b,
            host(b.subnet, 10),
            b.gateway,
            &["sleep", "3600"],
        )
        .await;
    let port: u16 = test_rng("port").random_range(20000..30000);
    let published = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);

    world
        .run(move |agent, _tag| async move {
            let table = |web2_healthy: bool, web1_healthy: bool| RoutingTable {
                peers: Default::default(),
                services: vec![route(
                    "web",
                    &a,
                    Some(vip),
                    false,
                    &[(web1, web1_healthy), (web2, web2_healthy)],
                )],
                published: vec![MeshPort {
                    protocol: Protocol::Tcp,
                    published: port,
                    targets: [(web1, web1_healthy), (web2, web2_healthy)]
                        .iter()
                        .filter(|(_, h)| *h)
                        .map(|(ip, _)| SocketAddrV4::new(*ip, 80))
                        .collect(),
                }],
            };
            agent
                .apply_routing(&table(true, true))
                .await
                .expect("routing applied");

            // DNS through Docker's embedded resolver, which forwards to our server.
            let (ok, out) = exec(&client, "nslookup web").await;
            assert!(ok && out.contains(&vip.to_string()), "nslookup web:\n{out}");
            let (ok, out) = exec(&client, "nslookup WEB-ALIAS.").await;
            assert!(
                ok && out.contains(&vip.to_string()),
                "nslookup alias:\n{out}"
            );
            let (ok, out) = exec(&client, "nslookup tasks.web").await;
            assert!(
                ok && out.contains(&web1.to_string()) && out.contains(&web2.to_string()),
                "tasks.web:\n{out}"
            );
            let (ok, out) = exec(&client, &format!("nslookup {UPSTREAM_NAME}")).await;
            assert!(
                ok && out.contains(&UPSTREAM_ADDR.to_string()),
                "relayed upstream name:\n{out}"
            );

            // VIP load balancing, client and tasks on one bridge (hairpin through br_netfilter).
            let hits = wget_n(&client, "http://web/", 20).await;
            assert!(
                count(&hits, "web1") > 0 && count(&hits, "web2") > 0,
                "both tasks hit: {hits:?}"
            );
            assert_eq!(
                count(&hits, "web1") + count(&hits, "web2"),
                20,
                "no failures: {hits:?}"
            );
            // A task reaching its own service (may pick itself).
            let hits = wget_n(&c_web1, "http://web/", 10).await;
            assert_eq!(
                count(&hits, "web1") + count(&hits, "web2"),
                10,
                "self-hairpin: {hits:?}"
            );

            // Published port from the host's loopback and from a container via its gateway.
            let hits = host_get_n(published, 20).await;
            assert!(
                count(&hits, "web1") > 0 && count(&hits, "web2") > 0,
                "published from host: {hits:?}"
            );
            assert_eq!(
                count(&hits, "web1") + count(&hits, "web2"),
                20,
                "published from host: {hits:?}"
            );
            let hits = wget_n(&client, &format!("http://{}:{port}/", a.gateway), 6).await;
            assert_eq!(
                count(&hits, "web1") + count(&hits, "web2"),
                6,
                "published from client: {hits:?}"
            );

            // Isolation: the other network neither resolves nor reaches the service...
            let (_, out) = exec(&client_b, "nslookup web").await;
            assert!(
                !out.contains(&vip.to_string()),
                "web must not resolve on network b:\n{out}"
            );
            let (_, out) = exec(&client_b, &format!("nslookup web {}", a.gateway)).await;
            assert!(
                !out.contains(&vip.to_string()),
                "network a's DNS must not answer network b:\n{out}"
            );
            for target in [vip, web1] {
                let hits = wget_n(&client_b, &format!("http://{target}/"), 1).await;
                assert_eq!(hits, vec!["FAIL"], "network b reached {target}");
            }
            // ...but published ports are for everyone.
            let hits = wget_n(&client_b, &format!("http://{}:{port}/", b.gateway), 2).await;
            assert_eq!(
                count(&hits, "web1") + count(&hits, "web2"),
                2,
                "published from network b: {hits:?}"
            );

            // A task leaving the table stops getting traffic, on the VIP and the published port.
            agent
                .apply_routing(&table(false, true))
                .await
                .expect("routing updated");
            let hits = wget_n(&client, "http://web/", 10).await;
            assert_eq!(
                count(&hits, "web1"),
                10,
                "only web1 after removal: {hits:?}"
            );
            let hits = host_get_n(published, 10).await;
            assert_eq!(
                count(&hits, "web1"),
                10,
                "only web1 on the published port: {hits:?}"
            );
            let (ok, out) = exec(&client, "nslookup tasks.web").await;
            assert!(
                ok && !out.contains(&web2.to_string()),
                "unhealthy task left DNS:\n{out}"
            );

            // No healthy task: refused at once, not a hang.
            agent
                .apply_routing(&table(false, false))
                .await
                .expect("routing updated");
            let started = std::time::Instant::now();
            let hits = wget_n(&client, "http://web/", 1).await;
            assert_eq!(hits, vec!["FAIL"]);
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "refusal took {:?}",
                started.elapsed()
            );
            assert_eq!(host_get_n(published, 1).await, vec!["FAIL"]);

            // And back.
            agent
                .apply_routing(&table(true, true))
                .await
                .expect("routing restored");
            let hits = wget_n(&client, "http://web/", 10).await;
            assert_eq!(
                count(&hits, "web1") + count(&hits, "web2"),
                10,
                "restored: {hits:?}"
            );
            vec![]
        })
        .await;
}

/// One DNS question over TCP to `server`; the A records of the answer.
async fn dns_tcp_a(server: SocketAddr, name: &str) -> (ResponseCode, Vec<Ipv4Addr>) {
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    let mut q = Message::new();
    q.set_id(7).set_recursion_desired(true);
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let bytes = q.to_vec().unwrap();
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .expect("DNS over TCP connects");
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.unwrap();
    let m = Message::from_vec(&buf).unwrap();
    let mut addrs: Vec<Ipv4Addr> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    addrs.sort();
    (m.response_code(), addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_network_dnsrr_tcp_dns_and_remove_network() {
    let mut world = World::start().await;
    let subnet = random_subnets(1)[0];
    let net = spec(&world.tag, "intern", subnet, true);
    let agent = world.agent.clone();
    let dnet = agent.ensure_network(&net).await.expect("network");
    let (t1, t2) = (host(subnet, 2), host(subnet, 3));
    let web1 = world
        .container("web1", "shoal-test/web", &dnet, t1, net.gateway, &[])
        .await;
    let web2 = world
        .container("web2", "shoal-test/web", &dnet, t2, net.gateway, &[])
        .await;
    let client = world
        .container(
            "client",
            "shoal-test/busybox",
            &dnet,
            host(subnet, 10),
            net.gateway,
            &["sleep", "3600"],
        )
        .await;
    // A task whose service sets DNS options: Docker then sends `<name>.<search domain>`.
    let ndots = world
        .container_with(
            "ndots",
            "shoal-test/busybox",
            &dnet,
            host(subnet, 11),
            net.gateway,
            &["--dns-option", "ndots:2", "--dns-search", "corp.test"],
            &["sleep", "3600"],
        )
        .await;
    let tag = world.tag.clone();

    world
        .run(move |agent, _| async move {
            let table = RoutingTable {
                peers: Default::default(),
                services: vec![route("db", &net, None, true, &[(t1, true), (t2, true)])],
                published: vec![],
            };
            agent.apply_routing(&table).await.expect("routing applied");

            let (ok, out) = exec(&client, "nslookup db").await;
            assert!(
                ok && out.contains(&t1.to_string()) && out.contains(&t2.to_string()),
                "dnsrr:\n{out}"
            );
            let hits = wget_n(&client, "http://db/", 4).await;
            assert_eq!(
                count(&hits, "web1") + count(&hits, "web2"),
                4,
                "dnsrr traffic: {hits:?}"
            );
            // Internal networks do not relay names to upstream servers.
            let (_, out) = exec(&client, &format!("nslookup {UPSTREAM_NAME}")).await;
            assert!(
                !out.contains(&UPSTREAM_ADDR.to_string()),
                "internal network relayed upstream:\n{out}"
            );

            // With ndots set, Docker forwards only `db.corp.test`: answered once declared.
            let (_, out) = exec(&ndots, "nslookup db").await;
            assert!(
                !out.contains(&t1.to_string()),
                "search domain answered before it was declared:\n{out}"
            );
            agent
                .set_search_domains(&["corp.test".to_string()])
                .await
                .expect("search domains set");
            let (ok, out) = exec(&ndots, "nslookup db").await;
            assert!(
                ok && out.contains(&t1.to_string()),
                "db via search domain:\n{out}"
            );

            // DNS over TCP, straight from the host.
            let server = SocketAddr::from((net.gateway, 53));
            assert_eq!(
                dns_tcp_a(server, "tasks.db.").await,
                (ResponseCode::NoError, vec![t1, t2])
            );
            assert_eq!(dns_tcp_a(server, "nope.").await.0, ResponseCode::Refused);

            // Docker refuses to drop a network that still has containers; the error names it.
            let err = agent
                .remove_network(&net.id)
                .await
                .expect_err("containers still attached");
            assert!(
                err.to_string().contains(&format!("shoal-{tag}-intern")),
                "{err}"
            );
            for c in [&client, &ndots, &web1, &web2] {
                must("docker", &["rm", "-f", c]).await;
            }
            agent
                .remove_network(&net.id)
                .await
                .expect("network removed");
            agent
                .remove_network(&net.id)
                .await
                .expect("removal is idempotent");
            let links = must("ip", &["-br", "link"]).await;
            assert!(
                !links.contains(&format!("shl-intern{}", &tag[..4])),
                "bridge left:\n{links}"
            );
            let nets = must("docker", &["network", "ls", "--format", "{{.Name}}"]).await;
            assert!(
                !nets.contains(&format!("shoal-{tag}-intern")),
                "docker network left:\n{nets}"
            );
            let (_, rules) = run("iptables", &["-S", "DOCKER-USER"]).await;
            assert!(
                !rules.contains(&format!("shoal:{tag}")),
                "iptables rules left:\n{rules}"
            );
            vec![]
        })
        .await;
}

/// The engine-side view of a container on `dnet`: "<IPAddress> <IPAMConfig.IPv4Address>
/// <IPPrefixLen>" from `docker inspect`.
async fn inspect_address(container: &str, dnet: &str) -> String {
    let format = format!(
        "{{{{with index .NetworkSettings.Networks \"{dnet}\"}}}}{{{{.IPAddress}}}} {{{{.IPAMConfig.IPv4Address}}}} {{{{.IPPrefixLen}}}}{{{{end}}}}"
    );
    must("docker", &["inspect", "-f", &format, container])
        .await
        .trim()
        .to_string()
}

/// Two shoal nodes on one Docker Engine, as in the multi-node harness: each node's engine
/// network uses the node's plugin as IPAM driver, so two engine networks with the same subnet
/// coexist (Docker's default IPAM refuses the second: "Pool overlaps with other one on this
/// address space"), and containers get exactly the addresses shoal chose.
///
/// Both nodes live in this one namespace, so they cannot both set up the *same* shoal network:
/// its bridge name (`shl-<network id>`) and gateway address would collide, and the second node
/// would take over the first one's bridge. The nodes therefore set up two different shoal
/// networks with the same subnet (different ids, hence bridges; different gateways, each with
/// its DNS server), which is exactly the overlap Docker's default IPAM refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_engine_same_subnet() {
    let mut node_a = World::start().await;
    let mut node_b = World::start().await;
    let subnet = random_subnets(1)[0];
    let net_a = spec(&node_a.tag, "ovl", subnet, false);
    let net_b = NetworkSpec {
        gateway: host(subnet, 2),
        ..spec(&node_b.tag, "ovl", subnet, false)
    };
    let (agent_a, agent_b) = (node_a.agent.clone(), node_b.agent.clone());
    let (tag_a, tag_b) = (node_a.tag.clone(), node_b.tag.clone());
    let body = tokio::spawn(async move {
        let dnet_a = agent_a.ensure_network(&net_a).await.expect("node a network");
        let dnet_b = agent_b.ensure_network(&net_b).await.expect("node b network");
        assert_eq!(
            agent_b.ensure_network(&net_b).await.expect("idempotent"),
            dnet_b
        );
        let mut containers = vec![];
        for (dnet, tag, net, last) in [(&dnet_a, &tag_a, &net_a, 10), (&dnet_b, &tag_b, &net_b, 20)] {
            let ipam = must(
                "docker",
                &[
                    "network",
                    "inspect",
                    "-f",
                    "{{.Driver}} {{.IPAM.Driver}} {{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}",
                    dnet,
                ],
            )
            .await;
            assert_eq!(
                ipam.trim(),
                format!("shoal-{tag} shoal-{tag} {subnet} {}", net.gateway)
            );
            let ip = host(subnet, last).to_string();
            let name = format!("shoaltest-{tag}-c");
            must(
                "docker",
                &[
                    "run", "-d", "--name", &name, "--label", "shoal.test=network", "--network",
                    dnet, "--ip", &ip, "--dns", &net.gateway.to_string(),
                    "shoal-test/busybox", "sleep", "3600",
                ],
            )
            .await;
            let seen = inspect_address(&name, dnet).await;
            println!("{name} on {dnet} ({}): docker inspect: {seen}", ipam.trim());
            assert_eq!(seen, format!("{ip} {ip} {}", subnet.prefix_len()));
            let (ok, addr) = exec(&name, "ip -4 -o addr show eth0").await;
            assert!(
                ok && addr.contains(&format!("inet {ip}/{} ", subnet.prefix_len())),
                "{name}: {addr}"
            );
            containers.push(name);
        }
        // Without --ip Docker asks the IPAM driver for any address, which shoal refuses.
        let noip = format!("shoaltest-{tag_a}-noip");
        let (ok, out) = run(
            "docker",
            &["run", "-d", "--name", &noip, "--network", &dnet_a, "shoal-test/busybox", "true"],
        )
        .await;
        println!("docker run without --ip: {}", out.trim());
        assert!(!ok && out.contains("assigns addresses explicitly"), "{out}");
        // One node dropping its network leaves the other node's network and container alone.
        must("docker", &["rm", "-f", &containers[0]]).await;
        agent_a.remove_network(&net_a.id).await.expect("remove a");
        let (ok, _) = run("docker", &["network", "inspect", &dnet_a]).await;
        assert!(!ok, "{dnet_a} still exists");
        let ip_b = host(subnet, 20);
        assert_eq!(
            inspect_address(&containers[1], &dnet_b).await,
            format!("{ip_b} {ip_b} {}", subnet.prefix_len())
        );
    })
    .await;
    let cleaned_a = node_a.teardown().await;
    let cleaned_b = node_b.teardown().await;
    if let Err(e) = body {
        std::panic::resume_unwind(e.into_panic());
    }
    cleaned_a.expect("node a cleans up");
    cleaned_b.expect("node b cleans up");
    assert_nothing_left(&node_a.tag, &node_a.plugin_dir).await;
    assert_nothing_left(&node_b.tag, &node_b.plugin_dir).await;
}
