//! Runs one nftables transaction through the `nft` program (`nft -f -`), for the node's
//! networking tables (`network::nft`) and the floating addresses' gate (`floating::gate`).

use tokio::io::AsyncWriteExt;

/// Runs `nft -f -` with `script` as one transaction; the error is what went wrong, in words
/// (nft's own message when it refused the script).
pub(crate) async fn run_script(script: &str) -> Result<(), String> {
    let started = std::time::Instant::now();
    let r = run_nft(script).await;
    crate::metrics::METRICS
        .nft_apply
        .observe(started.elapsed().as_secs_f64());
    r
}

async fn run_nft(script: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
