//! `shoal`: one binary for the node daemon (Docker-compatible API, manager, agent).

mod client;
mod client_cert;
mod daemon;
mod dashboard;
mod floating_ip;
mod lock;
mod metrics;
mod node_registry;
mod registry;
mod service;
mod socket;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Container orchestration for a handful of machines, driven by the docker CLI.
#[derive(Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node daemon: serves the Docker Engine API (swarm subset) on a unix socket.
    Daemon(DaemonArgs),
    /// What the docker CLI cannot do with services (their earlier specs).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Client certificates for the Docker API over TCP (`shoal daemon --listen`):
    /// `shoal client-cert NAME --out DIR` issues one, `ls` lists them, `rm NAME` revokes one.
    ClientCert(ClientCertArgs),
    /// The swarm's floating addresses: one address for the whole cluster, held by one node.
    #[command(subcommand)]
    FloatingIp(FloatingIpCmd),
    /// The node registries (127.0.0.1:5000 on every node): what is stored, and where.
    #[command(subcommand)]
    Registry(RegistryCmd),
    /// The web dashboard: `shoal dashboard password` sets its admin password (read from stdin).
    #[command(subcommand)]
    Dashboard(DashboardCmd),
    /// Internal: the daemon's child that removes floating addresses at their lease's end.
    #[command(hide = true)]
    FloatingGuard,
}

