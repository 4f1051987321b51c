//! Swarm's placeholders in a task's hostname, environment and mounts (`{{.Task.Slot}}`,
//! `{{.Service.Name}}`, `{{.Node.Hostname}}`, ...), expanded per task on its node.

/// What a template may refer to.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Service ID.
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// Task ID.
    pub task_id: String,
    /// Task name (`service.slot.taskid` or `service.nodeid.taskid`).
    pub task_name: String,
    /// Slot (or node ID for global tasks).
    pub task_slot: String,
    /// Node ID.
    pub node_id: String,
    /// Node hostname.
    pub node_hostname: String,
    /// Node platform OS.
    pub node_os: String,
    /// Node platform architecture.
    pub node_arch: String,
}

/// Replaces every known `{{.X.Y}}` placeholder; an unknown one is left as it is, so a typo shows.
pub fn expand(s: &str, ctx: &Context) -> String {
    if !s.contains("{{") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = rest[start + 2..start + end].trim();
        let value = match inner {
            ".Service.ID" => Some(&ctx.service_id),
            ".Service.Name" => Some(&ctx.service_name),
            ".Task.ID" => Some(&ctx.task_id),
            ".Task.Name" => Some(&ctx.task_name),
            ".Task.Slot" => Some(&ctx.task_slot),
            ".Node.ID" => Some(&ctx.node_id),
            ".Node.Hostname" => Some(&ctx.node_hostname),
            ".Node.Platform.OS" => Some(&ctx.node_os),
            ".Node.Platform.Architecture" => Some(&ctx.node_arch),
            _ => None,
        };
        match value {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_known_placeholders_only() {
        let ctx = Context {
            service_name: "web".into(),
            task_slot: "3".into(),
            node_hostname: "pi1".into(),
            ..Default::default()
        };
        assert_eq!(
            expand(
                "{{.Service.Name}}-{{ .Task.Slot }}@{{.Node.Hostname}}",
                &ctx
            ),
            "web-3@pi1"
        );
        assert_eq!(expand("x{{.Nope}}y", &ctx), "x{{.Nope}}y");
        assert_eq!(expand("plain", &ctx), "plain");
        assert_eq!(expand("broken {{.Task.Slot", &ctx), "broken {{.Task.Slot");
    }
}
