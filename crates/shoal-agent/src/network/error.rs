//! The error type of the network module.

/// What went wrong, naming the network (or other object) and the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink request (links, addresses) failed.
    #[error("netlink: {op} for {object}: {source}")]
    Netlink {
        /// The operation, e.g. "create bridge".
        op: &'static str,
        /// The link, address or network concerned.
        object: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A call to Docker Engine failed.
    #[error("docker: {op} {object}: {source}")]
    Docker {
        /// The operation, e.g. "create network".
        op: &'static str,
        /// The Docker object concerned.
        object: String,
        /// Bollard's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// `nft` rejected a ruleset or could not be run.
    #[error("nftables: {op}: {detail}")]
    Nft {
        /// The operation, e.g. "apply routing".
        op: &'static str,
        /// nft's message (stderr) or why it could not run.
        detail: String,
    },
    /// `iptables` failed.
    #[error("iptables: {op}: {detail}")]
    Iptables {
        /// The operation, e.g. "allow bridge shl-1234567890".
        op: String,
        /// iptables' message or why it could not run.
        detail: String,
    },
    /// A local I/O operation (socket, sysctl, /proc) failed.
    #[error("{op} {object}: {source}")]
    Io {
        /// The operation, e.g. "bind DNS server".
        op: &'static str,
        /// The path, address or network concerned.
        object: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The request does not make sense (bad spec, conflicting state).
    #[error("invalid {object}: {reason}")]
    Invalid {
        /// The network, service or address concerned.
        object: String,
        /// Why it was refused.
        reason: String,
    },
}

impl NetworkError {
    pub(crate) fn io(
        op: &'static str,
        object: impl std::fmt::Display,
        source: std::io::Error,
    ) -> Self {
        NetworkError::Io {
            op,
            object: object.to_string(),
            source,
        }
    }

    pub(crate) fn netlink(
        op: &'static str,
        object: impl std::fmt::Display,
        source: rtnetlink::Error,
    ) -> Self {
        NetworkError::Netlink {
            op,
            object: object.to_string(),
            source,
        }
    }

    pub(crate) fn docker(
        op: &'static str,
        object: impl std::fmt::Display,
        source: bollard::errors::Error,
    ) -> Self {
        NetworkError::Docker {
            op,
            object: object.to_string(),
            source,
        }
    }

    pub(crate) fn invalid(object: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        NetworkError::Invalid {
            object: object.to_string(),
            reason: reason.into(),
        }
    }
}
