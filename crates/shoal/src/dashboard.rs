//! `shoal dashboard password` (issue 21): sets the dashboard's admin password through a
//! manager's `/shoal/v1/dashboard/password`. The password is read from stdin (a pipe, or typed
//! at a terminal), never from the command line, where `ps` and shell history would keep it.

use crate::client;
use anyhow::Context;
use std::io::BufRead;
use std::path::Path;

/// Reads the password from stdin (its first line) and sends it to the manager, which keeps only
/// its Argon2 hash.
pub async fn set_password(socket: &Path) -> anyhow::Result<()> {
    if atty_stdin() {
        eprint!("New dashboard password (at least 8 characters; it is shown as you type, or pipe it in): ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    client::call(
        socket,
        "POST",
        "/shoal/v1/dashboard/password",
        Some(serde_json::json!({ "Password": password })),
    )
    .await?;
    println!("dashboard password set; log in as admin on any manager's dashboard");
    Ok(())
}

fn atty_stdin() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}
