//! Generates the gRPC code from proto/shoal.proto with protox (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/shoal.proto");
    let fds = protox::compile(["proto/shoal.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // These carry join tokens, raft entries or secret payloads: src/redact.rs prints them.
        .skip_debug([
            ".shoal.v1.IssueRequest",
            ".shoal.v1.RaftMessage",
            ".shoal.v1.AgentMessage",
            ".shoal.v1.ManagerMessage",
        ])
        .compile_fds(fds)?;
    Ok(())
}
