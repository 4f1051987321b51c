//! `shoal service ...`: what the docker CLI cannot do with a shoal service.

use crate::client;
use anyhow::Context;
use std::path::Path;
use std::time::Duration;

/// Prints a service's revisions: the current spec and the earlier ones shoal keeps.
pub async fn history(socket: &Path, name: &str) -> anyhow::Result<()> {
    let revs = client::call(
        socket,
        "GET",
        &format!("/shoal/v1/services/{name}/history"),
        None,
    )
    .await?;
    let rows: Vec<[String; 4]> = revs
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let spec = &r["Spec"]["TaskTemplate"]["ContainerSpec"];
            let image = spec["Image"].as_str().unwrap_or("").to_string();
            let when = if r["Current"].as_bool() == Some(true) {
                format!(
                    "current (since {})",
                    client::short_time(r["Since"].as_str())
                )
            } else {
                format!("replaced {}", client::short_time(r["ReplacedAt"].as_str()))
            };
            let env = spec["Env"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            [r["Version"].to_string(), image, when, env]
        })
        .collect();
    client::print_table(["REVISION", "IMAGE", "WHEN", "ENV"], &rows);
    Ok(())
}

/// Prints a periodic job's schedule, as the manager keeps it.
pub async fn schedule(socket: &Path, name: &str) -> anyhow::Result<()> {
    let s = client::call(
        socket,
        "GET",
        &format!("/shoal/v1/services/{name}/schedule"),
        None,
    )
    .await?;
    println!("Schedule:   {}", s["Schedule"].as_str().unwrap_or("-"));
    println!("Iteration:  {}", s["Iteration"]);
    println!("Last run:   {}", client::short_time(s["LastRun"].as_str()));
    println!("Next run:   {}", client::short_time(s["NextRun"].as_str()));
    println!(
        "Skipped:    {} (due while the last run was still going)",
        s["Skipped"]
    );
    Ok(())
}

/// Rolls a service back to an earlier revision and, unless `detach`, follows the rollback
/// until it completes or pauses.
pub async fn rollback(
    socket: &Path,
    name: &str,
    revision: u64,
    detach: bool,
) -> anyhow::Result<()> {
    client::call(
        socket,
        "POST",
        &format!("/shoal/v1/services/{name}/rollback?revision={revision}"),
        None,
    )
    .await?;
    if detach {
        println!("{name}");
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    loop {
        let svc = client::call(socket, "GET", &format!("/services/{name}"), None).await?;
        let id = svc["ID"]
            .as_str()
            .context("service without an ID")?
            .to_string();
        let state = svc["UpdateStatus"]["State"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let message = svc["UpdateStatus"]["Message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let filters = serde_json::json!({"service": [id], "_up-to-date": ["true"], "desired-state": ["running"]});
        let enc = percent_encoding::utf8_percent_encode(
            &filters.to_string(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let tasks = client::call(socket, "GET", &format!("/tasks?filters={enc}"), None).await?;
        let running = tasks
            .as_array()
            .map(|t| {
                t.iter()
                    .filter(|t| t["Status"]["State"] == "running")
                    .count()
            })
            .unwrap_or(0);
        bar.set_message(format!(
            "rolling back to revision {revision}: {running} tasks up to date and running ({state})"
        ));
        match state.as_str() {
            "rollback_completed" | "" => {
                bar.finish_with_message(format!("{name}: rolled back to revision {revision}"));
                return Ok(());
            }
            "rollback_paused" | "paused" => {
                bar.abandon();
                anyhow::bail!("service rollback paused: {message}");
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
