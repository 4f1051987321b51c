//! A node's role in the swarm, typed, so it travels between the manager, the node's lifecycle,
//! the session protocol and certificates without string comparisons.

use crate::models::NodeSpecRoleEnum;
use serde::{Deserialize, Serialize};

/// Whether a node runs a store and the manager loops (manager) or only tasks (worker). Serialized
/// as Docker writes it: `"manager"`, `"worker"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the raft store and serves other nodes.
    Manager,
    /// Runs tasks; may only talk to managers as a client.
    Worker,
}

/// A role name that is neither `manager` nor `worker`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown node role {0:?} (expected \"manager\" or \"worker\")")]
pub struct UnknownRole(pub String);

impl Role {
    /// The name Docker uses (`docker node ls`, node specs, `node.json`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }

    /// The role a node spec asks for (a spec without one is a worker's, as in Swarm).
    pub fn of_spec(role: Option<NodeSpecRoleEnum>) -> Role {
        match role {
            Some(NodeSpecRoleEnum::MANAGER) => Role::Manager,
            _ => Role::Worker,
        }
    }
}

impl From<Role> for NodeSpecRoleEnum {
    fn from(r: Role) -> Self {
        match r {
            Role::Manager => NodeSpecRoleEnum::MANAGER,
            Role::Worker => NodeSpecRoleEnum::WORKER,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_and_write_as_docker_names_them() {
        for (role, name) in [(Role::Manager, "manager"), (Role::Worker, "worker")] {
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<Role>(&format!("\"{name}\"")).unwrap(),
                role
            );
            assert_eq!(name.parse::<Role>().unwrap(), role);
            assert_eq!(role.to_string(), name);
        }
        assert!(serde_json::from_str::<Role>("\"Manager\"").is_err());
        assert_eq!(
            "leader".parse::<Role>().unwrap_err().to_string(),
            "unknown node role \"leader\" (expected \"manager\" or \"worker\")"
        );
        assert_eq!(Role::of_spec(None), Role::Worker);
        assert_eq!(
            Role::of_spec(Some(NodeSpecRoleEnum::MANAGER)),
            Role::Manager
        );
    }
}
