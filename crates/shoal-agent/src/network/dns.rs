//! Service discovery: one DNS server per network, on the network's gateway address, port 53
//! (UDP and TCP).
//!
//! Task containers use Docker's embedded resolver (127.0.0.11), which answers container names
//! itself and forwards everything else, single-label names included, to `HostConfig.Dns` (the
//! gateway) from inside the container's namespace. This server answers the service names of its
//! own network only (`<service>`, aliases, `tasks.<service>`), reverse lookups inside the subnet,
//! and relays anything else to the node's upstream servers unchanged (refused on internal
//! networks, which must not reach outside).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{NetworkError, NetworkSpec, RoutingTable};

/// TTL of our answers: short, because `tasks.<service>` changes with every task.
const TTL: u32 = 5;
/// How long one upstream server gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Relayed queries in flight per network; more are dropped (the client retries).
const MAX_INFLIGHT: usize = 256;
/// An idle TCP client is dropped after this long.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The names one network's DNS server answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Records {
    /// Lowercase name without trailing dot -> addresses.
    names: HashMap<String, Vec<Ipv4Addr>>,
    /// VIP -> service name, for reverse lookups.
    ptr: HashMap<Ipv4Addr, String>,
    subnet: Option<ipnet::Ipv4Net>,
    internal: bool,
    /// Search domains of the node (Docker copies them into containers), lowercase.
    search: Vec<String>,
}

impl Records {
    /// The records of network `net`: only the services attached to it.
    pub fn build(net: &NetworkSpec, table: &RoutingTable, search: &[String]) -> Records {
        let mut r = Records {
            subnet: Some(net.subnet),
            internal: net.internal,
            search: search
                .iter()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            ..Records::default()
        };
        for s in table.services.iter().filter(|s| s.network_id == net.id) {
            let mut healthy: Vec<Ipv4Addr> = s
                .tasks
                .iter()
                .filter(|t| t.healthy)
                .map(|t| t.addr)
                .collect();
            healthy.sort();
            healthy.dedup();
            let answer = match (s.vip, s.dnsrr) {
                (Some(vip), false) => {
                    r.ptr.insert(vip, s.name.clone());
                    vec![vip]
                }
                _ => healthy.clone(),
            };
            for n in std::iter::once(&s.name).chain(s.aliases.iter()) {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                r.names.entry(n.clone()).or_default().extend(&answer);
                r.names
                    .entry(format!("tasks.{n}"))
                    .or_default()
                    .extend(&healthy);
            }
        }
        for v in r.names.values_mut() {
            v.sort();
            v.dedup();
        }
        r
    }

    /// The addresses of `name` (lowercase, no trailing dot), also when a search domain of the
    /// node was appended to it.
    fn lookup(&self, name: &str) -> Option<&[Ipv4Addr]> {
        if let Some(a) = self.names.get(name) {
            return Some(a);
        }
        self.search.iter().find_map(|d| {
            let base = name.strip_suffix(d.as_str())?.strip_suffix('.')?;
            self.names.get(base).map(|a| a.as_slice())
        })
    }
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Send this answer.
    Reply(Vec<u8>),
    /// Relay the query to the upstream servers.
    Forward,
    /// Not a DNS query: ignore it.
    Drop,
}

fn reply(req: &Message, code: ResponseCode, answers: Vec<Record>, max_len: usize) -> Outcome {
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(code == ResponseCode::NoError || code == ResponseCode::NXDomain)
        .set_response_code(code);
    resp.add_queries(req.queries().iter().cloned());
    resp.add_answers(answers);
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= max_len => Outcome::Reply(bytes),
        Ok(_) => match resp.truncate().to_vec() {
            Ok(bytes) => Outcome::Reply(bytes),
            Err(_) => Outcome::Drop,
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode DNS answer");
            Outcome::Drop
        }
    }
}

