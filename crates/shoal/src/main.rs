//! `shoal`: one binary for the node daemon (Docker-compatible API, manager, agent).

mod client;
mod daemon;
mod lock;
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
        Cmd::Service(ServiceCmd::History { service, host }) => {
            rt.block_on(service::history(&client::socket(host.as_deref()), &service))
        }
        Cmd::Service(ServiceCmd::Schedule { service, host }) => rt.block_on(service::schedule(
            &client::socket(host.as_deref()),
            &service,
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
