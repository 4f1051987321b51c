//! The HTTP API tested in-process: every swarm endpoint's happy path (status and the key fields,
//! by moby's Go field names) and its refusals (status, Docker's `{"message": ...}` naming the
//! field and the problem, and nothing changed), through the real router and a real store.
//! The fast tier: no daemon, no engine, no sleeps beyond waiting on a condition.
//! Run: `cargo test -p shoal-manager --test api` (68 tests; `random_input` sends 10,000 requests,
//! 8 s at a load of 1.6 on 2 cores, 16 s at a load of 7).

mod bodies;
mod client_certs;
mod events;
mod floating_ips;
mod harness;
mod moby_compat;
mod networks;
mod nodes;
mod objects;
mod random_input;
mod services;
mod shoal_ext;
mod swarm;
mod system;
mod tasks;
mod volumes;