/// Parses `a.b.c.d.in-addr.arpa` into the address `d.c.b.a`.
fn reverse_v4(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    for (i, p) in parts.iter().rev().enumerate() {
        octets[i] = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

/// Answers `packet` from `records`, or says to forward or drop it. `max_len` is the largest
/// answer the transport carries (512 for UDP without EDNS).
pub(crate) fn answer(records: &Records, packet: &[u8], tcp: bool) -> Outcome {
    let Ok(req) = Message::from_vec(packet) else {
        return Outcome::Drop;
    };
    if req.message_type() != MessageType::Query {
        return Outcome::Drop;
    }
    let max_len = if tcp {
        usize::from(u16::MAX)
    } else {
        usize::from(req.max_payload().max(512))
    };
    if req.op_code() != OpCode::Query {
        return reply(&req, ResponseCode::NotImp, vec![], max_len);
    }
    let Some(q) = req.queries().first() else {
        return reply(&req, ResponseCode::FormErr, vec![], max_len);
    };
    let name = q.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');

    if q.query_type() == RecordType::PTR {
        if let Some(ip) = reverse_v4(name) {
            if records.subnet.is_some_and(|s| s.contains(&ip)) {
                return match records
                    .ptr
                    .get(&ip)
                    .and_then(|n| Name::from_ascii(format!("{n}.")).ok())
                {
                    Some(target) => reply(
                        &req,
                        ResponseCode::NoError,
                        vec![Record::from_rdata(
                            q.name().clone(),
                            TTL,
                            RData::PTR(PTR(target)),
                        )],
                        max_len,
                    ),
                    None => reply(&req, ResponseCode::NXDomain, vec![], max_len),
                };
            }
        }
    }

    if let Some(addrs) = records.lookup(name) {
        let answers = match q.query_type() {
            RecordType::A | RecordType::ANY => addrs
                .iter()
                .map(|a| Record::from_rdata(q.name().clone(), TTL, RData::A(A(*a))))
                .collect(),
            // The name exists but has no records of this type (AAAA, MX, ...): NODATA.
            _ => vec![],
        };
        return reply(&req, ResponseCode::NoError, answers, max_len);
    }
    if records.internal {
        return reply(&req, ResponseCode::Refused, vec![], max_len);
    }
    Outcome::Forward
}

fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(packet).ok()?;
    let mut resp = Message::error_msg(req.id(), req.op_code(), ResponseCode::ServFail);
    resp.add_queries(req.queries().iter().cloned());
    resp.set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true);
    resp.to_vec().ok()
}

/// Sends `packet` to each upstream server in turn over UDP; the first answer wins.
async fn relay_udp(packet: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstream {
        let bind: SocketAddr = if up.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let attempt = async {
            let sock = UdpSocket::bind(bind).await?;
            sock.connect(up).await?;
            sock.send(packet).await?;
            let mut buf = vec![0u8; 65535];
            loop {
                let n = sock.recv(&mut buf).await?;
                // Ignore stray datagrams that do not answer our query.
                if n >= 2 && packet.len() >= 2 && buf[..2] == packet[..2] {
                    buf.truncate(n);
                    return Ok::<_, std::io::Error>(buf);
                }
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Ok(resp)) => return Some(resp),
            Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "upstream DNS failed"),
            Err(_) => tracing::debug!(upstream = %up, "upstream DNS timed out"),
        }
    }
    None
}

/// Sends `packet` to each upstream server in turn over TCP; the first answer wins.
async fn relay_tcp(packet: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstream {
        let attempt = async {
            let mut s = TcpStream::connect(up).await?;
            write_framed(&mut s, packet).await?;
            read_framed(&mut s).await
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Ok(Some(resp))) => return Some(resp),
            Ok(Ok(None)) => tracing::debug!(upstream = %up, "upstream DNS closed the connection"),
            Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "upstream DNS failed"),
            Err(_) => tracing::debug!(upstream = %up, "upstream DNS timed out"),
        }
    }
    None
}

