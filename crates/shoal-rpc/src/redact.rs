//! `Debug` for the wire messages that carry secrets: a join token, raft entries (which hold
//! secrets and the CA key), a node's assignments (secret payloads). prost would print them
//! whole; these print their shape only, so no log or panic message can leak them.

use crate::pb;
use std::fmt;

/// A byte field as its length.
struct Len(usize);

impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

impl fmt::Debug for pb::IssueRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = if self.token.is_empty() {
            "<none>"
        } else {
            "<redacted>"
        };
        f.debug_struct("IssueRequest")
            .field("token", &format_args!("{token}"))
            .field("csr_pem", &Len(self.csr_pem.len()))
            .field("description_json", &Len(self.description_json.len()))
            .field("advertise_addr", &self.advertise_addr)
            .field("availability", &self.availability)
            .finish()
    }
}

impl fmt::Debug for pb::RaftMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftMessage")
            .field("kind", &self.kind)
            .field("payload", &Len(self.payload.len()))
            .finish()
    }
}

impl fmt::Debug for pb::AgentMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentMessage")
            .field("json", &Len(self.json.len()))
            .finish()
    }
}

impl fmt::Debug for pb::ManagerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerMessage")
            .field("json", &Len(self.json.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carrying_secrets_print_their_shape_only() {
        let secret = "SWMTKN-1-topsecret";
        let bytes = secret.as_bytes().to_vec();
        // How a derived Debug would print the bytes.
        let as_list = format!("{:?}", bytes);
        let as_list = as_list.trim_matches(['[', ']']);
        let printed = [
            format!(
                "{:?}",
                pb::IssueRequest {
                    token: secret.into(),
                    csr_pem: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                pb::RaftMessage {
                    kind: "append_entries".into(),
                    payload: bytes.clone(),
                }
            ),
            format!(
                "{:?}",
                pb::AgentMessage {
                    json: bytes.clone()
                }
            ),
            format!(
                "{:?}",
                pb::ManagerMessage {
                    json: bytes.clone()
                }
            ),
        ];
        for p in printed {
            assert!(!p.contains("topsecret") && !p.contains(as_list), "{p}");
            assert!(p.contains("bytes>"), "{p}");
        }
    }
}
