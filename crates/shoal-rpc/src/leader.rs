//! Leader hints: a manager that is not the raft leader refuses node sessions and names the
//! leader in the answer's metadata, so the node goes there next without parsing the message.

use tonic::metadata::MetadataValue;
use tonic::Status;

/// Metadata key carrying the leader's address (`host:port`).
const LEADER_KEY: &str = "shoal-leader";

/// Where a refusing manager says the raft leader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node-to-node address (`host:port`).
    pub addr: String,
}

/// The refusal of a manager that is not the raft leader, naming the leader when it knows one.
pub fn not_leader(leader: Option<&LeaderHint>) -> Status {
    let text = match leader {
        Some(l) => format!("not the raft leader; leader is {}", l.addr),
        None => "not the raft leader".to_string(),
    };
    let mut status = Status::unavailable(text);
    if let Some(value) = leader.and_then(|l| MetadataValue::try_from(l.addr.as_str()).ok()) {
        status.metadata_mut().insert(LEADER_KEY, value);
    }
    status
}

/// The leader a refusal names, if it names one.
pub fn leader_hint(status: &Status) -> Option<LeaderHint> {
    let addr = status.metadata().get(LEADER_KEY)?.to_str().ok()?;
    (!addr.is_empty()).then(|| LeaderHint {
        addr: addr.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_leader_it_names() {
        let hint = LeaderHint {
            addr: "10.99.0.2:2377".into(),
        };
        let refused = not_leader(Some(&hint));
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(leader_hint(&refused), Some(hint));
        assert_eq!(
            refused.message(),
            "not the raft leader; leader is 10.99.0.2:2377"
        );
        assert_eq!(leader_hint(&not_leader(None)), None);
        assert_eq!(
            leader_hint(&Status::unavailable("leader is 1.2.3.4:1")),
            None
        );
    }
}