async fn read_framed(s: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

async fn write_framed(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len =
        u16::try_from(msg.len()).map_err(|_| std::io::Error::other("DNS message too long"))?;
    let mut buf = Vec::with_capacity(msg.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    s.write_all(&buf).await
}

type SharedRecords = Arc<RwLock<Arc<Records>>>;

fn current(records: &SharedRecords) -> Arc<Records> {
    records.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A running DNS server of one network; stops when dropped.
pub(crate) struct DnsServer {
    records: SharedRecords,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds `addr:53` (UDP and TCP) and starts answering from `records`.
    pub async fn start(
        network: &str,
        addr: Ipv4Addr,
        records: Records,
        upstream: Vec<SocketAddr>,
    ) -> Result<DnsServer, NetworkError> {
        let sa = SocketAddr::from((addr, 53));
        let udp = UdpSocket::bind(sa).await.map_err(|e| {
            NetworkError::io(
                "bind DNS server (udp)",
                format!("{sa} of network {network}"),
                e,
            )
        })?;
        let tcp = TcpListener::bind(sa).await.map_err(|e| {
            NetworkError::io(
                "bind DNS server (tcp)",
                format!("{sa} of network {network}"),
                e,
            )
        })?;
        let records: SharedRecords = Arc::new(RwLock::new(Arc::new(records)));
        let upstream: Arc<[SocketAddr]> = upstream.into();
        let limit = Arc::new(Semaphore::new(MAX_INFLIGHT));
        let udp_task = tokio::spawn(serve_udp(
            Arc::new(udp),
            records.clone(),
            upstream.clone(),
            limit.clone(),
        ));
        let tcp_task = tokio::spawn(serve_tcp(tcp, records.clone(), upstream, limit));
        tracing::info!(network, %sa, "DNS server started");
        Ok(DnsServer {
            records,
            tasks: vec![udp_task, tcp_task],
        })
    }

    /// Replaces the records; queries in flight finish with the old ones.
    pub fn update(&self, records: Records) {
        let mut guard = self.records.write().unwrap_or_else(|e| e.into_inner());
        if **guard != records {
            *guard = Arc::new(records);
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve_udp(
    sock: Arc<UdpSocket>,
    records: SharedRecords,
    upstream: Arc<[SocketAddr]>,
    limit: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DNS recv failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let outcome = answer(&current(&records), &packet, false);
        tracing::trace!(%peer, forward = (outcome == Outcome::Forward), "DNS query over udp");
        match outcome {
            Outcome::Reply(resp) => {
                if let Err(e) = sock.send_to(&resp, peer).await {
                    tracing::debug!(%peer, error = %e, "DNS send failed");
                }
            }
            Outcome::Drop => {}
            Outcome::Forward => {
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!("too many DNS queries in flight; dropping one");
                    continue;
                };
                let sock = sock.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let resp = match relay_udp(&packet, &upstream).await {
                        Some(r) => Some(r),
                        None => servfail(&packet),
                    };
                    if let Some(resp) = resp {
                        if let Err(e) = sock.send_to(&resp, peer).await {
                            tracing::debug!(%peer, error = %e, "DNS send failed");
                        }
                    }
                });
            }
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    records: SharedRecords,
    upstream: Arc<[SocketAddr]>,
    limit: Arc<Semaphore>,
) {
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DNS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let records = records.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let _permit = permit;
            while let Ok(Ok(Some(packet))) =
                tokio::time::timeout(TCP_IDLE, read_framed(&mut conn)).await
            {
                let resp = match answer(&current(&records), &packet, true) {
                    Outcome::Reply(r) => Some(r),
                    Outcome::Drop => None,
                    Outcome::Forward => match relay_tcp(&packet, &upstream).await {
                        Some(r) => Some(r),
                        None => servfail(&packet),
                    },
                };
                let Some(resp) = resp else { break };
                if write_framed(&mut conn, &resp).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{ServiceRoute, TaskEndpoint};
    use hickory_proto::op::Query;

    fn net() -> NetworkSpec {
        NetworkSpec::local("n1", "front", "10.0.0.0/24")
    }

    fn table() -> RoutingTable {
        let task = |a: &str, healthy| TaskEndpoint {
            task_id: a.into(),
            addr: a.parse().unwrap(),
            healthy,
        };
        RoutingTable {
            peers: Default::default(),
            services: vec![
                ServiceRoute {
                    service_id: "s1".into(),
                    name: "web".into(),
                    network_id: "n1".into(),
                    aliases: vec!["www".into()],
                    vip: Some("10.0.0.100".parse().unwrap()),
                    dnsrr: false,
                    tasks: vec![
                        task("10.0.0.2", true),
                        task("10.0.0.3", true),
                        task("10.0.0.4", false),
                    ],
                },
                ServiceRoute {
                    service_id: "s2".into(),
                    name: "db".into(),
                    network_id: "n1".into(),
                    aliases: vec![],
                    vip: None,
                    dnsrr: true,
                    tasks: vec![task("10.0.0.7", true)],
                },
                ServiceRoute {
                    service_id: "s3".into(),
                    name: "secret".into(),
                    network_id: "n2".into(),
                    aliases: vec![],
                    vip: Some("10.0.1.100".parse().unwrap()),
                    dnsrr: false,
                    tasks: vec![task("10.0.1.2", true)],
                },
            ],
            published: vec![],
        }
    }

    fn ask(records: &Records, name: &str, rtype: RecordType) -> Outcome {
        let mut m = Message::new();
        m.set_id(4242).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        answer(records, &m.to_vec().unwrap(), false)
    }

    fn addrs(o: Outcome) -> (ResponseCode, Vec<Ipv4Addr>) {
        let Outcome::Reply(bytes) = o else {
            panic!("expected a reply, got {o:?}")
        };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.id(), 4242);
        let mut a: Vec<Ipv4Addr> = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        a.sort();
        (m.response_code(), a)
    }

    #[test]
    fn service_name_gives_vip_any_case_with_or_without_dot() {
        let r = Records::build(&net(), &table(), &[]);
        for n in ["web", "WEB.", "Www"] {
            assert_eq!(
                addrs(ask(&r, n, RecordType::A)),
                (ResponseCode::NoError, vec!["10.0.0.100".parse().unwrap()])
            );
        }
    }

    #[test]
    fn tasks_name_gives_healthy_tasks() {
        let r = Records::build(&net(), &table(), &[]);
        let want: Vec<Ipv4Addr> = vec!["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()];
        assert_eq!(
            addrs(ask(&r, "tasks.web", RecordType::A)),
            (ResponseCode::NoError, want)
        );
    }

    #[test]
    fn dnsrr_gives_task_addresses() {
        let r = Records::build(&net(), &table(), &[]);
        assert_eq!(
            addrs(ask(&r, "db", RecordType::A)),
            (ResponseCode::NoError, vec!["10.0.0.7".parse().unwrap()])
        );
    }

    #[test]
    fn aaaa_of_a_service_is_nodata() {
        let r = Records::build(&net(), &table(), &[]);
        assert_eq!(
            addrs(ask(&r, "web", RecordType::AAAA)),
            (ResponseCode::NoError, vec![])
        );
    }

    #[test]
    fn other_networks_services_are_not_answered() {
        let r = Records::build(&net(), &table(), &[]);
        assert_eq!(ask(&r, "secret", RecordType::A), Outcome::Forward);
        assert_eq!(ask(&r, "example.com", RecordType::A), Outcome::Forward);
    }

    #[test]
    fn internal_network_refuses_unknown_names() {
        let mut n = net();
        n.internal = true;
        let r = Records::build(&n, &table(), &[]);
        assert_eq!(
            addrs(ask(&r, "example.com", RecordType::A)).0,
            ResponseCode::Refused
        );
    }

    #[test]
    fn search_domain_suffix_is_tolerated() {
        let r = Records::build(&net(), &table(), &["corp.example".to_string()]);
        assert_eq!(
            addrs(ask(&r, "web.corp.example.", RecordType::A)).1,
            vec!["10.0.0.100".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            ask(&r, "web.other.example", RecordType::A),
            Outcome::Forward
        );
    }

    #[test]
    fn reverse_lookup_of_vip_names_the_service() {
        let r = Records::build(&net(), &table(), &[]);
        let Outcome::Reply(bytes) = ask(&r, "100.0.0.10.in-addr.arpa.", RecordType::PTR) else {
            panic!()
        };
        let m = Message::from_vec(&bytes).unwrap();
        assert!(matches!(m.answers()[0].data(), RData::PTR(p) if p.0.to_ascii() == "web."));
        assert_eq!(
            addrs(ask(&r, "9.0.0.10.in-addr.arpa", RecordType::PTR)).0,
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask(&r, "1.1.168.192.in-addr.arpa", RecordType::PTR),
            Outcome::Forward
        );
    }

    #[test]
    fn garbage_is_dropped() {
        assert_eq!(
            answer(&Records::default(), b"\x01\x02", false),
            Outcome::Drop
        );
    }
}
