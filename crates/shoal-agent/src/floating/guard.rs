//! The floating addresses' guard: a small child process (`shoal floating-guard`) that removes an
//! address from its interface when its lease's deadline passes without a newer one, so that a
//! daemon killed with `-9` leaves no address behind beyond its lease (the kernel's own lifetime
//! is whole seconds). The gate (`gate.rs`) already stops the node answering at the deadline;
//! the guard makes the address itself go. It outlives the daemon on purpose: it reads its
//! orders from a pipe and, once the pipe closes, removes what is still held at each deadline and
//! exits.
//!
//! Orders, one per line: `hold CIDR IFNAME DEADLINE_NS` (the deadline on `CLOCK_MONOTONIC`) and
//! `drop CIDR IFNAME` (the holder removed it itself).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::Duration;

/// After the deadline, how long the guard waits before removing the address: the holder, alive,
/// drops it itself at the deadline, and a renewal may be on its way (within the lease's margin).
const GRACE: Duration = Duration::from_millis(10);

/// `CLOCK_MONOTONIC` now, in nanoseconds (what `Instant` reads on Linux).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The daemon's end: the guard child and its order pipe.
pub struct Guard {
    child: std::process::Child,
    orders: std::process::ChildStdin,
}

impl Guard {
    /// Starts `program floating-guard` (this binary).
    pub fn spawn(program: &std::path::Path) -> std::io::Result<Guard> {
        let mut child = std::process::Command::new(program)
            .arg("floating-guard")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let orders = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin for the guard"))?;
        Ok(Guard { child, orders })
    }

    /// The address `cidr` on `link` may stay until `deadline_ns` (`CLOCK_MONOTONIC`).
    pub fn hold(&mut self, cidr: &str, link: &str, deadline_ns: u64) -> std::io::Result<()> {
        writeln!(self.orders, "hold {cidr} {link} {deadline_ns}")
    }

    /// The holder removed it.
    pub fn drop_address(&mut self, cidr: &str, link: &str) -> std::io::Result<()> {
        writeln!(self.orders, "drop {cidr} {link}")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // A clean stop: the holder removed everything itself; the guard exits on EOF.
        let _ = self.child.try_wait();
    }
}

/// What the guard does with one order line.
#[derive(Debug, PartialEq, Eq)]
enum Order {
    Hold(String, String, u64),
    Drop(String, String),
}

fn parse(line: &str) -> Option<Order> {
    let w: Vec<&str> = line.split_whitespace().collect();
    match w.as_slice() {
        ["hold", cidr, link, ns] => Some(Order::Hold(
            cidr.to_string(),
            link.to_string(),
            ns.parse().ok()?,
        )),
        ["drop", cidr, link] => Some(Order::Drop(cidr.to_string(), link.to_string())),
        _ => None,
    }
}

/// The guard process's loop (`shoal floating-guard`): orders from stdin; returns when the pipe
/// is closed and nothing is held any more.
pub fn run_guard() {
    let (tx, rx) = mpsc::channel::<Option<Order>>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if let Some(o) = parse(&line) {
                if tx.send(Some(o)).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(None);
    });
    let mut held: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut open = true;
    loop {
        let now = monotonic_ns();
        let grace = GRACE.as_nanos() as u64;
        let due: Vec<(String, String)> = held
            .iter()
            .filter(|(_, d)| now >= d.saturating_add(grace))
            .map(|(k, _)| k.clone())
            .collect();
        for (cidr, link) in due {
            held.remove(&(cidr.clone(), link.clone()));
            let _ = std::process::Command::new("ip")
                .args(["addr", "del", &cidr, "dev", &link])
                .stderr(std::process::Stdio::null())
                .status();
        }
        if !open && held.is_empty() {
            return;
        }
        let next = held
            .values()
            .min()
            .map(|d| d.saturating_add(grace).saturating_sub(now));
        let wait = Duration::from_nanos(next.unwrap_or(3_600_000_000_000));
        let got = if open {
            rx.recv_timeout(wait)
        } else {
            std::thread::sleep(wait);
            Err(mpsc::RecvTimeoutError::Timeout)
        };
        match got {
            Ok(Some(Order::Hold(c, l, d))) => {
                held.insert((c, l), d);
            }
            Ok(Some(Order::Drop(c, l))) => {
                held.remove(&(c, l));
            }
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_parse_and_nonsense_is_ignored() {
        assert_eq!(
            parse("hold 10.0.0.9/24 eth0 123"),
            Some(Order::Hold("10.0.0.9/24".into(), "eth0".into(), 123))
        );
        assert_eq!(
            parse("drop 10.0.0.9/24 eth0"),
            Some(Order::Drop("10.0.0.9/24".into(), "eth0".into()))
        );
        assert_eq!(parse("hold 10.0.0.9/24 eth0 soon"), None);
        assert_eq!(parse("rm -rf /"), None);
        assert!(monotonic_ns() > 0);
    }
}