/// `shoal dashboard ...`.
#[derive(Subcommand)]
enum DashboardCmd {
    /// Set the admin password (read from stdin's first line; at least 8 characters): stored
    /// as an Argon2 hash in the swarm, so it works on every manager's dashboard.
    Password {
        /// A manager's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
}

/// `shoal registry ...`.
#[derive(Subcommand)]
enum RegistryCmd {
    /// List the tags pushed to the node registries: digest, size, the nodes holding them whole.
    Ls {
        /// A manager's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
}

/// `shoal floating-ip add|ls|rm`.
#[derive(Subcommand)]
enum FloatingIpCmd {
    /// Add an address (ADDR/PREFIX, IPv4 or IPv6).
    Add {
        /// The address with its prefix, e.g. 192.168.1.250/24.
        address: String,
        /// The interface to add it on (default: the one carrying the node's advertise address).
        #[arg(long)]
        interface: Option<String>,
        /// A placement constraint a holder must meet (repeatable), e.g. node.role==manager.
        #[arg(long = "constraint")]
        constraints: Vec<String>,
        /// A manager's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
    /// List the addresses: interface, constraints, eligible nodes, holder, lease.
    Ls {
        /// A manager's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
    /// Remove an address.
    Rm {
        /// The address, as added (any spelling of it).
        address: String,
        /// A manager's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
}

/// `shoal client-cert NAME --out DIR | ls | rm NAME`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct ClientCertArgs {
    #[command(subcommand)]
    cmd: Option<ClientCertCmd>,
    /// The client's name (the certificate's CN, and what the daemon's audit log names).
    #[arg(required = true)]
    name: Option<String>,
    /// Directory to write ca.pem, cert.pem and key.pem into (point DOCKER_CERT_PATH at it).
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Days the certificate is valid (default 90).
    #[arg(long)]
    days: Option<u64>,
    /// A manager's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
    #[arg(long, short = 'H')]
    host: Option<String>,
}

/// `shoal client-cert ls|rm`.
#[derive(Subcommand)]
enum ClientCertCmd {
    /// List the client certificates issued: name, serial, fingerprint, expiry, revoked.
    Ls {
        /// A manager's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
    /// Revoke a client certificate: every manager refuses it at the handshake from now on and
    /// ends its open connections.
    Rm {
        /// The certificate's name.
        name: String,
        /// A manager's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
}

/// `shoal service ...`.
#[derive(Subcommand)]
enum ServiceCmd {
    /// List a service's revisions: the current spec and up to ten earlier ones.
    History {
        /// Service name or ID.
        service: String,
        /// The node's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
    /// Show a periodic job's schedule: its last and next run and the runs it skipped.
    Schedule {
        /// Service name or ID.
        service: String,
        /// The node's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
    /// Roll a service back to any revision its history keeps (`docker service rollback`
    /// goes back one).
    Rollback {
        /// Service name or ID.
        service: String,
        /// The revision, as `shoal service history` lists it.
        #[arg(long)]
        to: u64,
        /// Return at once instead of following the rollback.
        #[arg(long, short = 'd')]
        detach: bool,
        /// The node's API socket (default: DOCKER_HOST, else /run/shoal/docker.sock).
        #[arg(long, short = 'H')]
        host: Option<String>,
    },
}

/// Flags of `shoal daemon`.
#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Where the node keeps its state (raft log, identity).
    #[arg(long, default_value = "/var/lib/shoal")]
    pub data_dir: PathBuf,
    /// The unix socket to serve the API on (point DOCKER_HOST at it).
    #[arg(long, default_value = "/run/shoal/docker.sock")]
    pub socket: PathBuf,
    /// The node's Docker Engine socket.
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub engine: PathBuf,
    /// Pull task images the node lacks ("missing", as Swarm does) or never.
    #[arg(long, env = "SHOAL_PULL", default_value = "missing", value_parser = ["missing", "never"])]
    pub pull: String,
    /// The node's name in `docker node ls` (default: the engine's host name). Several nodes
    /// sharing one engine, as in the test harness, need distinct names.
    #[arg(long, env = "SHOAL_HOSTNAME")]
    pub hostname: Option<String>,
    /// Also serve the Docker API over TCP, e.g. tcp://0.0.0.0:2376 (repeatable; off by
    /// default). With mutual TLS while this node is a swarm manager: clients need a
    /// certificate from `shoal client-cert`.
    #[arg(long = "listen", value_name = "tcp://ADDR[:PORT]")]
    pub listen: Vec<String>,
    /// Mutual TLS on the --listen addresses (the default). --tls=false serves plain TCP, which
    /// is refused unless every --listen address is loopback.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls: bool,
    /// A floating address for the swarm, ADDR/PREFIX (repeatable): added once this node leads
    /// a swarm and the address is not configured yet, as `shoal floating-ip add` would.
    #[arg(long = "floating-ip", value_name = "ADDR/PREFIX")]
    pub floating_ip: Vec<String>,
    /// Where the web dashboard listens (default 127.0.0.1:9000; "off" turns it off). Plain HTTP
    /// on loopback; anywhere else HTTPS, with --dashboard-cert and --dashboard-key or else a
    /// certificate from the cluster CA (then a `shoal client-cert` certificate in the browser
    /// logs in without the password). It answers while this node is a manager.
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub dashboard_addr: Option<String>,
    /// PEM certificate chain for the dashboard's HTTPS.
    #[arg(long, requires = "dashboard_key", value_name = "FILE")]
    pub dashboard_cert: Option<PathBuf>,
    /// PEM private key for the dashboard's HTTPS.
    #[arg(long, requires = "dashboard_cert", value_name = "FILE")]
    pub dashboard_key: Option<PathBuf>,
    /// Where Prometheus scrapes this node's metrics, GET /metrics (default 127.0.0.1:9323,
    /// Docker's customary metrics port; "off" turns it off).
    #[arg(long, value_name = "ADDR:PORT|off")]
    pub metrics_addr: Option<String>,
    /// The port this node serves its images to the other nodes on, and fetches theirs from
    /// (default 7946, Swarm's node-to-node port; the same on every node; "off": serve none).
    /// Node certificates of the swarm only.
    #[arg(long, value_name = "PORT|off", default_value = "7946")]
    pub peer_port: String,
    /// Where this node's registry serves the OCI distribution API (push and pull; default
    /// 127.0.0.1:5000, which the engine trusts without TLS; "off": none). Tags live in the
    /// swarm, blobs on --registry-copies nodes.
    #[arg(long, value_name = "ADDR:PORT|off", default_value = "127.0.0.1:5000")]
    pub registry_addr: String,
    /// How many nodes hold each blob pushed to a node registry (the same on every node).
    #[arg(long, value_name = "N", default_value_t = shoal_api::registry::DEFAULT_COPIES)]
    pub registry_copies: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Daemon(args) => rt.block_on(daemon::run(args)),
        Cmd::Dashboard(DashboardCmd::Password { host }) => {
            rt.block_on(dashboard::set_password(&client::socket(host.as_deref())))
        }
        Cmd::FloatingGuard => {
            shoal_agent::floating::guard::run_guard();
            Ok(())
        }
        Cmd::Service(ServiceCmd::History { service, host }) => {
            rt.block_on(service::history(&client::socket(host.as_deref()), &service))
        }
        Cmd::Service(ServiceCmd::Schedule { service, host }) => rt.block_on(service::schedule(
            &client::socket(host.as_deref()),
            &service,
        )),
        Cmd::ClientCert(a) => match a.cmd {
            Some(ClientCertCmd::Ls { host }) => {
                rt.block_on(client_cert::list(&client::socket(host.as_deref())))
            }
            Some(ClientCertCmd::Rm { name, host }) => {
                rt.block_on(client_cert::revoke(&client::socket(host.as_deref()), &name))
            }
            None => match (a.name, a.out) {
                (Some(name), Some(out)) => rt.block_on(client_cert::issue(
                    &client::socket(a.host.as_deref()),
                    &name,
                    &out,
                    a.days,
                )),
                _ => anyhow::bail!("shoal client-cert NAME --out DIR (or: ls, rm NAME)"),
            },
        },
        Cmd::FloatingIp(FloatingIpCmd::Add {
            address,
            interface,
            constraints,
            host,
        }) => rt.block_on(floating_ip::add(
            &client::socket(host.as_deref()),
            &address,
            interface.as_deref(),
            &constraints,
        )),
        Cmd::Registry(RegistryCmd::Ls { host }) => {
            rt.block_on(registry::list(&client::socket(host.as_deref())))
        }
        Cmd::FloatingIp(FloatingIpCmd::Ls { host }) => {
            rt.block_on(floating_ip::list(&client::socket(host.as_deref())))
        }
        Cmd::FloatingIp(FloatingIpCmd::Rm { address, host }) => rt.block_on(floating_ip::remove(
            &client::socket(host.as_deref()),
            &address,
        )),
        Cmd::Service(ServiceCmd::Rollback {
            service,
            to,
            detach,
            host,
        }) => rt.block_on(service::rollback(
            &client::socket(host.as_deref()),
            &service,
            to,
            detach,
        )),
    }
}
